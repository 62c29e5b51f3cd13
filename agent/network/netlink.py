"""Netlink operations of the bridge driver, through pyroute2's ``AsyncIPRoute``.

Host-side work (bridges, the host end of veth pairs, routes) runs on an ``AsyncIPRoute`` opened in the
host namespace the controller manages; sandbox-side work opens one in the container's namespace. Every
pyroute2 failure is turned into :class:`~agent.network.errors.NetlinkError` naming the operation.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError as PyrNetlinkError

from agent.network.errors import NetlinkError
from agent.network.nsutil import arun_in_netns, netns_path

T = TypeVar("T")

NETLINK_ROUTE = 0
#: Linux limits interface names to 15 bytes.
IFNAMSIZ = 15
#: IPv6 addresses are added without duplicate address detection: IPAM already made them unique, and a
#: tentative address would make the first packets of a new container fail.
IFA_F_NODAD = 0x02


def _rtnl_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)


def rtnl_socket() -> socket.socket:
    """A route netlink socket in the calling thread's namespace (for :func:`holding`)."""
    return _rtnl_socket()


#: Sockets :func:`holding` keeps open, by namespace path; :func:`iproute` hands them out.
_HELD: dict[str, AsyncIPRoute] = {}


@contextlib.asynccontextmanager
async def holding(netns: str, sock: socket.socket) -> AsyncIterator[None]:
    """Within the block, :func:`iproute` for ``netns`` uses ``sock`` (a route netlink socket opened inside
    it) instead of opening one: a container's sandbox is built with one socket rather than one thread
    entering its namespace per step. ``sock`` is closed at the end."""
    path = netns_path(netns)
    try:
        ipr = AsyncIPRoute(use_socket=sock)
        await ipr.setup_endpoint()
    except (OSError, PyrNetlinkError) as exc:
        sock.close()
        raise NetlinkError(f"open netlink socket in {netns}", str(exc)) from None
    _HELD[path] = ipr
    try:
        yield
    finally:
        if _HELD.get(path) is ipr:
            del _HELD[path]
        ipr.close()


@contextlib.asynccontextmanager
async def iproute(netns: str | None) -> AsyncIterator[AsyncIPRoute]:
    """An ``AsyncIPRoute`` in ``netns`` (a name or path; ``None``: this process's namespace).

    For another namespace the netlink socket is opened by a thread that enters it (about 1 ms) rather than
    by pyroute2's own ``netns=`` support, which forks a child process per socket (about 4 ms); attaching a
    container opens a few of them. A socket :func:`holding` keeps for the namespace is used instead.
    """
    held = _HELD.get(netns_path(netns)) if netns else None
    if held is not None:
        yield held
        return
    try:
        sock = await arun_in_netns(netns, _rtnl_socket) if netns else None
        ipr = AsyncIPRoute(use_socket=sock)
        await ipr.setup_endpoint()
    except (OSError, PyrNetlinkError) as exc:
        raise NetlinkError(f"open netlink socket in {netns or 'host namespace'}", str(exc)) from None
    try:
        yield ipr
    finally:
        ipr.close()


