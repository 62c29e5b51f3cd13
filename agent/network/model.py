"""The host networking's values: networks, endpoints, sandboxes and port bindings.

Everything here is a frozen dataclass; the state store writes them as JSON through :func:`to_json` /
:func:`from_json`, which follow the type hints (tuples, nested dataclasses, string maps, optionals), so a
field added with a default keeps old state files readable.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

#: Name of the default bridge network (its Linux bridge is ``shoal0`` unless configured otherwise).
DEFAULT_BRIDGE_NETWORK = "bridge"
HOST_NETWORK = "host"
NONE_NETWORK = "none"
PREDEFINED_NETWORKS = (DEFAULT_BRIDGE_NETWORK, HOST_NETWORK, NONE_NETWORK)


@dataclass(frozen=True)
class IPAMPool:
    """One subnet of a network: where addresses come from (``ip_range``) and which are reserved.

    In a request every field but ``subnet`` may be empty (and ``subnet`` too, for an automatic one); in a
    stored network they are resolved: ``gateway`` is set and ``ip_range`` is the subnet when not narrowed.
    """

    subnet: str = ""
    gateway: str = ""
    ip_range: str = ""
    #: name → address kept out of allocation (Docker's ``--aux-address``).
    aux_addresses: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkConfig:
    """What ``network create`` asks for."""

    name: str
    driver: str = "bridge"
    ipam: tuple[IPAMPool, ...] = ()
    internal: bool = False
    ipv6: bool = False
    attachable: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Driver options (``--opt``): the bridge's name, icc, mtu, masquerade (Docker's long names accepted).
    options: Mapping[str, str] = field(default_factory=dict)
    #: The id to use (a cluster network keeps the id the managers gave it); empty: a new random one.
    id: str = ""


@dataclass(frozen=True)
class NetworkRecord:
    """A network as stored: the request resolved (subnets, gateway, bridge name, icc, mtu)."""

    id: str
    name: str
    driver: str
    created: str
    ipam: tuple[IPAMPool, ...] = ()
    internal: bool = False
    ipv6: bool = False
    attachable: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)
    #: The Linux device the driver builds (the bridge for ``bridge``); empty for ``host`` and ``none``.
    interface: str = ""
    icc: bool = True
    masquerade: bool = True
    mtu: int = 1500
    #: ``bridge``, ``host`` and ``none`` exist on every host and cannot be removed.
    predefined: bool = False

    @property
    def is_default_bridge(self) -> bool:
        """The default bridge: no embedded DNS, legacy links allowed (as on Docker's ``docker0``)."""
        return self.predefined and self.driver == "bridge"

    @property
    def user_defined(self) -> bool:
        """Containers on user-defined networks resolve each other through the embedded DNS."""
        return not self.predefined


@dataclass(frozen=True)
class PortBinding:
    """One published port: host ``host_ip:host_port`` → the container's ``container_port``."""

    container_port: int
    protocol: str = "tcp"
    #: Empty: every local address (0.0.0.0).
    host_ip: str = ""
    host_port: int = 0

    def __str__(self) -> str:
        return f"{self.container_port}/{self.protocol} -> {self.host_ip or '0.0.0.0'}:{self.host_port}"


@dataclass(frozen=True)
class EndpointRecord:
    """A container's attachment to one network: the interface in its sandbox and its addresses."""

    id: str
    network_id: str
    container_id: str
    container_name: str = ""
    #: Interface name inside the sandbox (``eth0``, ``eth1``…).
    ifname: str = ""
    #: The host end of the veth pair (empty for drivers without one).
    host_ifname: str = ""
    mac: str = ""
    #: CIDR notation, e.g. ``172.18.0.2/16``; IPv4 first.
    addresses: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    #: Published ports carried by this endpoint (the sandbox's first non-internal bridge endpoint).
    ports: tuple[PortBinding, ...] = ()

    @property
    def ipv4(self) -> str:
        """The IPv4 address without prefix length, or ``""``."""
        for address in self.addresses:
            if ":" not in address:
                return address.split("/")[0]
        return ""

    @property
    def ipv6(self) -> str:
        """The IPv6 address without prefix length, or ``""``."""
        for address in self.addresses:
            if ":" in address:
                return address.split("/")[0]
        return ""


@dataclass(frozen=True)
class LinkRecord:
    """A legacy link: ``--link target:alias``."""

    target: str
    alias: str


@dataclass(frozen=True)
class DNSConfig:
    """A container's resolver options (``--dns``, ``--dns-search``, ``--dns-opt``)."""

    servers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxRecord:
    """A container's network namespace and what its ``/etc`` files are made of."""

    container_id: str
    name: str
    #: Path of the network namespace (``/run/netns/…``); empty in host mode.
    netns: str = ""
    #: ``bridge``, ``none``, ``host``, ``container:<id>`` or a network name: how the sandbox was asked for.
    mode: str = DEFAULT_BRIDGE_NETWORK
    #: The namespace was created here (and is removed with the sandbox).
    owned: bool = True
    #: For ``container:<id>``: the container whose sandbox this one shares.
    shared_with: str = ""
    hostname: str = ""
    domainname: str = ""
    dns: DNSConfig = field(default_factory=DNSConfig)
    #: ``--add-host`` entries as ``(name, address)``.
    extra_hosts: tuple[tuple[str, str], ...] = ()
    #: ``80/tcp``-style ports the image exposes (for ``-P`` and for links).
    exposed: tuple[str, ...] = ()
    #: The container's environment (``KEY=value``): what legacy links export as ``ALIAS_ENV_KEY``.
    env: tuple[str, ...] = ()
    links: tuple[LinkRecord, ...] = ()
    #: Requested publishing (resolved host ports live on the endpoint that carries them).
    publish: tuple[str, ...] = ()
    publish_all: bool = False
    #: Where ``hosts``, ``hostname`` and ``resolv.conf`` are kept up to date (empty: nowhere).
    etc_dir: str = ""


T = TypeVar("T")


def to_json(value: Any) -> Any:
    """A dataclass (or tuple/map of them) as plain JSON-compatible values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [to_json(item) for item in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(cls: type[T], data: Any) -> T:
    """Rebuild a dataclass written by :func:`to_json`; unknown keys are ignored, missing ones defaulted."""
    return typing.cast(T, _decode(cls, data))


def _decode(hint: Any, data: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _decode(inner[0], data)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], item) for item in data)
        return tuple(_decode(arg, item) for arg, item in zip(args, data, strict=True))
    if origin in (Mapping, dict) or hint is dict:
        return {str(k): v for k, v in (data or {}).items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        kwargs = {
            f.name: _decode(hints[f.name], data[f.name]) for f in dataclasses.fields(hint) if f.name in data
        }
        return hint(**kwargs)
    return data
