"""The routing mesh: a service's published port answers on every host and reaches any of its tasks.

Docker spreads connections to a published port with IPVS inside an ``ingress-sbox`` namespace; this
kernel has no IPVS, so the host's own namespace does it with nftables, over the ``ingress`` overlay
network that the managers create and every host joins:

* every host builds the ingress network (its namespace, bridge and VXLAN device, overlay/vxlan.py) even
  without a task on it, and joins it itself with a veth (``shoal_ingress``) carrying the address the
  managers gave the node there; every task of a service with published ports is on it too;
* a table of the host's own (``ip shoal_mesh``) DNATs each published port, for traffic to any of the
  host's addresses (from outside, from its containers or from the host itself, ``127.0.0.1`` included),
  to the service's serving tasks' ingress addresses in turn (``numgen inc``, IPVS's round robin), and
  masquerades what leaves through the veth, so a task on another host replies to this host's ingress
  address and the reply comes back through the tunnel to be un-NATed here.

Tasks on the ingress network take part in it only through the mesh: the managers send no names for it, so
a service is still found by name (and balanced by VIP) on its own networks only. The table is rendered
whole and loaded in one ``nft -f`` transaction whenever the published ports or their tasks change, so a
scale up or down switches the backends at once while open connections keep theirs (conntrack).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.network import netlink
from agent.network.errors import NetworkError, NetworkNotFound
from agent.network.nsutil import netns_path, write_sysctl
from api.objects import PortProtocol, PublishMode
from api.peers import NetworkPeers
from overlay import vxlan
from overlay.cluster import ensure_network
from overlay.errors import MeshError
from overlay.peers import host_of, ipv4_of, mac_for

if TYPE_CHECKING:
    from overlay.driver import OverlayDriver

log = logging.getLogger(__name__)

MESH_TABLE = "shoal_mesh"
#: The host's own interface on the ingress network.
MESH_IFNAME = "shoal_ingress"
#: Its other end, on the ingress network's bridge (an endpoint id of the overlay driver's naming).
MESH_ENDPOINT = "mesh-host"
#: Protocols nftables can DNAT by port here.
_PROTOCOLS = (PortProtocol.TCP.value, PortProtocol.UDP.value)


@dataclass(frozen=True, order=True)
class MeshPort:
    """One published port: connections to it go to ``target`` on one of ``backends``."""

    protocol: str
    published: int
    target: int
    backends: tuple[str, ...] = ()


def mesh_ports(peers: NetworkPeers) -> list[MeshPort]:
    """Each port published in ingress mode on the network, with the serving tasks' addresses."""
    serving: dict[str, set[str]] = {}
    for endpoint in peers.endpoints:
        ip = ipv4_of(endpoint)
        if endpoint.task_id and endpoint.serving and ip:
            serving.setdefault(endpoint.service_id, set()).add(ip)
    out: dict[tuple[str, int], MeshPort] = {}
    for service in peers.services:
        backends = tuple(sorted(serving.get(service.service_id, ()), key=ipaddress.IPv4Address))
        for port in service.ports:
            key = (port.protocol.value, port.published_port)
            if port.publish_mode is not PublishMode.INGRESS or key[0] not in _PROTOCOLS:
                continue  # a host-mode port is its node's own (the host networking publishes it)
            if port.published_port and key not in out:
                out[key] = MeshPort(key[0], port.published_port, port.target_port, backends)
    return sorted(out.values())


