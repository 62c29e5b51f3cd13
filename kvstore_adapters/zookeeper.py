"""The ZooKeeper adapter: :class:`ZooKeeperStore`, over ``kazoo``.

URL: ``zk://host1:2181,host2:2181/prefix?log_size=5000``. Everything lives under the znode ``/<prefix>``
(see zk_layout.py for the tree and the encodings). Parameters:

``timeout``, ``connect_timeout``
    Seconds a request may wait for a connection (default 10) and allowed for :meth:`connect` (default 5).
``session_timeout``
    Of the client's own session, in seconds (default 10; the server clamps it).
``log_size``
    Change-log entries kept for watches that resume from the past (default 5000).
``jute_maxbuffer``
    The servers' ``jute.maxbuffer`` (default 1048575 bytes): larger writes are refused before sending.
``cacert``, ``cert``, ``key``
    PEM files for TLS (kazoo's ``use_ssl``).

Revisions are ZooKeeper zxids. A key's ``mod_revision`` is its znode's ``mzxid``, ``create_revision`` its
``czxid``, ``version`` the znode's version + 1. A write's revision is the zxid of its multi-op, taken from
the reply header (see zk_wire.py), and ``revision()`` is the zxid of a read's reply: the last transaction
the server had applied. Zxids grow with every transaction, including ones that change no key (session
events, refused writes), so revisions have gaps, as etcd's do not; nothing in Shoal needs them dense.
A zxid's top 32 bits are the leader epoch, so revisions stay increasing across leader changes.

Writes: every put, delete, transaction and prefix delete is one multi-op that also appends one change-log
entry per changed key (zk_log.py), so a write and its watch events share one zxid. ``Compare.at(k, rev)``
becomes ``check(k, version)`` with the version k had at ``rev`` (cached from the client's last read or
write of k, else read first), guarded against a delete-and-recreate by the ``epoch`` znode (zk_txn.py).
Watches are fed by one follower of the change log per client (zk_watch.py). A lease is a ZooKeeper session
of its own; keys put with it are ordinary znodes deleted, with DELETE log entries, when it ends
(zk_leases.py).

A read uses one request (``get``, ``revision``) or a few (``range``: one ``multiRead`` of the directories
per level, then one per batch of values). ``range`` is not a snapshot: its ``revision`` is that of its
first read, so watching from ``revision + 1`` may repeat changes the page already shows, but misses none.

Requests go to kazoo's connection thread directly and complete on the event loop (zk_wire.py). While the
connection is down, reads wait for it (up to ``timeout``) and retry; a write whose connection drops in
flight raises :class:`StoreUnavailable` since it may or may not have been applied.

docs/kvstore-zookeeper.md has the whole picture: the tree, the revision mapping, the compare-and-swap edge
cases, the change log, leases as sessions, and the limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.protocol.serialization import Create, Delete, Exists, GetChildren, GetData, SetData
from kazoo.retry import KazooRetry

from kvstore_adapters.base import (
    Compare,
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
from kvstore_adapters.base import Delete as DeleteOp
from kvstore_adapters.errors import InvalidStoreURL, KVError, StoreUnavailable
from kvstore_adapters.zk_layout import Layout, decode_segment, is_dir, pack_event, unpack_value
from kvstore_adapters.zk_leases import LeaseManager
from kvstore_adapters.zk_log import compact as compact_log
from kvstore_adapters.zk_log import trim as trim_log
from kvstore_adapters.zk_txn import ACL, SEQUENTIAL, Known, Transaction
from kvstore_adapters.zk_watch import LogFollower, ZooKeeperWatch
from kvstore_adapters.zk_wire import CONNECTION_ERRORS, Multi, MultiRead, submit

__all__ = ["ZooKeeperStore"]

log = logging.getLogger(__name__)

DEFAULT_LOG_SIZE = 5000
#: Reads per multiRead request, and keys per multi-op of delete_prefix.
READ_BATCH = 128
DELETE_BATCH = 200
_PARAMS = {
    "timeout",
    "connect_timeout",
    "session_timeout",
    "log_size",
    "jute_maxbuffer",
    "cacert",
    "cert",
    "key",
}
#: ZooKeeper's default ``jute.maxbuffer``: a larger request makes the server drop the connection.
DEFAULT_MAX_REQUEST = 0xFFFFF


class ZooKeeperStore(KVStore):
    """A :class:`KVStore` on ZooKeeper (see the module docstring for the mapping)."""

    backend = "zookeeper"

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        prefix: str = "",
        *,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        session_timeout: float = 10.0,
        log_size: int = DEFAULT_LOG_SIZE,
        max_request: int = DEFAULT_MAX_REQUEST,
        tls: dict[str, str] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("ZooKeeperStore needs at least one endpoint")
        self.prefix = prefix.strip("/")
        self.layout = Layout.for_prefix(self.prefix)
        self.endpoints = ",".join(f"{h}:{p}" for h, p in endpoints)
        self._hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in endpoints)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.session_timeout = session_timeout
        self.log_size = max(int(log_size), 16)
        self.max_request = max_request
        self._tls = dict(tls or {})
        #: What this client last saw of keys, by value path (None: absent); see zk_txn.py.
        self.known: dict[str, Known | None] = {}
        #: The last version of the epoch znode this client saw.
        self.epoch = 0
        self.client: Any = None
        self.leases = LeaseManager(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._closed = False
        self._follower: LogFollower | None = None
        self._trim_every = max(self.log_size // 4, 16)
        self._appended = 0
        self._trim_task: asyncio.Task[None] | None = None
        self._paths: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: StoreURL) -> ZooKeeperStore:
        params = dict(url.params)
        unknown = set(params) - _PARAMS
        if unknown:
            raise InvalidStoreURL(
                url.raw,
                f"unknown parameter(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_PARAMS))})",
            )
        try:
            numbers = {
                k: float(params[k]) for k in ("timeout", "connect_timeout", "session_timeout") if k in params
            }
            log_size = int(params.get("log_size", DEFAULT_LOG_SIZE))
            max_request = int(params.get("jute_maxbuffer", DEFAULT_MAX_REQUEST))
        except ValueError as exc:
            raise InvalidStoreURL(url.raw, f"bad number: {exc}") from None
        if any(v <= 0 for v in numbers.values()) or log_size < 16:
            raise InvalidStoreURL(url.raw, "timeouts must be positive and log_size at least 16")
        tls: dict[str, str] = {k: params[k] for k in ("cacert", "cert", "key") if k in params}
        return cls(url.endpoints, url.prefix, log_size=log_size, max_request=max_request, tls=tls, **numbers)

    def info(self) -> StoreInfo:
        return StoreInfo("zookeeper", self.endpoints, self.prefix, {"log_size": str(self.log_size)})

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise StoreUnavailable("zookeeper", self.endpoints, "not connected (call connect() first)")
        return self._loop

    # --- connection ------------------------------------------------------------------------------------
    def new_client(self, session_timeout: float) -> Any:
        """A kazoo client for these endpoints (not started); reconnects quickly after a server restart."""
        tls: dict[str, Any] = {}
        if self._tls:
            tls = {
                "use_ssl": True,
                "ca": self._tls.get("cacert"),
                "certfile": self._tls.get("cert"),
                "keyfile": self._tls.get("key"),
            }
        return KazooClient(
            hosts=self._hosts,
            timeout=session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_delay=1.0),
            command_retry=KazooRetry(max_tries=0),
            **tls,
        )

    async def connect(self) -> None:
        if self.client is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._closed = False
        await self._probe()
        client = self.new_client(self.session_timeout)
        client.add_listener(self._on_state)
        try:
            await asyncio.to_thread(client.start, self.connect_timeout)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(client.close)
            raise StoreUnavailable(
                "zookeeper", self.endpoints, f"no session within {self.connect_timeout}s: {exc}"
            ) from exc
        self.client = client
        self._connected.set()
        await self.ensure_structure()
        stat, _ = await self.read(Exists(self.layout.epoch, None))
        self.note_epoch(stat.version if stat is not None else 0)
        self.leases.start()

    async def _probe(self) -> None:
        """Fail fast, naming the endpoints, when none of them accepts a TCP connection (all tried at once)."""

        async def reach(endpoint: str) -> str | None:
            host, _, port = endpoint.rpartition(":")
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, int(port)), self.connect_timeout
                )
            except (OSError, TimeoutError) as exc:
                return f"{endpoint}: {exc or 'no answer'}"
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return None

        tasks = [asyncio.ensure_future(reach(e)) for e in self.endpoints.split(",")]
        failures = []
        try:
            for finished in asyncio.as_completed(tasks):
                failure = await finished
                if failure is None:
                    return
                failures.append(failure)
        finally:
            for task in tasks:
                task.cancel()
        raise StoreUnavailable("zookeeper", self.endpoints, "; ".join(failures))

    def _on_state(self, state: str) -> None:  # on kazoo's connection thread
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._state_changed, state)

    def _state_changed(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._follower is not None:
            self._follower.stop()
        if self._trim_task is not None:
            self._trim_task.cancel()
        if self._loop is not None:
            await self.leases.close()
        client, self.client = self.client, None
        self._connected.clear()
        if client is not None:
            await asyncio.to_thread(_stop, client)

    async def _wait_connected(self, deadline: float) -> None:
        if self._closed or self.client is None:
            raise StoreUnavailable("zookeeper", self.endpoints, "the client is closed")
        if self._connected.is_set():
            return
        try:
            await asyncio.wait_for(self._connected.wait(), max(deadline - self.loop.time(), 0.0))
        except TimeoutError:
            raise StoreUnavailable(
                "zookeeper", self.endpoints, f"no connection for {self.timeout}s"
            ) from None
        if self.client is None:
            raise StoreUnavailable("zookeeper", self.endpoints, "the client is closed")

    # --- requests (used by the zk_* modules too) -------------------------------------------------------
    async def read(self, request: Any) -> tuple[Any, int]:
        """Send a read; waits for the connection and retries after a loss. ``(result, reply zxid)``."""
        deadline = self.loop.time() + self.timeout
        while True:
            await self._wait_connected(deadline)
            try:
                return await submit(self.client, request, self.loop)
            except CONNECTION_ERRORS as exc:
                if self._closed or self.loop.time() >= deadline:
                    raise StoreUnavailable("zookeeper", self.endpoints, f"read failed: {exc!r}") from exc
                await asyncio.sleep(0.02)

    async def multi_read(self, requests: Sequence[Any]) -> list[Any]:
        """Many GetData/GetChildren in ``multiRead`` batches sent together; results as MultiRead's."""
        batches = [requests[i : i + READ_BATCH] for i in range(0, len(requests), READ_BATCH)]
        replies = await asyncio.gather(*(self.read(MultiRead(b)) for b in batches))
        return [result for reply, _ in replies for result in reply]

    async def write_multi(self, ops: Sequence[Any]) -> tuple[list[Any], int]:
        """Send one multi-op; ``(per-op results, zxid)``. Raises StoreUnavailable if its fate is unknown."""
        size = sum(len(op.path) + len(getattr(op, "data", b"")) + 32 for op in ops)
        if size > self.max_request:
            # ZooKeeper would drop the connection; a value travels twice (its znode and its log entry).
            raise KVError(
                f"zookeeper: a write of about {size} bytes exceeds the server's request limit "
                f"({self.max_request} bytes, jute.maxbuffer); values must stay under half of it"
            )
        await self._wait_connected(self.loop.time() + self.timeout)
        try:
            return await submit(self.client, Multi(ops), self.loop)
        except CONNECTION_ERRORS as exc:
            raise StoreUnavailable(
                "zookeeper",
                self.endpoints,
                f"connection lost during a write, which may or may not have been applied ({exc!r})",
            ) from exc

    async def write_each(self, requests: Sequence[Any]) -> list[Any]:
        """Send independent writes together; each result or exception, in order (for clean-ups)."""
        if not requests:
            return []
        await self._wait_connected(self.loop.time() + self.timeout)
        futures = [submit(self.client, r, self.loop) for r in requests]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    async def read_all(self, requests: Sequence[Any]) -> list[tuple[Any, int]]:
        """Several reads sent together (one round trip, answered in order); retried like :meth:`read`."""
        deadline = self.loop.time() + self.timeout
        while True:
            await self._wait_connected(deadline)
            futures = [submit(self.client, r, self.loop) for r in requests]
            replies: list[Any] = await asyncio.gather(*futures, return_exceptions=True)
            errors = [r for r in replies if isinstance(r, BaseException)]
            if not errors:
                return replies
            if not isinstance(errors[0], CONNECTION_ERRORS):
                raise errors[0]
            if self._closed or self.loop.time() >= deadline:
                raise StoreUnavailable("zookeeper", self.endpoints, f"read failed: {errors[0]!r}")
            await asyncio.sleep(0.02)

    async def read_stats(self, paths: Sequence[str]) -> tuple[list[Any], int, int]:
        """The epoch's version, then the stats of ``paths`` (None: absent), in one round trip."""
        replies = await self.read_all([Exists(p, None) for p in (self.layout.epoch, *paths)])
        epoch_stat = replies[0][0]
        epoch = epoch_stat.version if epoch_stat is not None else 0
        self.note_epoch(epoch)
        return [stat for stat, _ in replies[1:]], epoch, max(zxid for _, zxid in replies)

    async def ensure_structure(self) -> None:
        """Create the root, kv, log and bookkeeping znodes that do not exist yet."""
        paths = self.layout.structure()
        data = {self.layout.compacted: b"0"}
        results = await self.write_each([Create(p, data.get(p, b""), ACL, 0) for p in paths])
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, NodeExistsError):
                raise KVError(f"zookeeper: cannot create {self.layout.root or '/'}: {result!r}")

    async def ensure_dirs(self, value_path: str) -> None:
        """Create the directory znodes above a value znode (outermost first, in one round trip)."""
        kv = self.layout.kv
        parts = value_path[len(kv) + 1 :].split("/")[:-1]
        dirs = [kv + "".join("/" + p for p in parts[: i + 1]) for i in range(len(parts))]
        results = await self.write_each([Create(d, b"", ACL, 0) for d in dirs])
        if any(isinstance(r, NoNodeError) for r in results):
            await self.ensure_structure()

    def note_epoch(self, version: int) -> None:
        self.epoch = max(self.epoch, version)

    def note_appended(self, count: int) -> None:
        """Writes of ours appended ``count`` log entries: look at the log's size every ``log_size / 4``."""
        before = self._appended
        self._appended += count
        if before // self._trim_every != self._appended // self._trim_every:
            self.schedule_trim()

    def key_path(self, key: str) -> str:
        """The value znode of ``key`` (remembered: hot keys are encoded once)."""
        path = self._paths.get(key)
        if path is None:
            if len(self._paths) > 100_000:
                self._paths.clear()
            path = self._paths[key] = self.layout.key_path(key)
        return path

    def schedule_trim(self) -> None:
        if self._closed or (self._trim_task is not None and not self._trim_task.done()):
            return
        self._trim_task = self.loop.create_task(self._trim(), name="zk-log-trim")

    async def _trim(self) -> None:
        try:
            await trim_log(self, self.log_size, self.log_size // 4)
        except (StoreUnavailable, KVError) as exc:
            log.debug("trimming the change log failed: %s", exc)

    def follower(self) -> LogFollower:
        if self._follower is None:
            self._follower = LogFollower(self)
        return self._follower

    def follower_stopped(self, follower: LogFollower) -> None:
        if self._follower is follower:
            self._follower = None

    # --- reads -----------------------------------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        path = self.key_path(key)
        epoch = self.epoch
        try:
            (data, stat), _ = await self.read(GetData(path, None))
        except NoNodeError:
            self.known[path] = None
            return None
        value, lease = unpack_value(data)
        self.known[path] = Known(stat.mzxid, stat.version, epoch, lease)
        return KeyValue(key, value, stat.czxid, stat.mzxid, stat.version + 1, lease)

    async def range(self, prefix: str, *, start_after: str | None = None, limit: int = 0) -> RangeResult:
        epoch = self.epoch
        keys, _, revision = await self._list_keys(prefix, start_after)
        if start_after is not None:
            keys = [(k, p) for k, p in keys if k > start_after]
        want = limit + 1 if limit > 0 else len(keys)
        found: list[KeyValue] = []
        known = self.known
        index = 0
        while index < len(keys) and len(found) < want:
            batch = keys[index : index + max(want - len(found), 1) + 8]
            index += len(batch)
            results = await self.multi_read([GetData(p, None) for _, p in batch])
            for (key, path), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    continue  # deleted since it was listed
                data, stat = result
                value, lease = unpack_value(data)
                known[path] = Known(stat.mzxid, stat.version, epoch, lease)
                found.append(KeyValue(key, value, stat.czxid, stat.mzxid, stat.version + 1, lease))
        more = limit > 0 and len(found) > limit
        return RangeResult(tuple(found[:limit] if more else found), revision, more)

    async def _list_keys(
        self, prefix: str, start_after: str | None = None
    ) -> tuple[list[tuple[str, str]], list[str], int]:
        """Keys under ``prefix`` (sorted, with their value paths), the directories entirely under it
        (outermost first), and the zxid of the first listing. Subtrees wholly at or before
        ``start_after`` are not listed."""
        scan = self.layout.scan(prefix)
        level = [(scan.directory, scan.key_base, scan.partial)]
        keys: list[tuple[str, str]] = []
        dirs: list[str] = []
        revision: int | None = None
        while level:
            requests = [
                MultiRead([GetChildren(d, None) for d, _, _ in level[i : i + READ_BATCH]])
                for i in range(0, len(level), READ_BATCH)
            ]
            replies = await asyncio.gather(*(self.read(r) for r in requests))
            if revision is None:
                revision = replies[0][1]
            listings = [names for reply, _ in replies for names in reply]
            below = []
            for (directory, base, partial), names in zip(level, listings, strict=True):
                if isinstance(names, BaseException):
                    continue  # gone (never made, or pruned)
                for name in names:
                    if is_dir(name):
                        segment = decode_segment(name[:-1])
                        if not segment.startswith(partial):
                            continue
                        sub = f"{base}{segment}/"
                        if start_after is not None and start_after > sub and not start_after.startswith(sub):
                            continue
                        below.append((f"{directory}/{name}", sub, ""))
                    else:
                        segment = decode_segment(name)
                        if segment.startswith(partial):
                            keys.append((base + segment, f"{directory}/{name}"))
            dirs += [d for d, _, _ in below]
            level = below
        keys.sort()
        return keys, dirs, revision or 0

    async def revision(self) -> int:
        _, zxid = await self.read(Exists(self.layout.log, None))
        return zxid

    # --- writes ----------------------------------------------------------------------------------------
    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        if lease is not None:
            return (await Transaction(self, (), (Put(key, value, lease),), ()).run()).revision
        # The hot path, without the planning of a general transaction: set the key if this client saw it
        # exist (else create it) together with its log entry; switch on the server's answer.
        path = self.key_path(key)
        entry = Create(self.layout.log_entry, pack_event(EventType.PUT, key, value), ACL, SEQUENTIAL)
        data = b"\x00" + value
        exists = isinstance(self.known.get(path), Known)
        for _ in range(4):
            epoch = self.epoch
            first = SetData(path, data, -1) if exists else Create(path, data, ACL, 0)
            results, zxid = await self.write_multi((first, entry))
            result = results[0]
            if not isinstance(result, BaseException):
                version = result.version if exists else 0
                self.known[path] = Known(zxid, version, epoch, None)
                self.note_appended(1)
                return zxid
            if isinstance(result, NodeExistsError):
                exists = True
            elif isinstance(result, NoNodeError) and exists:
                exists = False
            elif isinstance(result, NoNodeError):
                await self.ensure_dirs(path)
            else:
                raise KVError(f"zookeeper: put of {key!r} failed: {result!r}")
        return (await Transaction(self, (), (Put(key, value),), ()).run()).revision

    async def delete(self, key: str) -> bool:
        return (await Transaction(self, (), (DeleteOp(key),), ()).run()).deleted > 0

    async def delete_prefix(self, prefix: str) -> int:
        keys, dirs, _ = await self._list_keys(prefix)
        deleted = 0
        for start in range(0, len(keys), DELETE_BATCH):
            ops = [DeleteOp(key) for key, _ in keys[start : start + DELETE_BATCH]]
            deleted += (await Transaction(self, (), ops, ()).run()).deleted
        scan = self.layout.scan(prefix)
        if scan.partial == "" and scan.directory != self.layout.kv:
            dirs.insert(0, scan.directory)  # "a/" owns the directory of "a" itself
        # Best effort, deepest first: a directory that got a new key meanwhile stays (NotEmpty).
        await self.write_each([Delete(d, -1) for d in reversed(dirs)])
        return deleted

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        outcome = await Transaction(self, compares, success, failure).run()
        return TxnResult(outcome.succeeded, outcome.revision)

    # --- history ---------------------------------------------------------------------------------------
    def watch(self, prefix: str, *, start_revision: int | None = None) -> Watch:
        return ZooKeeperWatch(self, prefix, start_revision)

    async def compact(self, revision: int) -> None:
        await compact_log(self, revision)

    # --- leases ----------------------------------------------------------------------------------------
    async def grant_lease(self, ttl: float) -> Lease:
        return await self.leases.grant(ttl)

    async def keep_alive(self, lease: Lease) -> None:
        await self.leases.keep_alive(lease)

    async def revoke_lease(self, lease: Lease) -> None:
        await self.leases.revoke(lease)


def _stop(client: Any) -> None:
    with contextlib.suppress(Exception):
        client.stop()
    with contextlib.suppress(Exception):
        client.close()
