"""The peers a manager sends: endpoints and services per overlay network, versions, frames per session."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from api import Network, Node, Service, Task, TaskState
from api.objects import (
    Annotations,
    Endpoint,
    EndpointMode,
    EndpointSpec,
    Meta,
    NetworkAttachment,
    NetworkAttachmentConfig,
    NetworkSpec,
    NetworkStatus,
    NodeStatus,
    PortConfig,
    PublishMode,
    ServiceSpec,
    ServiceStatus,
    TaskSpec,
    TaskStatus,
)
from kvstore_adapters.memory import MemoryStore
from manager.peers import PeerIndex, PeerSession
from manager.store import ObjectStore


class Harness:
    """A store and a peer index fed by its changes (as the dispatcher feeds it)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.index = PeerIndex(store)
        self._touched: set[str] = set()
        self._follower = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for change in self.store.changes():
            self._touched |= self.index.on_change(change)

    async def settle(self) -> set[str]:
        """Wait until the index has seen every write so far; the networks touched since the last call."""
        await self.store.wait_for(await self.store.kv.revision())
        await asyncio.sleep(0.01)
        touched, self._touched = self._touched, set()
        return touched

    async def close(self) -> None:
        self._follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._follower


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    kv = MemoryStore()
    await kv.connect()
    store = ObjectStore(kv)
    await store.start()
    for i in (1, 2):
        await store.create(Node(meta=Meta(id=f"n{i}"), status=NodeStatus(addr=f"10.200.0.{i}:4242")))
    await store.create(
        Network(
            meta=Meta(id="ov"),
            spec=NetworkSpec(annotations=Annotations(name="my-net"), driver="overlay"),
            status=NetworkStatus(vni=4096),
        )
    )
    await store.create(
        Network(meta=Meta(id="br"), spec=NetworkSpec(annotations=Annotations(name="local"), driver="bridge"))
    )
    await store.create(
        Service(
            meta=Meta(id="web"),
            spec=ServiceSpec(
                annotations=Annotations(name="web"),
                task=TaskSpec(networks=(NetworkAttachmentConfig("my-net", ("www",)),)),
            ),
            status=ServiceStatus(endpoint=Endpoint(virtual_ips={"ov": "10.0.9.2/24"})),
        )
    )
    harness = Harness(store)
    try:
        await harness.settle()
        yield harness
    finally:
        await harness.close()
        await store.stop()
        await kv.close()


async def task(h: Harness, task_id: str, node: str, ip: str, state: TaskState, slot: int = 1) -> Task:
    return await h.store.create(
        Task(
            meta=Meta(id=task_id),
            service_id="web",
            slot=slot,
            node_id=node,
            service_annotations=Annotations(name="web"),
            status=TaskStatus(state=state),
            networks=(NetworkAttachment("ov", (f"{ip}/24",)),),
        )
    )


async def set_state(h: Harness, task_id: str, state: TaskState, **changes: object) -> None:
    t = h.store.must_get(Task, task_id)
    await h.store.update(replace(t, status=replace(t.status, state=state), **changes))  # type: ignore[arg-type]


async def test_network_peers_list_endpoints_services_and_node_addresses(h: Harness) -> None:
    await task(h, "t1", "n1", "10.0.9.3", TaskState.RUNNING)
    await task(h, "t2", "n2", "10.0.9.4", TaskState.STARTING, slot=2)
    await task(h, "t0", "", "10.0.9.5", TaskState.PENDING, slot=3)  # not placed: no endpoint
    await h.settle()
    peers = h.index.network_peers("ov")
    assert [(e.task_id, e.node_addr, e.addresses, e.serving) for e in peers.endpoints] == [
        ("t1", "10.200.0.1", ("10.0.9.3/24",), True),
        ("t2", "10.200.0.2", ("10.0.9.4/24",), False),
    ]
    assert peers.endpoints[0].name == "web.1.t1"
    (web,) = peers.services
    assert (web.name, web.endpoint_mode, web.virtual_ip, web.aliases) == (
        "web",
        EndpointMode.VIP,
        "10.0.9.2/24",
        ("www",),
    )


