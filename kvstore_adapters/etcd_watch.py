"""The etcd watch: one gRPC Watch stream per :class:`EtcdWatch`, re-created after any loss.

The watch remembers the revision after the last event it took from etcd (``_next``). Whenever its stream
breaks — the member went away, the store moved to another endpoint, etcd restarted — it waits (growing
backoff, so a dead cluster costs a few wake-ups per second at most), opens a new stream from ``_next`` and
drops any event older than that, so the consumer sees every change exactly once and in order. etcd sends
all the events of one revision in one reply (we never ask for fragments), so a revision is never half
taken.

An idle watch also advances ``_next`` on etcd's progress notifications, so a reconnection after a
compaction does not fail for want of history that held nothing for this prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from aetcd import rpc

from kvstore_adapters.base import Event, EventType, Watch
from kvstore_adapters.errors import CompactedError, KVError

if TYPE_CHECKING:
    from kvstore_adapters.etcd import EtcdStore
    from kvstore_adapters.etcd_channel import Endpoint

__all__ = ["EtcdWatch"]

_PUT = EventType.PUT
_DELETE = EventType.DELETE
_ETCD_DELETE = rpc.Event.DELETE

# Codes that mean "this stream is gone, another may work"; anything else is the caller's problem.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
_MIN_BACKOFF = 0.05
_MAX_BACKOFF = 2.0


class EtcdWatch(Watch):
    """Events under one key range of an :class:`EtcdStore`, resumed across connection losses."""

    def __init__(self, store: EtcdStore, key: bytes, range_end: bytes, start_revision: int | None) -> None:
        self._store = store
        self._key = key
        self._range_end = range_end
        self._root_len = store._root_len
        # None until etcd names its current revision when the watch is first created ("from now on").
        self._next: int | None = None if start_revision is None else max(start_revision, 1)
        self._buffer: deque[Event] = deque()
        self._call: Any = None
        self._endpoint: Endpoint | None = None
        self._closed = False
        self._wakeup = asyncio.Event()
        self._backoff = _MIN_BACKOFF

    @property
    def next_revision(self) -> int | None:
        """The revision the watch would resume from (``None`` until etcd named one)."""
        return self._next

    async def __anext__(self) -> Event:
        """The next event; reconnects as long as it takes, until the watch is closed."""
        if self._buffer:
            return self._buffer.popleft()
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._call is None:
                if not await self._open():
                    await self._sleep()
                continue  # close() may have come while the stream was being opened
            try:
                resp = await self._call.read()
            except asyncio.CancelledError:
                if self._closed:  # close() cancelled the call under us
                    raise StopAsyncIteration from None
                raise
            except grpc.aio.AioRpcError as err:
                if self._closed:
                    raise StopAsyncIteration from None
                self._lost(err)
                await self._sleep()
                continue
            if resp is grpc.aio.EOF:
                self._lost(None)
                await self._sleep()
                continue
            self._take(resp)
            if self._buffer:
                return self._buffer.popleft()
            if self._call is None:  # etcd cancelled the watch: retry, but not at once
                await self._sleep()

    def _take(self, resp: Any) -> None:
        """Queue the events of one reply that are new to us."""
        if resp.compact_revision:
            self._compacted(int(resp.compact_revision))
            return
        if resp.canceled:
            self._cancelled(str(resp.cancel_reason))
            return
        events = resp.events
        if not events:
            # A progress notification: nothing at or below header.revision remains for this range.
            revision = int(resp.header.revision)
            if self._next is None or revision >= self._next:
                self._next = revision + 1
            return
        threshold = self._next or 0
        root_len = self._root_len
        append = self._buffer.append
        last = threshold - 1
        for ev in events:
            kv = ev.kv
            last = kv.mod_revision
            if last < threshold:
                continue  # seen before the stream was re-created
            if ev.type == _ETCD_DELETE:
                append(Event(_DELETE, kv.key[root_len:].decode(), b"", last))
            else:
                append(Event(_PUT, kv.key[root_len:].decode(), kv.value, last))
        if last + 1 > threshold:
            self._next = last + 1

    def _compacted(self, compact_revision: int) -> None:
        requested = self._next or 0
        self._drop_call()
        self._closed = True
        # etcd keeps compact_revision itself; the error names the last revision that is gone.
        raise CompactedError(requested, compact_revision - 1)

    def _cancelled(self, reason: str) -> None:
        self._drop_call()
        if "permission denied" in reason or "auth" in reason:
            self._closed = True
            raise KVError(f"etcd cancelled the watch on {self._key!r}: {reason}")
        # Any other cancellation (leader change, server shutting down…) is retried like a lost stream.

    async def _open(self) -> bool:
        """Open a stream and create the watch on it; False (after noting the failure) if that fails."""
        store = self._store
        ep, metadata = store._watch_target()  # StoreUnavailable if the store was never connected
        create = rpc.WatchCreateRequest(
            key=self._key, range_end=self._range_end, start_revision=self._next or 0, progress_notify=True
        )
        call = ep.watch.Watch(metadata=metadata)
        self._call = call
        self._endpoint = ep
        try:
            await call.write(rpc.WatchRequest(create_request=create))
            resp = await asyncio.wait_for(call.read(), store._timeout)
        except asyncio.CancelledError:
            if self._closed:
                return False
            self._drop_call()
            raise
        except (grpc.aio.AioRpcError, TimeoutError, grpc.aio.UsageError) as err:
            if self._closed:
                return False
            if isinstance(err, grpc.aio.AioRpcError):
                if err.code() not in _TRANSIENT and err.code() is not grpc.StatusCode.UNAUTHENTICATED:
                    self._drop_call()
                    self._closed = True
                    raise store._error(err, "Watch") from err
                if err.code() is grpc.StatusCode.UNAUTHENTICATED:
                    self._drop_call()
                    await store._renew_token(ep)
                    return False
            self._lost(err if isinstance(err, grpc.aio.AioRpcError) else None)
            return False
        if resp is grpc.aio.EOF:
            self._lost(None)
            return False
        if resp.created and not resp.compact_revision and not resp.canceled:
            if self._next is None:
                self._next = int(resp.header.revision) + 1
            self._backoff = _MIN_BACKOFF
            return True
        self._take(resp)  # compacted (raises) or cancelled
        return False

    def _lost(self, err: grpc.aio.AioRpcError | None) -> None:
        ep = self._endpoint
        self._drop_call()
        if ep is not None and (err is None or err.code() in _TRANSIENT):
            self._store._endpoint_failed(ep)

    def _drop_call(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    async def _sleep(self) -> None:
        """Wait before the next attempt; close() cuts the wait short."""
        delay = self._backoff * (0.5 + random.random() / 2)
        self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), delay)

    async def close(self) -> None:
        """Stop watching; a pending ``__anext__`` ends with StopAsyncIteration. Safe to call twice."""
        self._closed = True
        self._wakeup.set()
        self._buffer.clear()
        self._drop_call()
        self._store._watches.discard(self)
