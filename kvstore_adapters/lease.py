"""Keeping a lease alive from a background task, and saying when that failed.

A holder of a lease (a leader, an agent's registration) must stop acting on it once the store may have
expired it. :class:`LeaseKeeper` refreshes the lease every ``ttl / 3``; when the store says the lease is
gone, or when no refresh has succeeded for a whole TTL (the store unreachable), it sets :attr:`lost`.
``expires_at`` is measured from the moment the last successful refresh was *sent*, so it never claims more
time than the store grants.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType

from kvstore_adapters.base import KVStore, Lease
from kvstore_adapters.errors import LeaseNotFound

log = logging.getLogger(__name__)

#: Pause between retries while refreshes fail for other reasons than "lease gone".
RETRY_DELAY = 0.2


class LeaseKeeper:
    """Keeps ``lease`` alive until :meth:`stop`; sets :attr:`lost` (and calls ``on_lost``) if it cannot."""

    def __init__(
        self,
        store: KVStore,
        lease: Lease,
        *,
        interval: float | None = None,
        on_lost: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self.lease = lease
        self.interval = interval if interval is not None else max(lease.ttl / 3, 0.05)
        #: Set once the lease is (or may be) expired; it is never cleared: grant a new lease instead.
        self.lost = asyncio.Event()
        #: Why the lease was lost (LeaseNotFound, or the last error while the store was unreachable).
        self.error: BaseException | None = None
        self._on_lost = on_lost
        self._last_ok = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def grant(
        cls,
        store: KVStore,
        ttl: float,
        *,
        interval: float | None = None,
        on_lost: Callable[[BaseException], None] | None = None,
    ) -> LeaseKeeper:
        """Grant a new lease of ``ttl`` seconds and start keeping it alive."""
        sent = time.monotonic()
        lease = await store.grant_lease(ttl)
        keeper = cls(store, lease, interval=interval, on_lost=on_lost)
        keeper._last_ok = sent
        keeper.start()
        return keeper

    @property
    def expires_at(self) -> float:
        """``time.monotonic()`` after which the store may have expired the lease."""
        return self._last_ok + self.lease.ttl

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the refresh task (on the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"lease-keeper-{self.lease.id:x}"
            )

    async def stop(self, *, revoke: bool = False) -> None:
        """Stop refreshing; with ``revoke`` also end the lease now (its keys are deleted)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if revoke:
            try:
                await self.store.revoke_lease(self.lease)
            except Exception as exc:  # the lease then simply expires
                log.warning("could not revoke lease %x: %s", self.lease.id, exc)

    async def wait_lost(self) -> None:
        """Wait until the lease is lost, then raise LeaseNotFound."""
        await self.lost.wait()
        raise LeaseNotFound(self.lease.id) from self.error

    async def _run(self) -> None:
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            remaining = self.expires_at - time.monotonic()
            if remaining <= 0:
                self._mark_lost(self.error or TimeoutError("no successful keep-alive within the TTL"))
                return
            sent = time.monotonic()
            try:
                # Bounded by the time left: a refresh that hangs must not outlive the lease.
                await asyncio.wait_for(self.store.keep_alive(self.lease), remaining)
            except LeaseNotFound as exc:
                self._mark_lost(exc)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.error = exc
                log.warning("keep-alive of lease %x failed (%.1fs left): %s", self.lease.id, remaining, exc)
                delay = min(self.interval, RETRY_DELAY)
                continue
            self._last_ok = sent
            self.error = None
            delay = self.interval

    def _mark_lost(self, error: BaseException) -> None:
        self.error = error
        if self.lost.is_set():
            return
        log.warning("lease %x lost: %s", self.lease.id, error)
        self.lost.set()
        if self._on_lost is not None:
            try:
                self._on_lost(error)
            except Exception:
                log.exception("on_lost callback of lease %x failed", self.lease.id)

    async def __aenter__(self) -> LeaseKeeper:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
