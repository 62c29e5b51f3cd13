"""Netlink work of the overlay driver: the network's namespace, its bridge and VXLAN device, veths, peers.

Each overlay network gets, on each host that runs one of its tasks, a namespace of its own holding a bridge
(``br0``, with the subnet's gateway address, as libnetwork does) and a VXLAN device bridged into it. The VXLAN
device is created from the *host* namespace with its final namespace given in the same request: a VXLAN
device keeps the UDP socket of the namespace it was created from, so its tunnel traffic leaves through the
host's own addresses and routes while the device itself sits in the network's namespace. It is created with
learning off and ARP proxying on: remote addresses are only ever known from the static entries
:func:`sync_peers` programs (a neighbour entry per remote endpoint, which the device answers ARP requests
from, and a forwarding entry sending its MAC to the right host), and there is no default destination, so
nothing unknown is flooded to other hosts.

Nothing filters inside the network's namespace, so ``br_netfilter`` is switched off there (its switches
are per namespace since Linux 5.3, and a new namespace starts with them on): otherwise every frame the
bridge forwards would go through the namespace's IP hooks for nothing (a socket-buffer extension, header
checks, three hook traversals per frame; about 3% of a single TCP stream's throughput, bench.overlay).
The host's own bridges keep it: their firewall rules need it.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError as PyrNetlinkError
from pyroute2.netlink.rtnl import ndmsg

from agent.network import netlink
from agent.network.errors import NetlinkError
from agent.network.nsutil import arun_in_netns, create_netns, netns_path, remove_netns
from overlay.peers import PeerEntry

T = TypeVar("T")

BRIDGE = "br0"
NUD_PERMANENT = ndmsg.states["permanent"]
NUD_NOARP = ndmsg.states["noarp"]
NTF_SELF = ndmsg.NTF_SELF
NTF_MASTER = ndmsg.NTF_MASTER
#: Host ends of container veths inside the network's namespace: ``ov`` + the endpoint id.
VETH_PREFIX = "ov"
#: br_netfilter's switches; they exist only while the module is loaded.
BRIDGE_NETFILTER_SYSCTLS = tuple(
    f"/proc/sys/net/bridge/bridge-nf-call-{family}" for family in ("iptables", "ip6tables", "arptables")
)


def vxlan_name(vni: int) -> str:
    """The VXLAN device of a network (unique per host, since VNIs are unique in the cluster)."""
    return f"vx-{vni:06x}"


def veth_name(endpoint_id: str) -> str:
    """The host end of an endpoint's veth pair (inside the network's namespace)."""
    return (VETH_PREFIX + endpoint_id)[: netlink.IFNAMSIZ]


async def _nl(operation: str, fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return await fn()
    except PyrNetlinkError as exc:
        raise NetlinkError(operation, str(exc), exc.code) from None
    except OSError as exc:
        raise NetlinkError(operation, str(exc), exc.errno or 0) from None


@dataclass(frozen=True)
class VXLANSpec:
    """How one network's VXLAN device is made."""

    vni: int
    #: The host's cluster address: the tunnel's source, and what other hosts send this network's traffic to.
    local: str
    port: int
    mtu: int


def namespace_exists(name: str) -> bool:
    """Whether the named namespace exists."""
    return os.path.exists(netns_path(name))


async def build(name: str, host_netns: str | None, spec: VXLANSpec, bridge_addresses: Iterable[str]) -> str:
    """Create (or adopt) the network's namespace ``name`` with its bridge and VXLAN device; its path.

    Idempotent: what exists is kept (an agent restarting adopts it), what is missing is made.
    """
    path = netns_path(name)
    created = not os.path.exists(path)
    if created:
        create_netns(name)
    try:
        await netlink.loopback_up(path)
        await arun_in_netns(path, _bridge_netfilter_off)
        async with netlink.iproute(path) as ipr:
            bridge = await netlink.ensure_bridge(ipr, BRIDGE, bridge_addresses, spec.mtu)
            vx = await netlink.link_index(ipr, vxlan_name(spec.vni))
        if vx is None:
            await _create_vxlan(host_netns, path, spec)
        async with netlink.iproute(path) as ipr:
            vx = await netlink.link_index(ipr, vxlan_name(spec.vni))
            if vx is None:
                raise NetlinkError(f"create {vxlan_name(spec.vni)}", "device vanished after creation")
            await _nl("set mtu of the VXLAN device", lambda: ipr.link("set", index=vx, mtu=spec.mtu))
            await _nl("bridge the VXLAN device", lambda: ipr.link("set", index=vx, master=bridge))
            await _nl("bring up the VXLAN device", lambda: ipr.link("set", index=vx, state="up"))
    except BaseException:
        if created:
            remove_netns(path)
        raise
    return path


