"""An in-process :class:`KVStore` with the semantics of etcd: one revision counter, per-key create/mod
revisions and versions, atomic transactions, watch history kept until :meth:`compact`, and leases that
expire on their own (the keys attached to them are deleted, and watches see the deletions).

``memory://`` gives a private store; ``memory://NAME`` gives the store called NAME, shared by every client in
the process that names it, so tests can run several managers against one store. It exists beside the real
backends (for unit tests and single-process demos), never instead of them.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from kvstore_adapters.base import (
    Compare,
    Delete,
    Event,
    EventType,
    KeyValue,
    KVStore,
    Lease,
    Op,
    Put,
    RangeResult,
    StoreInfo,
    StoreURL,
    TxnResult,
    Watch,
)
from kvstore_adapters.errors import CompactedError, LeaseNotFound, StoreUnavailable

_lease_ids = itertools.count(0x3A7E_0000_0001)


@dataclass(slots=True)
class _LeaseState:
    ttl: float
    deadline: float
    keys: set[str] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None


class MemoryBackend:
    """The shared state behind one or more :class:`MemoryStore` clients. Keys here are full keys."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.revision = 0
        #: Revisions before this one are compacted away (0: nothing compacted).
        self.compacted_before = 0
        self._data: dict[str, KeyValue] = {}
        self._sorted_keys: list[str] = []
        #: Every change since the last compaction, in revision order.
        self._history: deque[Event] = deque()
        self._watches: set[_MemoryWatch] = set()
        self._leases: dict[int, _LeaseState] = {}

    # --- reads -------------------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        self.expire_due()
        return self._data.get(key)

    def range(self, prefix: str, start_after: str | None, limit: int) -> tuple[list[KeyValue], bool]:
        self.expire_due()
        if start_after is not None and start_after >= prefix:
            i = bisect.bisect_right(self._sorted_keys, start_after)
        else:
            i = bisect.bisect_left(self._sorted_keys, prefix)
        out: list[KeyValue] = []
        while i < len(self._sorted_keys) and self._sorted_keys[i].startswith(prefix):
            if limit and len(out) == limit:
                return out, True
            out.append(self._data[self._sorted_keys[i]])
            i += 1
        return out, False

    # --- writes ------------------------------------------------------------------------------------------
    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> TxnResult:
        """Check, then apply one branch under a single new revision (no await: atomic by construction)."""
        self.expire_due()
        ok = all(self._mod_revision(c.key) == c.mod_revision for c in compares)
        ops = success if ok else failure
        self._check_ops(ops)
        self._apply(ops)
        return TxnResult(ok, self.revision)

    def delete_prefix(self, prefix: str) -> int:
        self.expire_due()
        keys = [kv.key for kv in self.range(prefix, None, 0)[0]]
        self._apply([Delete(k) for k in keys])
        return len(keys)

    def _mod_revision(self, key: str) -> int:
        kv = self._data.get(key)
        return kv.mod_revision if kv is not None else 0

    def _check_ops(self, ops: Sequence[Op]) -> None:
        seen: set[str] = set()
        for op in ops:
            if op.key in seen:
                # etcd refuses this too; accepting it here would hide the bug until production.
                raise ValueError(f"key {op.key!r} appears twice in one transaction")
            seen.add(op.key)
            if isinstance(op, Put) and op.lease is not None and op.lease not in self._leases:
                raise LeaseNotFound(op.lease)

    def _apply(self, ops: Iterable[Op]) -> None:
        """Apply ops (already checked) as one revision; a no-op batch does not advance the revision."""
        rev = self.revision + 1
        events: list[Event] = []
        for op in ops:
            old = self._data.get(op.key)
            if isinstance(op, Put):
                if old is None:
                    kv = KeyValue(op.key, op.value, rev, rev, 1, op.lease)
                    bisect.insort(self._sorted_keys, op.key)
                else:
                    kv = KeyValue(op.key, op.value, old.create_revision, rev, old.version + 1, op.lease)
                    self._detach(old)
                self._data[op.key] = kv
                if op.lease is not None:
                    self._leases[op.lease].keys.add(op.key)
                events.append(Event(EventType.PUT, op.key, op.value, rev))
            elif old is not None:
                self._detach(old)
                del self._data[op.key]
                del self._sorted_keys[bisect.bisect_left(self._sorted_keys, op.key)]
                events.append(Event(EventType.DELETE, op.key, b"", rev))
        if not events:
            return
        self.revision = rev
        self._history.extend(events)
        for watch in list(self._watches):
            watch.offer(events)

    def _detach(self, kv: KeyValue) -> None:
        if kv.lease is not None and (state := self._leases.get(kv.lease)) is not None:
            state.keys.discard(kv.key)

    # --- history -----------------------------------------------------------------------------------------
    def compact(self, revision: int) -> None:
        self.expire_due()
        if revision > self.revision:
            raise ValueError(f"cannot compact to revision {revision}: the store is at {self.revision}")
        if revision <= self.compacted_before:
            return
        self.compacted_before = revision
        while self._history and self._history[0].revision < revision:
            self._history.popleft()

    def add_watch(self, watch: _MemoryWatch, start_revision: int | None) -> None:
        """Register ``watch`` and hand it the history it asked for, in one step so nothing falls between."""
        self.expire_due()
        if start_revision is not None:
            if start_revision < self.compacted_before:
                watch.fail(CompactedError(start_revision, self.compacted_before - 1))
                return
            watch.offer(ev for ev in self._history if ev.revision >= start_revision)
        self._watches.add(watch)

    def remove_watch(self, watch: _MemoryWatch) -> None:
        self._watches.discard(watch)

    # --- leases ------------------------------------------------------------------------------------------
    def grant_lease(self, ttl: float) -> Lease:
        self.expire_due()
        if ttl <= 0:
            raise ValueError(f"lease TTL must be positive, not {ttl}")
        lease_id = next(_lease_ids)
        state = _LeaseState(ttl, time.monotonic() + ttl)
        self._leases[lease_id] = state
        self._arm(lease_id, state)
        return Lease(lease_id, ttl)

    def keep_alive(self, lease_id: int) -> None:
        self.expire_due()
        state = self._leases.get(lease_id)
        if state is None:
            raise LeaseNotFound(lease_id)
        state.deadline = time.monotonic() + state.ttl
        self._arm(lease_id, state)

    def revoke_lease(self, lease_id: int) -> None:
        self.expire_due()
        self._revoke(lease_id)

    def _revoke(self, lease_id: int) -> None:
        state = self._leases.pop(lease_id, None)
        if state is None:
            return
        if state.timer is not None:
            state.timer.cancel()
        self._apply([Delete(k) for k in sorted(state.keys)])

    def lease_ids(self) -> list[int]:
        self.expire_due()
        return list(self._leases)

    def _arm(self, lease_id: int, state: _LeaseState) -> None:
        """Schedule the expiry on the running loop so keys vanish (and watches hear of it) on time,
        even when nobody touches the store."""
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the next operation expires it (expire_due)
        state.timer = loop.call_later(max(0.0, state.deadline - time.monotonic()) + 0.001, self.expire_due)

    def expire_due(self) -> None:
        """Revoke every lease whose deadline has passed. Each operation calls this first, so expiry is
        exact even when the loop that armed a lease's timer is gone."""
        now = time.monotonic()
        for lease_id in [i for i, s in self._leases.items() if s.deadline <= now]:
            self._revoke(lease_id)


