"""The allocator: VXLAN ids and subnets for networks, addresses for tasks and service VIPs, published ports.

Pure bookkeeping, no I/O: the leader builds an :class:`Allocator` from the store's objects when it takes
over (so a new leader knows everything that is taken) and then asks it for resources as objects are
created, and gives them back as objects go. As in SwarmKit, VNIs start at 4096, automatic subnets are /24s
carved from 10.0.0.0/8 that overlap no subnet in use, the gateway is a subnet's first address, and
published ports without a number get one from 30000-32767.

Ports published in ingress mode (the routing mesh) answer on every node, so each number is the cluster's
once. Ports in host mode are only the node's own: the scheduler keeps two tasks wanting one host port
apart, and one without a number gets a free port from its node. Tasks of a service with ingress ports
join the ingress network besides their own, and so does every node (its routing mesh needs an address
there to send connections to the service's tasks on other nodes and get the replies back).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from api import Network, Node, Service, Task
from api.objects import Endpoint, IPAMConfig, NetworkAttachment, NetworkStatus, PortConfig, PublishMode
from manager.errors import ManagerError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FIRST_VNI = 4096
LAST_VNI = (1 << 24) - 1
DEFAULT_POOL = ipaddress.ip_network("10.0.0.0/8")
DEFAULT_SUBNET_PREFIX = 24
PORT_RANGE = range(30000, 32768)


class AllocationError(ManagerError):
    """A pool ran dry, or a requested resource is taken."""


@dataclass
class _Pool:
    """The addresses of one subnet of one network: which are taken and where to look next."""

    subnet: IPNetwork
    gateway: IPAddress
    ip_range: IPNetwork
    taken: set[IPAddress] = field(default_factory=set)
    cursor: int = 0

    def take(self, addr: IPAddress) -> None:
        self.taken.add(addr)

    def next_free(self) -> IPAddress:
        hosts = self.ip_range.num_addresses
        first = int(self.ip_range.network_address)
        for i in range(hosts):
            # Round-robin from the last allocation, as SwarmKit's IPAM does, so a freed address is not
            # handed straight to the next task (stale neighbour entries elsewhere would point at it).
            n = first + (self.cursor + i) % hosts
            addr = ipaddress.ip_address(n)
            if addr in self.taken or addr in (self.subnet.network_address, self.subnet.broadcast_address):
                continue
            self.cursor = (n - first + 1) % hosts
            self.taken.add(addr)
            return addr
        raise AllocationError(f"no free address left in {self.ip_range}")


class Allocator:
    """Everything allocated in the cluster, with methods to allocate more and release."""

    def __init__(self) -> None:
        self.vnis: set[int] = set()
        self.subnets: list[IPNetwork] = []
        self.pools: dict[str, list[_Pool]] = {}
        self.ports: set[tuple[str, int]] = set()
        #: node id → its address on the ingress network.
        self.nodes: dict[str, str] = {}
        #: What networks and services hold, by id, to give it back when they are removed.
        self.networks: dict[str, Network] = {}
        self.services: dict[str, Service] = {}

    @classmethod
    def from_objects(
        cls,
        networks: Iterable[Network],
        services: Iterable[Service],
        tasks: Iterable[Task],
        nodes: Iterable[Node] = (),
    ) -> Allocator:
        """An allocator that knows every resource the given objects hold."""
        alloc = cls()
        for net in networks:
            if net.status.vni:
                alloc._adopt_network(net)
        for svc in services:
            alloc.services[svc.meta.id] = svc
            for port in svc.status.endpoint.ports:
                if port.publish_mode is PublishMode.INGRESS:
                    alloc.ports.add((port.protocol.value, port.published_port))
            for net_id, vip in svc.status.endpoint.virtual_ips.items():
                alloc._take(net_id, vip)
        for task in tasks:
            for att in task.networks:
                for addr in att.addresses:
                    alloc._take(att.network_id, addr)
        for node in nodes:
            for att in node.attachments:
                for addr in att.addresses:
                    alloc._take(att.network_id, addr)
                    alloc.nodes[node.meta.id] = addr
        return alloc

    # --- networks -----------------------------------------------------------------------------------
    def allocate_network(self, net: Network) -> Network:
        """The network with a VNI and its subnets (the user's, or free automatic ones)."""
        vni = next((v for v in range(FIRST_VNI, LAST_VNI) if v not in self.vnis), None)
        if vni is None:
            raise AllocationError("no free VXLAN id")
        configs = list(net.spec.ipam) or [IPAMConfig()]
        chosen: list[IPAMConfig] = []
        for cfg in configs:
            subnet = ipaddress.ip_network(cfg.subnet) if cfg.subnet else self._free_subnet()
            clash = next((s for s in self.subnets if s.overlaps(subnet)), None)
            if clash is not None:
                raise AllocationError(f"subnet {subnet} overlaps {clash}, which another network uses")
            gateway = cfg.gateway or str(next(subnet.hosts()))
            chosen.append(replace(cfg, subnet=str(subnet), gateway=gateway))
            self.subnets.append(subnet)
        allocated = replace(net, status=NetworkStatus(vni=vni, ipam=tuple(chosen)))
        self._adopt_network(allocated)
        return allocated

    def release_network(self, net: Network) -> None:
        """Give back a removed network's VNI and subnets."""
        self.vnis.discard(net.status.vni)
        self.networks.pop(net.meta.id, None)
        for cfg in net.status.ipam:
            subnet = ipaddress.ip_network(cfg.subnet)
            self.subnets = [s for s in self.subnets if s != subnet]
        self.pools.pop(net.meta.id, None)

    def _free_subnet(self) -> IPNetwork:
        for candidate in DEFAULT_POOL.subnets(new_prefix=DEFAULT_SUBNET_PREFIX):
            if not any(candidate.overlaps(s) for s in self.subnets):
                return candidate
        raise AllocationError(f"no free /{DEFAULT_SUBNET_PREFIX} left in {DEFAULT_POOL}")

    def _adopt_network(self, net: Network) -> None:
        self.vnis.add(net.status.vni)
        self.networks[net.meta.id] = net
        pools = []
        for cfg in net.status.ipam:
            subnet = ipaddress.ip_network(cfg.subnet)
            if subnet not in self.subnets:
                self.subnets.append(subnet)
            gateway = ipaddress.ip_address(cfg.gateway)
            pool = _Pool(subnet, gateway, ipaddress.ip_network(cfg.ip_range) if cfg.ip_range else subnet)
            pool.take(gateway)
            for aux in cfg.aux_addresses.values():
                pool.take(ipaddress.ip_address(aux))
            pools.append(pool)
        self.pools[net.meta.id] = pools

    # --- addresses ----------------------------------------------------------------------------------
    def _take(self, network_id: str, cidr: str) -> None:
        addr = ipaddress.ip_interface(cidr).ip
        for pool in self.pools.get(network_id, []):
            if addr in pool.subnet:
                pool.take(addr)

    def allocate_address(self, net: Network) -> str:
        """A free address of the network, as ``addr/prefix``."""
        pools = self.pools.get(net.meta.id)
        if not pools:
            raise AllocationError(f"network {net.spec.annotations.name} has no allocated subnet")
        last_error: AllocationError | None = None
        for pool in pools:
            try:
                return f"{pool.next_free()}/{pool.subnet.prefixlen}"
            except AllocationError as e:
                last_error = e
        assert last_error is not None
        raise last_error

    def release_address(self, network_id: str, cidr: str) -> None:
        """Give an address back."""
        addr = ipaddress.ip_interface(cidr).ip
        for pool in self.pools.get(network_id, []):
            pool.taken.discard(addr)

    def attach_task(self, task: Task, networks: dict[str, Network]) -> Task:
        """The task with one address on each network its spec names (``networks``: by id and by name),
        and on the ingress network last when its service publishes ports there (``task.endpoint``)."""
        attachments: list[NetworkAttachment] = []
        try:
            for cfg in task.spec.networks:
                net = networks.get(cfg.target)
                if net is None:
                    raise AllocationError(f"network {cfg.target} not found")
                attachments.append(
                    NetworkAttachment(
                        network_id=net.meta.id, addresses=(self.allocate_address(net),), aliases=cfg.aliases
                    )
                )
            if any(p.publish_mode is PublishMode.INGRESS for p in task.endpoint.ports):
                ingress = ingress_network(networks)
                if ingress is None:
                    raise AllocationError("the ingress network does not exist yet")
                if all(a.network_id != ingress.meta.id for a in attachments):
                    attachments.append(
                        NetworkAttachment(
                            network_id=ingress.meta.id, addresses=(self.allocate_address(ingress),)
                        )
                    )
        except AllocationError:
            self.release_task(replace(task, networks=tuple(attachments)))
            raise
        return replace(task, networks=tuple(attachments))

    def allocate_node(self, node: Node, ingress: Network) -> Node:
        """The node with its address on the ingress network (the one it has, or a new one)."""
        current = next((a for a in node.attachments if a.network_id == ingress.meta.id), None)
        if current is not None and current.addresses:
            return node
        addr = self.nodes.get(node.meta.id) or self.allocate_address(ingress)
        self.nodes[node.meta.id] = addr
        others = tuple(a for a in node.attachments if a.network_id != ingress.meta.id)
        return replace(node, attachments=(*others, NetworkAttachment(ingress.meta.id, (addr,))))

    def release_node(self, node_id: str, ingress: Network | None) -> None:
        """Give back the ingress address of a removed node."""
        addr = self.nodes.pop(node_id, None)
        if addr is not None and ingress is not None:
            self.release_address(ingress.meta.id, addr)

    def release_task(self, task: Task) -> None:
        """Give back a task's addresses."""
        for att in task.networks:
            for addr in att.addresses:
                self.release_address(att.network_id, addr)

    # --- services -----------------------------------------------------------------------------------
    def allocate_service(self, svc: Service, networks: dict[str, Network]) -> Service:
        """The service with its published ports numbered and one VIP per network (endpoint mode vip)."""
        from api.objects import EndpointMode

        ports: list[PortConfig] = []
        for port in svc.spec.endpoint.ports:
            number = port.published_port
            if port.publish_mode is PublishMode.HOST:
                ports.append(port)  # the node's own port (0: the node picks one)
                continue
            existing = next(
                (
                    p
                    for p in svc.status.endpoint.ports
                    if p.target_port == port.target_port and p.protocol is port.protocol
                ),
                None,
            )
            if number == 0 and existing is not None:
                number = existing.published_port
            elif number == 0:
                number = self._free_port(port.protocol.value)
            elif (port.protocol.value, number) in self.ports and existing is None:
                raise AllocationError(
                    f"port {number}/{port.protocol.value} is already in use by another service"
                )
            self.ports.add((port.protocol.value, number))
            ports.append(replace(port, published_port=number))
        kept = {(p.protocol.value, p.published_port) for p in ports if p.publish_mode is PublishMode.INGRESS}
        for old in svc.status.endpoint.ports:
            key = (old.protocol.value, old.published_port)
            if old.publish_mode is PublishMode.INGRESS and key not in kept:
                self.ports.discard(key)  # unpublished by an update
        vips = dict(svc.status.endpoint.virtual_ips)
        if svc.spec.endpoint.mode is EndpointMode.VIP:
            for cfg in svc.spec.task.networks:
                net = networks.get(cfg.target)
                if net is not None and net.meta.id not in vips:
                    vips[net.meta.id] = self.allocate_address(net)
        allocated = replace(
            svc, status=replace(svc.status, endpoint=Endpoint(ports=tuple(ports), virtual_ips=vips))
        )
        self.services[svc.meta.id] = allocated
        return allocated

    def release_service(self, svc: Service) -> None:
        """Give back a removed service's ports and VIPs."""
        self.services.pop(svc.meta.id, None)
        for port in svc.status.endpoint.ports:
            if port.publish_mode is PublishMode.INGRESS:
                self.ports.discard((port.protocol.value, port.published_port))
        for net_id, vip in svc.status.endpoint.virtual_ips.items():
            self.release_address(net_id, vip)

    def _free_port(self, protocol: str) -> int:
        for number in PORT_RANGE:
            if (protocol, number) not in self.ports:
                return number
        raise AllocationError(f"no free {protocol} port left in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}")


def ingress_network(networks: Iterable[Network] | dict[str, Network]) -> Network | None:
    """The ingress network among ``networks`` (a list, or a dict by id and name), if there is one."""
    values = networks.values() if isinstance(networks, dict) else networks
    return next((n for n in values if n.spec.ingress), None)


def publishes_ingress(svc: Service) -> bool:
    """Whether the service publishes a port through the routing mesh."""
    return any(p.publish_mode is PublishMode.INGRESS for p in svc.spec.endpoint.ports)
