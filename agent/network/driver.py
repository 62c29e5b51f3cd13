"""The network-driver interface, and the ``host`` and ``none`` drivers.

A driver builds what one kind of network needs on this host. The controller owns the state (networks,
endpoints, addresses, ports) and calls the driver to make it real:

* ``create(network)`` / ``delete(network)``: the network's host-side devices (a bridge; for overlays, a
  namespace with a bridge and a VXLAN device);
* ``join(network, endpoint, sandbox)`` / ``leave(…)``: put a container on it — for bridge and overlay a veth
  pair with one end renamed ``ethN`` inside the container's namespace, addressed as the endpoint says;
* ``restore(network, endpoints)``: the agent restarted; make sure what should exist does, without touching
  running containers;
* ``firewall(network, endpoints, rules)``: add the driver's nftables rules to the host's ruleset (the
  controller renders and loads the whole table; bridge rules are added by the controller itself).

Addresses are chosen before ``join`` (by the local IPAM for bridges, by the managers' allocator for
overlays), so drivers never allocate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from agent.network.model import EndpointRecord, NetworkRecord
from agent.network.nft import Ruleset


@dataclass(frozen=True)
class SandboxRef:
    """Where a container's network lives: its namespace (a path) and the container's id."""

    container_id: str
    netns: str


@dataclass(frozen=True)
class JoinInfo:
    """What a join made: the interface's MAC address and the host end of its veth pair."""

    mac: str = ""
    host_ifname: str = ""


class NetworkDriver(ABC):
    """One kind of network on this host (``bridge``, ``host``, ``none``; ``overlay`` in overlay/)."""

    #: The name users give to ``--driver``.
    name: ClassVar[str]
    #: Endpoints get an interface and addresses (``bridge``, ``overlay``) or nothing (``host``, ``none``).
    has_interfaces: ClassVar[bool] = True
    #: Networks of this driver need IP address management on this host.
    local_ipam: ClassVar[bool] = True
    #: Containers on networks of this driver can publish ports (``-p``) on the host.
    publishes_ports: ClassVar[bool] = False

    @abstractmethod
    async def create(self, network: NetworkRecord) -> None:
        """Build the network's devices on the host (idempotent)."""

    @abstractmethod
    async def delete(self, network: NetworkRecord) -> None:
        """Remove the network's devices; no endpoint is left on it when this is called."""

    @abstractmethod
    async def join(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRef) -> JoinInfo:
        """Attach the sandbox to the network as ``endpoint`` describes; undo everything on failure."""

    @abstractmethod
    async def leave(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRef) -> None:
        """Detach the endpoint; a sandbox that is already gone is not an error."""

    async def restore(self, network: NetworkRecord, endpoints: Sequence[EndpointRecord]) -> None:
        """After an agent restart: make sure the network's devices exist (endpoints are left alone)."""
        await self.create(network)

    def firewall(self, network: NetworkRecord, endpoints: Sequence[EndpointRecord], rules: Ruleset) -> None:  # noqa: B027
        """Add this network's nftables rules to ``rules`` (none by default)."""


class HostDriver(NetworkDriver):
    """``--network host``: the container uses the host's namespace; nothing to build."""

    name = "host"
    has_interfaces = False
    local_ipam = False

    async def create(self, network: NetworkRecord) -> None:
        """Nothing to build."""

    async def delete(self, network: NetworkRecord) -> None:
        """Nothing to remove."""

    async def join(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRef) -> JoinInfo:
        """Nothing to attach: the runtime runs the container in the host's namespace."""
        return JoinInfo()

    async def leave(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRef) -> None:
        """Nothing to detach."""


class NullDriver(NetworkDriver):
    """``--network none``: a namespace with only its loopback interface."""

    name = "null"
    has_interfaces = False
    local_ipam = False

    async def create(self, network: NetworkRecord) -> None:
        """Nothing to build."""

    async def delete(self, network: NetworkRecord) -> None:
        """Nothing to remove."""

    async def join(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRef) -> JoinInfo:
        """Nothing to attach: the sandbox keeps only ``lo``."""
        return JoinInfo()

    async def leave(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRef) -> None:
        """Nothing to detach."""