async def _call(operation: str, fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return await fn()
    except PyrNetlinkError as exc:
        raise NetlinkError(operation, str(exc), exc.code) from None
    except OSError as exc:
        raise NetlinkError(operation, str(exc), exc.errno or 0) from None


async def _collect(result: Any) -> list[Any]:
    """pyroute2 answers some requests with a list and dumps with an async generator: a list either way."""
    if hasattr(result, "__aiter__"):
        return [msg async for msg in result]
    return list(result)


async def link_index(ipr: AsyncIPRoute, ifname: str) -> int | None:
    """The index of interface ``ifname``, or ``None``."""
    found = await ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


async def _addresses(ipr: AsyncIPRoute, index: int) -> set[str]:
    out = set()
    async for msg in await ipr.addr("dump", index=index):
        out.add(f"{msg.get('address')}/{msg['prefixlen']}")
    return out


async def _add_addresses(ipr: AsyncIPRoute, index: int, addresses: Iterable[str], what: str) -> None:
    present = await _addresses(ipr, index)
    for cidr in addresses:
        iface = ipaddress.ip_interface(cidr)
        if f"{iface.ip}/{iface.network.prefixlen}" in present:
            continue
        extra: dict[str, Any] = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
        await _call(
            f"add address {cidr} to {what}",
            lambda iface=iface, extra=extra: ipr.addr(  # type: ignore[misc]
                "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra
            ),
        )


async def ensure_bridge(ipr: AsyncIPRoute, name: str, addresses: Iterable[str], mtu: int) -> int:
    """Create bridge ``name`` if missing, give it ``addresses`` (CIDR) and ``mtu``, bring it up."""
    index = await link_index(ipr, name)
    if index is None:
        await _call(f"create bridge {name}", lambda: ipr.link("add", ifname=name, kind="bridge"))
        index = await link_index(ipr, name)
        if index is None:
            raise NetlinkError(f"create bridge {name}", "bridge vanished after creation")
    await _call(f"set mtu of {name}", lambda: ipr.link("set", index=index, mtu=mtu))
    await _add_addresses(ipr, index, addresses, name)
    await _call(f"bring up {name}", lambda: ipr.link("set", index=index, state="up"))
    return index


async def delete_link(ipr: AsyncIPRoute, name: str) -> bool:
    """Delete interface ``name`` (a veth takes its peer with it); ``False`` if it did not exist."""
    index = await link_index(ipr, name)
    if index is None:
        return False
    try:
        await ipr.link("del", index=index)
    except PyrNetlinkError as exc:
        if exc.code == errno.ENODEV:
            return False
        raise NetlinkError(f"delete {name}", str(exc), exc.code) from None
    return True


async def create_veth(
    ipr: AsyncIPRoute,
    host_name: str,
    peer_name: str,
    sandbox: str,
    bridge_index: int,
    mtu: int,
    *,
    hairpin: bool = True,
) -> None:
    """A veth pair: ``host_name`` on the bridge here, ``peer_name`` created directly inside ``sandbox``.

    One request makes the pair, puts the host end on the bridge and brings it up. Hairpin mode (a
    bridge-port attribute, set by name) lets a container reach its own published port through the host
    (the DNAT sends the packet back out of the port it came in by).
    """
    await _call(
        f"create veth {host_name}",
        lambda: ipr.link(
            "add",
            ifname=host_name,
            kind="veth",
            mtu=mtu,
            master=bridge_index,
            state="up",
            peer={"ifname": peer_name, "net_ns_fd": netns_path(sandbox), "mtu": mtu},
        ),
    )
    if not hairpin:
        return
    try:
        await _call(
            f"hairpin mode on {host_name}",
            lambda: ipr.link("set", ifname=host_name, kind="bridge_slave", mode=1),
        )
    except BaseException:
        with contextlib.suppress(NetlinkError, PyrNetlinkError, OSError):
            await delete_link(ipr, host_name)
        raise


async def configure_interface(
    sandbox: str,
    ifname: str,
    addresses: Iterable[str],
    gateways: Iterable[str],
    mtu: int,
    *,
    loopback: bool = True,
) -> str:
    """Inside ``sandbox``: address ``ifname``, bring it (and ``lo``, unless ``loopback`` is false because it
    is up already) up, route by default via ``gateways``.

    Returns the interface's MAC address. An IPv6 address is added without duplicate address detection
    (``nodad``) so it is usable at once, as the addresses are allocated uniquely anyway. Each netlink
    request costs the agent CPU and takes the kernel's one rtnl lock, so this makes as few as it can:
    one to look the interface up, one per address and route, one to bring it up (with its MTU).
    """
    async with iproute(sandbox) as ipr:
        try:
            links = await ipr.link("get", ifname=ifname)
        except PyrNetlinkError as exc:
            if exc.code == errno.ENODEV:
                raise NetlinkError(f"configure {ifname}", f"no such interface in {sandbox}") from None
            raise NetlinkError(f"configure {ifname}", str(exc), exc.code) from None
        if not links:
            raise NetlinkError(f"configure {ifname}", f"no such interface in {sandbox}")
        link = links[0]
        index = link["index"]
        mac = str(link.get("address") or "")
        if loopback:
            await _call("bring up lo", lambda: ipr.link("set", ifname="lo", state="up"))
        for cidr in addresses:
            iface = ipaddress.ip_interface(cidr)
            extra: dict[str, Any] = {"flags": IFA_F_NODAD} if iface.version == 6 else {}
            await _call(
                f"add address {cidr} to {ifname}",
                lambda iface=iface, extra=extra: ipr.addr(  # type: ignore[misc]
                    "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra
                ),
            )
        mtu_arg = {} if link.get("mtu") == mtu else {"mtu": mtu}
        await _call(f"bring up {ifname}", lambda: ipr.link("set", index=index, state="up", **mtu_arg))
        for gateway in gateways:
            dst = "::/0" if ":" in gateway else "0.0.0.0/0"
            await _call(
                f"default route via {gateway}",
                lambda gateway=gateway, dst=dst: ipr.route(  # type: ignore[misc]
                    "replace", dst=dst, gateway=gateway, oif=index
                ),
            )
        return mac


async def loopback_up(sandbox: str) -> None:
    """Bring up ``lo`` inside ``sandbox`` (a new namespace starts with it down)."""
    async with iproute(sandbox) as ipr:
        await _call("bring up lo", lambda: ipr.link("set", ifname="lo", state="up"))


async def remove_interface(sandbox: str, ifname: str) -> bool:
    """Delete ``ifname`` inside ``sandbox`` (its veth peer goes with it); ``False`` if already gone."""
    try:
        async with iproute(sandbox) as ipr:
            return await delete_link(ipr, ifname)
    except NetlinkError:
        return False


async def sandbox_interfaces(sandbox: str) -> list[str]:
    """Interface names inside ``sandbox``."""
    async with iproute(sandbox) as ipr:
        return [str(msg.get("ifname")) async for msg in await ipr.link("dump")]


async def host_routes(ipr: AsyncIPRoute) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Destinations of the host's main-table IPv4 routes, except the default route.

    Automatic subnets stay clear of them, so a container network never hides a network the host reaches.
    """
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    async for msg in await ipr.route("dump", family=2, table=254):
        dst = msg.get("dst")
        if not dst or msg["dst_len"] == 0:
            continue
        out.append(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
    return out


async def bridge_ports(ipr: AsyncIPRoute, bridge_index: int) -> list[str]:
    """Names of the interfaces enslaved to a bridge."""
    return [str(msg.get("ifname")) async for msg in await ipr.link("dump", master=bridge_index)]


async def set_default_routes(sandbox: str, ifname: str, gateways: Iterable[str]) -> None:
    """Point the sandbox's default routes at ``gateways`` through ``ifname`` (when its gateway changes)."""
    async with iproute(sandbox) as ipr:
        index = await link_index(ipr, ifname)
        if index is None:
            raise NetlinkError(f"default route via {ifname}", f"no such interface in {sandbox}")
        for gateway in gateways:
            dst = "::/0" if ":" in gateway else "0.0.0.0/0"
            await _call(
                f"default route via {gateway}",
                lambda gateway=gateway, dst=dst: ipr.route(  # type: ignore[misc]
                    "replace", dst=dst, gateway=gateway, oif=index
                ),
            )