def render(ports: Sequence[MeshPort], ifname: str = MESH_IFNAME, table: str = MESH_TABLE) -> str:
    """The ``nft -f`` script of the host's mesh table (replacing the one loaded, atomically)."""
    iface = json.dumps(ifname)
    lines = [f"table ip {table}", f"delete table ip {table}", f"table ip {table} {{", "  chain publish {"]
    for port in ports:
        if not port.backends:
            continue  # nothing serves it: the connection meets a closed port
        pairs = ", ".join(f"{i} : {ip}" for i, ip in enumerate(port.backends))
        lines.append(
            f"    {port.protocol} dport {port.published} "
            f"dnat to numgen inc mod {len(port.backends)} map {{ {pairs} }} : {port.target}"
        )
    lines += [
        "  }",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        "    fib daddr type local jump publish",
        "  }",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        "    fib daddr type local jump publish",
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f"    oifname {iface} ct status dnat masquerade",
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        # route_localnet is on for the mesh's interface (the host reaching 127.0.0.1:PORT); nothing but
        # replies may use it to reach the host's loopback addresses (CVE-2020-8558).
        f"    iifname {iface} ip daddr 127.0.0.0/8 ct state != {{ established, related }} drop",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def removal(table: str = MESH_TABLE) -> str:
    """The ``nft -f`` script removing the mesh table (harmless when there is none)."""
    return f"table ip {table}\ndelete table ip {table}\n"


class RoutingMesh:
    """The routing mesh of one host, driven by the overlay driver's peer table (see the module doc)."""

    def __init__(self, driver: OverlayDriver, table: str = MESH_TABLE, ifname: str = MESH_IFNAME) -> None:
        self.driver = driver
        self.table = table
        self.ifname = ifname
        #: The ingress network this host has joined, and its address there.
        self._joined: tuple[str, str] | None = None
        self._loaded: str | None = None

    def _host_netns(self) -> str:
        """The host namespace as a path (``/proc/<pid>/ns/net`` for the agent's own)."""
        netns = self.driver.ctl.config.host_netns
        return netns_path(netns) if netns else f"/proc/{os.getpid()}/ns/net"

    def ingress(self) -> NetworkPeers | None:
        """The ingress network's peers, if the managers sent them."""
        return next((p for p in self.driver.peers.networks.values() if p.network is not None), None)

    def _my_address(self, peers: NetworkPeers) -> str:
        """This node's address on the ingress network (CIDR), from the endpoints without a task."""
        mine = host_of(self.driver.config.advertise_addr)
        for endpoint in peers.endpoints:
            if not endpoint.task_id and host_of(endpoint.node_addr) == mine and ipv4_of(endpoint):
                return next(a for a in endpoint.addresses if ":" not in a)
        return ""

    async def prepare(self) -> None:
        """Give the host controller the ingress network's record (outside the driver's lock: creating
        a network calls back into the driver)."""
        peers = self.ingress()
        if peers is None or peers.network is None:
            return
        try:
            await ensure_network(self.driver.ctl, peers.network)
        except NetworkError as exc:
            log.error("cannot create the ingress network: %s", exc)

    async def sync_locked(self) -> None:
        """Join or leave the ingress network and load the mesh table as the peers say (driver lock held)."""
        if not self.driver.peers.complete:
            return  # after a restart, before the first full frame: keep what is there
        peers = self.ingress()
        address = self._my_address(peers) if peers is not None else ""
        try:
            if peers is None or not address:
                await self._leave()
                await self._load(removal(self.table))
                return
            await self._join(peers.network_id, address)
            await self._load(render(mesh_ports(peers), self.ifname, self.table))
        except NetworkError as exc:
            log.error("cannot program the routing mesh: %s", exc)

    async def _join(self, network_id: str, address: str) -> None:
        try:
            network = self.driver.ctl.network(network_id)
        except NetworkNotFound:
            return  # prepare() could not make it; said so already
        if self._joined is not None and self._joined != (network_id, address):
            await self._leave()
        local = self.driver._local.get(network_id)
        if self._joined is not None and local is not None and MESH_ENDPOINT in local.endpoints:
            return  # joined, and the network's namespace was not rebuilt since
        local = await self.driver._ensure_local(network)
        local.endpoints.add(MESH_ENDPOINT)  # the network stays on this host while the mesh uses it
        host = self._host_netns()
        host_ifname = vxlan.veth_name(MESH_ENDPOINT)
        if await self._attached(host, address) and host_ifname in await vxlan.bridge_ports(local.netns):
            self._joined = (network_id, address)  # an agent restarted: what it had made is all there
            return
        # The host's end may be left from a namespace just removed (the kernel takes its devices away
        # later, in the background): it goes now, and a new pair is made.
        await netlink.remove_interface(host, self.ifname)
        await vxlan.detach_veth(local.netns, host_ifname)
        await vxlan.attach_veth(local.netns, host_ifname, host, self.ifname, mac_for(address), local.spec.mtu)
        await netlink.configure_interface(host, self.ifname, [address], (), local.spec.mtu)
        netns = self.driver.ctl.config.host_netns
        write_sysctl(netns, "net.ipv4.ip_forward", "1")
        write_sysctl(netns, f"net.ipv4.conf.{self.ifname}.route_localnet", "1")
        self._joined = (network_id, address)
        log.info("joined the routing mesh at %s", address)

    async def _attached(self, host: str, address: str) -> bool:
        """Whether the host's mesh interface exists with ``address``."""
        async with netlink.iproute(host) as ipr:
            index = await netlink.link_index(ipr, self.ifname)
            if index is None:
                return False
            wanted = ipaddress.ip_interface(address)
            return f"{wanted.ip}/{wanted.network.prefixlen}" in await netlink._addresses(ipr, index)

    async def _leave(self) -> None:
        if self._joined is None:
            return
        network_id, _ = self._joined
        self._joined = None
        await netlink.remove_interface(self._host_netns(), self.ifname)
        local = self.driver._local.get(network_id)
        if local is not None:
            await vxlan.detach_veth(local.netns, vxlan.veth_name(MESH_ENDPOINT))
            local.endpoints.discard(MESH_ENDPOINT)
            if not local.endpoints:
                await self.driver._teardown(network_id, local.spec.vni)

    async def _load(self, script: str) -> None:
        if script == self._loaded:
            return
        self._loaded = None
        await run_nft(self.driver.ctl.config.host_netns, script)
        self._loaded = script


async def run_nft(netns: str | None, script: str) -> None:
    """Load ``script`` with ``nft -f -`` in ``netns`` (``None``: here)."""
    prefix = ["nsenter", f"--net={netns_path(netns)}", "--"] if netns else []
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        "nft",
        "-f",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate(script.encode())
    if proc.returncode != 0:
        raise MeshError(err.decode() or f"nft exited with {proc.returncode}")
