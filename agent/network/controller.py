"""The host networking controller: networks, their drivers, nftables and the embedded DNS, on one host.

The agent makes one :class:`NetworkController` and calls it for everything networking: ``network create /
ls / inspect / rm / prune`` here, and the container side (sandboxes, connect, disconnect, ports, ``/etc``
files) through the methods it delegates to :class:`~agent.network.sandbox.SandboxManager`.

State lives in JSON files (:mod:`agent.network.store`); the Linux side (bridges, veths, the nftables table)
is always derived from it. :meth:`start` after an agent restart therefore rebuilds bridges and the table
and re-attaches the DNS server to running containers without touching their interfaces.

All operations are serialised by one lock: they are short (milliseconds), and the state and the nftables
table must change in the same order.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.network import ipam, netlink
from agent.network.bridge import BridgeDriver
from agent.network.driver import HostDriver, NetworkDriver, NullDriver
from agent.network.errors import (
    InvalidNetworkConfig,
    NetworkExists,
    NetworkInUse,
    PredefinedNetwork,
)
from agent.network.etcfiles import EtcFiles
from agent.network.model import (
    DEFAULT_BRIDGE_NETWORK,
    HOST_NETWORK,
    NONE_NETWORK,
    PREDEFINED_NETWORKS,
    EndpointRecord,
    IPAMPool,
    NetworkConfig,
    NetworkRecord,
    PortBinding,
)
from agent.network.nft import DEFAULT_TABLE, Firewall
from agent.network.ports import PortReservations
from agent.network.sandbox import Sandbox, SandboxConfig, SandboxManager
from agent.network.state import NetworkState, label_match
from agent.network.store import NetworkStore
from overlay.dns import EmbeddedDNS

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_IFNAME_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")
BRIDGE_PREFIX = "shbr-"

#: ``--opt`` keys of the bridge driver: Docker's long names and short ones.
_OPT_BRIDGE_NAME = ("com.docker.network.bridge.name", "bridge_name", "name")
_OPT_ICC = ("com.docker.network.bridge.enable_icc", "icc")
_OPT_MASQUERADE = ("com.docker.network.bridge.enable_ip_masquerade", "masquerade")
_OPT_MTU = ("com.docker.network.driver.mtu", "mtu")
_OPT_HOST_IP = ("com.docker.network.bridge.host_binding_ipv4", "host_binding_ipv4")
_BRIDGE_OPTS = {*_OPT_BRIDGE_NAME, *_OPT_ICC, *_OPT_MASQUERADE, *_OPT_MTU, *_OPT_HOST_IP}


@dataclass(frozen=True)
class DefaultBridge:
    """The default bridge network (``--bip``, ``--fixed-cidr``, ``--mtu``, ``--icc``, IPv6 options)."""

    bridge: str = "shoal0"
    #: Gateway address with prefix length, e.g. ``172.17.0.1/16`` (empty: first free default pool).
    bip: str = ""
    fixed_cidr: str = ""
    mtu: int = 1500
    icc: bool = True
    ipv6: bool = False
    fixed_cidr_v6: str = ""


@dataclass(frozen=True)
class ControllerConfig:
    """How the controller runs on this host."""

    state_dir: Path
    #: The host namespace to manage (``None``: the agent's own; tests use a namespace of their own).
    host_netns: str | None = None
    table: str = DEFAULT_TABLE
    default_bridge: DefaultBridge = field(default_factory=DefaultBridge)
    address_pools: tuple[ipam.PoolSpec, ...] = ipam.DEFAULT_POOLS
    #: Container namespaces are created as ``/run/netns/<prefix><container id[:12]>``.
    sandbox_prefix: str = "shoal-"
    ip_forward: bool = True
    resolv_conf: Path = Path("/etc/resolv.conf")
    #: Where the embedded DNS forwards by default (``host[:port]``); empty: the host's resolv.conf servers.
    dns_upstreams: tuple[str, ...] = ()


def _parse_bool(value: str, field_name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise InvalidNetworkConfig(field_name, f"expected true or false, got {value!r}")


def _option(options: Mapping[str, str], keys: Iterable[str]) -> str | None:
    for key in keys:
        if key in options:
            return options[key]
    return None


def _now() -> str:
    return datetime.now(UTC).isoformat()


class NetworkController:
    """Networks and container networking on one host."""

    def __init__(self, config: ControllerConfig, dns: EmbeddedDNS | None = None) -> None:
        self.config = config
        self.state = NetworkState(NetworkStore(config.state_dir))
        self.dns = dns if dns is not None else EmbeddedDNS()
        self.firewall = Firewall(config.table, config.host_netns)
        self.ports = PortReservations(config.host_netns)
        self.drivers: dict[str, NetworkDriver] = {
            "bridge": BridgeDriver(config.host_netns, ip_forward=config.ip_forward),
            "host": HostDriver(),
            "null": NullDriver(),
        }
        self.lock = asyncio.Lock()
        self.sandboxes = SandboxManager(self)

    def register_driver(self, driver: NetworkDriver) -> None:
        """Make another driver (the overlay) available to ``network create --driver``."""
        self.drivers[driver.name] = driver

    # --- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the state, create the predefined networks, and rebuild bridges, ports, rules and DNS."""
        async with self.lock:
            self.state.load()
            await self._ensure_predefined()
            await self.sandboxes.restore()
            for network in self.state.networks.values():
                driver = self.drivers.get(network.driver)
                if driver is not None:
                    await driver.restore(network, self.state.endpoints_of_network(network.id))
            await self.sync_firewall(force=True)

    async def close(self) -> None:
        """Stop serving (the agent is stopping): containers, bridges and rules stay as they are."""
        async with self.lock:
            for container_id in list(self.state.sandboxes):
                await self.dns.detach(container_id)
            self.ports.close()

    async def teardown(self) -> None:
        """Remove everything this controller made: sandboxes, networks' devices, the nftables table."""
        async with self.lock:
            for container_id in list(self.state.sandboxes):
                await self.sandboxes.remove_locked(container_id)
            for network in list(self.state.networks.values()):
                driver = self.drivers.get(network.driver)
                if driver is not None:
                    await driver.delete(network)
                self.dns.table.remove_network(network.id)
                self.state.drop_network(network.id)
            await self.firewall.remove()
            self.ports.close()

    async def sync_firewall(self, *, force: bool = False) -> None:
        """Load the nftables table for the current state (one atomic transaction) if it changed."""
        await self.firewall.apply(self.state.ruleset(self.config.table, self.drivers), force=force)

    # --- networks ---------------------------------------------------------------------------------------

    async def _ensure_predefined(self) -> None:
        existing = {n.name: n for n in self.state.networks.values() if n.predefined}
        for name, driver in ((HOST_NETWORK, "host"), (NONE_NETWORK, "null")):
            if name not in existing:
                self.state.put_network(
                    NetworkRecord(
                        id=secrets.token_hex(32), name=name, driver=driver, created=_now(), predefined=True
                    )
                )
        wanted = await self._default_bridge_record(existing.get(DEFAULT_BRIDGE_NETWORK))
        if wanted is not None:
            self.state.put_network(wanted)

    async def _default_bridge_record(self, current: NetworkRecord | None) -> NetworkRecord | None:
        """The default bridge as configured; ``None`` when the stored one is still right (or in use)."""
        cfg = self.config.default_bridge
        pools: list[IPAMPool] = []
        if cfg.bip:
            try:
                iface = ipaddress.ip_interface(cfg.bip)
            except ValueError:
                raise InvalidNetworkConfig("bip", f"invalid address {cfg.bip!r}") from None
            pools.append(
                ipam.resolve_pool(IPAMPool(str(iface.network), str(iface.ip), cfg.fixed_cidr), "bip")
            )
        elif current is not None and current.ipam:
            pools.append(replace(current.ipam[0], ip_range=cfg.fixed_cidr or current.ipam[0].subnet))
        else:
            taken = [*await self._host_routes(), *self._subnets(exclude=current.id if current else "")]
            subnet = ipam.auto_subnet(taken, self.config.address_pools)
            pools.append(ipam.resolve_pool(IPAMPool(str(subnet), ip_range=cfg.fixed_cidr), "bip"))
        if cfg.ipv6:
            if not cfg.fixed_cidr_v6:
                raise InvalidNetworkConfig(
                    "fixed-cidr-v6", "IPv6 on the default bridge needs --fixed-cidr-v6"
                )
            pools.append(ipam.resolve_pool(IPAMPool(cfg.fixed_cidr_v6), "fixed-cidr-v6"))
        record = NetworkRecord(
            id=current.id if current else secrets.token_hex(32),
            name=DEFAULT_BRIDGE_NETWORK,
            driver="bridge",
            created=current.created if current else _now(),
            ipam=tuple(pools),
            ipv6=cfg.ipv6,
            interface=cfg.bridge,
            icc=cfg.icc,
            mtu=cfg.mtu,
            predefined=True,
            options={"com.docker.network.bridge.default_bridge": "true"},
        )
        if current is None:
            return record
        if record == current:
            return None
        if self.state.endpoints_of_network(current.id):
            # Containers still use the old settings; they apply once the bridge is free.
            return None
        await self.drivers["bridge"].delete(current)
        return record

    async def _host_routes(self) -> list[ipam.Network]:
        async with netlink.iproute(self.config.host_netns) as ipr:
            return await netlink.host_routes(ipr)

    def _subnets(self, exclude: str = "") -> list[ipam.Network]:
        return [
            ipaddress.ip_network(pool.subnet)
            for network in self.state.networks.values()
            if network.id != exclude
            for pool in network.ipam
        ]

    async def create_network(self, config: NetworkConfig) -> NetworkRecord:
        """``network create``: check the request, choose subnets, build the network, update the rules."""
        async with self.lock:
            record = await self._resolve_network(config)
            driver = self.drivers[record.driver]
            await driver.create(record)
            try:
                self.state.put_network(record)
                await self.sync_firewall()
            except BaseException:
                self.state.drop_network(record.id)
                await driver.delete(record)
                raise
            return record

    async def _resolve_network(self, config: NetworkConfig) -> NetworkRecord:
        name = config.name
        if not _NAME_RE.match(name or ""):
            raise InvalidNetworkConfig("name", f"invalid network name {name!r}")
        if name in PREDEFINED_NETWORKS:
            raise PredefinedNetwork(name, "created again")
        for other in self.state.networks.values():
            if other.name == name:
                raise NetworkExists(name, other.id)
        driver = self.drivers.get(config.driver)
        if driver is None:
            raise InvalidNetworkConfig("driver", f"unknown driver {config.driver!r}")
        if config.driver in ("host", "null"):
            raise InvalidNetworkConfig("driver", f"only one instance of {config.driver!r} network is allowed")
        network_id = config.id or secrets.token_hex(32)
        if network_id in self.state.networks:
            raise NetworkExists(self.state.networks[network_id].name, network_id)
        pools = await self._resolve_pools(config) if driver.local_ipam else tuple(config.ipam)
        options = dict(config.options)
        interface, icc, masquerade, mtu = "", True, True, 1500
        if config.driver == "bridge":
            unknown = sorted(set(options) - _BRIDGE_OPTS)
            if unknown:
                raise InvalidNetworkConfig("--opt", f"unknown bridge option(s) {', '.join(unknown)}")
            interface = _option(options, _OPT_BRIDGE_NAME) or (BRIDGE_PREFIX + network_id)[:15]
            if not _IFNAME_RE.match(interface):
                raise InvalidNetworkConfig("--opt bridge name", f"invalid interface name {interface!r}")
            for other in self.state.networks.values():
                if other.interface == interface:
                    raise InvalidNetworkConfig(
                        "--opt bridge name", f"{interface} is used by network {other.name}"
                    )
            icc = _parse_bool(_option(options, _OPT_ICC) or "true", "--opt icc")
            masquerade = _parse_bool(_option(options, _OPT_MASQUERADE) or "true", "--opt masquerade")
        mtu_text = _option(options, _OPT_MTU)
        if mtu_text is not None:
            try:
                mtu = int(mtu_text)
            except ValueError:
                raise InvalidNetworkConfig("--opt mtu", f"invalid MTU {mtu_text!r}") from None
            if not 68 <= mtu <= 65535:
                raise InvalidNetworkConfig("--opt mtu", f"MTU {mtu} out of range 68-65535")
        return NetworkRecord(
            id=network_id,
            name=name,
            driver=config.driver,
            created=_now(),
            ipam=pools,
            internal=config.internal,
            ipv6=config.ipv6,
            attachable=config.attachable,
            labels=dict(config.labels),
            options=options,
            interface=interface,
            icc=icc,
            masquerade=masquerade,
            mtu=mtu,
        )

    async def _resolve_pools(self, config: NetworkConfig) -> tuple[IPAMPool, ...]:
        resolved = [ipam.resolve_pool(pool) for pool in config.ipam if pool.subnet]
        if any(
            not pool.subnet and (pool.gateway or pool.ip_range or pool.aux_addresses) for pool in config.ipam
        ):
            raise InvalidNetworkConfig("subnet", "gateway, ip-range and aux-address need a --subnet")
        by_version: dict[int, int] = {}
        for pool in resolved:
            version = ipaddress.ip_network(pool.subnet).version
            by_version[version] = by_version.get(version, 0) + 1
            if by_version[version] > 1:
                raise InvalidNetworkConfig("subnet", f"a bridge network takes one IPv{version} subnet")
        others: dict[str, list[ipam.Network]] = {}
        for network in self.state.networks.values():
            others.setdefault(f"network {network.name}", []).extend(
                ipaddress.ip_network(p.subnet) for p in network.ipam
            )
        for pool in resolved:
            ipam.check_overlap(ipaddress.ip_network(pool.subnet), others)
        if 4 not in by_version:
            taken = [*await self._host_routes(), *self._subnets()]
            subnet = ipam.auto_subnet(taken, self.config.address_pools)
            resolved.insert(0, ipam.resolve_pool(IPAMPool(str(subnet))))
        if config.ipv6 and 6 not in by_version:
            raise InvalidNetworkConfig("ipv6", "an IPv6 network needs an IPv6 --subnet")
        if not config.ipv6 and 6 in by_version:
            raise InvalidNetworkConfig("subnet", "an IPv6 subnet needs --ipv6")
        return tuple(resolved)

    def network(self, ref: str) -> NetworkRecord:
        """A network by id, name or id prefix."""
        return self.state.network(ref)

    def list_networks(self, filters: Mapping[str, Sequence[str]] | None = None) -> list[NetworkRecord]:
        """``network ls``, with Docker's filters ``name``, ``id``, ``driver``, ``label``, ``type``."""
        filters = filters or {}
        out = []
        for network in sorted(self.state.networks.values(), key=lambda n: n.name):
            if "name" in filters and not any(f in network.name for f in filters["name"]):
                continue
            if "id" in filters and not any(network.id.startswith(f) for f in filters["id"]):
                continue
            if "driver" in filters and network.driver not in filters["driver"]:
                continue
            if "label" in filters and not label_match(network.labels, filters["label"]):
                continue
            if "type" in filters:
                kind = "builtin" if network.predefined else "custom"
                if kind not in filters["type"]:
                    continue
            out.append(network)
        return out

    def inspect_network(self, ref: str) -> dict[str, Any]:
        """``network inspect``, in Docker's JSON shape."""
        network = self.state.network(ref)
        containers = {}
        for endpoint in self.state.endpoints_of_network(network.id):
            sandbox = self.state.sandboxes.get(endpoint.container_id)
            v4 = next((a for a in endpoint.addresses if ":" not in a), "")
            v6 = next((a for a in endpoint.addresses if ":" in a), "")
            containers[endpoint.container_id] = {
                "Name": sandbox.name if sandbox else endpoint.container_name,
                "EndpointID": endpoint.id,
                "MacAddress": endpoint.mac,
                "IPv4Address": v4,
                "IPv6Address": v6,
                "Aliases": list(endpoint.aliases),
            }
        return {
            "Name": network.name,
            "Id": network.id,
            "Created": network.created,
            "Scope": "local",
            "Driver": network.driver,
            "EnableIPv6": network.ipv6,
            "IPAM": {
                "Driver": "default",
                "Options": {},
                "Config": [
                    {
                        "Subnet": p.subnet,
                        "Gateway": p.gateway,
                        **({"IPRange": p.ip_range} if p.ip_range and p.ip_range != p.subnet else {}),
                        **({"AuxiliaryAddresses": dict(p.aux_addresses)} if p.aux_addresses else {}),
                    }
                    for p in network.ipam
                ],
            },
            "Internal": network.internal,
            "Attachable": network.attachable,
            "Ingress": False,
            "Containers": containers,
            "Options": {
                **dict(network.options),
                **(
                    {
                        "com.docker.network.bridge.name": network.interface,
                        "com.docker.network.bridge.enable_icc": str(network.icc).lower(),
                        "com.docker.network.driver.mtu": str(network.mtu),
                    }
                    if network.driver == "bridge"
                    else {}
                ),
            },
            "Labels": dict(network.labels),
        }

    async def remove_network(self, ref: str) -> None:
        """``network rm``: refused for predefined networks and while containers are connected."""
        async with self.lock:
            network = self.state.network(ref)
            await self._remove_network_locked(network)

    async def _remove_network_locked(self, network: NetworkRecord) -> None:
        if network.predefined:
            raise PredefinedNetwork(network.name, "removed")
        users = self.state.users_of(network.id)
        if users:
            raise NetworkInUse(network.name, users)
        self.state.drop_network(network.id)
        try:
            await self.sync_firewall()
        except BaseException:
            self.state.put_network(network)
            raise
        await self.drivers[network.driver].delete(network)
        self.dns.table.remove_network(network.id)

    async def prune_networks(self, labels: Sequence[str] = ()) -> list[str]:
        """``network prune``: remove every unused user-defined network (matching ``labels``); their names."""
        async with self.lock:
            removed = []
            for network in sorted(self.state.networks.values(), key=lambda n: n.name):
                if network.predefined or self.state.users_of(network.id):
                    continue
                if labels and not label_match(network.labels, labels):
                    continue
                await self._remove_network_locked(network)
                removed.append(network.name)
            return removed

    # --- containers (see agent.network.sandbox) ---------------------------------------------------------

    async def create_sandbox(self, config: SandboxConfig) -> Sandbox:
        """Give a container its network: namespace, first network, ports, rules, DNS (all or nothing)."""
        return await self.sandboxes.create(config)

    async def remove_sandbox(self, container: str) -> None:
        """The container is gone: remove everything its networking made."""
        await self.sandboxes.remove(container)

    async def connect(
        self, container: str, network: str, *, aliases: Sequence[str] = (), ip: str = "", ip6: str = ""
    ) -> EndpointRecord:
        """``network connect [--alias A] [--ip IP] NETWORK CONTAINER``."""
        return await self.sandboxes.connect(container, network, aliases=aliases, ip=ip, ip6=ip6)

    async def disconnect(self, container: str, network: str, *, force: bool = False) -> None:
        """``network disconnect [--force] NETWORK CONTAINER``."""
        await self.sandboxes.disconnect(container, network, force=force)

    def sandbox(self, container: str) -> Sandbox:
        """A container's network: namespace, endpoints, ports, link environment, ``/etc`` files."""
        return self.sandboxes.view(container)

    def port(self, container: str) -> list[PortBinding]:
        """``docker port CONTAINER``."""
        return self.sandboxes.port(container)

    def etc_files(self, container: str) -> EtcFiles:
        """The container's ``/etc/hosts``, ``/etc/hostname`` and ``/etc/resolv.conf`` contents."""
        return self.sandboxes.etc_files(container)