async def test_frames_carry_what_changed_and_nothing_when_nothing_did(h: Harness) -> None:
    await task(h, "t1", "n1", "10.0.9.3", TaskState.ASSIGNED)
    await task(h, "t2", "n2", "10.0.9.4", TaskState.RUNNING, slot=2)
    await h.settle()
    s1 = PeerSession()
    wanted = h.index.wanted(h.store.tasks_on_node("n1"))
    assert wanted == {"ov"}
    first = h.index.frame("n1", s1, wanted)
    assert first is not None and first.full and [n.network_id for n in first.networks] == ["ov"]
    assert h.index.frame("n1", s1, wanted) is None
    assert h.index.watchers["ov"] == {"n1"}

    # Steps the other hosts cannot see change nothing.
    await set_state(h, "t1", TaskState.PREPARING)
    assert await h.settle() == set()
    assert h.index.frame("n1", s1, wanted) is None

    # Starting to serve does.
    await set_state(h, "t1", TaskState.RUNNING)
    assert await h.settle() == {"ov"}
    frame = h.index.frame("n1", s1, wanted)
    assert frame is not None and not frame.full
    assert {e.task_id: e.serving for e in frame.networks[0].endpoints} == {"t1": True, "t2": True}

    # A task being stopped stops serving at once, and is gone once it ended.
    await set_state(h, "t2", TaskState.RUNNING, desired_state=TaskState.SHUTDOWN)
    assert await h.settle() == {"ov"}
    assert {e.task_id: e.serving for e in h.index.network_peers("ov").endpoints} == {"t1": True, "t2": False}
    await set_state(h, "t2", TaskState.SHUTDOWN)
    await h.settle()
    assert [e.task_id for e in h.index.network_peers("ov").endpoints] == ["t1"]

    # The node's last task on the network ends: the network is removed from its agent.
    await set_state(h, "t1", TaskState.COMPLETE)
    await h.settle()
    wanted = h.index.wanted(h.store.tasks_on_node("n1"))
    frame = h.index.frame("n1", s1, wanted)
    assert frame is not None and frame.removed == ("ov",) and frame.networks == ()
    assert h.index.watchers["ov"] == set()


async def test_service_and_node_changes_reach_the_networks_they_affect(h: Harness) -> None:
    await task(h, "t1", "n1", "10.0.9.3", TaskState.RUNNING)
    await h.settle()
    h.index.network_peers("ov")
    svc = h.store.must_get(Service, "web")
    spec = replace(svc.spec, endpoint=EndpointSpec(mode=EndpointMode.DNSRR))
    await h.store.update(replace(svc, spec=spec))
    assert await h.settle() == {"ov"}
    assert h.index.network_peers("ov").services[0].virtual_ip == ""

    node = h.store.must_get(Node, "n1")
    await h.store.update(replace(node, status=replace(node.status, addr="10.200.0.9")))
    assert await h.settle() == {"ov"}
    assert h.index.network_peers("ov").endpoints[0].node_addr == "10.200.0.9"
    # A heartbeat-like write that keeps the address touches nothing.
    node = h.store.must_get(Node, "n1")
    await h.store.update(replace(node, status=replace(node.status, message="still here")))
    assert await h.settle() == set()


async def test_bridge_networks_need_no_peers(h: Harness) -> None:
    t = Task(
        meta=Meta(id="b1"),
        node_id="n1",
        status=TaskStatus(state=TaskState.RUNNING),
        networks=(NetworkAttachment("br", ("172.18.0.2/16",)),),
    )
    assert h.index.wanted([t]) == set()


async def test_every_node_gets_the_ingress_network_with_the_nodes_and_published_ports(h: Harness) -> None:
    # n2 runs nothing, yet its session must hear of the ingress network once there is one.
    s2 = PeerSession()
    assert h.index.frame("n2", s2, h.index.wanted(h.store.tasks_on_node("n2"))) is not None
    ingress = Network(
        meta=Meta(id="ing"),
        spec=NetworkSpec(annotations=Annotations(name="ingress"), driver="overlay", ingress=True),
        status=NetworkStatus(vni=4097),
    )
    await h.store.create(ingress)
    assert await h.settle() == {"ing"}
    assert h.index.watchers["ing"] == {"n2"}
    assert h.index.wanted([]) == {"ing"}

    for i in (1, 2):
        node = h.store.must_get(Node, f"n{i}")
        await h.store.update(
            replace(node, attachments=(NetworkAttachment("ing", (f"10.255.0.{i + 1}/16",)),))
        )
    svc = h.store.must_get(Service, "web")
    ports = (
        PortConfig(target_port=80, published_port=8080),
        PortConfig(target_port=22, published_port=2222, publish_mode=PublishMode.HOST),
    )
    await h.store.update(
        replace(svc, status=replace(svc.status, endpoint=replace(svc.status.endpoint, ports=ports)))
    )
    await h.store.create(
        Task(
            meta=Meta(id="t1"),
            service_id="web",
            slot=1,
            node_id="n1",
            service_annotations=Annotations(name="web"),
            status=TaskStatus(state=TaskState.RUNNING),
            networks=(
                NetworkAttachment("ov", ("10.0.9.3/24",)),
                NetworkAttachment("ing", ("10.255.0.9/16",)),
            ),
        )
    )
    assert "ing" in await h.settle()
    frame = h.index.frame("n2", s2, h.index.wanted(h.store.tasks_on_node("n2")))
    assert frame is not None
    (peers,) = frame.networks
    assert peers.network == h.store.must_get(Network, "ing")
    assert sorted((e.task_id, e.node_id, e.addresses, e.name) for e in peers.endpoints) == [
        ("", "n1", ("10.255.0.2/16",), ""),
        ("", "n2", ("10.255.0.3/16",), ""),
        ("t1", "n1", ("10.255.0.9/16",), ""),  # no names on the mesh's network
    ]
    (web,) = peers.services
    assert (web.name, web.virtual_ip, web.ports) == ("", "", ports[:1])
    # The service's own network is unchanged: names, a VIP, no ports.
    (own,) = h.index.network_peers("ov").services
    assert (own.name, own.ports) == ("web", ())
