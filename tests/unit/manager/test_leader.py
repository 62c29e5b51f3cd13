"""The leader's loop on an in-memory store: services become assigned tasks, scale, explain, and go away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from api import Annotations, Network, Node, Service, Task, TaskState
from api.objects import (
    ContainerSpec,
    EndpointSpec,
    Meta,
    NodeDescription,
    NodeSpec,
    NodeState,
    NodeStatus,
    Placement,
    PortConfig,
    PublishMode,
    Resources,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
)
from kvstore_adapters.memory import MemoryStore
from manager.leader import Leader
from manager.store import ObjectStore

WAIT = 5.0


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[ObjectStore, Leader]]:
    kv = MemoryStore()
    await kv.connect()
    store = ObjectStore(kv)
    await store.start()
    for i in range(1, 4):
        await store.create(
            Node(
                meta=Meta(id=f"n{i}"),
                spec=NodeSpec(annotations=Annotations(labels={"zone": "eu" if i < 3 else "us"})),
                status=NodeStatus(
                    state=NodeState.READY,
                    description=NodeDescription(
                        hostname=f"host{i}", resources=Resources(4_000_000_000, 8 << 30)
                    ),
                ),
            )
        )
    leader = Leader(store)
    run = asyncio.create_task(leader.run())
    yield store, leader
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    await store.stop()
    await kv.close()


async def until(check: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def service(name: str, replicas: int = 1, **placement: object) -> Service:
    return Service(
        spec=ServiceSpec(
            annotations=Annotations(name=name),
            replicas=replicas,
            task=TaskSpec(container=ContainerSpec(image="busybox"), placement=Placement(**placement)),  # type: ignore[arg-type]
        )
    )


def live(store: ObjectStore, service_id: str) -> list[Task]:
    return [t for t in store.tasks_of_service(service_id) if t.desired_state is TaskState.RUNNING]


async def test_replicas_are_created_assigned_and_spread(cluster: tuple[ObjectStore, Leader]) -> None:
    store, _ = cluster
    svc = await store.create(service("web", 6))
    await until(
        lambda: len([t for t in live(store, svc.meta.id) if t.status.state is TaskState.ASSIGNED]) == 6
    )
    tasks = live(store, svc.meta.id)
    assert sorted(t.slot for t in tasks) == [1, 2, 3, 4, 5, 6]
    per_node = sorted([t.node_id for t in tasks].count(n) for n in ("n1", "n2", "n3"))
    assert per_node == [2, 2, 2]

    svc = store.must_get(Service, svc.meta.id)
    await store.update(replace(svc, spec=replace(svc.spec, replicas=2)))
    await until(lambda: len(live(store, svc.meta.id)) == 2)


async def test_constraints_and_their_explanation(cluster: tuple[ObjectStore, Leader]) -> None:
    store, _ = cluster
    eu = await store.create(service("eu", 4, constraints=("node.labels.zone==eu",)))
    await until(lambda: len([t for t in live(store, eu.meta.id) if t.node_id]) == 4)
    assert {t.node_id for t in live(store, eu.meta.id)} == {"n1", "n2"}

    mars = await store.create(service("mars", 1, constraints=("node.labels.zone==mars",)))
    await until(lambda: any("no suitable node" in t.status.message for t in live(store, mars.meta.id)))
    (task,) = live(store, mars.meta.id)
    assert task.status.state is TaskState.PENDING and not task.node_id
    assert "constraint node.labels.zone==mars not met on 3 nodes" in task.status.message


async def test_global_service_one_task_per_node_and_late_joiners(cluster: tuple[ObjectStore, Leader]) -> None:
    store, _ = cluster
    svc = service("agent")
    svc = await store.create(replace(svc, spec=replace(svc.spec, mode=ServiceMode.GLOBAL)))
    await until(lambda: sorted(t.node_id for t in live(store, svc.meta.id)) == ["n1", "n2", "n3"])
    await store.create(Node(meta=Meta(id="n4"), status=NodeStatus(state=NodeState.READY)))
    await until(lambda: sorted(t.node_id for t in live(store, svc.meta.id)) == ["n1", "n2", "n3", "n4"])
    assert all(t.status.state is TaskState.ASSIGNED for t in live(store, svc.meta.id))


async def test_removed_service_tasks_are_stopped_then_deleted(cluster: tuple[ObjectStore, Leader]) -> None:
    store, _ = cluster
    svc = await store.create(service("gone", 2))
    await until(lambda: len([t for t in live(store, svc.meta.id) if t.node_id]) == 2)
    # One task runs on its agent; the other is only assigned.
    t1, t2 = live(store, svc.meta.id)
    for step in (
        TaskState.ACCEPTED,
        TaskState.PREPARING,
        TaskState.READY,
        TaskState.STARTING,
        TaskState.RUNNING,
    ):
        t1 = await store.update(t1.with_state(step))
    await store.delete(store.must_get(Service, svc.meta.id))
    await until(lambda: all(t.desired_state is TaskState.REMOVE for t in store.tasks_of_service(svc.meta.id)))
    running = store.must_get(Task, t1.meta.id)
    await store.update(running.with_state(TaskState.SHUTDOWN, "stopped by its agent"))
    t2now = store.get(Task, t2.meta.id)
    if t2now is not None:
        await store.update(t2now.with_state(TaskState.SHUTDOWN))
    await until(lambda: store.tasks_of_service(svc.meta.id) == [])


async def test_a_down_node_loses_its_tasks_to_the_others(cluster: tuple[ObjectStore, Leader]) -> None:
    store, _ = cluster
    svc = await store.create(service("ha", 3))
    await until(lambda: len([t for t in live(store, svc.meta.id) if t.node_id]) == 3)
    n3 = store.must_get(Node, "n3")
    await store.update(replace(n3, status=replace(n3.status, state=NodeState.DOWN)))
    await until(lambda: {t.node_id for t in live(store, svc.meta.id) if t.node_id} <= {"n1", "n2"})
    await until(lambda: len([t for t in live(store, svc.meta.id) if t.node_id]) == 3)
    orphans = [t for t in store.tasks_of_service(svc.meta.id) if t.status.state is TaskState.ORPHANED]
    assert [t.node_id for t in orphans] == ["n3"]


async def test_a_published_port_brings_the_ingress_network_and_its_addresses(
    cluster: tuple[ObjectStore, Leader],
) -> None:
    store, leader = cluster
    await store.create(service("plain", 1))
    await asyncio.sleep(0.1)
    assert store.objects(Network) == []  # no routing mesh until a service needs one

    published = service("web", 2)
    endpoint = EndpointSpec(
        ports=(
            PortConfig(target_port=80, published_port=8080),
            PortConfig(target_port=443, published_port=8443, publish_mode=PublishMode.HOST),
        )
    )
    web = await store.create(replace(published, spec=replace(published.spec, endpoint=endpoint)))
    await until(lambda: len([t for t in live(store, web.meta.id) if t.node_id]) == 2)
    (ingress,) = store.objects(Network)
    assert ingress.spec.ingress and ingress.spec.annotations.name == "ingress" and ingress.status.vni
    # Every node has an address there, and so has every task of the service (the host port stays a port
    # of the node: the task carries it for the scheduler and the agent).
    nodes = store.objects(Node)
    await until(lambda: all(n.attachments for n in store.objects(Node)))
    addresses = [a for n in store.objects(Node) for a in n.attachments[0].addresses]
    for t in live(store, web.meta.id):
        assert [a.network_id for a in t.networks] == [ingress.meta.id]
        addresses += t.networks[0].addresses
        assert [(p.published_port, p.publish_mode) for p in t.endpoint.ports] == [
            (8080, PublishMode.INGRESS),
            (8443, PublishMode.HOST),
        ]
    assert len(set(addresses)) == len(nodes) + 2

    # Removing the service frees its port for another one.
    await store.delete(store.must_get(Service, web.meta.id))
    again = await store.create(replace(published, spec=replace(published.spec, endpoint=endpoint)))

    def ports() -> list[int]:
        svc = store.get(Service, again.meta.id)
        return [p.published_port for p in svc.status.endpoint.ports] if svc else []

    await until(lambda: ports() == [8080, 8443])
    assert leader.allocator.ports == {("tcp", 8080)}
