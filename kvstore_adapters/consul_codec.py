"""Pure pieces of the Consul adapter: URL options, key mapping, JSON decoding, transaction bodies and the
snapshot diff that turns two blocking-query results into watch events. No I/O here, so all of it is unit
tested without a Consul server (tests/unit/test_consul_codec.py); :mod:`kvstore_adapters.consul` does the
HTTP.

How the :mod:`kvstore_adapters.base` model maps onto Consul's KV store:

- **revision** is Consul's raft index: ``ModifyIndex``/``CreateIndex`` of an entry, ``X-Consul-Index`` of a
  read. A listing's ``X-Consul-Index`` is the highest index among the prefix's entries and tombstones.
- **version** is kept in the entry's ``Flags``: every write made through this adapter stores the key's
  previous version + 1 (1 on creation, so it restarts at 1 after a delete, as in etcd). Consul has no
  write counter of its own; an entry written by another client reports its ``Flags`` (at least 1).
- **leases** are Consul sessions (TTL, ``Behavior=delete``, no lock delay, no health checks). The lease id is
  the session UUID as a 128-bit integer; a key put with a lease is written with the ``lock`` verb (acquire).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvstore_adapters.base import Compare, Delete, Event, EventType, KeyValue, Op, Put, StoreURL
from kvstore_adapters.errors import CompactedError, InvalidStoreURL, KVError, LeaseNotFound

DEFAULT_PORT = 8500
#: Consul < 1.14 accepts at most 64 operations per transaction (1.14 raised it to 128); stay portable.
MAX_TXN_OPS = 64
#: Session TTL bounds enforced by Consul.
MIN_SESSION_TTL = 10
MAX_SESSION_TTL = 86400
#: The longest ``wait`` Consul honours for a blocking query.
MAX_WAIT = 600.0

_KNOWN_PARAMS = frozenset({"token", "tls", "cacert", "cert", "key", "dc", "timeout", "wait"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class ConsulError(KVError):
    """Consul answered, but not as expected: an HTTP error status, a malformed reply, a transaction that
    is too big or that kept conflicting. ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# --- URL options -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConsulConfig:
    """What a ``consul://`` URL asks for, validated.

    ``consul://h1:8500,h2:8500/shoal?token=…&tls=1&cacert=ca.pem&cert=c.pem&key=k.pem&dc=dc1&timeout=10&wait=60``
    The ACL token falls back to ``CONSUL_HTTP_TOKEN``; ``cacert``/``cert`` imply TLS.
    """

    endpoints: tuple[tuple[str, int], ...]
    #: Root under which every key lives: ``"shoal/"``, or ``""`` for the whole KV store.
    root: str
    https: bool
    token: str | None
    cacert: str | None
    cert: str | None
    key: str | None
    datacenter: str | None
    #: Seconds allowed for one ordinary request.
    timeout: float
    #: Seconds a watch's blocking query waits on the server before it returns unchanged.
    wait: float
    raw: str = ""

    @property
    def base_urls(self) -> tuple[str, ...]:
        """``http(s)://host:port`` of each endpoint, in the URL's order."""
        scheme = "https" if self.https else "http"
        return tuple(f"{scheme}://{_host(h)}:{p}" for h, p in self.endpoints)

    @property
    def endpoints_text(self) -> str:
        """Endpoints as written in messages: ``h1:8500,h2:8500``."""
        return ",".join(f"{_host(h)}:{p}" for h, p in self.endpoints)

    def query(self, **extra: str) -> dict[str, str]:
        """Query parameters for a request: ``dc`` when set, plus ``extra`` (flags map to ``""``)."""
        params = {"dc": self.datacenter} if self.datacenter else {}
        params.update(extra)
        return params

    def headers(self) -> dict[str, str]:
        """Headers sent with every request (the ACL token travels here, never in the query string)."""
        return {"X-Consul-Token": self.token} if self.token else {}


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _seconds(url: StoreURL, name: str, default: float, low: float, high: float) -> float:
    text = url.params.get(name)
    if text is None:
        return default
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise InvalidStoreURL(url.raw, f"{name}={text!r} is not a number of seconds") from None
    if not low <= value <= high:
        raise InvalidStoreURL(url.raw, f"{name}={text!r} must be between {low:g} and {high:g} seconds")
    return value


