"""The ``bridge`` driver: a Linux bridge per network, a veth pair per container.

The bridge holds the network's gateway address(es); each container gets a veth pair whose host end is a
port of the bridge (``shv`` + 12 hex digits of the endpoint id) and whose other end is created directly
inside the container's namespace with its final name (``eth0``, ``eth1``…), then addressed and routed there.

Sysctls the bridge needs in the host namespace: ``route_localnet`` on the bridge so the host can reach
published ports on ``127.0.0.1`` (nftables DNATs them to the container and masquerades the source),
``ip_forward`` (and IPv6 forwarding for IPv6 networks) for traffic between containers and the outside.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence

from agent.network import netlink
from agent.network.driver import JoinInfo, NetworkDriver, SandboxRef
from agent.network.errors import NetlinkError
from agent.network.model import EndpointRecord, NetworkRecord
from agent.network.nsutil import write_sysctl

VETH_PREFIX = "shv"


def host_ifname(endpoint_id: str) -> str:
    """The host end of an endpoint's veth pair."""
    return (VETH_PREFIX + endpoint_id)[: netlink.IFNAMSIZ]


def bridge_addresses(network: NetworkRecord) -> list[str]:
    """The bridge's addresses: each subnet's gateway with the subnet's prefix length."""
    out = []
    for pool in network.ipam:
        subnet = ipaddress.ip_network(pool.subnet)
        if pool.gateway:
            out.append(f"{pool.gateway}/{subnet.prefixlen}")
    return out


class BridgeDriver(NetworkDriver):
    """Linux bridges in the host namespace ``netns`` (``None``: the agent's own)."""

    name = "bridge"
    publishes_ports = True

    def __init__(self, netns: str | None = None, *, ip_forward: bool = True) -> None:
        self._netns = netns
        self._ip_forward = ip_forward

    async def create(self, network: NetworkRecord) -> None:
        """Create (or adopt) the bridge, address it, and set the sysctls it needs."""
        async with netlink.iproute(self._netns) as ipr:
            await netlink.ensure_bridge(ipr, network.interface, bridge_addresses(network), network.mtu)
        self._sysctls(network)

    def _sysctls(self, network: NetworkRecord) -> None:
        try:
            write_sysctl(self._netns, f"net.ipv4.conf.{network.interface}.route_localnet", "1")
            has_v6 = any(":" in pool.subnet for pool in network.ipam)
            if has_v6:
                write_sysctl(self._netns, f"net.ipv6.conf.{network.interface}.disable_ipv6", "0")
            if self._ip_forward and not network.internal:
                write_sysctl(self._netns, "net.ipv4.ip_forward", "1")
                if has_v6:
                    write_sysctl(self._netns, "net.ipv6.conf.all.forwarding", "1")
        except OSError as exc:
            raise NetlinkError(
                f"configure sysctls of {network.interface}", str(exc), exc.errno or 0
            ) from None

    async def delete(self, network: NetworkRecord) -> None:
        """Remove the bridge."""
        async with netlink.iproute(self._netns) as ipr:
            await netlink.delete_link(ipr, network.interface)

    async def join(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRef) -> JoinInfo:
        """A veth pair onto the bridge, ``endpoint.ifname`` inside the sandbox, addressed and routed."""
        veth = host_ifname(endpoint.id)
        async with netlink.iproute(self._netns) as ipr:
            bridge = await netlink.link_index(ipr, network.interface)
            if bridge is None:
                # The bridge vanished behind our back (deleted by hand): build it again.
                bridge = await netlink.ensure_bridge(
                    ipr, network.interface, bridge_addresses(network), network.mtu
                )
                self._sysctls(network)
            await netlink.create_veth(ipr, veth, endpoint.ifname, sandbox.netns, bridge, network.mtu)
        try:
            mac = await netlink.configure_interface(
                sandbox.netns,
                endpoint.ifname,
                endpoint.addresses,
                endpoint.gateways,
                network.mtu,
                loopback=False,  # sandboxes have it up from the start
            )
        except BaseException:
            async with netlink.iproute(self._netns) as ipr:
                with contextlib.suppress(NetlinkError):
                    await netlink.delete_link(ipr, veth)
            raise
        return JoinInfo(mac=mac, host_ifname=veth)

    async def leave(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRef) -> None:
        """Delete the veth pair (both ends go together)."""
        async with netlink.iproute(self._netns) as ipr:
            await netlink.delete_link(ipr, endpoint.host_ifname or host_ifname(endpoint.id))

    async def restore(self, network: NetworkRecord, endpoints: Sequence[EndpointRecord]) -> None:
        """Make sure the bridge and its sysctls are there; existing veths stay as they are."""
        await self.create(network)
