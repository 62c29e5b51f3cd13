"""The allocator: VNIs, non-overlapping subnets, task addresses, VIPs and published ports."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from api import Network, Node, Service, Task
from api.objects import (
    Annotations,
    Endpoint,
    EndpointSpec,
    IPAMConfig,
    Meta,
    NetworkAttachmentConfig,
    NetworkSpec,
    PortConfig,
    PublishMode,
    ServiceSpec,
    TaskSpec,
)
from manager.allocator import AllocationError, Allocator


def net(nid: str, *ipam: IPAMConfig) -> Network:
    return Network(meta=Meta(id=nid), spec=NetworkSpec(annotations=Annotations(name=nid), ipam=ipam))


def task_on(network_id: str) -> Task:
    return Task(spec=TaskSpec(networks=(NetworkAttachmentConfig(target=network_id),)))


def test_networks_get_distinct_vnis_and_subnets_that_never_overlap() -> None:
    alloc = Allocator()
    user = alloc.allocate_network(net("user", IPAMConfig(subnet="10.0.0.0/16")))
    auto1 = alloc.allocate_network(net("a1"))
    auto2 = alloc.allocate_network(net("a2"))
    assert [n.status.vni for n in (user, auto1, auto2)] == [4096, 4097, 4098]
    subnets = [ipaddress.ip_network(n.status.ipam[0].subnet) for n in (user, auto1, auto2)]
    assert subnets[1] == ipaddress.ip_network("10.1.0.0/24")  # the first /24 outside the user's /16
    for i, a in enumerate(subnets):
        for b in subnets[i + 1 :]:
            assert not a.overlaps(b)
    assert user.status.ipam[0].gateway == "10.0.0.1"
    with pytest.raises(AllocationError, match=r"overlaps 10\.0\.0\.0/16"):
        alloc.allocate_network(net("clash", IPAMConfig(subnet="10.0.5.0/24")))


def test_task_addresses_skip_gateway_aux_and_taken_and_are_released() -> None:
    alloc = Allocator()
    n = alloc.allocate_network(
        net("n", IPAMConfig(subnet="192.168.7.0/29", aux_addresses={"printer": "192.168.7.2"}))
    )
    nets = {"n": n}
    got = [alloc.attach_task(task_on("n"), nets).networks[0].addresses[0] for _ in range(4)]
    assert got == ["192.168.7.3/29", "192.168.7.4/29", "192.168.7.5/29", "192.168.7.6/29"]
    with pytest.raises(AllocationError, match="no free address"):
        alloc.attach_task(task_on("n"), nets)
    alloc.release_address("n", "192.168.7.4/29")
    assert alloc.attach_task(task_on("n"), nets).networks[0].addresses == ("192.168.7.4/29",)


def test_a_new_leader_knows_what_is_taken() -> None:
    first = Allocator()
    n = first.allocate_network(net("n", IPAMConfig(subnet="10.5.0.0/24")))
    t = first.attach_task(task_on("n"), {"n": n})
    again = Allocator.from_objects([n], [], [t])
    t2 = again.attach_task(task_on("n"), {"n": n})
    assert t2.networks[0].addresses != t.networks[0].addresses
    assert again.allocate_network(net("m")).status.vni != n.status.vni


def test_services_get_published_ports_and_vips() -> None:
    alloc = Allocator()
    n = alloc.allocate_network(net("n"))
    spec = ServiceSpec(
        endpoint=EndpointSpec(
            ports=(PortConfig(target_port=80), PortConfig(target_port=443, published_port=8443))
        ),
        task=TaskSpec(networks=(NetworkAttachmentConfig(target="n"),)),
    )
    svc = alloc.allocate_service(Service(meta=Meta(id="s"), spec=spec), {"n": n})
    assert [p.published_port for p in svc.status.endpoint.ports] == [30000, 8443]
    assert list(svc.status.endpoint.virtual_ips) == ["n"]
    # Reallocating keeps what the service has.
    assert alloc.allocate_service(svc, {"n": n}).status.endpoint == svc.status.endpoint
    other = Service(
        meta=Meta(id="o"),
        spec=replace(spec, endpoint=EndpointSpec(ports=(PortConfig(target_port=1, published_port=8443),))),
    )
    with pytest.raises(AllocationError, match="8443/tcp is already in use"):
        alloc.allocate_service(other, {"n": n})
    alloc.release_service(svc)
    assert alloc.allocate_service(other, {"n": n}).status.endpoint.ports[0].published_port == 8443


def ingress_net(alloc: Allocator) -> Network:
    spec = NetworkSpec(annotations=Annotations(name="ingress"), ingress=True)
    return alloc.allocate_network(Network(meta=Meta(id="ing"), spec=spec))


def test_host_ports_are_the_nodes_and_unpublished_ports_come_back() -> None:
    alloc = Allocator()
    host = PortConfig(target_port=80, published_port=8080, publish_mode=PublishMode.HOST)
    one = alloc.allocate_service(
        Service(meta=Meta(id="a"), spec=ServiceSpec(endpoint=EndpointSpec(ports=(host,)))), {}
    )
    # Two services may want one host port: the scheduler keeps their tasks on different nodes.
    two = alloc.allocate_service(
        Service(meta=Meta(id="b"), spec=ServiceSpec(endpoint=EndpointSpec(ports=(host,)))), {}
    )
    assert one.status.endpoint.ports == two.status.endpoint.ports == (host,)
    assert alloc.ports == set()

    mesh = Service(
        meta=Meta(id="m"), spec=ServiceSpec(endpoint=EndpointSpec(ports=(PortConfig(target_port=80),)))
    )
    mesh = alloc.allocate_service(mesh, {})
    assert alloc.ports == {("tcp", 30000)}
    # An update that unpublishes the port gives it back.
    mesh = alloc.allocate_service(replace(mesh, spec=ServiceSpec()), {})
    assert mesh.status.endpoint.ports == () and alloc.ports == set()


def test_tasks_of_published_services_and_every_node_join_the_ingress_network() -> None:
    alloc = Allocator()
    ingress = ingress_net(alloc)
    n = alloc.allocate_network(net("n"))
    nets = {"n": n, "ing": ingress, "ingress": ingress}
    published = replace(
        task_on("n"), endpoint=Endpoint(ports=(PortConfig(target_port=80, published_port=80),))
    )
    t = alloc.attach_task(published, nets)
    assert [a.network_id for a in t.networks] == ["n", "ing"]  # its own networks first
    host_only = Endpoint(ports=(PortConfig(target_port=80, publish_mode=PublishMode.HOST),))
    assert [
        a.network_id for a in alloc.attach_task(replace(task_on("n"), endpoint=host_only), nets).networks
    ] == ["n"]

    node = alloc.allocate_node(Node(meta=Meta(id="n1")), ingress)
    (att,) = node.attachments
    assert att.network_id == "ing" and att.addresses[0] != t.networks[1].addresses[0]
    assert alloc.allocate_node(node, ingress) is node  # it keeps its address
    # A new leader knows it; a removed node gives it back.
    again = Allocator.from_objects([ingress], [], [t], [node])
    assert again.nodes == {"n1": att.addresses[0]}
    again.release_node("n1", ingress)
    assert again.allocate_node(Node(meta=Meta(id="n2")), ingress).attachments[0].addresses == att.addresses


def test_a_task_that_cannot_be_attached_holds_nothing() -> None:
    alloc = Allocator()
    n = alloc.allocate_network(net("n", IPAMConfig(subnet="192.168.8.0/30")))  # one address to give
    published = replace(task_on("n"), endpoint=Endpoint(ports=(PortConfig(target_port=80),)))
    with pytest.raises(AllocationError, match="ingress network does not exist"):
        alloc.attach_task(published, {"n": n})
    assert alloc.attach_task(task_on("n"), {"n": n}).networks[0].addresses == ("192.168.8.2/30",)