def parse_config(url: StoreURL, env: Mapping[str, str]) -> ConsulConfig:
    """Validate a parsed ``consul://`` URL; raises InvalidStoreURL naming what is wrong."""
    unknown = sorted(set(url.params) - _KNOWN_PARAMS)
    if unknown:
        raise InvalidStoreURL(
            url.raw, f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN_PARAMS))}"
        )
    if not url.endpoints:
        raise InvalidStoreURL(url.raw, "no Consul endpoint given")
    endpoints = tuple((h, p or DEFAULT_PORT) for h, p in url.endpoints)
    tls_text = url.params.get("tls", "").lower()
    if tls_text not in _TRUE | _FALSE:
        raise InvalidStoreURL(url.raw, f"tls={url.params['tls']!r} is not a boolean")
    cacert, cert, key = (url.params.get(n) or None for n in ("cacert", "cert", "key"))
    if (cert is None) != (key is None):
        raise InvalidStoreURL(url.raw, "cert and key must be given together")
    if url.params.get("tls") is not None and tls_text in _FALSE and (cacert or cert):
        raise InvalidStoreURL(url.raw, "tls=0 contradicts cacert/cert")
    prefix = url.prefix.strip("/")
    return ConsulConfig(
        endpoints=endpoints,
        root=f"{prefix}/" if prefix else "",
        https=tls_text in _TRUE or cacert is not None or cert is not None,
        token=url.params.get("token") or env.get("CONSUL_HTTP_TOKEN") or None,
        cacert=cacert,
        cert=cert,
        key=key,
        datacenter=url.params.get("dc") or None,
        timeout=_seconds(url, "timeout", 10.0, 0.1, 3600.0),
        wait=_seconds(url, "wait", 60.0, 1.0, MAX_WAIT),
        raw=url.raw,
    )


def format_wait(seconds: float) -> str:
    """A Consul duration for ``wait``: whole seconds, at least 1."""
    return f"{max(1, math.ceil(seconds))}s"


# --- keys, leases and sessions -----------------------------------------------------------------------------
def full_key(root: str, key: str) -> str:
    """The Consul key for a Shoal key."""
    return root + key


def user_key(root: str, consul_key: str) -> str:
    """The Shoal key for a Consul key under ``root``."""
    if not consul_key.startswith(root):
        raise ConsulError(f"Consul returned key {consul_key!r} outside the root {root!r}")
    return consul_key[len(root) :]


def session_of(lease_id: int) -> str:
    """The Consul session id a lease id stands for; an id no session can have is a lease not found."""
    try:
        return str(uuid.UUID(int=lease_id))
    except ValueError:
        raise LeaseNotFound(lease_id) from None


def lease_of(session: str) -> int:
    """The lease id of a Consul session id (the UUID as an integer)."""
    try:
        return uuid.UUID(session).int
    except ValueError:
        raise ConsulError(f"Consul returned a malformed session id {session!r}") from None


def session_ttl(ttl: float) -> int:
    """Whole seconds Consul will accept for a lease of ``ttl``: rounded up, at least 10."""
    if not ttl > 0:
        raise ValueError(f"lease TTL must be positive, not {ttl!r}")
    if ttl > MAX_SESSION_TTL:
        raise ValueError(f"Consul sessions last at most {MAX_SESSION_TTL} s, not {ttl:g}")
    return max(MIN_SESSION_TTL, math.ceil(ttl))


