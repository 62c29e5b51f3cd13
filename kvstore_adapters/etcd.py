"""The etcd v3 adapter: :class:`EtcdStore`, over the gRPC API that ``aetcd`` ships (``aetcd.rpc``).

URL: ``etcd://host1:2379,host2:2379/prefix?cacert=ca.pem&cert=client.pem&key=client-key.pem``. Every key lives
under ``/<prefix>/`` (``/`` when the prefix is empty). Parameters:

``cacert``, ``cert``, ``key``
    PEM files for TLS (``cert`` and ``key`` go together, for client-certificate authentication).
``tls=1``
    TLS with the system's root certificates when no ``cacert`` is given.
``servername``
    The name to check the server certificate against, when endpoints are IP addresses.
``user``, ``password``
    etcd authentication; the token is renewed when etcd says it expired.
``timeout``, ``connect_timeout``
    Seconds allowed for one request (default 10) and for :meth:`EtcdStore.connect` (default 3).

Why not ``aetcd.Client`` itself: it opens plaintext channels only, talks to one endpoint and its watcher
neither resumes after a connection loss nor lets two watches be created at once. The adapter keeps aetcd's
generated messages and stubs and owns the channels: one per endpoint, opened lazily, all kept so that
switching endpoint costs nothing. A request that fails because its endpoint is unreachable moves the store
to the next endpoint; reads and other requests that can be repeated safely are retried there at once, while
a transaction whose fate is unknown is not repeated (the caller re-reads, as it does after any conflict).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import weakref
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc
from aetcd.utils import prefix_range_end

from kvstore_adapters.base import (
    Compare,
    Delete,
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
from kvstore_adapters.errors import KVError, LeaseNotFound, StoreUnavailable
from kvstore_adapters.etcd_channel import (
    LOST,
    Endpoint,
    EtcdError,
    TLSFiles,
    not_sent,
    options_from_url,
    reason,
)
from kvstore_adapters.etcd_watch import EtcdWatch

__all__ = ["EtcdError", "EtcdStore", "TLSFiles"]

_CMP_MOD = rpc.Compare.MOD
_CMP_CREATE = rpc.Compare.CREATE
_CMP_EQUAL = rpc.Compare.EQUAL


class _NotConnected:
    """Stands in for the stubs before connect() and after close(): any call says so clearly."""

    def __init__(self, store: EtcdStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        raise StoreUnavailable("etcd", self._store.endpoints, "not connected (call connect() first)")


class EtcdStore(KVStore):
    """A :class:`KVStore` on an etcd v3 cluster; see the module documentation for the URL."""

    backend = "etcd"

    def __init__(
        self,
        endpoints: Sequence[tuple[str, int]],
        prefix: str = "",
        *,
        tls: TLSFiles | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        self._endpoints = [Endpoint(h, p) for h, p in endpoints]
        self.endpoints = ",".join(ep.target for ep in self._endpoints)
        self.prefix = prefix.strip("/")
        self._root = f"/{self.prefix}/".encode() if self.prefix else b"/"
        self._root_len = len(self._root)
        self._tls = tls
        self._user = user
        self._password = password
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._credentials: Any = None
        self._metadata: tuple[tuple[str, str], ...] | None = None
        self._active: Endpoint | None = None
        # The hot path calls these stubs directly; they are swapped when the store changes endpoint.
        self._kv: Any = _NotConnected(self)
        self._lease: Any = self._kv
        self._watches: weakref.WeakSet[Watch] = weakref.WeakSet()

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: StoreURL) -> EtcdStore:
        """A client for ``etcd://host:port[,host:port…]/prefix?params`` (see the module documentation)."""
        opts = options_from_url(url)
        return cls(
            opts.endpoints,
            opts.prefix,
            tls=opts.tls,
            user=opts.user,
            password=opts.password,
            timeout=opts.timeout,
            connect_timeout=opts.connect_timeout,
        )

    def info(self) -> StoreInfo:
        """Backend, endpoints, prefix; ``extra`` says whether TLS is on and which endpoint is in use."""
        extra = {"tls": "yes" if self._tls else "no", "root": self._root.decode()}
        if self._active is not None:
            extra["active"] = self._active.target
        return StoreInfo("etcd", self.endpoints, self.prefix, extra)

    # --- connection --------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Probe every endpoint at once and use the first that answers; fail within ``connect_timeout``."""
        if self._active is not None:
            return
        if self._tls is not None and self._credentials is None:
            self._credentials = self._tls.credentials()
        probes = {
            asyncio.ensure_future(asyncio.wait_for(self._probe(ep), self._connect_timeout)): ep
            for ep in self._endpoints
        }
        reasons: dict[str, str] = {}
        refusal: grpc.aio.AioRpcError | None = None
        winner: tuple[Endpoint, tuple[tuple[str, str], ...] | None] | None = None
        pending = set(probes)
        try:
            while pending and winner is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: self._endpoints.index(probes[t])):
                    ep = probes[task]
                    exc = task.exception()
                    if exc is not None:
                        reasons[ep.target] = reason(exc, self._connect_timeout)
                        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() not in LOST:
                            refusal = exc
                    elif winner is None:
                        winner = (ep, task.result())
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if winner is None:
            for ep in self._endpoints:
                await ep.close()
            detail = "; ".join(
                f"{t}: {reasons.get(t, 'no answer')}" for t in (e.target for e in self._endpoints)
            )
            if refusal is not None:
                # A member answered and said no (bad password, permissions): unreachable it is not.
                raise EtcdError("connect", refusal.code().name, detail)
            raise StoreUnavailable("etcd", self.endpoints, detail)
        ep, self._metadata = winner
        self._use(ep)

    async def _probe(self, ep: Endpoint) -> tuple[tuple[str, str], ...] | None:
        """Authenticate if needed and read once: the endpoint answers as a working etcd member."""
        ep.open(self._tls, self._credentials)
        metadata = await self._authenticate(ep) if self._user is not None else None
        try:
            await ep.kv.Range(
                rpc.RangeRequest(key=self._root, count_only=True),
                timeout=self._connect_timeout,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as err:
            # etcd checks permissions after the linearizable read: a refusal still proves a working member.
            if err.code() is not grpc.StatusCode.PERMISSION_DENIED:
                raise
        return metadata

    async def _authenticate(self, ep: Endpoint) -> tuple[tuple[str, str], ...]:
        resp = await ep.auth.Authenticate(
            rpc.AuthenticateRequest(name=self._user, password=self._password), timeout=self._connect_timeout
        )
        return (("token", str(resp.token)),)

    def _use(self, ep: Endpoint) -> None:
        ep.open(self._tls, self._credentials)
        self._active = ep
        self._kv = ep.kv
        self._lease = ep.lease

    def _endpoint_failed(self, ep: Endpoint) -> None:
        """Move to the endpoint after ``ep`` (if ``ep`` is still the one in use)."""
        if ep is self._active and len(self._endpoints) > 1:
            index = self._endpoints.index(ep)
            self._use(self._endpoints[(index + 1) % len(self._endpoints)])

    async def close(self) -> None:
        """Close every watch and channel. Leases are left to expire."""
        for watch in list(self._watches):
            await watch.close()
        self._active = None
        self._kv = self._lease = _NotConnected(self)
        for ep in self._endpoints:
            await ep.close()

    # --- failure handling (slow path) ----------------------------------------------------------------
    async def _recover(
        self,
        err: grpc.aio.AioRpcError,
        service: str,
        method: str,
        request: Any,
        *,
        safe: bool,
        lease: int | None = None,
    ) -> Any:
        """Handle a failed request: renew the token, or move to another endpoint and retry if that is
        safe; otherwise raise the matching KVError. Returns the reply of a successful retry."""
        tried = 0
        renewed = False
        while True:
            code = err.code()
            ep = self._active
            if ep is None:
                raise StoreUnavailable("etcd", self.endpoints, "closed") from err
            if code is grpc.StatusCode.UNAUTHENTICATED and self._user is not None and not renewed:
                renewed = True
                try:
                    self._metadata = await self._authenticate(ep)
                except grpc.aio.AioRpcError as auth_err:
                    raise self._error(auth_err, "authenticate") from auth_err
            elif code in LOST:
                tried += 1
                self._endpoint_failed(ep)
                if not safe and not not_sent(err):
                    raise StoreUnavailable(
                        "etcd",
                        self.endpoints,
                        f"connection to {ep.target} lost during {method}; outcome unknown",
                    ) from err
                if tried >= len(self._endpoints):
                    raise StoreUnavailable("etcd", self.endpoints, reason(err)) from err
            else:
                raise self._error(err, method, lease) from err
            stub = getattr(self._active, service)
            try:
                return await getattr(stub, method)(request, timeout=self._timeout, metadata=self._metadata)
            except grpc.aio.AioRpcError as again:
                err = again

    def _error(self, err: grpc.aio.AioRpcError, operation: str, lease: int | None = None) -> KVError:
        code = err.code()
        details = err.details() or ""
        if code is grpc.StatusCode.NOT_FOUND and "lease not found" in details:
            return LeaseNotFound(lease or 0)
        if code in LOST:
            return StoreUnavailable("etcd", self.endpoints, reason(err))
        return EtcdError(operation, code.name, details)

    # --- reads -------------------------------------------------------------------------------------
    def _kv_of(self, kv: Any) -> KeyValue:
        return KeyValue(
            kv.key[self._root_len :].decode(),
            kv.value,
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.lease or None,
        )

    async def get(self, key: str) -> KeyValue | None:
        """The key, or ``None``; a linearizable read."""
        req = rpc.RangeRequest(key=self._root + key.encode())
        try:
            resp = await self._kv.Range(req, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            resp = await self._recover(err, "kv", "Range", req, safe=True)
        kvs = resp.kvs
        return self._kv_of(kvs[0]) if kvs else None

    async def range(self, prefix: str, *, start_after: str | None = None, limit: int = 0) -> RangeResult:
        """Keys under ``prefix`` in key order, one page of at most ``limit`` keys (0: all)."""
        if limit < 0:
            raise ValueError("limit must be >= 0")
        start = self._root + prefix.encode()
        end = prefix_range_end(start)
        if start_after is not None:
            # The smallest key greater than start_after is start_after + NUL.
            after = self._root + start_after.encode() + b"\0"
            if after >= end:
                return RangeResult((), await self.revision(), False)
            start = max(start, after)
        req = rpc.RangeRequest(key=start, range_end=end, limit=limit)
        try:
            resp = await self._kv.Range(req, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            resp = await self._recover(err, "kv", "Range", req, safe=True)
        revision = int(resp.header.revision)
        kv_of = self._kv_of
        return RangeResult(tuple(kv_of(kv) for kv in resp.kvs), revision, bool(resp.more))

    async def revision(self) -> int:
        """The cluster's current revision (a linearizable read of one key)."""
        req = rpc.RangeRequest(key=self._root, count_only=True)
        try:
            resp = await self._kv.Range(req, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            resp = await self._recover(err, "kv", "Range", req, safe=True)
        return int(resp.header.revision)

    # --- writes ------------------------------------------------------------------------------------
    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        """Write unconditionally; returns the revision of the write."""
        req = rpc.PutRequest(key=self._root + key.encode(), value=value, lease=lease or 0)
        try:
            resp = await self._kv.Put(req, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            # Writing the same value twice leaves the same state, so a retry elsewhere is safe.
            resp = await self._recover(err, "kv", "Put", req, safe=True, lease=lease)
        return int(resp.header.revision)

    async def delete(self, key: str) -> bool:
        """Delete one key; whether it existed."""
        req = rpc.DeleteRangeRequest(key=self._root + key.encode())
        try:
            resp = await self._kv.DeleteRange(req, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            resp = await self._recover(err, "kv", "DeleteRange", req, safe=False)
        return bool(resp.deleted)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; how many there were."""
        start = self._root + prefix.encode()
        req = rpc.DeleteRangeRequest(key=start, range_end=prefix_range_end(start))
        try:
            resp = await self._kv.DeleteRange(req, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            resp = await self._recover(err, "kv", "DeleteRange", req, safe=False)
        return int(resp.deleted)

    def _op(self, op: Op) -> Any:
        if isinstance(op, Put):
            return rpc.RequestOp(
                request_put=rpc.PutRequest(
                    key=self._root + op.key.encode(), value=op.value, lease=op.lease or 0
                )
            )
        if isinstance(op, Delete):
            return rpc.RequestOp(
                request_delete_range=rpc.DeleteRangeRequest(key=self._root + op.key.encode())
            )
        raise TypeError(f"not a transaction operation: {op!r}")

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """Atomically run ``success`` if every compare holds, else ``failure``.

        ``Compare.absent`` becomes ``create_revision == 0`` (etcd compares a missing key as all zeros);
        ``Compare.at`` becomes ``mod_revision == n``, which a missing key never satisfies. etcd limits
        a transaction to 128 operations per branch and a request to 1.5 MiB by default (``--max-txn-ops``,
        ``--max-request-bytes``); beyond that it answers EtcdError.
        """
        root = self._root
        conditions = [
            rpc.Compare(
                key=root + c.key.encode(), target=_CMP_MOD, result=_CMP_EQUAL, mod_revision=c.mod_revision
            )
            if c.mod_revision
            else rpc.Compare(
                key=root + c.key.encode(), target=_CMP_CREATE, result=_CMP_EQUAL, create_revision=0
            )
            for c in compares
        ]
        op = self._op
        req = rpc.TxnRequest(
            compare=conditions, success=[op(o) for o in success], failure=[op(o) for o in failure]
        )
        try:
            resp = await self._kv.Txn(req, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            lease = next((o.lease for o in (*success, *failure) if isinstance(o, Put) and o.lease), None)
            resp = await self._recover(err, "kv", "Txn", req, safe=False, lease=lease)
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    # --- history -----------------------------------------------------------------------------------
    def watch(self, prefix: str, *, start_revision: int | None = None) -> Watch:
        """Changes under ``prefix`` from ``start_revision`` (inclusive).

        ``None``: from the revision etcd has when the watch is established, which happens on the first
        ``__anext__`` (the stream is opened lazily, so an unused watch costs nothing).
        """
        start = self._root + prefix.encode()
        watch = EtcdWatch(self, start, prefix_range_end(start), start_revision)
        self._watches.add(watch)
        return watch

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (waiting until etcd has applied it). Already compacted: no-op;
        a revision etcd has not reached yet: ValueError."""
        req = rpc.CompactionRequest(revision=revision, physical=True)
        try:
            await self._kv.Compact(req, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            details = err.details() or ""
            if err.code() is grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
                return
            if err.code() is grpc.StatusCode.OUT_OF_RANGE and "future" in details:
                raise ValueError(f"cannot compact to revision {revision}: etcd is not there yet") from err
            await self._recover(err, "kv", "Compact", req, safe=True)

    # --- leases ------------------------------------------------------------------------------------
    async def grant_lease(self, ttl: float) -> Lease:
        """A lease of ``ttl`` seconds rounded up to whole seconds (and to etcd's minimum)."""
        req = rpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl)))
        try:
            resp = await self._lease.LeaseGrant(req, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            # A lease granted by a request whose reply was lost simply expires unused.
            resp = await self._recover(err, "lease", "LeaseGrant", req, safe=True)
        if resp.error:
            raise EtcdError("LeaseGrant", "ERROR", str(resp.error))
        return Lease(int(resp.ID), float(resp.TTL))

    async def keep_alive(self, lease: Lease) -> None:
        """Refresh the lease once; LeaseNotFound if it expired or was revoked."""
        tried = 0
        while True:
            ep = self._active
            if ep is None:
                raise StoreUnavailable("etcd", self.endpoints, "not connected (call connect() first)")
            try:
                ttl = await self._keep_alive_once(ep, lease.id)
                break
            except grpc.aio.AioRpcError as err:
                tried += 1
                if err.code() in LOST and tried < len(self._endpoints):
                    self._endpoint_failed(ep)
                    continue
                if err.code() is grpc.StatusCode.UNAUTHENTICATED and self._user is not None and tried == 1:
                    self._metadata = await self._authenticate(ep)
                    continue
                if err.code() in LOST:
                    self._endpoint_failed(ep)
                raise self._error(err, "LeaseKeepAlive", lease.id) from err
        if ttl <= 0:
            raise LeaseNotFound(lease.id)

    async def _keep_alive_once(self, ep: Endpoint, lease_id: int) -> int:
        # LeaseKeepAlive is a stream; one request and the end of our side make it a single refresh.
        call = ep.lease.LeaseKeepAlive(timeout=self._timeout, metadata=self._metadata)
        try:
            await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
            await call.done_writing()
            resp = await call.read()
        finally:
            call.cancel()
        if resp is grpc.aio.EOF:
            return 0
        return int(resp.TTL)

    async def revoke_lease(self, lease: Lease) -> None:
        """End the lease now (its keys are deleted); an unknown lease is not an error."""
        req = rpc.LeaseRevokeRequest(ID=lease.id)
        try:
            await self._lease.LeaseRevoke(req, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            with contextlib.suppress(LeaseNotFound):
                await self._recover(err, "lease", "LeaseRevoke", req, safe=True, lease=lease.id)

    # --- for the watch -----------------------------------------------------------------------------
    def _watch_target(self) -> tuple[Endpoint, tuple[tuple[str, str], ...] | None]:
        ep = self._active
        if ep is None:
            raise StoreUnavailable("etcd", self.endpoints, "not connected (call connect() first)")
        return ep, self._metadata

    async def _renew_token(self, ep: Endpoint) -> None:
        if self._user is not None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                self._metadata = await self._authenticate(ep)
