"""Watches of the ZooKeeper adapter: one follower of the change log feeds every prefix watch of a client.

kazoo 2.11 has no persistent recursive watches, so a watch does not watch keys: the :class:`LogFollower`
follows the change log (zk_log.py) and hands each event to the watches whose prefix matches. Its cursor is
a sequence number, so resuming after a connection loss or a ZooKeeper restart continues exactly after the
last entry it handled: nothing lost, nothing repeated.

It does not list the log (thousands of names) at every change: the log znode's stat says which entry comes
next (see :func:`~kvstore_adapters.zk_log.next_entry_seq`), so the follower reads the entries from its
cursor up to that one and sets an *exists* watch on the next one's name: the next write creates exactly it.
An entry missing from that range was trimmed before the follower read it: its watches then end with
:class:`CompactedError`.

The follower keeps the latest events in memory, so a watch that starts a little in the past replays from
there; one that starts further back reads the log itself up to the follower's cursor, then continues with
what the follower handed it meanwhile.

A watch without a start revision starts after the revision of a read it queues on the client's session
when it is created, so it reports writes that complete after ``watch()`` returns and none before.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from kazoo.exceptions import NoNodeError
from kazoo.protocol.serialization import Exists, GetData

from kvstore_adapters.base import Event, Watch
from kvstore_adapters.errors import CompactedError, StoreUnavailable
from kvstore_adapters.zk_log import (
    BATCH,
    first_at_or_after,
    list_log,
    next_entry_seq,
    read_compacted,
    read_entries,
)
from kvstore_adapters.zk_wire import CONNECTION_ERRORS, submit

if TYPE_CHECKING:
    from kazoo.protocol.states import ZnodeStat

    from kvstore_adapters.zookeeper import ZooKeeperStore

log = logging.getLogger(__name__)

#: Recent events the follower keeps for watches that start slightly in the past.
RING = 2048
#: Pause before reading again after the store was unreachable.
RETRY_DELAY = 0.2


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve a result nobody may await any more (a closed watch's), so asyncio does not warn."""
    if not future.cancelled():
        future.exception()