def session_body(ttl_seconds: int) -> dict[str, Any]:
    """The JSON for PUT /v1/session/create. ``Checks: []`` drops the default serfHealth check (so only the
    TTL ends the session), ``Behavior: delete`` makes its keys vanish with it, ``LockDelay: 0s`` lets them be
    re-created at once."""
    return {
        "Name": "shoal-lease",
        "TTL": f"{ttl_seconds}s",
        "Behavior": "delete",
        "LockDelay": "0s",
        "Checks": [],
    }


# --- decoding replies -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer from Consul: status, the raw X-Consul-Index header and the body."""

    status: int
    index: str | None
    body: bytes

    def json(self) -> Any:
        """The body as JSON (``None`` when empty)."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            raise ConsulError(f"Consul sent invalid JSON: {self.body[:200]!r}", status=self.status) from None

    def fail(self, what: str) -> ConsulError:
        """The error to raise when this answer was not the expected one."""
        text = self.body.decode("utf-8", "replace").strip()[:500]
        return ConsulError(f"Consul {what} failed with HTTP {self.status}: {text}", status=self.status)


def parse_index(value: str | None) -> int:
    """The ``X-Consul-Index`` header as an int. Consul documents that 0 is a bug of some versions and that
    an index of 1 is always safe to block on, so values below 1 become 1."""
    if value is None:
        raise ConsulError("Consul reply lacks the X-Consul-Index header")
    try:
        index = int(value)
    except ValueError:
        raise ConsulError(f"malformed X-Consul-Index {value!r}") from None
    return max(index, 1)


def _int(entry: Mapping[str, Any], name: str) -> int:
    value = entry.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConsulError(f"Consul entry field {name}={value!r} is not an unsigned integer")
    return value


def decode_value(value: Any) -> bytes:
    """A base64 ``Value`` field (``null`` for an empty value) as bytes."""
    if value is None:
        return b""
    if not isinstance(value, str):
        raise ConsulError(f"Consul value is not a base64 string: {value!r}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConsulError("Consul value is not valid base64") from None


def decode_entry(entry: Any, root: str) -> KeyValue:
    """One KV entry of a /v1/kv or /v1/txn reply as a KeyValue (key relative to ``root``)."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("Key"), str):
        raise ConsulError(f"malformed Consul KV entry: {entry!r}")
    session = entry.get("Session") or None
    if session is not None and not isinstance(session, str):
        raise ConsulError(f"malformed Consul session field: {session!r}")
    return KeyValue(
        key=user_key(root, entry["Key"]),
        value=decode_value(entry.get("Value")),
        create_revision=_int(entry, "CreateIndex"),
        mod_revision=_int(entry, "ModifyIndex"),
        version=max(1, _int(entry, "Flags")),
        lease=lease_of(session) if session else None,
    )


def decode_entries(payload: Any, root: str) -> tuple[KeyValue, ...]:
    """A /v1/kv reply body (a JSON list of entries; ``None`` for a 404) as KeyValues in key order."""
    if payload is None:
        return ()
    if not isinstance(payload, list):
        raise ConsulError(f"Consul KV reply is not a list: {type(payload).__name__}")
    return tuple(sorted((decode_entry(e, root) for e in payload), key=lambda kv: kv.key))


def page(kvs: Sequence[KeyValue], start_after: str | None, limit: int) -> tuple[tuple[KeyValue, ...], bool]:
    """The keys after ``start_after`` (Consul cannot start a listing mid-way), at most ``limit`` (0: all),
    and whether more remain. ``kvs`` must be in key order."""
    rest = [kv for kv in kvs if start_after is None or kv.key > start_after]
    if limit and len(rest) > limit:
        return tuple(rest[:limit]), True
    return tuple(rest), False


@dataclass(frozen=True, slots=True)
class TxnReply:
    """A decoded /v1/txn reply: KV results (in op order, where Consul gives one) and errors."""

    results: tuple[Mapping[str, Any], ...]
    #: ``(op index, message)`` for every failed operation; empty when the transaction committed.
    errors: tuple[tuple[int, str], ...]

    @property
    def max_index(self) -> int:
        """The highest ModifyIndex among the results: the transaction's own index when it wrote a key
        (set/cas/lock/unlock results carry it); 0 when no result names one (deletes return nothing)."""
        return max((_int(r, "ModifyIndex") for r in self.results), default=0)


