"""The ``peers`` frame of an agent session: who is on the overlay networks a node uses.

Every agent that runs a task on an overlay network needs, for that network, every endpoint on it (to
program neighbour and forwarding entries for the remote ones, as libnetwork does statically) and every
service on it (to answer service names and load-balance virtual IPs). The manager sends the whole picture
of each network that changed: one :class:`NetworkPeers` replaces what the agent had for that network, so
frames are idempotent and an agent that missed one is repaired by the next. docs/ARCHITECTURE.md
("Agent sessions") describes when the manager sends them.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.objects import EndpointMode, Network, PortConfig, Task


@dataclass(frozen=True)
class PeerEndpoint:
    """One task's place on an overlay network, as every host on that network must know it.

    On the ingress network a node's own place (its routing mesh) is an endpoint too, without ``task_id``.
    """

    task_id: str = ""
    service_id: str = ""
    node_id: str = ""
    #: The cluster address of the task's node: the VXLAN tunnel endpoint its traffic is sent to.
    node_addr: str = ""
    #: The task's addresses on the network (CIDR). Its MAC address is derived from the IPv4 one.
    addresses: tuple[str, ...] = ()
    #: The task's container name (``web.1.<task id>``), which resolves to its address on the network.
    name: str = ""
    #: Running and wanted: the task answers for its service (DNS and virtual IP backends).
    serving: bool = False


@dataclass(frozen=True)
class PeerService:
    """A service with tasks or a virtual IP on an overlay network."""

    service_id: str = ""
    name: str = ""
    endpoint_mode: EndpointMode = EndpointMode.VIP
    #: The service's virtual IP on the network (CIDR); empty in ``dnsrr`` mode.
    virtual_ip: str = ""
    #: Network-scoped aliases of the service (``--network name=N,alias=A``): resolve like its name.
    aliases: tuple[str, ...] = ()
    #: On the ingress network: the ports the service publishes through the routing mesh (ingress mode).
    ports: tuple[PortConfig, ...] = ()


@dataclass(frozen=True)
class NetworkPeers:
    """Everything on one overlay network: its endpoints (local ones included) and services."""

    network_id: str = ""
    endpoints: tuple[PeerEndpoint, ...] = ()
    services: tuple[PeerService, ...] = ()
    #: The network itself, for the ingress network only: every node builds it, tasks there or not.
    network: Network | None = None


@dataclass(frozen=True)
class Peers:
    """manager → agent: the overlay networks the node's tasks use, each as a whole."""

    #: True: ``networks`` are all the networks the agent needs; it forgets every other one.
    full: bool = False
    networks: tuple[NetworkPeers, ...] = ()
    #: Networks the node no longer uses (incremental frames only).
    removed: tuple[str, ...] = ()


def task_container_name(task: Task) -> str:
    """``<service>.<slot>.<task id>`` (``<service>.<node id>.<task id>`` for a global service): Docker's
    name for a task's container, which the overlay's DNS answers on every host of the network."""
    service = task.service_annotations.name or task.service_id[:12] or "task"
    middle = str(task.slot) if task.slot else task.node_id
    return f"{service}.{middle}.{task.meta.id}"
