"""Which ports the local cluster's forwarder listens on: TCP ports published through the routing mesh."""

from __future__ import annotations

from typing import Any

from swarmctl.localcluster.forward import published_ports


def svc(*ports: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {}, "status": {"endpoint": {"ports": list(ports)}}}


def test_only_tcp_ports_of_the_routing_mesh_are_forwarded() -> None:
    services = [
        svc({"protocol": "tcp", "target_port": 80, "published_port": 8080, "publish_mode": "ingress"}),
        svc(
            {"protocol": "udp", "target_port": 53, "published_port": 53, "publish_mode": "ingress"},
            # A host-mode port answers only where its task runs, which need not be the host forwarded to.
            {"protocol": "tcp", "target_port": 22, "published_port": 2222, "publish_mode": "host"},
        ),
        svc({"protocol": "tcp", "target_port": 81, "published_port": 30000, "publish_mode": "ingress"}),
        {"spec": {}, "status": {}},  # not allocated yet
    ]
    assert published_ports(services) == {8080, 30000}
