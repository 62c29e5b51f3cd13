"""IP address management for local networks: subnets that never overlap, and addresses within them.

Pure functions over :mod:`ipaddress` values, no I/O: the controller gives them what is taken (other
networks' subnets, the host's routes, the addresses already assigned) and stores what they choose.

Automatic subnets come from Docker's default pools, in order: 172.17.0.0/16 … 172.31.0.0/16, then /20s of
192.168.0.0/16. The default bridge asks first, so it gets 172.17.0.0/16 unless the host already routes it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.network.errors import AddressInUse, InvalidNetworkConfig, PoolExhausted, PoolOverlap
from agent.network.model import IPAMPool

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class PoolSpec:
    """A predefined address pool: ``base`` is cut into subnets of prefix length ``size``."""

    base: str
    size: int


DEFAULT_POOLS: tuple[PoolSpec, ...] = (
    PoolSpec("172.17.0.0/16", 16),
    PoolSpec("172.18.0.0/15", 16),
    PoolSpec("172.20.0.0/14", 16),
    PoolSpec("172.24.0.0/13", 16),
    PoolSpec("192.168.0.0/16", 20),
)


def parse_network(value: str, field: str) -> Network:
    """``value`` as a network in CIDR notation (host bits must be zero, as Docker requires)."""
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise InvalidNetworkConfig(field, f"invalid CIDR {value!r}: {exc}") from None


def parse_address(value: str, field: str) -> Address:
    """``value`` as a bare IP address (no prefix length)."""
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise InvalidNetworkConfig(field, f"invalid IP address {value!r}") from None


def _first_host(net: Network) -> Address:
    """The first usable address (the conventional gateway)."""
    if net.num_addresses <= 2:
        return net.network_address
    return net.network_address + 1


def _is_usable(net: Network, addr: Address) -> bool:
    """An address a host may take: inside ``net`` and, for IPv4 above /31, not network or broadcast."""
    if addr not in net:
        return False
    if isinstance(net, ipaddress.IPv4Network) and net.prefixlen < 31:
        return addr not in (net.network_address, net.broadcast_address)
    # IPv6: the subnet-router anycast address (all host bits zero) is not handed out either.
    return not (
        isinstance(net, ipaddress.IPv6Network) and net.prefixlen < 127 and addr == net.network_address
    )


def resolve_pool(request: IPAMPool, field: str = "subnet") -> IPAMPool:
    """Check one requested subnet and fill in the defaults (gateway, ip-range).

    The gateway must be a usable address of the subnet; the ip-range must lie within the subnet; aux
    addresses must be inside the subnet (they are kept out of allocation, like the gateway).
    """
    subnet = parse_network(request.subnet, field)
    if request.gateway:
        gateway = parse_address(request.gateway, "gateway")
        if not _is_usable(subnet, gateway):
            raise InvalidNetworkConfig("gateway", f"{gateway} is not a usable address of {subnet}")
    else:
        gateway = _first_host(subnet)
    ip_range = subnet
    if request.ip_range:
        ip_range = parse_network(request.ip_range, "ip-range")
        if ip_range.version != subnet.version or not ip_range.subnet_of(subnet):  # type: ignore[arg-type]
            raise InvalidNetworkConfig("ip-range", f"{ip_range} is not within subnet {subnet}")
    aux: dict[str, str] = {}
    for name, value in request.aux_addresses.items():
        addr = parse_address(value, "aux-address")
        if addr not in subnet:
            raise InvalidNetworkConfig("aux-address", f"{name}={addr} is not within subnet {subnet}")
        aux[name] = str(addr)
    return IPAMPool(subnet=str(subnet), gateway=str(gateway), ip_range=str(ip_range), aux_addresses=aux)


def check_overlap(subnet: Network, taken: Mapping[str, Iterable[Network]]) -> None:
    """Raise :class:`PoolOverlap` if ``subnet`` overlaps anything in ``taken`` (label → networks)."""
    for label, networks in taken.items():
        for other in networks:
            if other.version == subnet.version and subnet.overlaps(other):
                raise PoolOverlap(str(subnet), f"{label} ({other})")


def auto_subnet(taken: Iterable[Network], pools: Iterable[PoolSpec] = DEFAULT_POOLS) -> Network:
    """The first subnet of the predefined pools that overlaps nothing in ``taken``."""
    used = [net for net in taken if net.version == 4]
    for pool in pools:
        base = parse_network(pool.base, "default-address-pools")
        if pool.size < base.prefixlen:
            raise InvalidNetworkConfig("default-address-pools", f"size /{pool.size} is larger than {base}")
        for candidate in base.subnets(new_prefix=pool.size):
            if not any(candidate.overlaps(other) for other in used):
                return candidate
    raise PoolExhausted("all predefined address pools have been fully subnetted")


def reserved(pool: IPAMPool) -> set[Address]:
    """Addresses of ``pool`` never given to a container: the gateway and the aux addresses."""
    out: set[Address] = {ipaddress.ip_address(v) for v in pool.aux_addresses.values()}
    if pool.gateway:
        out.add(ipaddress.ip_address(pool.gateway))
    return out


def allocate(pool: IPAMPool, used: Iterable[str], requested: str = "") -> str:
    """An address for a new endpoint, in CIDR notation with the subnet's prefix length.

    ``used`` are addresses already assigned on the network (bare or CIDR). A ``requested`` address (``--ip``)
    must be usable, inside the subnet and free; it may lie outside ``ip_range``, as in Docker. Otherwise
    the lowest free address of ``ip_range`` is chosen.
    """
    subnet = ipaddress.ip_network(pool.subnet)
    taken = {ipaddress.ip_address(u.split("/")[0]) for u in used} | reserved(pool)
    if requested:
        addr = parse_address(requested, "ip")
        if addr.version != subnet.version:
            raise AddressInUse(requested, f"not an IPv{subnet.version} address")
        if not _is_usable(subnet, addr):
            raise AddressInUse(requested, f"not a usable address of subnet {subnet}")
        if addr in taken:
            raise AddressInUse(requested, "already in use")
        return f"{addr}/{subnet.prefixlen}"
    ip_range = ipaddress.ip_network(pool.ip_range or pool.subnet)
    # Walk the range lazily: a /8 has millions of addresses, and the first free one is usually near the start.
    start = int(ip_range.network_address)
    for offset in range(ip_range.num_addresses):
        addr = ipaddress.ip_address(start + offset)
        if addr not in taken and _is_usable(subnet, addr):
            return f"{addr}/{subnet.prefixlen}"
    raise PoolExhausted(f"no free address left in {ip_range}")


def pool_for(pools: Iterable[IPAMPool], version: int) -> IPAMPool | None:
    """The network's first subnet of IP ``version`` (4 or 6), if it has one."""
    for pool in pools:
        if ipaddress.ip_network(pool.subnet).version == version:
            return pool
    return None
