"""Leases of the ZooKeeper adapter: a lease is a ZooKeeper session of its own.

:meth:`LeaseManager.grant` opens a new session whose timeout is the TTL (the server clamps it between its
``minSessionTimeout`` and ``maxSessionTimeout``) and, with it, creates in one multi-op the lease's
registry ``lease-keys/<id>`` and its *holder* ``leases/<id>``, an ephemeral znode of that session. The
lease id is the session id. kazoo pings a live session by itself, so the TTL is also enforced here: a lease
not kept alive within its TTL is ended by this client (session closed, keys deleted).

Keys put with a lease are ordinary (persistent) znodes whose value header names the lease; the writing
multi also checks that the holder exists (so no key can be attached to a dead lease) and records the key in
the registry. When a lease ends — revoked, not kept alive, or its session expired on the server because the
process died — some client deletes its keys in multi-ops that append DELETE entries to the change log,
like any delete: watches see the deletions, with the revision of those writes. Every client runs a
*janitor* that watches ``leases/`` and reaps the keys of any lease whose holder is gone. So expired keys go
as soon as ZooKeeper expires the session and at least one client of the prefix is connected; a client that
connects later reaps what expired while none was.

Ephemeral znodes are deliberately not used for the keys themselves: ZooKeeper deletes them without a log
entry (watches would miss the deletion) and re-attaching a key to another lease would have to recreate it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kazoo.client import KazooState
from kazoo.exceptions import NoNodeError
from kazoo.protocol.serialization import (
    CheckVersion,
    Create,
    Delete,
    Exists,
    GetChildren,
    GetData,
    SetData,
    Sync,
)

from kvstore_adapters.base import EventType, Lease
from kvstore_adapters.errors import KVError, LeaseNotFound, StoreUnavailable
from kvstore_adapters.zk_layout import decode_key_name, lease_of_name, pack_event, unpack_value
from kvstore_adapters.zk_txn import ACL, SEQUENTIAL
from kvstore_adapters.zk_wire import CONNECTION_ERRORS, Multi, first_failure, submit

if TYPE_CHECKING:
    from kvstore_adapters.zookeeper import ZooKeeperStore

log = logging.getLogger(__name__)

EPHEMERAL = 1
#: Keys deleted per multi-op when a lease ends.
REAP_BATCH = 200
#: Seconds before the janitor tries again after reaping failed (the store was unreachable).
REAP_RETRY = 2.0
#: A logger outside the logging tree that keeps only errors, for kazoo clients being abandoned.
_QUIET = logging.Logger("kvstore_adapters.zk_leases.abandoned", logging.ERROR)


@dataclass(eq=False)
class _Held:
    """A lease this client granted: its session and the deadline of the next keep-alive."""

    lease: Lease
    client: Any
    deadline: float
    timer: asyncio.TimerHandle | None = None
    ending: asyncio.Task[None] | None = None

    @property
    def dead(self) -> bool:
        return self.ending is not None


class LeaseManager:
    """The leases of one store client, and the janitor that reaps expired leases of anyone."""

    def __init__(self, store: ZooKeeperStore) -> None:
        self.store = store
        self._held: dict[int, _Held] = {}
        self._reaping: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._janitor: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False

    # --- the KVStore lease calls -------------------------------------------------------------------------
    async def grant(self, ttl: float) -> Lease:
        if ttl <= 0:
            raise ValueError(f"a lease needs a positive TTL, not {ttl}")
        store, layout, loop = self.store, self.store.layout, self.store.loop
        client = store.new_client(ttl)
        try:
            await asyncio.to_thread(client.start, store.connect_timeout)
        except Exception as exc:
            await asyncio.to_thread(_stop_client, client)
            raise StoreUnavailable(
                "zookeeper", store.endpoints, f"cannot open a lease session: {exc}"
            ) from exc
        session_id = int(client.client_id[0])
        ops = [
            Create(layout.lease_keys_dir(session_id), b"", ACL, 0),
            Create(layout.holder_path(session_id), repr(ttl).encode(), ACL, EPHEMERAL),
        ]
        try:
            results, _ = await submit(client, Multi(ops), loop)
            if (failed := first_failure(results)) is not None and isinstance(failed[1], NoNodeError):
                await store.ensure_structure()
                results, _ = await submit(client, Multi(ops), loop)
        except CONNECTION_ERRORS as exc:
            await asyncio.to_thread(_stop_client, client)
            raise StoreUnavailable("zookeeper", store.endpoints, "connection lost granting a lease") from exc
        if (failed := first_failure(results)) is not None:
            await asyncio.to_thread(_stop_client, client)
            raise KVError(f"zookeeper: cannot register lease {session_id:x}: {failed[1]!r}")
        held = _Held(Lease(session_id, ttl), client, loop.time() + ttl)
        held.timer = loop.call_at(held.deadline, self._expire, held)
        client.add_listener(self._listener(held))
        self._held[session_id] = held
        return held.lease

    async def keep_alive(self, lease: Lease) -> None:
        loop = self.store.loop
        now = loop.time()
        held = self._held.get(lease.id)
        if held is not None and (held.dead or now > held.deadline):
            await self._end(held)
            raise LeaseNotFound(lease.id)
        # The holder is the truth: another client may have revoked the lease behind our back.
        stat, _ = await self.store.read(_exists(self.store.layout.holder_path(lease.id)))
        if stat is None:
            if held is not None:
                await self._end(held)
            raise LeaseNotFound(lease.id)
        if held is not None and not held.dead:
            held.deadline = now + held.lease.ttl
            if held.timer is not None:
                held.timer.cancel()
            held.timer = loop.call_at(held.deadline, self._expire, held)

    async def revoke(self, lease: Lease) -> None:
        held = self._held.get(lease.id)
        if held is not None:
            await self._end(held)
            return
        # Not ours (or already ended): remove its holder, so its owner can attach nothing more, and reap.
        await self.store.write_each([Delete(self.store.layout.holder_path(lease.id), -1)])
        await self.reap(lease.id)

    def check_usable(self, lease_id: int) -> None:
        """Raise LeaseNotFound at once for a lease this client knows is over (others: the holder check)."""
        held = self._held.get(lease_id)
        if held is not None and (held.dead or self.store.loop.time() > held.deadline):
            self._spawn(self._end(held))
            raise LeaseNotFound(lease_id)

    # --- ending leases -----------------------------------------------------------------------------------
    def _expire(self, held: _Held) -> None:
        if not held.dead:
            log.info("lease %x was not kept alive within %ss: ending it", held.lease.id, held.lease.ttl)
            self._spawn(self._end(held))

    def _listener(self, held: _Held) -> Callable[[str], None]:
        loop = self.store.loop

        def on_state(state: str) -> None:  # on kazoo's connection thread
            if state == KazooState.LOST:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._session_lost, held)

        return on_state

    def _session_lost(self, held: _Held) -> None:
        if not held.dead and not self._closing:
            log.warning("the session of lease %x expired", held.lease.id)
            self._spawn(self._end(held))

    async def _end(self, held: _Held) -> None:
        """Close the lease's session (its holder vanishes) and delete its keys; once, however often called."""
        if held.ending is None:
            held.ending = asyncio.ensure_future(self._close_and_reap(held))
        await asyncio.shield(held.ending)

    async def _close_and_reap(self, held: _Held) -> None:
        if held.timer is not None:
            held.timer.cancel()
        await asyncio.to_thread(_stop_client, held.client)
        self._held.pop(held.lease.id, None)
        await self.reap(held.lease.id)

    async def reap(self, lease_id: int) -> None:
        """Delete the keys of a lease whose holder is gone (a no-op while it lives)."""
        task = self._reaping.get(lease_id)
        if task is None:
            task = asyncio.ensure_future(self._reap(lease_id))
            self._reaping[lease_id] = task
            task.add_done_callback(lambda _t: self._reaping.pop(lease_id, None))
        await asyncio.shield(task)

    async def _reap(self, lease_id: int) -> None:
        store, layout = self.store, self.store.layout
        holder = layout.holder_path(lease_id)
        # In an ensemble this client's server may lag the leader: let it catch up before looking.
        await store.read(Sync(holder))
        stat, _ = await store.read(_exists(holder))
        if stat is not None:
            return
        keys_dir = layout.lease_keys_dir(lease_id)
        try:
            names, _ = await store.read(GetChildren(keys_dir, None))
        except NoNodeError:
            return
        keys = [decode_key_name(n) for n in names]
        for start in range(0, len(keys), REAP_BATCH):
            await self._reap_keys(lease_id, keys[start : start + REAP_BATCH])
        await store.write_each([Delete(f"{keys_dir}/{n}", -1) for n in names])
        await store.write_each([Delete(keys_dir, -1)])

    async def _reap_keys(self, lease_id: int, keys: list[str]) -> None:
        """Delete those of ``keys`` still attached to the lease, with their DELETE log entries."""
        store, layout = self.store, self.store.layout
        for _ in range(20):
            paths = [store.key_path(k) for k in keys]
            # The epoch first: if it has not moved at commit, no key was deleted and re-created meanwhile.
            reads = [GetData(layout.epoch, None), *(GetData(p, None) for p in paths)]
            results = await store.multi_read(reads)
            epoch = results[0][1].version
            victims = [
                (key, path, result[1].version)
                for key, path, result in zip(keys, paths, results[1:], strict=True)
                if not isinstance(result, BaseException) and unpack_value(result[0])[1] == lease_id
            ]
            if not victims:
                return
            ops: list[Any] = [CheckVersion(layout.epoch, epoch)]
            ops += [Delete(path, version) for _, path, version in victims]
            ops.append(SetData(layout.epoch, b"", -1))
            for key, _, _ in victims:
                ops.append(Create(layout.log_entry, pack_event(EventType.DELETE, key), ACL, SEQUENTIAL))
            outcome, _ = await store.write_multi(ops)
            if first_failure(outcome) is None:
                store.note_epoch(outcome[len(victims) + 1].version)
                for _, path, _ in victims:
                    store.known[path] = None
                return
        log.warning("lease %x: its keys kept changing; some may remain", lease_id)

    # --- the janitor ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._janitor = asyncio.ensure_future(self._watch_holders())

    def _notify(self, _event: Any) -> None:
        with contextlib.suppress(RuntimeError):
            self.store.loop.call_soon_threadsafe(self._wake.set)

    async def _watch_holders(self) -> None:
        """Reap the keys of every lease whose holder vanished (see the module docstring)."""
        store, layout = self.store, self.store.layout
        while True:
            try:
                self._wake.clear()
                # Registries first: a lease granted between the two reads then has a holder, never the
                # reverse (grant creates both in one multi-op).
                registries, _ = await store.read(GetChildren(layout.lease_keys, None))
                holders, _ = await store.read(GetChildren(layout.holders, self._notify))
                alive = {lease_of_name(n) for n in holders}
                for lease_id in {lease_of_name(n) for n in registries} - alive:
                    if lease_id is not None and lease_id not in self._reaping:
                        self._spawn(self.reap(lease_id))
                await self._wake.wait()
            except StoreUnavailable:
                await asyncio.sleep(0.5)
            except NoNodeError:
                await store.ensure_structure()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease janitor failed; retrying")
                await asyncio.sleep(1.0)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("ending or reaping a lease failed (retrying soon): %s", exc)
            if not self._closing:  # the janitor looks for leases to reap again
                self.store.loop.call_later(REAP_RETRY, self._wake.set)

    async def close(self) -> None:
        """Stop the janitor; leave this client's leases to expire on the server (close does not revoke)."""
        self._closing = True
        if self._janitor is not None:
            self._janitor.cancel()
        for task in (*self._tasks, *self._reaping.values()):
            task.cancel()
        held, self._held = list(self._held.values()), {}
        for h in held:
            if h.timer is not None:
                h.timer.cancel()
        await asyncio.gather(*(asyncio.to_thread(_abandon, h.client) for h in held if not h.dead))


def _exists(path: str) -> Any:
    return Exists(path, None)


def _stop_client(client: Any) -> None:
    """Close a kazoo client and its session (on a worker thread: it blocks)."""
    with contextlib.suppress(Exception):
        client.stop()
    with contextlib.suppress(Exception):
        client.close()


def _abandon(client: Any) -> None:
    """Stop a kazoo client *without* closing its session, so the server expires it after its timeout.

    kazoo has no call for this: ``stop()`` always sends closeSession. Marking the client stopped and
    shutting its socket makes the connection thread exit without sending anything.
    """
    try:
        # The connection thread will log the dropped connection as a failure; here it is the intent.
        client.logger = client._connection.logger = _QUIET
        client._stopped.set()
        sock = client._connection._socket
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        client._safe_close()
        client.close()
    except Exception:
        _stop_client(client)
