"""The routing mesh's table, derived from the ingress network's peers (pure; the local-cluster tests load
it on real hosts)."""

from __future__ import annotations

from api.objects import PortConfig, PortProtocol, PublishMode
from api.peers import NetworkPeers, PeerEndpoint, PeerService
from overlay.ingress import MeshPort, mesh_ports, render


def endpoint(task: str, service: str, ip: str, serving: bool = True) -> PeerEndpoint:
    return PeerEndpoint(
        task_id=task, service_id=service, node_addr="10.200.0.1", addresses=(f"{ip}/24",), serving=serving
    )


def test_each_published_port_leads_to_the_serving_tasks_of_its_service() -> None:
    peers = NetworkPeers(
        network_id="ing",
        endpoints=(
            endpoint("t2", "web", "10.0.0.12"),
            endpoint("t1", "web", "10.0.0.9"),
            endpoint("t3", "web", "10.0.0.13", serving=False),  # starting or stopping: no connections
            endpoint("d1", "dns", "10.0.0.20"),
            PeerEndpoint(node_id="n1", node_addr="10.200.0.1", addresses=("10.0.0.2/24",)),  # a node's own
        ),
        services=(
            PeerService(
                service_id="web",
                ports=(
                    PortConfig(target_port=80, published_port=8080),
                    PortConfig(protocol=PortProtocol.SCTP, target_port=9, published_port=9),
                ),
            ),
            PeerService(
                service_id="dns",
                ports=(PortConfig(protocol=PortProtocol.UDP, target_port=53, published_port=53),),
            ),
            PeerService(service_id="idle", ports=(PortConfig(target_port=80, published_port=8081),)),
        ),
    )
    assert mesh_ports(peers) == [
        MeshPort("tcp", 8080, 80, ("10.0.0.9", "10.0.0.12")),
        MeshPort("tcp", 8081, 80, ()),
        MeshPort("udp", 53, 53, ("10.0.0.20",)),
    ]


def test_the_table_balances_in_turn_masquerades_and_guards_the_loopback() -> None:
    script = render([MeshPort("tcp", 8080, 80, ("10.0.0.9", "10.0.0.12")), MeshPort("tcp", 8081, 80, ())])
    # Replaced whole in one transaction.
    assert script.startswith("table ip shoal_mesh\ndelete table ip shoal_mesh\n")
    assert "tcp dport 8080 dnat to numgen inc mod 2 map { 0 : 10.0.0.9, 1 : 10.0.0.12 } : 80" in script
    assert "8081" not in script  # nothing serves it: the port stays closed
    assert script.count("fib daddr type local jump publish") == 2  # from outside and from the host
    assert 'oifname "shoal_ingress" ct status dnat masquerade' in script
    assert 'iifname "shoal_ingress" ip daddr 127.0.0.0/8 ct state != { established, related } drop' in script


def test_host_mode_ports_are_not_the_meshs() -> None:
    host = PortConfig(target_port=80, published_port=8080, publish_mode=PublishMode.HOST)
    peers = NetworkPeers(
        network_id="ing",
        endpoints=(endpoint("t1", "web", "10.0.0.9"),),
        services=(PeerService(service_id="web", ports=(host,)),),
    )
    assert mesh_ports(peers) == []