class _MemoryWatch(Watch):
    """A watch on a :class:`MemoryBackend`: events are copied into its own buffer when they happen."""

    def __init__(self, store: MemoryStore, full_prefix: str, start_revision: int | None) -> None:
        self._store = store
        self._prefix = full_prefix
        self._start = start_revision
        self._buffer: deque[Event] = deque()
        self._error: BaseException | None = None
        self._closed = False
        self._wakeup = asyncio.Event()
        store.memory_backend.add_watch(self, start_revision)

    def offer(self, events: Iterable[Event]) -> None:
        """Take the events under this watch's prefix, from its start revision on."""
        if self._closed:
            return
        start = self._start or 0
        added = False
        for ev in events:
            if ev.revision >= start and ev.key.startswith(self._prefix):
                self._buffer.append(replace(ev, key=self._store.relative(ev.key)))
                added = True
        if added:
            self._wakeup.set()

    def fail(self, error: BaseException) -> None:
        """End the watch with ``error`` once buffered events are consumed."""
        self._error = error
        self._wakeup.set()

    async def __anext__(self) -> Event:
        while True:
            if self._buffer:
                return self._buffer.popleft()
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer.clear()
        self._store.memory_backend.remove_watch(self)
        self._store._watches.discard(self)
        self._wakeup.set()