def _bridge_netfilter_off() -> None:
    """Keep bridged frames out of the namespace's IP hooks (called inside it; see the module doc)."""
    for path in BRIDGE_NETFILTER_SYSCTLS:
        with contextlib.suppress(FileNotFoundError), open(path, "w") as fh:
            fh.write("0")


async def _create_vxlan(host_netns: str | None, target: str, spec: VXLANSpec) -> None:
    """The VXLAN device, created from the host namespace directly into ``target`` (see the module doc)."""
    name = vxlan_name(spec.vni)
    async with netlink.iproute(host_netns) as ipr:
        # A device of that name left in the host namespace (a crash between two steps elsewhere) would
        # hold the VNI: the kernel allows one device per VNI and port per namespace.
        await netlink.delete_link(ipr, name)
        await _nl(
            f"create VXLAN device {name} (VNI {spec.vni})",
            lambda: ipr.link(
                "add",
                ifname=name,
                kind="vxlan",
                vxlan_id=spec.vni,
                vxlan_local=spec.local,
                vxlan_port=spec.port,
                vxlan_learning=0,
                vxlan_proxy=1,
                mtu=spec.mtu,
                net_ns_fd=target,
            ),
        )


async def destroy(name: str, vni: int) -> None:
    """Remove the network's namespace, deleting its VXLAN device first.

    A namespace is destroyed by the kernel in the background once unmounted, and until then its VXLAN
    device still holds the VNI in the host namespace; deleting the device first frees the VNI at once, so
    the network can be built again right away.
    """
    path = netns_path(name)
    if not os.path.exists(path):
        return
    with contextlib.suppress(NetlinkError):
        async with netlink.iproute(path) as ipr:
            await netlink.delete_link(ipr, vxlan_name(vni))
    remove_netns(path)


async def attach_veth(
    overlay_ns: str, host_ifname: str, sandbox_ns: str, ifname: str, mac: str, mtu: int
) -> None:
    """A veth pair: ``host_ifname`` on the network's bridge, ``ifname`` with ``mac`` inside the sandbox."""
    async with netlink.iproute(overlay_ns) as ipr:
        bridge = await netlink.link_index(ipr, BRIDGE)
        if bridge is None:
            raise NetlinkError(f"attach {ifname}", f"no bridge in {overlay_ns}")
        await _nl(
            f"create veth {host_ifname}",
            lambda: ipr.link(
                "add",
                ifname=host_ifname,
                kind="veth",
                mtu=mtu,
                peer={"ifname": ifname, "net_ns_fd": netns_path(sandbox_ns), "address": mac, "mtu": mtu},
            ),
        )
        try:
            index = await netlink.link_index(ipr, host_ifname)
            if index is None:
                raise NetlinkError(f"create veth {host_ifname}", "interface vanished after creation")
            await _nl(f"attach {host_ifname}", lambda: ipr.link("set", index=index, master=bridge))
            await _nl(f"bring up {host_ifname}", lambda: ipr.link("set", index=index, state="up"))
        except BaseException:
            with contextlib.suppress(NetlinkError):
                await netlink.delete_link(ipr, host_ifname)
            raise


async def detach_veth(overlay_ns: str, host_ifname: str) -> None:
    """Delete an endpoint's veth pair (its sandbox end goes with it); gone already is fine."""
    if not os.path.exists(netns_path(overlay_ns)):
        return
    with contextlib.suppress(NetlinkError):
        async with netlink.iproute(overlay_ns) as ipr:
            await netlink.delete_link(ipr, host_ifname)


async def bridge_ports(overlay_ns: str) -> list[str]:
    """Names of the interfaces on the network's bridge (the VXLAN device and the veths)."""
    async with netlink.iproute(overlay_ns) as ipr:
        bridge = await netlink.link_index(ipr, BRIDGE)
        if bridge is None:
            return []
        return await netlink.bridge_ports(ipr, bridge)


# --- peers ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Programmed:
    """The static entries on a VXLAN device: neighbours (IP → MAC) and forwarding (MAC → host); and the
    MACs the network's bridge learned behind the device (its port towards the other hosts)."""

    neighbours: dict[str, str]
    forwarding: dict[str, str]
    learned: frozenset[str] = frozenset()


