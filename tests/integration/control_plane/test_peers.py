"""``peers`` frames end to end: the dispatcher tells every agent on an overlay who else is on it.

Real managers and agent sessions (simulated executor) on the three stores; each agent's frames are fed to
the overlay's own :class:`~overlay.peers.PeerTable`, so what is checked is what a host would program.
"""

from __future__ import annotations

from dataclasses import replace

from agent.agent import Agent
from api import Network, Service, Task, TaskState
from api.objects import (
    Annotations,
    ContainerSpec,
    Endpoint,
    IPAMConfig,
    NetworkAttachment,
    NetworkSpec,
    NetworkStatus,
    ServiceSpec,
    ServiceStatus,
    TaskSpec,
    TaskStatus,
)
from api.peers import Peers
from overlay.peers import PeerTable
from tests.integration.control_plane.conftest import ControlPlane, eventually


class Watched:
    """An agent and the peer table its ``peers`` frames build."""

    def __init__(self, plane: ControlPlane, hostname: str) -> None:
        self.agent: Agent = plane.agent(hostname, start=False)
        self.table = PeerTable()
        self.frames: list[Peers] = []
        self.agent.session.on_peers = self.take
        self.agent.start()

    def take(self, frame: Peers) -> None:
        self.frames.append(frame)
        self.table.apply(frame)

    def view(self, network_id: str) -> dict[str, bool]:
        """task id → serving, as this agent knows the network."""
        return {e.task_id: e.serving for e in self.table.endpoints(network_id)}


async def overlay(plane: ControlPlane) -> Network:
    return await plane.store.create(
        Network(
            spec=NetworkSpec(annotations=Annotations(name="my-net"), driver="overlay"),
            status=NetworkStatus(vni=4096, ipam=(IPAMConfig(subnet="10.0.9.0/24", gateway="10.0.9.1"),)),
        )
    )


async def task_on(plane: ControlPlane, node_id: str, net: Network | None, ip: str, slot: int) -> Task:
    return await plane.store.create(
        Task(
            service_id="web",
            slot=slot,
            node_id=node_id,
            service_annotations=Annotations(name="web"),
            spec=TaskSpec(container=ContainerSpec(image="busybox")),
            status=TaskStatus(state=TaskState.ASSIGNED),
            networks=(NetworkAttachment(net.meta.id, (f"{ip}/24",)),) if net is not None else (),
        )
    )


async def test_agents_learn_the_endpoints_of_their_overlays_and_follow_them(plane: ControlPlane) -> None:
    w1, w2, w3 = (Watched(plane, f"host-{i}") for i in (1, 2, 3))
    n1, n2, n3 = await plane.connected(w1.agent, w2.agent, w3.agent)
    net = await overlay(plane)
    await plane.store.create(
        Service(
            meta=replace(Service().meta, id="web"),
            spec=ServiceSpec(annotations=Annotations(name="web")),
            status=ServiceStatus(endpoint=Endpoint(virtual_ips={net.meta.id: "10.0.9.2/24"})),
        )
    )
    t1 = await task_on(plane, n1, net, "10.0.9.3", 1)
    t2 = await task_on(plane, n2, net, "10.0.9.4", 2)
    await task_on(plane, n3, None, "", 3)
    ids = {t1.meta.id, t2.meta.id}

    # Both tasks start (the simulated executor runs them): both hosts on the network see both serving.
    both = {t1.meta.id: True, t2.meta.id: True}
    await eventually(lambda: w1.view(net.meta.id) == both, what="host-1 to see both tasks serving")
    await eventually(lambda: w2.view(net.meta.id) == both, what="host-2 to see both tasks serving")
    peers = w1.table.networks[net.meta.id]
    assert {e.node_addr for e in peers.endpoints} == {"127.0.0.1"}  # where the agents connect from
    assert {e.name for e in peers.endpoints} == {f"web.{t.slot}.{t.meta.id}" for t in (t1, t2)}
    assert [(s.name, s.virtual_ip) for s in peers.services] == [("web", "10.0.9.2/24")]
    # host-3 runs nothing on the overlay: it gets a (full, empty) frame and nothing else.
    assert w3.frames and all(not f.networks for f in w3.frames) and w3.frames[0].full

    # t2 is stopped: it leaves host-1's view; host-2 no longer uses the network and is told so.
    current = plane.store.must_get(Task, t2.meta.id)
    await plane.store.update(replace(current, desired_state=TaskState.SHUTDOWN))
    await eventually(lambda: w1.view(net.meta.id) == {t1.meta.id: True}, what="t2 to leave host-1's view")
    await eventually(lambda: net.meta.id not in w2.table.networks, what="host-2 to drop the network")
    assert any(net.meta.id in f.removed for f in w2.frames)

    # A task placed on host-3 on the overlay brings it the network's peers.
    t3 = await task_on(plane, n3, net, "10.0.9.5", 4)
    await eventually(
        lambda: w3.view(net.meta.id) == {t1.meta.id: True, t3.meta.id: True}, what="host-3 to join"
    )
    await eventually(lambda: set(w1.view(net.meta.id)) == {t1.meta.id, t3.meta.id}, what="host-1 to see t3")
    assert ids - set(w1.view(net.meta.id)) == {t2.meta.id}


async def test_an_agent_failing_over_gets_the_whole_picture_again(plane: ControlPlane) -> None:
    first = plane.managers[0]
    second = await plane.manager()
    w1 = Watched(plane, "host-1")
    (n1,) = await plane.connected(w1.agent)
    net = await overlay(plane)
    t1 = await task_on(plane, n1, net, "10.0.9.3", 1)
    await eventually(lambda: w1.view(net.meta.id) == {t1.meta.id: True}, what="the task to serve")
    before = len(w1.frames)

    await first.stop()
    await eventually(lambda: w1.agent.session.manager == second.addr, what="failover")
    await eventually(lambda: any(f.full for f in w1.frames[before:]), what="a full frame from the second")
    assert w1.view(net.meta.id) == {t1.meta.id: True}
    plane.managers.remove(first)  # the fixture's store helper reads through a live manager
    plane.managers.insert(0, second)
    plane.managers.append(first)  # stopped again (harmlessly) at the end
