"""The manager's typed object store on every KV backend: conditional writes, atomic batches, and caches of
several managers that converge through the watch.

Run one backend: ``.venv/bin/pytest tests/contract/test_object_store.py -k etcd``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from api import Annotations, Service, Task
from api.objects import ServiceSpec
from manager.errors import AlreadyExists, Conflict
from manager.store import Change, Create, ObjectStore, Update
from tests.contract.conftest import Backend
from tests.contract.helpers import PROMPT


@pytest.fixture
async def stores(backend: Backend) -> AsyncIterator[Callable[[], asyncio.Future[ObjectStore]]]:
    """A factory of started object stores (each its own KV client, like separate managers)."""
    opened: list[ObjectStore] = []

    async def make() -> ObjectStore:
        s = ObjectStore(await backend.open())
        await s.start()
        opened.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in opened:
        await s.stop()


def service(name: str, replicas: int = 1) -> Service:
    return Service(spec=ServiceSpec(annotations=Annotations(name=name), replicas=replicas))


async def test_create_read_update_delete(stores: Callable[[], asyncio.Future[ObjectStore]]) -> None:
    s = await stores()
    created = await s.create(service("web"))
    assert created.meta.id and created.meta.version > 0
    assert created.meta.created_at == created.meta.updated_at
    await s.wait_for(created.meta.version)
    assert s.get(Service, created.meta.id) == created
    assert s.find_by_name(Service, "web") == created

    bigger = await s.update(replace(created, spec=replace(created.spec, replicas=5)))
    assert bigger.meta.version > created.meta.version
    assert bigger.meta.updated_at >= created.meta.updated_at
    await s.wait_for(bigger.meta.version)
    assert s.must_get(Service, created.meta.id).spec.replicas == 5

    await s.delete(bigger)
    await s.wait_for(await s.kv.revision())
    assert s.get(Service, created.meta.id) is None


async def test_writes_are_conditional_on_the_version_read(
    stores: Callable[[], asyncio.Future[ObjectStore]],
) -> None:
    s = await stores()
    v1 = await s.create(service("api"))
    v2 = await s.update(replace(v1, spec=replace(v1.spec, replicas=2)))
    with pytest.raises(Conflict, match="changed since version"):
        await s.update(replace(v1, spec=replace(v1.spec, replicas=9)))  # stale: read before v2
    with pytest.raises(Conflict):
        await s.delete(v1)
    with pytest.raises(AlreadyExists):
        await s.create(replace(service("again"), meta=v1.meta))
    current = await s.kv.get(f"services/{v1.meta.id}")
    assert current is not None and current.mod_revision == v2.meta.version


async def test_batch_is_all_or_nothing(stores: Callable[[], asyncio.Future[ObjectStore]]) -> None:
    s = await stores()
    svc = await s.create(service("db"))
    stale = svc
    await s.update(replace(svc, spec=replace(svc.spec, replicas=3)))
    fresh_task = Task(service_id=svc.meta.id, slot=1)
    with pytest.raises(Conflict):
        await s.batch([Create(fresh_task), Update(replace(stale, spec=replace(stale.spec, replicas=7)))])
    await s.wait_for(await s.kv.revision())
    assert s.tasks_of_service(svc.meta.id) == []  # the creation in the failed batch did not happen
    assert s.must_get(Service, svc.meta.id).spec.replicas == 3


async def test_caches_of_two_managers_converge_and_stream_changes(
    stores: Callable[[], asyncio.Future[ObjectStore]],
) -> None:
    a, b = await stores(), await stores()
    seen: list[Change] = []

    async def follow() -> None:
        async for change in b.changes():
            seen.append(change)
            if change.action == "delete":
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0)  # let the follower subscribe before the writes
    svc = await a.create(service("cache"))
    task = await a.create(Task(service_id=svc.meta.id, slot=1, node_id="n1"))
    moved = await a.update(replace(task, node_id="n2"))
    await a.delete(moved)
    await asyncio.wait_for(follower, PROMPT)

    assert [(c.kind, c.action) for c in seen] == [
        ("services", "create"),
        ("tasks", "create"),
        ("tasks", "update"),
        ("tasks", "delete"),
    ]
    assert [c.revision for c in seen] == sorted(c.revision for c in seen)
    assert seen[2].old.node_id == "n1" and seen[2].new.node_id == "n2"
    assert b.get(Service, svc.meta.id) == svc
    assert b.tasks_on_node("n1") == [] and b.tasks_on_node("n2") == []


async def test_indexes_follow_reassignment(stores: Callable[[], asyncio.Future[ObjectStore]]) -> None:
    s = await stores()
    t = await s.create(Task(service_id="svc", slot=1, node_id="n1"))
    t2 = await s.update(replace(t, node_id="n2"))
    await s.wait_for(t2.meta.version)
    assert [x.meta.id for x in s.tasks_on_node("n2")] == [t.meta.id]
    assert s.tasks_on_node("n1") == []
    assert [x.node_id for x in s.tasks_of_service("svc")] == ["n2"]


async def test_concurrent_read_modify_write_loses_nothing(
    stores: Callable[[], asyncio.Future[ObjectStore]],
) -> None:
    managers = [await stores() for _ in range(4)]
    svc = await managers[0].create(service("counter", replicas=0))

    async def bump(s: ObjectStore, times: int) -> None:
        for _ in range(times):
            while True:
                kv = await s.kv.get(f"services/{svc.meta.id}")
                assert kv is not None
                current = s._decode(Service, kv.key, kv.value, kv.mod_revision)
                try:
                    await s.update(
                        replace(current, spec=replace(current.spec, replicas=current.spec.replicas + 1))
                    )
                    break
                except Conflict:
                    continue

    await asyncio.gather(*(bump(m, 15) for m in managers))
    for m in managers:
        await m.wait_for(await m.kv.revision())
        assert m.must_get(Service, svc.meta.id).spec.replicas == 60


async def test_a_new_manager_loads_what_exists(stores: Callable[[], asyncio.Future[ObjectStore]]) -> None:
    first = await stores()
    created = [await first.create(service(f"s{i}")) for i in range(5)]
    late = await stores()
    assert sorted(x.meta.id for x in late.objects(Service)) == sorted(x.meta.id for x in created)
    assert late.revision >= created[-1].meta.version


async def test_stop_ends_at_once_even_with_a_read_of_the_watch_pending(backend: Backend) -> None:
    # A cancelled read of an etcd watch stream could wait on for its next message; stop must not.
    for i in range(30):
        kv = await backend.open()
        s = ObjectStore(kv)
        await s.start()
        await s.create(service(f"round-{i}"))
        started = time.monotonic()
        await s.stop()
        assert time.monotonic() - started < 3.0, f"stop took {time.monotonic() - started:.1f}s"
        await kv.close()
