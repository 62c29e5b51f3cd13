"""The one async KV store interface that everything above kvstore_adapters/ uses.

Revisions are the concurrency currency. The store has one revision counter that grows with every write
(etcd: the cluster revision; ZooKeeper: the zxid; Consul: the raft index; memory: a counter). Every key
carries the revision that created it and the one that last modified it, and every write the manager makes
is conditional on the ``mod_revision`` it read (:class:`Compare`), so two writers never overwrite each
other's changes silently.

Keys are ``/``-separated relative paths such as ``tasks/3f2a…``; each adapter maps them under the root
prefix named in its URL (``etcd://h:2379/shoal`` keeps them under ``/shoal/``). Prefixes Shoal uses end
with ``/``; adapters accept any prefix.

A :class:`Watch` yields every change under a prefix, in revision order, exactly once, from a starting
revision: after a connection loss the adapter reconnects and resumes after the last revision it delivered.
If the store no longer has history back to that revision the iterator raises
:class:`~kvstore_adapters.errors.CompactedError` so the caller can re-read and start over.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as the store holds it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    #: How many times the key was written since it was created (1 after the first put).
    version: int
    #: The lease the key is attached to, or ``None``.
    lease: int | None = None


class EventType(enum.Enum):
    """What happened to a key."""

    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch. ``value`` is empty for deletions; ``revision`` is the change's revision."""

    type: EventType
    key: str
    value: bytes
    revision: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    """A page of keys in key order. ``revision`` is the store's revision when the page was read: watching
    from ``revision + 1`` misses nothing that happened after it. ``more`` says whether keys remain after the
    last one returned (pass that key as ``start_after`` to read the next page)."""

    kvs: tuple[KeyValue, ...]
    revision: int
    more: bool


@dataclass(frozen=True, slots=True)
class Compare:
    """A condition of a transaction on one key's ``mod_revision``.

    ``mod_revision == 0`` means "the key does not exist" (create-only). Build them with :meth:`absent`
    and :meth:`at`.
    """

    key: str
    mod_revision: int

    @classmethod
    def absent(cls, key: str) -> Compare:
        """The key must not exist."""
        return cls(key, 0)

    @classmethod
    def at(cls, key: str, mod_revision: int) -> Compare:
        """The key must exist and not have changed since ``mod_revision``."""
        if mod_revision <= 0:
            raise ValueError("use Compare.absent() for keys that must not exist")
        return cls(key, mod_revision)


@dataclass(frozen=True, slots=True)
class Put:
    """A write inside a transaction."""

    key: str
    value: bytes
    lease: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """A deletion inside a transaction (a missing key is not an error)."""

    key: str


Op = Put | Delete


@dataclass(frozen=True, slots=True)
class TxnResult:
    """Whether every compare held (and so the success ops ran) and the store revision after the txn."""

    succeeded: bool
    revision: int


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease: keys put with it vanish when it expires or is revoked. ``ttl`` is in seconds."""

    id: int
    ttl: float


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL: ``scheme://host1:port1,host2:port2/prefix?param=value``.

    ``prefix`` has no leading or trailing ``/`` ("shoal"; "" for none). ``params`` carries adapter options
    such as TLS files (``cacert``, ``cert``, ``key``) or timeouts.
    """

    scheme: str
    endpoints: tuple[tuple[str, int], ...]
    prefix: str
    params: dict[str, str] = field(default_factory=dict)
    #: The URL as the user wrote it, for error messages.
    raw: str = ""


@dataclass(slots=True)
class StoreInfo:
    """What an adapter says of itself, for logs and error messages."""

    backend: str
    endpoints: str
    prefix: str
    extra: dict[str, str] = field(default_factory=dict)


class Watch(abc.ABC):
    """An async iterator of :class:`Event` under a prefix. Close it (or leave its ``async with``) to stop."""

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    @abc.abstractmethod
    async def __anext__(self) -> Event:
        """The next event, in revision order; raises CompactedError if history is gone."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching and release what the watch holds. Safe to call twice."""

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class KVStore(abc.ABC):
    """The async KV store protocol. One instance is one client connection (or session) to the store."""

    #: Short backend name used in messages: "etcd", "zookeeper", "consul", "memory".
    backend: str = "?"

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: StoreURL) -> KVStore:
        """A client (not yet connected) for the store the URL names; the registry calls this."""

    @abc.abstractmethod
    def info(self) -> StoreInfo:
        """Backend, endpoints and root prefix of this client."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection; raises StoreUnavailable naming the endpoints if none answers."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection. Leases this client granted are left to expire (not revoked)."""

    # --- reads -------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None:
        """The key, or ``None`` if it does not exist."""

    @abc.abstractmethod
    async def range(self, prefix: str, *, start_after: str | None = None, limit: int = 0) -> RangeResult:
        """Keys under ``prefix`` in key order, after ``start_after`` if given, at most ``limit`` (0: all)."""

    @abc.abstractmethod
    async def revision(self) -> int:
        """The store's current revision."""

    # --- writes ------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> int:
        """Write unconditionally; returns the write's revision."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete one key; returns whether it existed."""

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many there were."""

    @abc.abstractmethod
    async def txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """Atomically: if every compare holds run ``success``, else ``failure``. All or nothing."""

    # --- history -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def watch(self, prefix: str, *, start_revision: int | None = None) -> Watch:
        """Changes under ``prefix`` from ``start_revision`` (inclusive; ``None``: from now on)."""

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Drop history before ``revision``; watches starting earlier then fail with CompactedError."""

    # --- leases ------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def grant_lease(self, ttl: float) -> Lease:
        """A new lease of ``ttl`` seconds (adapters may round up to what the backend supports)."""

    @abc.abstractmethod
    async def keep_alive(self, lease: Lease) -> None:
        """Refresh the lease once; raises LeaseNotFound if it already expired or was revoked."""

    @abc.abstractmethod
    async def revoke_lease(self, lease: Lease) -> None:
        """End the lease now; its keys are deleted. Revoking an expired lease is not an error."""

    # --- helpers shared by every adapter ---------------------------------------------------------------
    async def iter_prefix(self, prefix: str, *, page_size: int = 1000) -> AsyncIterator[KeyValue]:
        """Every key under ``prefix``, read page by page so huge prefixes never load in one reply."""
        after: str | None = None
        while True:
            page = await self.range(prefix, start_after=after, limit=page_size)
            for kv in page.kvs:
                yield kv
            if not page.more or not page.kvs:
                return
            after = page.kvs[-1].key

    async def __aenter__(self) -> KVStore:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
