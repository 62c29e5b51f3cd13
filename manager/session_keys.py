"""A manager's lease and the keys it holds on it: its own address and one key per connected agent.

``managers/<manager id>`` advertises where agents can reach this manager; ``sessions/<node id>`` says the
node has a session here (manager/nodes.py reads both). Both hang on one lease that a
:class:`~kvstore_adapters.lease.LeaseKeeper` keeps alive, so they all vanish when the manager dies.

If the lease is lost while the manager lives (the store was unreachable for a whole TTL), a new lease is
taken and every live session's key is put back — unless another manager put the node's key meanwhile
(the agent failed over): then this manager's session is stale and is ended. A session's key is deleted
conditionally on the revision this manager put it at, for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgpack

from api.session import ErrorCode
from kvstore_adapters import Compare, Delete, KVError, KVStore, LeaseNotFound, Put
from kvstore_adapters.lease import LeaseKeeper
from manager.errors import ManagerError
from manager.nodes import MANAGERS_PREFIX, SessionRecord, manager_key, session_key

log = logging.getLogger(__name__)


class SessionUnavailable(ManagerError):
    """The manager cannot hold a session now (no lease: the store is unreachable)."""

    code = ErrorCode.UNAVAILABLE


class SessionKeys:
    """This manager's lease, its advertised address and its agents' session keys."""

    def __init__(
        self,
        kv: KVStore,
        manager_id: str,
        *,
        ttl: Callable[[], float],
        on_stale: Callable[[str, str], None],
        addr: str = "",
    ) -> None:
        self.kv = kv
        self.manager_id = manager_id
        self.addr = addr
        self._ttl = ttl
        self._on_stale = on_stale
        #: node id → (session id, revision its key was put at).
        self._held: dict[str, tuple[str, int]] = {}
        self._keeper: LeaseKeeper | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._addrs_cache: tuple[float, tuple[str, ...]] = (0.0, ())

    def start(self) -> None:
        """Take a lease and keep one, in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._keep(), name="session-lease")

    async def stop(self, *, revoke: bool = True) -> None:
        """Stop keeping the lease; ``revoke`` ends it now (every key on it vanishes)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        keeper, self._keeper = self._keeper, None
        self._ready.clear()
        if keeper is not None:
            await keeper.stop(revoke=revoke)

    async def _keep(self) -> None:
        delay = 0.1
        while True:
            try:
                keeper = await LeaseKeeper.grant(self.kv, self._ttl())
            except Exception as e:
                log.warning("cannot get a lease for agent sessions: %s; retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            self._keeper = keeper
            try:
                await self.advertise()
                for node_id, (session_id, _) in list(self._held.items()):
                    await self._reclaim(node_id, session_id, keeper.lease.id)
            except KVError as e:
                log.warning("could not republish sessions on a new lease: %s", e)
            self._ready.set()
            await keeper.lost.wait()
            log.warning("lease of manager %s lost; taking a new one", self.manager_id)
            self._ready.clear()
            await keeper.stop()
            self._keeper = None

    async def _lease(self, timeout: float) -> int:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise SessionUnavailable("the manager cannot reach the store") from None
        assert self._keeper is not None
        return self._keeper.lease.id

    async def advertise(self) -> None:
        """Put (again) this manager's address on the lease."""
        if self.addr and self._keeper is not None:
            value = msgpack.packb({"addr": self.addr, "manager_id": self.manager_id}, use_bin_type=True)
            await self.kv.put(manager_key(self.manager_id), value, lease=self._keeper.lease.id)

    def _record(self, node_id: str, session_id: str, silent_for: float = 0.0) -> bytes:
        record = SessionRecord(node_id, self.manager_id, session_id, self.addr, time.time(), silent_for)
        return record.encode()

    async def put(self, node_id: str, session_id: str, *, timeout: float) -> int:
        """Say the node has a session here now; returns the write's revision. Raises SessionUnavailable."""
        for _ in range(3):
            lease = await self._lease(timeout)
            try:
                rev = await self.kv.put(session_key(node_id), self._record(node_id, session_id), lease=lease)
            except LeaseNotFound:
                # Expired under us: make the keeper take a new one, then try again on it.
                self._ready.clear()
                if self._keeper is not None:
                    self._keeper.lost.set()
                continue
            except KVError as e:
                raise SessionUnavailable(f"store unavailable: {e}") from None
            self._held[node_id] = (session_id, rev)
            return rev
        raise SessionUnavailable("could not attach the session to a lease")

    async def _reclaim(self, node_id: str, session_id: str, lease: int) -> None:
        key = session_key(node_id)
        current = await self.kv.get(key)
        if current is None:
            compare = Compare.absent(key)
        else:
            record = SessionRecord.decode(current.value)
            if record is None or record.session_id != session_id:
                self._held.pop(node_id, None)
                self._on_stale(node_id, session_id)  # the agent moved on to another manager
                return
            compare = Compare.at(key, current.mod_revision)
        result = await self.kv.txn([compare], [Put(key, self._record(node_id, session_id), lease)])
        if result.succeeded:
            self._held[node_id] = (session_id, result.revision)

    async def release(self, node_id: str, session_id: str, *, silent_for: float = 0.0) -> None:
        """The node's session here ended: delete its key, unless someone else's key replaced it.

        ``silent_for``: the session ended because nothing came from the agent for that long; the key says
        so before it goes (manager/nodes.py counts the node's absence from then, not from now).
        """
        held = self._held.get(node_id)
        if held is None or held[0] != session_id:
            return
        del self._held[node_id]
        key = session_key(node_id)
        revision = held[1]
        keeper = self._keeper
        if silent_for > 0 and keeper is not None:
            with contextlib.suppress(KVError):
                marked = await self.kv.txn(
                    [Compare.at(key, revision)],
                    [Put(key, self._record(node_id, session_id, silent_for), keeper.lease.id)],
                )
                if not marked.succeeded:
                    return  # another manager's key replaced ours: the agent is alive elsewhere
                revision = marked.revision
        for attempt in range(3):
            try:
                await self.kv.txn([Compare.at(key, revision)], [Delete(key)])
                return
            except KVError as e:
                if attempt == 2:
                    log.error("could not delete the session key of node %s: %s", node_id, e)
                    return
                await asyncio.sleep(0.2)

    async def manager_addrs(self) -> tuple[str, ...]:
        """Every manager's address, this one first (read at most once a second)."""
        at, cached = self._addrs_cache
        if time.monotonic() - at < 1.0 and cached:
            return cached
        addrs = [self.addr] if self.addr else []
        try:
            async for kv in self.kv.iter_prefix(MANAGERS_PREFIX):
                with contextlib.suppress(Exception):
                    addr = str(msgpack.unpackb(kv.value, raw=False)["addr"])
                    if addr and addr not in addrs:
                        addrs.append(addr)
        except KVError as e:
            log.warning("could not list managers: %s", e)
        self._addrs_cache = (time.monotonic(), tuple(addrs))
        return tuple(addrs)
