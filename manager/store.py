"""The manager's typed repository over a :class:`KVStore`, with an in-memory cache fed by a watch.

Reads come from the cache (every manager keeps one); writes go to the KV store, each conditional on the
revision the writer read (``obj.meta.version``), so two managers — or two orchestrators — never overwrite each
other silently: the loser gets :class:`Conflict`, re-reads and retries. The cache learns about every write,
its own included, from the watch, so all managers converge on the same view in revision order.

Objects live at ``<kind>/<id>`` (``tasks/3f2a…``) as msgpack (api.codec). An object's ``meta.version`` is the
``mod_revision`` of its key; it is set on read, never trusted from the stored bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from api import OBJECT_KINDS, Secret, Task, decode_msgpack, encode_msgpack, new_id, utcnow
from api.errors import CodecError
from kvstore_adapters import CompactedError, Compare, Delete, EventType, KVStore, Op, Put, Watch
from manager.errors import AlreadyExists, Conflict, NotFound
from manager.secretbox import SecretBox, SecretSealError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Model type → kind name (the key folder).
KIND_OF: dict[type, str] = {tp: kind for kind, tp in OBJECT_KINDS.items()}


def kind_of(obj_or_type: Any) -> str:
    """The kind name of a model object or type (``Task`` → ``"tasks"``)."""
    tp = obj_or_type if isinstance(obj_or_type, type) else type(obj_or_type)
    return KIND_OF[tp]


def key_of(kind: str, obj_id: str) -> str:
    """The KV key an object is stored under."""
    return f"{kind}/{obj_id}"


@dataclass(frozen=True, slots=True)
class Change:
    """One object change as the cache applied it. ``old`` is None for creations, ``new`` for deletions."""

    kind: str
    action: str  # "create" | "update" | "delete"
    old: Any
    new: Any
    revision: int

    @property
    def obj(self) -> Any:
        """The object as it is after the change (as it was, for deletions)."""
        return self.new if self.new is not None else self.old


@dataclass(frozen=True, slots=True)
class Create:
    """A creation inside :meth:`ObjectStore.batch`."""

    obj: Any


@dataclass(frozen=True, slots=True)
class Update:
    """An update inside :meth:`ObjectStore.batch`, conditional on ``obj.meta.version``."""

    obj: Any


@dataclass(frozen=True, slots=True)
class Remove:
    """A deletion inside :meth:`ObjectStore.batch`, conditional on ``obj.meta.version``."""

    obj: Any


Write = Create | Update | Remove


class ObjectStore:
    """Typed, cached access to the cluster's objects. ``await start()`` before use, ``await stop()`` after."""

    def __init__(self, kv: KVStore, secret_box: SecretBox | None = None) -> None:
        self.kv = kv
        #: Seals secrets' data before it reaches the KV store (None: secrets cannot be stored).
        self.secret_box = secret_box
        self._objects: dict[str, dict[str, Any]] = {kind: {} for kind in OBJECT_KINDS}
        self._tasks_by_service: dict[str, set[str]] = defaultdict(set)
        self._tasks_by_node: dict[str, set[str]] = defaultdict(set)
        #: The revision the cache reflects: every change up to it is applied.
        self.revision = 0
        self._advanced = asyncio.Condition()
        self._subscribers: set[asyncio.Queue[Change]] = set()
        self._watcher: asyncio.Task[None] | None = None
        #: The watch :meth:`_follow` reads, closed by :meth:`stop`.
        self._watch: Watch | None = None
        self._stopping = False

    # --- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every object, then follow the store's changes in the background."""
        await self._load()
        self._stopping = False
        self._watcher = asyncio.create_task(self._follow(), name="object-store-watch")

    async def stop(self) -> None:
        """Stop following changes."""
        if self._watcher is not None:
            # Closing the watch ends a read in progress. A cancellation alone may not: a task cancelled
            # while it waits in grpc's read of an etcd watch stream can wait on until the next message.
            self._stopping = True
            self._watcher.cancel()
            if self._watch is not None:
                await self._watch.close()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def _load(self) -> None:
        # Read the revision first: changes made while the folders are read are seen again by the watch
        # and skipped by _apply's revision check, so nothing is missed and nothing applied twice.
        start = await self.kv.revision()
        fresh: dict[str, dict[str, Any]] = {kind: {} for kind in OBJECT_KINDS}
        for kind, tp in OBJECT_KINDS.items():
            async for kv in self.kv.iter_prefix(f"{kind}/"):
                obj = self._decode(tp, kv.key, kv.value, kv.mod_revision)
                if obj is not None:
                    fresh[kind][obj.meta.id] = obj
        changes = self._replace_all(fresh)
        self.revision = max(self.revision, start)
        self._publish(changes)

    async def _follow(self) -> None:
        while not self._stopping:
            try:
                async with self.kv.watch("", start_revision=self.revision + 1) as events:
                    self._watch = events
                    async for ev in events:
                        change = self._apply(ev.type, ev.key, ev.value, ev.revision)
                        self.revision = max(self.revision, ev.revision)
                        if change is not None:
                            self._publish([change])
                        async with self._advanced:
                            self._advanced.notify_all()
            except CompactedError:
                # History we needed is gone: read everything again and report the difference.
                log.warning("store history compacted past revision %d; reloading", self.revision)
                await self._load()

    # --- cache maintenance -------------------------------------------------------------------------------
    def _decode(self, tp: type, key: str, value: bytes, revision: int) -> Any:
        try:
            obj: Any = decode_msgpack(tp, value)
            if isinstance(obj, Secret):
                obj = self._open_secret(obj)
        except (CodecError, SecretSealError) as e:
            log.error("ignoring unreadable object at %s: %s", key, e)
            return None
        # The object and its meta were just built by the decoder and nobody else holds them yet, so setting
        # the version in place is safe, and much cheaper than two dataclasses.replace() on every event.
        object.__setattr__(obj.meta, "version", revision)
        return obj

    def _apply(self, etype: EventType, key: str, value: bytes, revision: int) -> Change | None:
        kind, _, obj_id = key.partition("/")
        tp = OBJECT_KINDS.get(kind)
        if tp is None or not obj_id or "/" in obj_id:
            return None  # not an object (the leader key, the CA, …)
        old = self._objects[kind].get(obj_id)
        if old is not None and old.meta.version >= revision:
            return None  # already seen (by the initial load)
        if etype is EventType.DELETE:
            if old is None:
                return None
            self._remove(kind, old)
            return Change(kind, "delete", old, None, revision)
        new = self._decode(tp, key, value, revision)
        if new is None:
            return None
        self._put(kind, new, old)
        return Change(kind, "update" if old is not None else "create", old, new, revision)

    def _replace_all(self, fresh: dict[str, dict[str, Any]]) -> list[Change]:
        changes: list[Change] = []
        for kind, objs in fresh.items():
            for obj_id, old in list(self._objects[kind].items()):
                if obj_id not in objs:
                    self._remove(kind, old)
                    changes.append(Change(kind, "delete", old, None, self.revision))
            for obj in objs.values():
                old = self._objects[kind].get(obj.meta.id)
                if old is None or old.meta.version != obj.meta.version:
                    self._put(kind, obj, old)
                    action = "create" if old is None else "update"
                    changes.append(Change(kind, action, old, obj, obj.meta.version))
        return changes

    def _put(self, kind: str, obj: Any, old: Any) -> None:
        self._objects[kind][obj.meta.id] = obj
        if isinstance(obj, Task):
            if old is not None:
                self._unindex(old)
            self._tasks_by_service[obj.service_id].add(obj.meta.id)
            self._tasks_by_node[obj.node_id].add(obj.meta.id)

    def _remove(self, kind: str, old: Any) -> None:
        del self._objects[kind][old.meta.id]
        if isinstance(old, Task):
            self._unindex(old)

    def _unindex(self, task: Task) -> None:
        for index, value in ((self._tasks_by_service, task.service_id), (self._tasks_by_node, task.node_id)):
            ids = index.get(value)
            if ids is not None:
                ids.discard(task.meta.id)
                if not ids:
                    del index[value]

    def _publish(self, changes: Iterable[Change]) -> None:
        for change in changes:
            for queue in self._subscribers:
                queue.put_nowait(change)

    # --- reads (from the cache) --------------------------------------------------------------------------
    def get(self, tp: type[T], obj_id: str) -> T | None:
        """The object of type ``tp`` with that id, or None."""
        obj: T | None = self._objects[KIND_OF[tp]].get(obj_id)
        return obj

    def must_get(self, tp: type[T], obj_id: str) -> T:
        """The object of type ``tp`` with that id; raises NotFound."""
        obj = self.get(tp, obj_id)
        if obj is None:
            raise NotFound(KIND_OF[tp], obj_id)
        return obj

    def objects(self, tp: type[T]) -> list[T]:
        """Every object of type ``tp``."""
        return list(self._objects[KIND_OF[tp]].values())

    def find_by_name(self, tp: type[T], name: str) -> T | None:
        """The object whose ``spec.annotations.name`` is ``name`` (names are unique per kind); None for
        kinds without names (tasks)."""
        if tp is Task:
            return None
        for obj in self._objects[KIND_OF[tp]].values():
            if obj.spec.annotations.name == name:
                found: T = obj
                return found
        return None

    def tasks_of_service(self, service_id: str) -> list[Task]:
        """The tasks of one service (any state)."""
        tasks = self._objects["tasks"]
        return [tasks[i] for i in self._tasks_by_service.get(service_id, ())]

    def tasks_on_node(self, node_id: str) -> list[Task]:
        """The tasks assigned to one node (any state)."""
        tasks = self._objects["tasks"]
        return [tasks[i] for i in self._tasks_by_node.get(node_id, ())]

    async def fetch(self, tp: type[T], obj_id: str) -> T | None:
        """The object as the KV store holds it now, bypassing the cache (for read-modify-write retries)."""
        kv = await self.kv.get(key_of(KIND_OF[tp], obj_id))
        if kv is None:
            return None
        obj: T | None = self._decode(tp, kv.key, kv.value, kv.mod_revision)
        return obj

    async def wait_for(self, revision: int, timeout: float = 10.0) -> None:
        """Return once the cache reflects ``revision`` (read-your-writes after a write)."""
        async with asyncio.timeout(timeout), self._advanced:
            await self._advanced.wait_for(lambda: self.revision >= revision)

    async def changes(self) -> AsyncIterator[Change]:
        """Every change the cache applies from now on, in revision order."""
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(queue)

    # --- writes (to the store, conditional) --------------------------------------------------------------
    async def create(self, obj: T) -> T:
        """Store a new object (an id is assigned if it has none); raises AlreadyExists."""
        written: T = (await self.batch([Create(obj)]))[0]
        return written

    async def update(self, obj: T) -> T:
        """Store a changed object, if nobody changed it since ``obj.meta.version``; raises Conflict."""
        written: T = (await self.batch([Update(obj)]))[0]
        return written

    async def delete(self, obj: Any) -> None:
        """Delete an object, if unchanged since ``obj.meta.version``; raises Conflict."""
        await self.batch([Remove(obj)])

    async def batch(self, writes: Sequence[Write]) -> list[Any]:
        """Apply several writes atomically: all of them, or none and an error naming the first culprit.

        Returns the written objects (deletions: the object as given) with ``meta.version`` set to the
        revision of the write. Keep batches within the backend's transaction limit (etcd: 128 operations).
        """
        now = utcnow()
        compares: list[Compare] = []
        ops: list[Op] = []
        prepared: list[Any] = []
        for w in writes:
            obj = w.obj
            kind = kind_of(obj)
            if isinstance(w, Create):
                meta = replace(obj.meta, id=obj.meta.id or new_id(), created_at=now, updated_at=now)
                obj = replace(obj, meta=meta)
                compares.append(Compare.absent(key_of(kind, meta.id)))
            else:
                if obj.meta.version <= 0:
                    raise Conflict(kind, obj.meta.id, obj.meta.version)
                compares.append(Compare.at(key_of(kind, obj.meta.id), obj.meta.version))
                if isinstance(w, Update):
                    obj = replace(obj, meta=replace(obj.meta, updated_at=now))
            key = key_of(kind, obj.meta.id)
            ops.append(Delete(key) if isinstance(w, Remove) else Put(key, encode_msgpack(self._sealed(obj))))
            prepared.append(obj)
        if not ops:
            return []
        result = await self.kv.txn(compares, ops)
        if not result.succeeded:
            raise await self._explain_failure(writes, prepared)
        return [replace(o, meta=replace(o.meta, version=result.revision)) for o in prepared]

    def _sealed(self, obj: Any) -> Any:
        if not isinstance(obj, Secret):
            return obj
        if self.secret_box is None:
            raise SecretSealError("this manager has no secrets key: secrets cannot be stored")
        return replace(obj, spec=replace(obj.spec, data=self.secret_box.seal(obj.meta.id, obj.spec.data)))

    def _open_secret(self, secret: Secret) -> Secret:
        if self.secret_box is None:
            raise SecretSealError(f"secret {secret.meta.id}: this manager has no secrets key")
        data = self.secret_box.open(secret.meta.id, secret.spec.data)
        return replace(secret, spec=replace(secret.spec, data=data))

    async def _explain_failure(self, writes: Sequence[Write], prepared: list[Any]) -> Exception:
        for w, obj in zip(writes, prepared, strict=True):
            kind = kind_of(obj)
            current = await self.kv.get(key_of(kind, obj.meta.id))
            if isinstance(w, Create) and current is not None:
                return AlreadyExists(kind, obj.meta.id)
            if not isinstance(w, Create) and (current is None or current.mod_revision != obj.meta.version):
                return Conflict(kind, obj.meta.id, obj.meta.version)
        # Everything matches now: a concurrent writer came and went between the txn and this check.
        first = prepared[0]
        return Conflict(kind_of(first), first.meta.id, first.meta.version)
