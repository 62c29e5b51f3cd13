"""The Consul adapter: :class:`ConsulStore` speaks Consul's HTTP API (``/v1/kv``, ``/v1/txn``,
``/v1/session``) with aiohttp. The mapping of revisions, versions and leases is described in
:mod:`kvstore_adapters.consul_codec`; what differs from etcd, and why:

Writes. Every write is one ``/v1/txn``: the keys it depends on are read first, then the transaction checks
they are unchanged (``check-index`` / ``check-not-exists``) before writing; if one moved, the write is
planned again from a fresh read. That is how a Put learns the key's version (kept in ``Flags``), how
:meth:`ConsulStore.txn` gets an *else* branch that Consul transactions lack (the failure ops run only while
a failed compare is still failing), and why a put costs two round trips. Compares map to
``check-not-exists`` (:meth:`Compare.absent`) and ``check-index`` (:meth:`Compare.at`). A transaction holds
at most 64 Consul operations (pins included).

Watches. A watch long-polls ``GET /v1/kv/<prefix>?recurse&index=N&wait=…`` and diffs each answer against
the previous one. Consul keeps no history, so writes to one key between two polls are coalesced into a
single PUT carrying the latest value, and a DELETE carries the revision of the poll that noticed it (the
first revision at which the key is known to be gone). Events still come in revision order and never repeat.
Polls are rate-limited (at most one per 50 ms) so a busy prefix degrades into batching, not a busy loop.

History and compaction. A watch can start at ``start_revision`` only when that needs no history: when
nothing under the prefix changed at or after it (the listing's ``X-Consul-Index`` is below it), or when this
client itself listed the prefix at exactly ``start_revision - 1`` (``range()`` then ``watch(revision + 1)``,
the way Shoal's cache starts). Otherwise it raises CompactedError: re-read and watch from that read.
:meth:`ConsulStore.compact` is local: it forgets listings older than the revision and refuses watches that
start before it. Caveat: Consul reaps delete tombstones after a TTL (15 min by default), and with them the
index a delete raised, so a ``start_revision`` read longer ago than that can pass the first rule although a
key was deleted since. A running watch is not affected (it diffs against its own last listing, and adopts an
index that went backwards, as Consul's blocking-query guide asks).

Leases are sessions with a TTL (at least 10 s; Consul may let one live up to twice its TTL before it
expires), ``Behavior=delete`` and no lock delay; :meth:`ConsulStore.keep_alive` renews one.

Endpoints are tried in order with failover; connect() asks each for ``/v1/status/leader`` and raises
StoreUnavailable naming them all if none answers with a leader.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import ssl
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from kvstore_adapters.base import (
    Compare,
    Event,
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
from kvstore_adapters.consul_codec import (
    ConsulConfig,
    ConsulError,
    Observed,
    Reply,
    decode_entries,
    decode_txn_reply,
    diff_snapshots,
    format_wait,
    full_key,
    full_op,
    holds,
    kv_op,
    lease_of,
    page,
    parse_config,
    parse_index,
    plan_txn,
    session_body,
    session_of,
    session_ttl,
    start_baseline,
)
from kvstore_adapters.errors import CompactedError, InvalidStoreURL, LeaseNotFound, StoreUnavailable

#: How long a listing may serve the next pages of the same range() (Consul cannot start a listing
#: mid-way, so paging re-uses the first page's listing instead of fetching the whole prefix again).
PAGE_REUSE_SECONDS = 10.0
#: Listings remembered per client (for paging and for watches that start right after a range()).
REMEMBERED_LISTINGS = 16
#: Attempts of a conditional write whose keys keep moving before giving up.
MAX_WRITE_ATTEMPTS = 64
#: Shortest time between two polls of one watch.
MIN_POLL_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class _Listing:
    """One listing of a prefix: its X-Consul-Index, its keys, when it was read and under which write epoch."""

    index: int
    kvs: tuple[KeyValue, ...]
    at: float
    epoch: int


class ConsulStore(KVStore):
    """A KVStore over Consul's HTTP API. See the module docstring for how it maps onto Consul."""

    backend = "consul"

    def __init__(self, config: ConsulConfig) -> None:
        self._cfg = config
        self._http: aiohttp.ClientSession | None = None
        self._current = 0  # index of the endpoint that answered last
        self._listings: OrderedDict[str, _Listing] = OrderedDict()
        self._epoch = 0  # bumped by every write of this client: a listing from an older epoch is not reused
        self._compacted = 0
        self._watches: weakref.WeakSet[ConsulWatch] = weakref.WeakSet()
        self._starting: set[asyncio.Future[_Listing]] = set()  # first listings of new watches, in flight

    @classmethod
    def from_url(cls, url: StoreURL) -> ConsulStore:
        """A client for ``consul://host:port,…/prefix?…`` (options in :class:`ConsulConfig`)."""
        return cls(parse_config(url, os.environ))

    @property
    def config(self) -> ConsulConfig:
        """The validated URL options."""
        return self._cfg

    @property
    def connected(self) -> bool:
        """Whether connect() succeeded and close() has not been called since."""
        return self._http is not None

    def info(self) -> StoreInfo:
        """Backend, endpoints and root prefix."""
        extra = {"scheme": "https" if self._cfg.https else "http"}
        if self._cfg.datacenter:
            extra["dc"] = self._cfg.datacenter
        return StoreInfo(self.backend, self._cfg.endpoints_text, self._cfg.root.rstrip("/"), extra)

    # --- connection ---------------------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext | None:
        if not self._cfg.https:
            return None
        try:
            context = ssl.create_default_context(cafile=self._cfg.cacert)
            if self._cfg.cert:
                context.load_cert_chain(self._cfg.cert, self._cfg.key)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidStoreURL(self._cfg.raw, f"cannot load TLS files: {exc}") from None
        return context

    async def connect(self) -> None:
        """Open the HTTP client and find an endpoint that knows a raft leader."""
        if self._http is not None:
            return
        context = self._ssl()
        connector = aiohttp.TCPConnector(ssl=context if context is not None else True)
        self._http = aiohttp.ClientSession(connector=connector, headers=self._cfg.headers())
        reasons = []
        for i, base in enumerate(self._cfg.base_urls):
            try:
                async with self._http.get(
                    f"{base}/v1/status/leader", timeout=aiohttp.ClientTimeout(total=self._cfg.timeout)
                ) as resp:
                    body = await resp.text()
                    if resp.status != 200:
                        reasons.append(f"{base}: HTTP {resp.status} {body.strip()[:200]}")
                        continue
                    if not json.loads(body or '""'):
                        reasons.append(f"{base}: no raft leader")
                        continue
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                reasons.append(f"{base}: {_describe(exc)}")
                continue
            self._current = i
            return
        await self.close()
        raise StoreUnavailable(self.backend, self._cfg.endpoints_text, "; ".join(reasons))

    async def close(self) -> None:
        """Stop this client's watches and close the HTTP client. Leases are left to expire."""
        for watch in list(self._watches):
            await watch.close()
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Reply:
        """One request, failing over across endpoints on connection errors and 5xx answers (Consul sends
        500 while it has no leader). Raises StoreUnavailable when every endpoint failed."""
        if self._http is None:
            raise StoreUnavailable(self.backend, self._cfg.endpoints_text, "not connected (call connect())")
        http = self._http
        bases = self._cfg.base_urls
        data = None if body is None else json.dumps(body).encode()
        total = aiohttp.ClientTimeout(total=timeout or self._cfg.timeout)
        reasons = []
        for step in range(len(bases)):
            i = (self._current + step) % len(bases)
            try:
                async with http.request(
                    method,
                    bases[i] + path,
                    params=params,
                    data=data,
                    timeout=total,
                    headers={"Content-Type": "application/json"} if data else None,
                ) as resp:
                    reply = Reply(resp.status, resp.headers.get("X-Consul-Index"), await resp.read())
            except (aiohttp.ClientError, TimeoutError) as exc:
                reasons.append(f"{bases[i]}: {_describe(exc)}")
                continue
            if reply.status >= 500:
                reasons.append(
                    f"{bases[i]}: HTTP {reply.status} {reply.body[:200].decode('utf-8', 'replace')}"
                )
                continue
            self._current = i
            return reply
        raise StoreUnavailable(self.backend, self._cfg.endpoints_text, "; ".join(reasons))

    def _kv_path(self, consul_key: str) -> str:
        return "/v1/kv/" + quote(consul_key, safe="/")

    # --- reads ----------------------------------------------------------------------------------------------
    async def _read(self, consul_key: str) -> tuple[KeyValue | None, int]:
        """One key (or None) and the reply's index."""
        reply = await self._request("GET", self._kv_path(consul_key), params=self._cfg.query())
        if reply.status == 404:
            return None, parse_index(reply.index)
        if reply.status != 200:
            raise reply.fail(f"GET {consul_key!r}")
        kvs = [
            kv
            for kv in decode_entries(reply.json(), self._cfg.root)
            if full_key(self._cfg.root, kv.key) == consul_key
        ]
        return (kvs[0] if kvs else None), parse_index(reply.index)

    async def get(self, key: str) -> KeyValue | None:
        """The key, or ``None``."""
        kv, _ = await self._read(full_key(self._cfg.root, key))
        return kv

    async def _list(self, prefix: str, *, index: int = 0, wait: float = 0.0) -> _Listing:
        """Every key under ``prefix`` (Shoal keys), blocking until the index passes ``index`` if given."""
        extra = {"recurse": ""}
        timeout = None
        if index:
            extra.update(index=str(index), wait=format_wait(wait))
            timeout = wait + wait / 16 + self._cfg.timeout  # Consul adds up to wait/16 of jitter
        path = self._kv_path(full_key(self._cfg.root, prefix))
        reply = await self._request("GET", path, params=self._cfg.query(**extra), timeout=timeout)
        if reply.status not in (200, 404):
            raise reply.fail(f"listing {prefix!r}")
        kvs = decode_entries(reply.json() if reply.status == 200 else None, self._cfg.root)
        return _Listing(parse_index(reply.index), kvs, time.monotonic(), self._epoch)

    def _remember(self, prefix: str, listing: _Listing) -> None:
        self._listings[prefix] = listing
        self._listings.move_to_end(prefix)
        while len(self._listings) > REMEMBERED_LISTINGS:
            self._listings.popitem(last=False)

    async def range(self, prefix: str, *, start_after: str | None = None, limit: int = 0) -> RangeResult:
        """Keys under ``prefix`` in key order. ``revision`` is the prefix's X-Consul-Index, the index of its
        latest change: the state it describes holds from that revision on. A continuation page (with
        ``start_after``) comes from the same listing as the first page when that listing is recent and this
        client wrote nothing since, so paging stays linear and consistent."""
        listing = self._listings.get(prefix)
        if (
            start_after is None
            or listing is None
            or listing.epoch != self._epoch
            or time.monotonic() - listing.at > PAGE_REUSE_SECONDS
        ):
            listing = await self._list(prefix)
            if listing.index > self._compacted:
                self._remember(prefix, listing)
        kvs, more = page(listing.kvs, start_after, limit)
        return RangeResult(kvs, listing.index, more)

    async def revision(self) -> int:
        """The KV store's current index. Consul answers a read of a missing key with the index of the
        whole KV table, so a random key that no one writes gives it."""
        _, index = await self._read(f"{self._cfg.root}.revision-probe-{secrets.token_hex(8)}")
        return index

    # --- writes ---------------------------------------------------------------------------------------------
    async def _txn(self, body: Sequence[Mapping[str, Any]]) -> tuple[bool, Any]:
        """PUT /v1/txn; (committed, decoded JSON). 409 is a rollback, not an error."""
        reply = await self._request("PUT", "/v1/txn", params=self._cfg.query(), body=list(body))
        if reply.status not in (200, 409):
            raise reply.fail("transaction")
        return reply.status == 200, reply.json()

    async def _observe(self, keys: Sequence[str], *, probe: bool) -> tuple[dict[str, Observed | None], int]:
        """Read each Consul key (concurrently): what a conditional write must know of it. With ``probe``,
        also the store's revision at that moment (else 0)."""
        index, found = await asyncio.gather(
            self.revision() if probe else _zero(), asyncio.gather(*(self._read(k) for k in keys))
        )
        observed = {
            k: (Observed.of(kv) if kv is not None else None) for k, (kv, _) in zip(keys, found, strict=True)
        }
        return observed, index

    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """Atomically: if every compare holds run ``success``, else ``failure``.

        The keys of the compares and of both branches' Puts are read, the branch is chosen from what was
        read, and one Consul transaction applies it while checking those keys are unchanged: the compares'
        keys for ``success``, one failed compare's key for ``failure`` (so it runs only while the condition
        is still false). If a key moved in between, everything is read and planned again.
        """
        await self._writing()
        root = self._cfg.root
        conds = [Compare(full_key(root, c.key), c.mod_revision) for c in compares]
        branches = ([full_op(root, op) for op in success], [full_op(root, op) for op in failure])
        keys = list(
            dict.fromkeys(
                [c.key for c in conds] + [op.key for b in branches for op in b if isinstance(op, Put)]
            )
        )
        # A branch without ops needs no write: the read that chose it is the answer, at the probed revision.
        probe = not branches[0] or (bool(conds) and not branches[1])
        for attempt in range(MAX_WRITE_ATTEMPTS):
            if attempt > 1:  # contended: spread the retries of competing writers
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))
            observed, read_revision = await self._observe(keys, probe=probe)
            failed = [c for c in conds if not holds(c, observed[c.key])]
            ops = branches[1] if failed else branches[0]
            if not ops:
                return TxnResult(not failed, read_revision)
            pins = [failed[0].key] if failed else [c.key for c in conds]
            pins += [op.key for op in ops if isinstance(op, Put)]
            plan = plan_txn(pins, ops, observed)
            committed, payload = await self._txn(plan.body)
            reply = decode_txn_reply(payload)
            if not committed:
                self._raise_for_ops(plan.body, plan.pins, reply.errors)
                continue  # a pinned key moved: read again
            revision = reply.max_index
            if not revision or not any(isinstance(op, Put) for op in ops):
                revision = await self.revision()
            return TxnResult(not failed, revision)
        raise ConsulError(f"transaction gave up after {MAX_WRITE_ATTEMPTS} attempts: its keys kept changing")

    def _raise_for_ops(
        self, body: Sequence[Mapping[str, Any]], pins: int, errors: Sequence[tuple[int, str]]
    ) -> None:
        """Raise for a rolled-back transaction unless one of its pins failed (then the caller retries).
        Consul evaluates every operation even after one failed, so a moved key can also make a later
        ``unlock`` fail: the pins are what decide."""
        if any(op_index < pins for op_index, _ in errors):
            return
        for op_index, what in errors:
            session = body[op_index]["KV"].get("Session") if op_index < len(body) else None
            if session and "session" in what.lower():
                raise LeaseNotFound(lease_of(session))
            raise ConsulError(f"Consul rejected the transaction (operation {op_index}): {what}", status=409)
        if not errors:
            raise ConsulError("Consul rolled back the transaction without saying why", status=409)

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        """Write unconditionally (a read, then a write pinned to it); returns the write's revision."""
        result = await self.txn([], [Put(key, value, lease)])
        return result.revision

    async def delete(self, key: str) -> bool:
        """Delete one key; ``get`` first in the same transaction fails it when the key is absent."""
        await self._writing()
        consul_key = full_key(self._cfg.root, key)
        committed, payload = await self._txn([kv_op("get", consul_key), kv_op("delete", consul_key)])
        if not committed:
            errors = decode_txn_reply(payload).errors
            if any(i != 0 for i, _ in errors):
                raise ConsulError(f"Consul refused to delete {key!r}: {errors}", status=409)
        return committed

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``, counted by a ``get-tree`` in the same transaction."""
        await self._writing()
        consul_prefix = full_key(self._cfg.root, prefix)
        committed, payload = await self._txn(
            [kv_op("get-tree", consul_prefix), kv_op("delete-tree", consul_prefix)]
        )
        reply = decode_txn_reply(payload)
        if not committed:
            raise ConsulError(f"Consul refused to delete prefix {prefix!r}: {reply.errors}", status=409)
        return len(reply.results)

    # --- history --------------------------------------------------------------------------------------------
    def watch(self, prefix: str, *, start_revision: int | None = None) -> Watch:
        """Changes under ``prefix`` from ``start_revision`` (see the module docstring for when that can be
        served and how changes are coalesced)."""
        watch = ConsulWatch(self, prefix, start_revision)
        self._watches.add(watch)
        return watch

    async def compact(self, revision: int) -> None:
        """Consul keeps no history to drop; this client forgets listings older than ``revision - 1`` and
        refuses watches that start before ``revision``."""
        self._compacted = max(self._compacted, revision - 1)
        for prefix in [p for p, listing in self._listings.items() if listing.index < self._compacted]:
            del self._listings[prefix]

    async def _writing(self) -> None:
        """Called before every write: let watches created earlier take their first listing, so a watch
        sees every write this client makes after creating it."""
        self._epoch += 1
        if self._starting:
            await asyncio.wait(list(self._starting), timeout=self._cfg.timeout)

    # --- leases ---------------------------------------------------------------------------------------------
    async def grant_lease(self, ttl: float) -> Lease:
        """A session with TTL ``ttl`` rounded up to whole seconds, at least 10 (Consul's minimum)."""
        seconds = session_ttl(ttl)
        reply = await self._request(
            "PUT", "/v1/session/create", params=self._cfg.query(), body=session_body(seconds)
        )
        if reply.status != 200:
            raise reply.fail("session create")
        payload = reply.json()
        if not isinstance(payload, Mapping) or not isinstance(payload.get("ID"), str):
            raise ConsulError(f"Consul session create returned {payload!r}")
        return Lease(lease_of(payload["ID"]), float(seconds))

    async def keep_alive(self, lease: Lease) -> None:
        """Renew the session; 404 means it expired or was destroyed."""
        reply = await self._request(
            "PUT", f"/v1/session/renew/{session_of(lease.id)}", params=self._cfg.query()
        )
        if reply.status == 404:
            raise LeaseNotFound(lease.id)
        if reply.status != 200:
            raise reply.fail("session renew")

    async def revoke_lease(self, lease: Lease) -> None:
        """Destroy the session: Consul deletes its keys (Behavior=delete). Idempotent in Consul."""
        await self._writing()
        reply = await self._request(
            "PUT", f"/v1/session/destroy/{session_of(lease.id)}", params=self._cfg.query()
        )
        if reply.status != 200:
            raise reply.fail("session destroy")


class ConsulWatch(Watch):
    """A blocking-query loop over one prefix that turns successive listings into events."""

    def __init__(self, store: ConsulStore, prefix: str, start_revision: int | None) -> None:
        self._store = store
        self._prefix = prefix
        self._start = start_revision
        self._pending: deque[Event] = deque()
        self._baseline: dict[str, int] | None = None  # key -> mod_revision of the last listing
        self._index = 0  # the listing index to block on
        self._after = 0  # last revision delivered (or start_revision - 1)
        self._last_poll = 0.0
        self._closed = False
        self._error: CompactedError | None = None  # once raised, raised again: the stream cannot go on
        self._task: asyncio.Task[None] | None = None
        # The first listing starts now, not at the first __anext__, so the stream begins where the watch
        # was created (the store's writes wait for it, see ConsulStore._writing).
        self._first: asyncio.Future[_Listing] | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # created outside a loop: the first listing is taken on first use
        if not store.connected:
            return
        self._first = asyncio.ensure_future(self._listing(0))
        store._starting.add(self._first)
        self._first.add_done_callback(_settled(store._starting))

    async def __anext__(self) -> Event:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            # The poll runs as a task so close() from another task can cancel a request blocked in Consul.
            self._task = asyncio.ensure_future(self._step())
            try:
                await self._task
            except asyncio.CancelledError:
                if self._closed:
                    raise StopAsyncIteration from None
                raise
            except CompactedError as exc:
                self._error = exc
                raise
            finally:
                self._task = None
        return self._pending.popleft()

    async def close(self) -> None:
        """Stop watching; an iteration in progress ends with StopAsyncIteration."""
        self._closed = True
        for task in (self._task, self._first):
            if task is not None and not task.done():
                task.cancel()

    async def _listing(self, index: int) -> _Listing:
        """A listing, retried with backoff (and endpoint failover) while the store is unreachable."""
        delay = 0.1
        while True:
            try:
                return await self._store._list(self._prefix, index=index, wait=self._store.config.wait)
            except StoreUnavailable:
                if not self._store.connected:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _step(self) -> None:
        if self._baseline is None:
            await self._begin()
            return
        pause = self._last_poll + MIN_POLL_INTERVAL - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        self._last_poll = time.monotonic()
        listing = await self._listing(self._index)
        self._advance(listing, floor=self._index)

    async def _begin(self) -> None:
        """Take the first listing and decide where the stream starts (the rule is in start_baseline)."""
        # Shielded: a caller that gives up on one __anext__ (a timeout) must not lose the first listing.
        listing = await (asyncio.shield(self._first) if self._first is not None else self._listing(0))
        start = self._start
        if start is None:
            self._baseline = {kv.key: kv.mod_revision for kv in listing.kvs}
            self._index = self._after = listing.index
            return
        if start - 1 < self._store._compacted:
            raise CompactedError(start, self._store._compacted)
        remembered = self._store._listings.get(self._prefix)
        how = start_baseline(start, listing.index, remembered.index if remembered is not None else None)
        if how == "current" or remembered is None:
            self._baseline = {kv.key: kv.mod_revision for kv in listing.kvs}
            self._index = listing.index
            self._after = start - 1
            return
        self._baseline = {kv.key: kv.mod_revision for kv in remembered.kvs}
        self._index = self._after = start - 1
        self._advance(listing, floor=remembered.index)

    def _advance(self, listing: _Listing, *, floor: int) -> None:
        assert self._baseline is not None
        events = diff_snapshots(
            self._baseline, listing.kvs, new_index=listing.index, floor=floor, after=self._after
        )
        self._pending.extend(events)
        if events:
            self._after = events[-1].revision
        self._baseline = {kv.key: kv.mod_revision for kv in listing.kvs}
        # An index that went backwards (tombstones reaped, snapshot restored) is simply adopted, as
        # Consul's blocking-query guide asks: the diff above already accounted for what changed.
        self._index = listing.index


def _settled(pending: set[asyncio.Future[_Listing]]) -> Callable[[asyncio.Future[_Listing]], None]:
    def done(future: asyncio.Future[_Listing]) -> None:
        pending.discard(future)
        if not future.cancelled():
            future.exception()  # the watch re-raises it when iterated; do not log it as unretrieved

    return done


async def _zero() -> int:
    return 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