class LogFollower:
    """Follows the change log for every watch of one store client."""

    def __init__(self, store: ZooKeeperStore) -> None:
        self.store = store
        self.watches: set[ZooKeeperWatch] = set()
        self._unplaced: list[ZooKeeperWatch] = []
        #: The last entry handled (None until the first read) and the revision everything up to it has.
        self.cursor_seq: int | None = None
        self.cursor_rev = 0
        self._ring: deque[tuple[int, Event]] = deque()
        #: Every event with a revision above this is in the ring (up to the cursor).
        self._ring_floor = 0
        self._log_czxid: int | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def register(self, watch: ZooKeeperWatch) -> None:
        """Start feeding ``watch`` (and the follower, if this is its first watch)."""
        self.watches.add(watch)
        if self._task is None:
            # Queued now, before the watch's own baseline read, so that read sees at least this position.
            store = self.store
            first = submit(store.client, GetData(store.layout.log, None), store.loop)
            self._task = store.loop.create_task(self._run(first), name="zk-log-follower")
        if self.cursor_seq is None:
            self._unplaced.append(watch)
        else:
            self._place(watch)

    def unregister(self, watch: ZooKeeperWatch) -> None:
        self.watches.discard(watch)
        with contextlib.suppress(ValueError):
            self._unplaced.remove(watch)
        if not self.watches:
            self.stop()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.store.follower_stopped(self)

    def _notify(self, _event: Any) -> None:
        """kazoo's watcher (on its callback thread): the log changed, or the connection did."""
        with contextlib.suppress(RuntimeError):
            self.store.loop.call_soon_threadsafe(self._wake.set)

    def _place(self, watch: ZooKeeperWatch) -> None:
        """Decide how ``watch`` gets the events it needs from before now (it gets later ones live)."""
        upto_seq, upto_rev = self.cursor_seq, self.cursor_rev
        assert upto_seq is not None
        start = watch.start
        if start is None:
            watch.deferred = (upto_seq, upto_rev)  # decided once its baseline read answers
        elif start <= upto_rev:
            if start > self._ring_floor:
                watch.preload(ev for rev, ev in self._ring if rev >= start)
            else:
                watch.read_history_upto(upto_seq)

    async def _run(self, first: asyncio.Future[tuple[Any, int]]) -> None:
        pending: asyncio.Future[tuple[Any, int]] | None = first
        first.add_done_callback(_consume)
        store, layout = self.store, self.store.layout
        while True:
            try:
                if pending is not None:
                    listing, pending = pending, None
                    try:
                        (_, log_stat), zxid = await listing
                    except CONNECTION_ERRORS:
                        continue
                else:
                    self._wake.clear()
                    (_, log_stat), zxid = await store.read(GetData(layout.log, None))
                following = await self._advance(log_stat, zxid)
                if following is None:
                    return
                # The next write creates exactly this entry: wait for it (or read again if it is there).
                exists, _ = await store.read(Exists(layout.entry_path(following), self._notify))
                if exists is None:
                    await self._wake.wait()
            except StoreUnavailable as exc:
                log.debug("change log unreachable (%s); retrying", exc)
                await asyncio.sleep(RETRY_DELAY)
            except NoNodeError:
                await store.ensure_structure()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("following the change log failed")
                self._fail_all(exc)
                return

    async def _advance(self, log_stat: ZnodeStat, zxid: int) -> int | None:
        """Hand out the entries after the cursor; returns the sequence number of the next entry, or None
        when the follower must stop (history lost)."""
        if self._log_czxid is None:
            self._log_czxid = log_stat.czxid
        elif log_stat.czxid != self._log_czxid:  # the whole prefix was deleted and made again
            self._fail_compacted(zxid)
            return None
        following = next_entry_seq(log_stat)
        top = following - 1
        if self.cursor_seq is None:
            self.cursor_seq = top
            self.cursor_rev = self._ring_floor = zxid
            unplaced, self._unplaced = self._unplaced, []
            for watch in unplaced:
                self._place(watch)
            return following
        for start in range(self.cursor_seq + 1, top + 1, BATCH):
            before = self.cursor_rev
            entries, missing = await read_entries(self.store, range(start, min(start + BATCH, top + 1)))
            if missing:  # entries after the cursor were trimmed before we read them
                floor, _ = await read_compacted(self.store)
                self._fail_compacted(max(floor, before))
                return None
            for seq, rev, event in entries:
                self._dispatch(seq, rev, event)
        self.cursor_seq = max(self.cursor_seq, top)
        self.cursor_rev = max(self.cursor_rev, zxid)
        if log_stat.numChildren > self.store.log_size + self.store.log_size // 4:
            self.store.schedule_trim()
        return following

    def _dispatch(self, seq: int, rev: int, event: Event) -> None:
        self.cursor_seq = seq
        self.cursor_rev = max(self.cursor_rev, rev)
        ring = self._ring
        ring.append((rev, event))
        if len(ring) > RING:
            self._ring_floor = max(self._ring_floor, ring.popleft()[0])
        for watch in self.watches:
            watch.offer(rev, event)

    def _fail_compacted(self, floor: int) -> None:
        for watch in self.watches:
            watch.fail_compacted(floor)
        self.watches.clear()
        self._unplaced.clear()
        self.store.follower_stopped(self)

    def _fail_all(self, exc: BaseException) -> None:
        for watch in self.watches:
            watch.fail(exc)
        self.watches.clear()
        self._unplaced.clear()
        self.store.follower_stopped(self)