async def read_peers(ipr: AsyncIPRoute, vx: int) -> Programmed:
    """The permanent neighbour and forwarding entries on VXLAN device ``vx``, and what the bridge learned
    on it."""
    neighbours: dict[str, str] = {}
    async for msg in await ipr.neigh("dump", ifindex=vx, family=socket.AF_INET):
        if msg["ifindex"] == vx and msg["state"] & NUD_PERMANENT and msg.get("lladdr"):
            neighbours[str(msg.get("dst"))] = str(msg.get("lladdr"))
    forwarding: dict[str, str] = {}
    learned: set[str] = set()
    async for msg in await ipr.fdb("dump", ifindex=vx):
        if msg["ifindex"] != vx or not msg.get("lladdr"):
            continue
        if msg["flags"] & NTF_SELF:
            # The device's own entries (without a destination) are not peers.
            if msg.get("dst"):
                forwarding[str(msg.get("lladdr"))] = str(msg.get("dst"))
        elif msg.get("master") and not msg["state"] & (NUD_PERMANENT | NUD_NOARP):
            # Learned by the bridge from frames that came in over the tunnel (the port's own address and
            # static entries are permanent or noarp).
            learned.add(str(msg.get("lladdr")))
    return Programmed(neighbours, forwarding, frozenset(learned))


async def programmed(overlay_ns: str, vni: int) -> Programmed:
    """What is programmed on the network's VXLAN device now (empty if it does not exist)."""
    async with netlink.iproute(overlay_ns) as ipr:
        vx = await netlink.link_index(ipr, vxlan_name(vni))
        if vx is None:
            return Programmed({}, {})
        return await read_peers(ipr, vx)


async def sync_peers(overlay_ns: str, vni: int, wanted: set[PeerEntry]) -> int:
    """Make the VXLAN device's static entries exactly ``wanted``; the number of entries changed.

    Reads what the kernel has rather than trusting memory, so entries left by an agent that crashed, or
    added by hand, are corrected too. Stale entries go before new ones are added, and with them what the
    bridge learned behind the VXLAN device for MACs no longer wanted (it would keep those for its ageing
    time, 300 s, and send an address reused by a container of this host towards the tunnel until then;
    libnetwork deletes them the same way).
    """
    want_neigh = {e.ip: e.mac for e in wanted}
    want_fdb = {e.mac: e.vtep for e in wanted}
    changes = 0
    async with netlink.iproute(overlay_ns) as ipr:
        vx = await netlink.link_index(ipr, vxlan_name(vni))
        if vx is None:
            raise NetlinkError(f"program peers of VNI {vni}", f"no VXLAN device in {overlay_ns}")
        have = await read_peers(ipr, vx)
        for ip, mac in have.neighbours.items():
            if want_neigh.get(ip) != mac:
                await _ignore_missing(f"remove neighbour {ip}", partial(ipr.neigh, "del", dst=ip, ifindex=vx))
                changes += 1
        for mac, vtep in have.forwarding.items():
            if want_fdb.get(mac) != vtep:
                await _ignore_missing(
                    f"remove forwarding entry {mac}",
                    partial(ipr.fdb, "del", ifindex=vx, lladdr=mac, dst=vtep, flags=NTF_SELF),
                )
                changes += 1
        for mac in sorted(have.learned - want_fdb.keys()):
            await _ignore_missing(
                f"forget learned entry {mac}",
                partial(ipr.fdb, "del", ifindex=vx, lladdr=mac, flags=NTF_MASTER),
            )
            changes += 1
        for mac, vtep in want_fdb.items():
            if have.forwarding.get(mac) != vtep:
                await _nl(
                    f"forward {mac} to {vtep}",
                    partial(
                        ipr.fdb,
                        "replace",
                        ifindex=vx,
                        lladdr=mac,
                        dst=vtep,
                        state=NUD_PERMANENT,
                        flags=NTF_SELF,
                    ),
                )
                changes += 1
        for ip, mac in want_neigh.items():
            if have.neighbours.get(ip) != mac:
                await _nl(
                    f"neighbour {ip} at {mac}",
                    partial(ipr.neigh, "replace", dst=ip, lladdr=mac, ifindex=vx, state=NUD_PERMANENT),
                )
                changes += 1
    return changes


async def _ignore_missing(operation: str, fn: Callable[[], Awaitable[Any]]) -> None:
    try:
        await fn()
    except PyrNetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.ENODEV, errno.ESRCH):
            raise NetlinkError(operation, str(exc), exc.code) from None


# --- the underlay -----------------------------------------------------------------------------------------


async def underlay_mtu(host_netns: str | None, address: str) -> int | None:
    """The MTU of the host interface holding ``address`` (``None``: no interface holds it)."""
    wanted = ipaddress.ip_address(address)
    async with netlink.iproute(host_netns) as ipr:
        index = None
        async for msg in await ipr.addr("dump"):
            value = msg.get("address")
            if value and ipaddress.ip_address(value) == wanted:
                index = msg["index"]
                break
        if index is None:
            return None
        links = [msg async for msg in await ipr.link("dump")]
        for link in links:
            if link["index"] == index:
                return int(link.get("mtu"))
    return None