class MemoryStore(KVStore):
    """A client of an in-process :class:`MemoryBackend`."""

    backend = "memory"
    #: Named backends shared within the process (``memory://NAME``); they live as long as the process.
    _shared: dict[str, MemoryBackend] = {}

    def __init__(self, name: str = "", prefix: str = "") -> None:
        self.name = name
        self._backend = self._shared.setdefault(name, MemoryBackend(name)) if name else MemoryBackend()
        self.prefix = prefix.strip("/")
        self._root = f"{self.prefix}/" if self.prefix else ""
        self._connected = False
        self._closed = False
        self._watches: set[_MemoryWatch] = set()

    @classmethod
    def from_url(cls, url: StoreURL) -> MemoryStore:
        return cls(url.params.get("name", ""), url.prefix)

    @classmethod
    def drop_shared(cls, name: str) -> None:
        """Forget the shared store ``name`` (clients still holding it keep it)."""
        cls._shared.pop(name, None)

    @property
    def memory_backend(self) -> MemoryBackend:
        """The shared state this client works on."""
        return self._backend

    def info(self) -> StoreInfo:
        return StoreInfo("memory", f"memory://{self.name}", self.prefix)

    # --- connection ----------------------------------------------------------------------------------
    async def connect(self) -> None:
        if self._closed:
            raise StoreUnavailable("memory", f"memory://{self.name}", "client is closed")
        self._connected = True

    async def close(self) -> None:
        self._closed = True
        self._connected = False
        for watch in list(self._watches):
            await watch.close()

    def _live(self) -> MemoryBackend:
        if not self._connected:
            reason = "client is closed" if self._closed else "client is not connected (call connect())"
            raise StoreUnavailable("memory", f"memory://{self.name}", reason)
        return self._backend

    def full(self, key: str) -> str:
        """The backend key of ``key`` (under this client's prefix)."""
        return self._root + key

    def relative(self, full_key: str) -> str:
        """The client key of a backend key under this client's prefix."""
        return full_key[len(self._root):]

    def _rel_kv(self, kv: KeyValue) -> KeyValue:
        return replace(kv, key=self.relative(kv.key)) if self._root else kv

    # --- reads ---------------------------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        kv = self._live().get(self.full(key))
        return self._rel_kv(kv) if kv is not None else None

    async def range(self, prefix: str, *, start_after: str | None = None, limit: int = 0) -> RangeResult:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        backend = self._live()
        after = self.full(start_after) if start_after is not None else None
        kvs, more = backend.range(self.full(prefix), after, limit)
        return RangeResult(tuple(self._rel_kv(kv) for kv in kvs), backend.revision, more)

    async def revision(self) -> int:
        backend = self._live()
        backend.expire_due()
        return backend.revision

    # --- writes --------------------------------------------------------------------------------------
    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        return self._live().txn((), (Put(self.full(key), bytes(value), lease),), ()).revision

    async def delete(self, key: str) -> bool:
        backend = self._live()
        existed = backend.get(self.full(key)) is not None
        backend.txn((), (Delete(self.full(key)),), ())
        return existed

    async def delete_prefix(self, prefix: str) -> int:
        return self._live().delete_prefix(self.full(prefix))

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        return self._live().txn(
            [Compare(self.full(c.key), c.mod_revision) for c in compares],
            [self._full_op(op) for op in success],
            [self._full_op(op) for op in failure],
        )

    def _full_op(self, op: Op) -> Op:
        if isinstance(op, Put):
            return Put(self.full(op.key), bytes(op.value), op.lease)
        return Delete(self.full(op.key))

    # --- history -------------------------------------------------------------------------------------
    def watch(self, prefix: str, *, start_revision: int | None = None) -> Watch:
        self._live()
        watch = _MemoryWatch(self, self.full(prefix), start_revision)
        self._watches.add(watch)
        return watch

    async def compact(self, revision: int) -> None:
        self._live().compact(revision)

    # --- leases --------------------------------------------------------------------------------------
    async def grant_lease(self, ttl: float) -> Lease:
        return self._live().grant_lease(ttl)

    async def keep_alive(self, lease: Lease) -> None:
        self._live().keep_alive(lease.id)

    async def revoke_lease(self, lease: Lease) -> None:
        self._live().revoke_lease(lease.id)


__all__ = ["MemoryBackend", "MemoryStore"]