class ZooKeeperWatch(Watch):
    """Changes under a prefix, fed by the client's :class:`LogFollower` (see the module docstring)."""

    def __init__(self, store: ZooKeeperStore, prefix: str, start_revision: int | None) -> None:
        self._store = store
        self._prefix = prefix
        #: First revision to deliver (None until the baseline read answers).
        self.start = start_revision
        #: Set by the follower: (cursor seq, cursor revision) to check against once ``start`` is known.
        self.deferred: tuple[int, int] | None = None
        #: Set by the follower: read the log up to this sequence number before the live events.
        self.history_upto: int | None = None
        self._history_task: asyncio.Task[None] | None = None
        self._history_error: BaseException | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._ready: deque[Event] = deque()
        self._live: deque[tuple[int, Event]] = deque()
        self._signal = asyncio.Event()
        self._error: BaseException | None = None
        self._compacted_at: int | None = None
        self._closed = False
        self._delivered = 0
        if store.client is None:
            self._error = StoreUnavailable("zookeeper", store.endpoints, "not connected")
            return
        self._follower = store.follower()
        self._follower.register(self)
        if start_revision is None:
            baseline = submit(store.client, Exists(store.layout.log, None), store.loop)
            self._start_task = asyncio.ensure_future(self._resolve_start(baseline))

    # --- fed by the follower -----------------------------------------------------------------------------
    def offer(self, rev: int, event: Event) -> None:
        if event.key.startswith(self._prefix):
            self._live.append((rev, event))
            self._signal.set()

    def preload(self, events: Any) -> None:
        prefix = self._prefix
        self._ready.extend(ev for ev in events if ev.key.startswith(prefix))
        self._signal.set()

    def read_history_upto(self, seq: int) -> None:
        """Read the log up to ``seq`` now, in the background: a trim could take it if read only later."""
        self.history_upto = seq
        if not self._closed:
            self._history_task = asyncio.ensure_future(self._read_history(seq))
        self._signal.set()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        self._signal.set()

    def fail_compacted(self, floor: int) -> None:
        self._compacted_at = floor
        self._signal.set()

    # --- consumed by the caller ------------------------------------------------------------------------
    async def __anext__(self) -> Event:
        if self._closed:
            raise StopAsyncIteration
        try:
            if self._start_task is not None:
                await asyncio.shield(self._start_task)
            while True:
                if self._ready:
                    return self._deliver(self._ready.popleft())
                history = self._history_task
                if history is not None and not history.done():
                    self._signal.clear()
                    await self._signal.wait()
                    continue
                if self._history_error is not None:
                    raise self._history_error
                start = self.start
                assert start is not None
                while self._live:
                    rev, event = self._live.popleft()
                    if rev >= start:
                        return self._deliver(event)
                if self._compacted_at is not None:
                    raise CompactedError(self._requested(), self._compacted_at)
                if self._error is not None:
                    raise self._error
                if self._closed:
                    raise StopAsyncIteration
                self._signal.clear()
                await self._signal.wait()
        except Exception:
            await self.close()  # an error ends the watch: the caller re-reads and watches again
            raise

    def _deliver(self, event: Event) -> Event:
        self._delivered = event.revision
        return event

    def _requested(self) -> int:
        return self._delivered + 1 if self._delivered else (self.start or 0)

    async def _resolve_start(self, baseline: asyncio.Future[tuple[Any, int]]) -> None:
        try:
            _, zxid = await baseline
        except CONNECTION_ERRORS:
            # Not answered before the connection dropped; "now" is then the first read that is answered.
            _, zxid = await self._store.read(Exists(self._store.layout.log, None))
        self.start = zxid + 1
        if self.deferred is not None:
            upto_seq, upto_rev = self.deferred
            self.deferred = None
            if self.start <= upto_rev:
                self.read_history_upto(upto_seq)

    async def _read_history(self, upto: int) -> None:
        """Read the log from ``start`` up to sequence ``upto`` into the ready queue (see the module
        docstring); a failure is kept for the caller, after the events read before it."""
        store, start, prefix = self._store, self.start, self._prefix
        assert start is not None
        try:
            floor, _ = await read_compacted(store)
            if start <= floor:
                raise CompactedError(start, floor)
            seqs, _, _ = await list_log(store)
            seqs = seqs[: bisect.bisect_right(seqs, upto)]
            seqs = seqs[await first_at_or_after(store, seqs, start) :]
            for index in range(0, len(seqs), BATCH):
                entries, missing = await read_entries(store, seqs[index : index + BATCH])
                if missing:  # listed a moment ago, gone now: trimmed
                    floor, _ = await read_compacted(store)
                    raise CompactedError(start, floor)
                self._ready.extend(ev for _, rev, ev in entries if rev >= start and ev.key.startswith(prefix))
                self._signal.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._history_error = exc
        finally:
            self._signal.set()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        follower = getattr(self, "_follower", None)
        if follower is not None:
            follower.unregister(self)
        for task in (self._start_task, self._history_task):
            if task is not None and not task.done():
                task.cancel()
        self._ready.clear()
        self._live.clear()
        self._signal.set()
