"""Leader election built only on the :class:`KVStore` primitives, so it works on every backend.

The leader is whoever holds the election key. A candidate grants a lease (kept alive by a
:class:`~kvstore_adapters.lease.LeaseKeeper`) and tries a create-only transaction that puts its id under
the key, attached to that lease. If another candidate holds the key, it watches the key until it is
deleted — by resignation, or by the store when the holder's lease expires — and tries again. So a leader
that dies is replaced within one lease TTL.

A leader learns it lost the leadership (its lease expired or was revoked, its key was deleted or
overwritten, or the store stayed unreachable for a whole TTL) through :attr:`Election.lost`, or by
:meth:`Election.wait_lost` raising :class:`~kvstore_adapters.errors.LeadershipLost`; it must then stop acting
as leader. :attr:`Election.revision`, the revision at which it won, is a fencing token: guard writes with
``Compare.at(election.key, election.revision)`` to make them impossible after the leadership passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from kvstore_adapters.base import Compare, Delete, Event, EventType, KVStore, Lease, Put
from kvstore_adapters.errors import CompactedError, LeadershipLost, LeaseNotFound, StoreUnavailable
from kvstore_adapters.lease import LeaseKeeper

log = logging.getLogger(__name__)

#: Pause before retrying while the store is unreachable.
RETRY_DELAY = 0.5


class Election:
    """One candidate in the election ``name`` (the key the leader's id is stored under)."""

    def __init__(self, store: KVStore, name: str, candidate_id: str, ttl: float = 10.0) -> None:
        if not name or not candidate_id:
            raise ValueError("an election needs a name and a candidate id")
        self.store = store
        self.name = name
        self.key = name
        self.candidate_id = candidate_id
        self.ttl = ttl
        #: Set when this candidate, having been leader, lost the leadership without resigning.
        self.lost = asyncio.Event()
        #: The revision at which this candidate became leader (0 when not leader).
        self.revision = 0
        self._keeper: LeaseKeeper | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._cleanups: set[asyncio.Task[None]] = set()

    @property
    def is_leader(self) -> bool:
        return self.revision > 0 and not self.lost.is_set()

    @property
    def lease(self) -> Lease | None:
        """The lease the leader key is attached to (while campaigning or leading)."""
        return self._keeper.lease if self._keeper is not None else None

    # --- campaigning -----------------------------------------------------------------------------------
    async def campaign(self) -> None:
        """Block until this candidate is the leader. Cancelling it withdraws the candidacy."""
        if self.is_leader:
            return
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None
        await self._stop_term(revoke=True)
        self.lost = asyncio.Event()
        self.revision = 0
        value = self.candidate_id.encode()
        try:
            while True:
                try:
                    if self._keeper is None or self._keeper.lost.is_set():
                        if self._keeper is not None:
                            await self._keeper.stop()
                        self._keeper = await LeaseKeeper.grant(self.store, self.ttl)
                    keeper = self._keeper
                    won = await self.store.txn(
                        [Compare.absent(self.key)], [Put(self.key, value, lease=keeper.lease.id)]
                    )
                    if won.succeeded:
                        self.revision = won.revision
                        break
                    holder = await self.store.get(self.key)
                    if holder is not None:
                        await self._wait_vacant(holder.mod_revision, keeper)
                except LeaseNotFound:
                    # Our lease expired between the keeper's last refresh and the transaction: start over.
                    await self._stop_term(revoke=False)
                except StoreUnavailable as exc:
                    log.warning("election %s: store unavailable while campaigning: %s", self.name, exc)
                    await asyncio.sleep(RETRY_DELAY)
        except BaseException:
            await self._stop_term(revoke=True)
            raise
        log.info("%s became leader of %s at revision %d", self.candidate_id, self.name, self.revision)
        keeper = self._keeper
        assert keeper is not None
        self._monitor = asyncio.get_running_loop().create_task(
            self._watch_term(self.revision, keeper), name=f"election-{self.name}-{self.candidate_id}"
        )

    async def _wait_vacant(self, seen_revision: int, keeper: LeaseKeeper) -> None:
        """Return when the key changes after ``seen_revision`` or our own lease is lost."""
        watch = self.store.watch(self.key, start_revision=seen_revision + 1)
        lost = asyncio.ensure_future(keeper.lost.wait())
        nxt: asyncio.Future[Event] | None = None
        try:
            while True:
                nxt = asyncio.ensure_future(anext(watch))
                done, _ = await asyncio.wait({nxt, lost}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    return
                try:
                    event = nxt.result()
                except (CompactedError, StopAsyncIteration):
                    return
                if event.key == self.key and event.type is EventType.DELETE:
                    return
        finally:
            lost.cancel()
            _discard(nxt)
            await watch.close()

    async def _watch_term(self, won_revision: int, keeper: LeaseKeeper) -> None:
        """Runs while leader: ends the term when the key changes or the lease is lost."""
        reason = "lease lost"
        start = won_revision + 1
        lost = asyncio.ensure_future(keeper.lost.wait())
        nxt: asyncio.Future[Event] | None = None
        try:
            while not keeper.lost.is_set():
                watch = self.store.watch(self.key, start_revision=start)
                nxt = None
                try:
                    while True:
                        nxt = asyncio.ensure_future(anext(watch))
                        done, _ = await asyncio.wait({nxt, lost}, return_when=asyncio.FIRST_COMPLETED)
                        if nxt not in done:
                            nxt.cancel()
                            break
                        event = nxt.result()
                        if event.key == self.key:
                            reason = "key deleted" if event.type is EventType.DELETE else "key overwritten"
                            return
                except (CompactedError, StopAsyncIteration, StoreUnavailable) as exc:
                    # Re-read the key itself; the keeper ends the term if the store stays away too long.
                    log.warning("election %s: watch interrupted (%s); re-checking the key", self.name, exc)
                    await asyncio.sleep(RETRY_DELAY)
                    with contextlib.suppress(StoreUnavailable):
                        kv = await self.store.get(self.key)
                        if kv is None or kv.mod_revision != won_revision:
                            reason = "key deleted or overwritten"
                            return
                        start = await self.store.revision() + 1
                finally:
                    _discard(nxt)
                    await watch.close()
        finally:
            lost.cancel()
            if self.revision == won_revision and not self.lost.is_set():
                log.warning("%s lost the leadership of %s: %s", self.candidate_id, self.name, reason)
                self.lost.set()
                # Best effort: a lease whose key is gone only keeps the store busy.
                cleanup = asyncio.get_running_loop().create_task(keeper.stop(revoke=True))
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)

    # --- leaving -----------------------------------------------------------------------------------------
    async def resign(self) -> None:
        """Give up the leadership (or the candidacy) at once so another candidate can take over."""
        revision = self.revision
        monitor, self._monitor = self._monitor, None
        self.revision = 0
        if monitor is not None:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        if revision:
            try:
                await self.store.txn([Compare.at(self.key, revision)], [Delete(self.key)])
            except Exception as exc:  # revoking the lease below deletes the key too
                log.warning("election %s: could not delete the leader key: %s", self.name, exc)
        await self._stop_term(revoke=True)

    async def close(self) -> None:
        """Resign if leading; release the lease."""
        await self.resign()

    async def _stop_term(self, *, revoke: bool) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            await keeper.stop(revoke=revoke)

    async def wait_lost(self) -> None:
        """Wait while this candidate leads; raise LeadershipLost when it no longer does."""
        await self.lost.wait()
        raise LeadershipLost(self.name, self.candidate_id)

    # --- looking -----------------------------------------------------------------------------------------
    async def leader(self) -> str | None:
        """The current leader's id, or ``None`` when the post is vacant."""
        kv = await self.store.get(self.key)
        return kv.value.decode() if kv is not None else None

    async def observe(self) -> AsyncIterator[str | None]:
        """The leader's id now and after every change (``None`` while vacant); never ends by itself."""
        last: object = object()  # a sentinel unequal to any id or None
        while True:
            page = await self.store.range(self.key)
            current = next((kv.value.decode() for kv in page.kvs if kv.key == self.key), None)
            if current != last:
                last = current
                yield current
            try:
                async with self.store.watch(self.key, start_revision=page.revision + 1) as watch:
                    async for event in watch:
                        if event.key != self.key:
                            continue
                        current = event.value.decode() if event.type is EventType.PUT else None
                        if current != last:
                            last = current
                            yield current
            except CompactedError:
                continue


def _discard(pending: asyncio.Future[Event] | None) -> None:
    """Drop a pending ``anext(watch)``: cancel it, and take whatever it ends with (closing the watch makes
    it end in StopAsyncIteration) so asyncio never reports an exception nobody retrieved."""
    if pending is None:
        return
    pending.cancel()
    pending.add_done_callback(lambda f: f.cancelled() or f.exception())