def decode_txn_reply(payload: Any) -> TxnReply:
    """The JSON body Consul sends for a 200 (committed) or 409 (rolled back) /v1/txn answer."""
    if not isinstance(payload, Mapping):
        raise ConsulError(f"malformed Consul transaction reply: {payload!r}")
    results = []
    for item in payload.get("Results") or ():
        kv = item.get("KV") if isinstance(item, Mapping) else None
        if not isinstance(kv, Mapping):
            raise ConsulError(f"malformed Consul transaction result: {item!r}")
        results.append(kv)
    errors = []
    for item in payload.get("Errors") or ():
        if not isinstance(item, Mapping) or not isinstance(item.get("OpIndex", 0), int):
            raise ConsulError(f"malformed Consul transaction error: {item!r}")
        errors.append((int(item.get("OpIndex", 0)), str(item.get("What", ""))))
    return TxnReply(tuple(results), tuple(errors))


# --- transaction bodies -------------------------------------------------------------------------------------
def kv_op(
    verb: str,
    key: str,
    *,
    value: bytes | None = None,
    flags: int | None = None,
    index: int | None = None,
    session: str | None = None,
) -> dict[str, Any]:
    """One ``{"KV": {...}}`` operation of a /v1/txn body (values are base64, as Consul requires)."""
    op: dict[str, Any] = {"Verb": verb, "Key": key}
    if value is not None:
        op["Value"] = base64.b64encode(value).decode("ascii")
    if flags is not None:
        op["Flags"] = flags
    if index is not None:
        op["Index"] = index
    if session is not None:
        op["Session"] = session
    return {"KV": op}


@dataclass(frozen=True, slots=True)
class Observed:
    """What a read saw of one key, enough to write it conditionally and carry its version forward."""

    mod_revision: int
    version: int
    #: The session (lease) holding the key, if any.
    session: str | None = None

    @classmethod
    def of(cls, kv: KeyValue) -> Observed:
        """The observation of a key read as ``kv``."""
        return cls(kv.mod_revision, kv.version, session_of(kv.lease) if kv.lease is not None else None)


def holds(compare: Compare, seen: Observed | None) -> bool:
    """Whether ``compare`` is true of a key observed as ``seen`` (``None``: absent)."""
    if compare.mod_revision == 0:
        return seen is None
    return seen is not None and seen.mod_revision == compare.mod_revision


def pin(key: str, seen: Observed | None) -> dict[str, Any]:
    """A check that fails the transaction unless ``key`` is still as observed."""
    if seen is None:
        return kv_op("check-not-exists", key)
    return kv_op("check-index", key, index=seen.mod_revision)


@dataclass(frozen=True, slots=True)
class TxnPlan:
    """A /v1/txn body: ``pins`` state checks first, then the writes. A failure among the pins means the
    keys moved since they were read (read again and retry); a failure after them is a real error."""

    body: tuple[dict[str, Any], ...]
    pins: int


def plan_txn(pin_keys: Iterable[str], ops: Sequence[Op], observed: Mapping[str, Observed | None]) -> TxnPlan:
    """The transaction that applies ``ops`` (Consul keys) provided every key in ``pin_keys`` is still as
    ``observed``. Every key a Put writes must be observed (or deleted earlier in ``ops``): its version
    comes from there, and pinning it is what makes the version exact.

    A Put keeps the key's lock consistent with its lease: without a lease it ``unlock``s a key some session
    holds (Consul's plain ``set`` would keep the holder); with a lease it ``lock``s, releasing another
    holder first, so the key moves to the new lease as in etcd.
    """
    state: dict[str, Observed | None] = dict(observed)
    checks = [pin(k, observed[k]) for k in dict.fromkeys(pin_keys)]
    writes: list[dict[str, Any]] = []
    for op in ops:
        if isinstance(op, Delete):
            writes.append(kv_op("delete", op.key))
            state[op.key] = None
            continue
        if op.key not in state:
            raise KeyError(f"plan_txn: {op.key!r} is written but was not observed")
        current = state[op.key]
        version = current.version + 1 if current is not None else 1
        holder = current.session if current is not None else None
        wanted = session_of(op.lease) if op.lease is not None else None
        if holder is not None and holder != wanted:
            writes.append(kv_op("unlock", op.key, value=op.value, flags=version, session=holder))
        if wanted is not None:
            writes.append(kv_op("lock", op.key, value=op.value, flags=version, session=wanted))
        elif holder is None:
            writes.append(kv_op("set", op.key, value=op.value, flags=version))
        state[op.key] = Observed(0, version, wanted)
    body = tuple(checks + writes)
    if len(body) > MAX_TXN_OPS:
        raise ConsulError(f"transaction needs {len(body)} Consul operations; Consul allows {MAX_TXN_OPS}")
    return TxnPlan(body, len(checks))


def full_op(root: str, op: Op) -> Op:
    """``op`` with its key mapped under ``root``."""
    if isinstance(op, Put):
        return Put(full_key(root, op.key), op.value, op.lease)
    return Delete(full_key(root, op.key))


# --- watch: from two snapshots to events -------------------------------------------------------------------
def diff_snapshots(
    old: Mapping[str, int], new: Sequence[KeyValue], *, new_index: int, floor: int, after: int
) -> list[Event]:
    """The events that turn snapshot ``old`` (key → mod_revision, taken at index ``floor``) into ``new``
    (taken at ``new_index``), in revision order, none at or before ``after`` (the last revision the watch
    already delivered, or start_revision - 1).

    - A new or changed key is one PUT at its ModifyIndex with its current value. Writes to the same key
      between two snapshots are coalesced into that one event (Consul keeps no history to replay them).
    - A vanished key is one DELETE at ``max(new_index, after + 1)``: Consul does not say when a key was
      deleted, so the event carries the first index at which the deletion is known to have happened.
    - A PUT at or before ``after`` but after ``floor`` happened before the watch's start revision and is
      only folded into the state. One at or before ``floor`` means the store's history was rewritten (a
      snapshot restore): that raises CompactedError, as no ordered stream can describe it.
    """
    events: list[Event] = []
    for kv in new:
        if old.get(kv.key) == kv.mod_revision:
            continue
        if kv.mod_revision <= floor:
            raise CompactedError(after + 1, new_index)
        if kv.mod_revision > after:
            events.append(Event(EventType.PUT, kv.key, kv.value, kv.mod_revision))
    present = {kv.key for kv in new}
    delete_rev = max(new_index, after + 1)
    events.extend(Event(EventType.DELETE, k, b"", delete_rev) for k in old if k not in present)
    events.sort(key=lambda e: (e.revision, e.key))
    return events


def start_baseline(start_revision: int, listing_index: int, remembered_index: int | None) -> str:
    """How a watch from ``start_revision`` can start, given the prefix's current listing index and the
    index of a listing this client remembers (or ``None``). Consul keeps no history, so:

    - ``"current"``: nothing under the prefix changed at or after ``start_revision`` (the listing index is
      below it): the current listing is the state just before it.
    - ``"remembered"``: this client listed the prefix at exactly ``start_revision - 1`` (the usual
      "range, then watch from revision + 1"): diffing that listing against the current one yields every
      change since, coalesced per key.
    - otherwise CompactedError: what happened between ``start_revision`` and now cannot be known exactly.
    """
    if listing_index < start_revision:
        return "current"
    if remembered_index is not None and remembered_index == start_revision - 1:
        return "remembered"
    raise CompactedError(start_revision, listing_index)
