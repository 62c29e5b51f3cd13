"""The ``overlay`` network driver: VXLAN networks spanning the cluster's hosts.

:meth:`OverlayDriver.install` registers it (and the gateway network's driver) with the host's
:class:`~agent.network.controller.NetworkController`. On each host, an overlay network only takes shape
when a container joins it: the first join builds the network's namespace (a bridge and a VXLAN device,
overlay/vxlan.py), and the last leave removes that namespace, and with it every device and entry the
network had on the host. Each container gets a veth into that bridge whose inner end carries the address
the managers allocated and a MAC derived from it, and, unless the network is ``--internal``, an interface
on the gateway bridge for its default route (overlay/gateway.py).

The managers' ``peers`` frames go to :meth:`OverlayDriver.apply_peers`. They update the
:class:`~overlay.peers.PeerTable`, the embedded DNS records (at once, synchronously) and mark the networks
that changed; a background task then programs those networks' neighbour and forwarding entries and the
virtual IP tables of the containers on them. Entries are always reconciled against what the kernel holds,
so a full frame after a restart or a reconnect repairs whatever drifted. Until the first full frame after
the agent starts, nothing already programmed is touched (an empty table then means "not known yet").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.network import netlink
from agent.network.bridge import bridge_addresses
from agent.network.driver import JoinInfo, NetworkDriver, SandboxRef
from agent.network.errors import NetworkError
from agent.network.model import EndpointRecord, NetworkRecord
from agent.network.nft import Ruleset
from api.peers import Peers
from overlay import vxlan
from overlay.errors import AdvertiseAddressError, InvalidOverlayConfig, OverlayError
from overlay.gateway import GATEWAY_NETWORK, GatewayBridge
from overlay.lb import LB_TABLE, VirtualIPs
from overlay.peers import DNSRecords, PeerEntry, PeerTable, mac_for

if TYPE_CHECKING:
    from agent.network.controller import NetworkController

log = logging.getLogger(__name__)

DRIVER = "overlay"
#: ``--opt`` keys holding the network's VXLAN id (Docker's name first); the managers' allocator fills it.
VNI_OPTIONS = ("com.docker.network.driver.overlay.vxlanid_list", "vxlanid_list", "vni")
MTU_OPTIONS = ("com.docker.network.driver.mtu", "mtu")
#: VXLAN over IPv4 adds 50 bytes: outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8.
VXLAN_OVERHEAD = 50
DEFAULT_PORT = 4789
LAST_VNI = (1 << 24) - 1


@dataclass(frozen=True)
class OverlayConfig:
    """How overlays are built on this host."""

    #: The host's cluster address: the source of its VXLAN tunnels, where other hosts send to.
    advertise_addr: str
    #: The UDP port of VXLAN (the same on every host of the cluster).
    vxlan_port: int = DEFAULT_PORT
    #: Networks' namespaces are ``/run/netns/<prefix><network id[:12]>``.
    netns_prefix: str = "shoal-ov-"
    gateway_network: str = GATEWAY_NETWORK
    lb_table: str = LB_TABLE


@dataclass
class _Local:
    """An overlay network as it exists on this host: its namespace and the endpoints attached here."""

    netns: str
    spec: vxlan.VXLANSpec
    endpoints: set[str] = field(default_factory=set)


def _option(options: Mapping[str, str], keys: Iterable[str]) -> str | None:
    for key in keys:
        value = options.get(key)
        if value is not None:
            return str(value)
    return None


def network_vni(network: NetworkRecord) -> int:
    """The network's VXLAN id, from its options."""
    raw = _option(network.options, VNI_OPTIONS)
    if raw is None or not raw.strip():
        raise InvalidOverlayConfig(network.name, "vni", "no VXLAN id (the managers allocate one per network)")
    try:
        # Docker's option is a list (one id per subnet); every subnet of a network shares one id here.
        vni = int(raw.split(",")[0].strip())
    except ValueError:
        raise InvalidOverlayConfig(network.name, "vni", f"invalid VXLAN id {raw!r}") from None
    if not 1 <= vni <= LAST_VNI:
        raise InvalidOverlayConfig(network.name, "vni", f"VXLAN id {vni} out of range 1-{LAST_VNI}")
    return vni


class OverlayDriver(NetworkDriver):
    """VXLAN overlay networks on one host, programmed from the cluster's peer table."""

    name = DRIVER
    local_ipam = False
    #: Published ports (host mode) lead to the container's address on the gateway bridge, as Docker's
    #: lead through ``docker_gwbridge``.
    publishes_ports = True

    def __init__(self, controller: NetworkController, config: OverlayConfig) -> None:
        self.ctl = controller
        self.config = config
        self.peers = PeerTable()
        self.gateway = GatewayBridge(controller, config.gateway_network)
        self.vips = VirtualIPs(config.lb_table)
        self._local: dict[str, _Local] = {}
        self._specs: dict[str, vxlan.VXLANSpec] = {}
        self._dns: dict[str, DNSRecords] = {}
        self._lock = asyncio.Lock()
        self._dirty: set[str] = set()
        #: A full frame came: check every local container's VIP table, even one this process never loaded.
        self._recheck_vips = False
        self._syncer: asyncio.Task[None] | None = None
        # Imported here: the mesh builds on overlay.cluster, which imports this module.
        from overlay.ingress import RoutingMesh

        #: The routing mesh (published ports on every host), fed by the ingress network's peers.
        self.mesh = RoutingMesh(self)

    @classmethod
    def install(cls, controller: NetworkController, config: OverlayConfig) -> OverlayDriver:
        """Make overlays (and their gateway network) available on ``controller``."""
        driver = cls(controller, config)
        controller.register_driver(driver)
        controller.register_driver(driver.gateway.driver)
        return driver

    async def close(self) -> None:
        """Stop programming (the agent is stopping); everything programmed stays as it is."""
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
            self._syncer = None

    # --- the network's namespace ------------------------------------------------------------------------

    def namespace(self, network_id: str) -> str:
        """The name of a network's namespace on this host."""
        return f"{self.config.netns_prefix}{network_id[:12]}"

    def local(self, network_id: str) -> str | None:
        """The path of the network's namespace if the network has endpoints on this host."""
        local = self._local.get(network_id)
        return local.netns if local is not None else None

    async def _spec(self, network: NetworkRecord) -> vxlan.VXLANSpec:
        spec = self._specs.get(network.id)
        if spec is not None:
            return spec
        vni = network_vni(network)
        mtu_text = _option(network.options, MTU_OPTIONS)
        if mtu_text is not None:
            try:
                mtu = int(mtu_text)
            except ValueError:
                raise InvalidOverlayConfig(network.name, "--opt mtu", f"invalid MTU {mtu_text!r}") from None
        else:
            underlay = await vxlan.underlay_mtu(self.ctl.config.host_netns, self.config.advertise_addr)
            if underlay is None:
                raise AdvertiseAddressError(self.config.advertise_addr)
            mtu = underlay - VXLAN_OVERHEAD
        if not 68 <= mtu <= 65535:
            raise InvalidOverlayConfig(network.name, "mtu", f"MTU {mtu} out of range 68-65535")
        if not any(":" not in p.subnet and p.gateway for p in network.ipam):
            raise InvalidOverlayConfig(
                network.name, "subnet", "an overlay needs an IPv4 subnet with a gateway"
            )
        spec = vxlan.VXLANSpec(vni, self.config.advertise_addr, self.config.vxlan_port, mtu)
        self._specs[network.id] = spec
        return spec

    def mtu(self, network_id: str) -> int | None:
        """The MTU of a network's devices on this host (once created)."""
        spec = self._specs.get(network_id)
        return spec.mtu if spec is not None else None

    async def _ensure_local(self, network: NetworkRecord, extra_ips: Sequence[str] = ()) -> _Local:
        spec = await self._spec(network)
        local = self._local.get(network.id)
        if local is not None and vxlan.namespace_exists(local.netns):
            return local
        path = await vxlan.build(
            self.namespace(network.id), self.ctl.config.host_netns, spec, bridge_addresses(network)
        )
        local = _Local(path, spec, local.endpoints if local is not None else set())
        self._local[network.id] = local
        if self.peers.known(network.id):
            await vxlan.sync_peers(path, spec.vni, self._wanted(network.id, extra_ips))
        return local

    async def _teardown(self, network_id: str, vni: int) -> None:
        # The namespace takes the bridge, the VXLAN device, the veths and every entry with it.
        self._local.pop(network_id, None)
        await vxlan.destroy(self.namespace(network_id), vni)

    # --- the driver interface ---------------------------------------------------------------------------

    async def create(self, network: NetworkRecord) -> None:
        """Check the network (VXLAN id, subnet, MTU); its devices are built when a container first joins."""
        async with self._lock:
            self._specs.pop(network.id, None)
            await self._spec(network)
            # Removing a network clears its names from the DNS table; a network made again gets them back.
            self._dns.pop(network.id, None)
            self._push_dns(network.id)

    async def delete(self, network: NetworkRecord) -> None:
        """Remove the network's namespace from this host, if it is still there."""
        async with self._lock:
            await self._teardown(network.id, network_vni(network))
            self._specs.pop(network.id, None)
            self._dns.pop(network.id, None)

    async def join(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRef) -> JoinInfo:
        """A veth from the sandbox into the network's bridge, addressed; the gateway interface; VIP rules."""
        ip = endpoint.ipv4
        if not ip:
            raise InvalidOverlayConfig(network.name, "ip", "an overlay endpoint needs an IPv4 address")
        async with self._lock:
            new_local = network.id not in self._local
            local = await self._ensure_local(network, [ip])
            spec = local.spec
            mac = mac_for(ip)
            host_ifname = vxlan.veth_name(endpoint.id)
            gateway_added = False
            try:
                await vxlan.attach_veth(
                    local.netns, host_ifname, sandbox.netns, endpoint.ifname, mac, spec.mtu
                )
                # No gateway here: the default route goes through the gateway bridge (or nowhere).
                await netlink.configure_interface(
                    sandbox.netns, endpoint.ifname, endpoint.addresses, (), spec.mtu
                )
                if not network.internal and self._needs_gateway(sandbox.container_id):
                    await self.gateway.attach(sandbox, endpoint.container_name, [endpoint.ifname])
                    gateway_added = True
                await self._sync_vips(sandbox.container_id, sandbox.netns, joining=network.id)
            except BaseException:
                if gateway_added:
                    with contextlib.suppress(NetworkError):
                        await self.gateway.detach(sandbox)
                await vxlan.detach_veth(local.netns, host_ifname)
                if new_local and not local.endpoints:
                    await self._teardown(network.id, local.spec.vni)
                raise
            local.endpoints.add(endpoint.id)
            return JoinInfo(mac=mac, host_ifname=host_ifname)

    async def leave(self, network: NetworkRecord, endpoint: EndpointRecord, sandbox: SandboxRef) -> None:
        """Remove the endpoint's veth, its gateway interface if no other overlay needs it, and VIP rules;
        the last endpoint on this host takes the network's namespace with it."""
        async with self._lock:
            local = self._local.get(network.id)
            if local is not None:
                await vxlan.detach_veth(local.netns, endpoint.host_ifname or vxlan.veth_name(endpoint.id))
            else:
                await netlink.remove_interface(sandbox.netns, endpoint.ifname)
            if not self._overlays_of(sandbox.container_id, leaving=endpoint.id, external=True):
                await self.gateway.detach(sandbox)
            if local is not None:
                local.endpoints.discard(endpoint.id)
                if not local.endpoints:
                    await self._teardown(network.id, local.spec.vni)
            if self._overlays_of(sandbox.container_id, leaving=endpoint.id):
                await self._sync_vips(sandbox.container_id, sandbox.netns, leaving=network.id)
            else:
                with contextlib.suppress(NetworkError):
                    await self.vips.apply(sandbox.container_id, sandbox.netns, {})
                self.vips.forget(sandbox.container_id)

    async def restore(self, network: NetworkRecord, endpoints: Sequence[EndpointRecord]) -> None:
        """After an agent restart: adopt the network's namespace if containers are on it, else remove it."""
        async with self._lock:
            self._specs.pop(network.id, None)
            try:
                spec = await self._spec(network)
            except OverlayError as exc:
                # One network that cannot be built (the host's address changed) must not stop the agent.
                log.error("cannot restore overlay %s: %s", network.name, exc)
                return
            here = [e for e in endpoints if e.container_id in self.ctl.state.sandboxes]
            if not here:
                await self._teardown(network.id, spec.vni)
                return
            existed = vxlan.namespace_exists(self.namespace(network.id))
            local = await self._ensure_local(network)
            local.endpoints = {e.id for e in here}
            if not existed:
                # The namespace was lost while containers lived: their veths went with it; make them again.
                for endpoint in here:
                    await self._reattach(local, spec, endpoint)

    async def _reattach(self, local: _Local, spec: vxlan.VXLANSpec, endpoint: EndpointRecord) -> None:
        sandbox = self.ctl.state.sandboxes.get(endpoint.container_id)
        if sandbox is None or not sandbox.netns:
            return
        try:
            await netlink.remove_interface(sandbox.netns, endpoint.ifname)
            host_ifname = endpoint.host_ifname or vxlan.veth_name(endpoint.id)
            await vxlan.attach_veth(
                local.netns, host_ifname, sandbox.netns, endpoint.ifname, mac_for(endpoint.ipv4), spec.mtu
            )
            await netlink.configure_interface(
                sandbox.netns, endpoint.ifname, endpoint.addresses, (), spec.mtu
            )
        except NetworkError as exc:
            log.error("cannot reattach %s to its overlay: %s", endpoint.container_name, exc)

    def firewall(self, network: NetworkRecord, endpoints: Sequence[EndpointRecord], rules: Ruleset) -> None:
        """DNAT the ports the network's containers publish on the host to their gateway addresses."""
        for endpoint in endpoints:
            gateway = self.gateway.endpoint_of(endpoint.container_id) if endpoint.ports else None
            if gateway is None or not gateway.ipv4:
                continue
            for b in endpoint.ports:
                if b.host_ip and ":" in b.host_ip:
                    continue
                match = f"ip daddr {b.host_ip} " if b.host_ip else "meta nfproto ipv4 "
                rules.publish.append(
                    f"{match}{b.protocol} dport {b.host_port} dnat ip to {gateway.ipv4}:{b.container_port}"
                )

    # --- who is where -----------------------------------------------------------------------------------

    def _overlays_of(self, container_id: str, *, leaving: str = "", external: bool = False) -> list[str]:
        """Overlay networks the container is on (but the endpoint ``leaving``); ``external``: not internal."""
        out = []
        for e in self.ctl.state.endpoints_of(container_id):
            network = self.ctl.state.networks.get(e.network_id)
            if e.id == leaving or network is None or network.driver != DRIVER:
                continue
            if external and network.internal:
                continue
            out.append(network.id)
        return out

    def _needs_gateway(self, container_id: str) -> bool:
        """Whether the container lacks a default route from some other network (a bridge gives one)."""
        for e in self.ctl.state.endpoints_of(container_id):
            network = self.ctl.state.networks.get(e.network_id)
            own = network is None or network.driver in (DRIVER, self.gateway.driver.name)
            if not own and e.gateways:
                return False
        return True

    def _local_ips(self, network_id: str) -> set[str]:
        return {e.ipv4 for e in self.ctl.state.endpoints_of_network(network_id) if e.ipv4}

    def _wanted(self, network_id: str, extra_ips: Iterable[str] = ()) -> set[PeerEntry]:
        local_ips = self._local_ips(network_id) | set(extra_ips)
        return self.peers.entries(network_id, [self.config.advertise_addr], local_ips)

    # --- peers ------------------------------------------------------------------------------------------

    def apply_peers(self, frame: Peers) -> None:
        """Take in a ``peers`` frame: DNS records change now; entries and VIP rules in the background."""
        changed = self.peers.apply(frame)
        for network_id in changed:
            self._push_dns(network_id)
        self._dirty |= changed
        if frame.full:
            # Reconcile everything local, listed or not: a network that vanished from the frame has no peers.
            self._dirty |= set(self._local)
            self._recheck_vips = True
        if self._dirty and (self._syncer is None or self._syncer.done()):
            self._syncer = asyncio.get_running_loop().create_task(self._sync_loop(), name="overlay-peers")

    async def settled(self) -> None:
        """Wait until every peer change taken in so far is programmed."""
        while self._syncer is not None and not self._syncer.done():
            await asyncio.shield(self._syncer)

    async def _sync_loop(self) -> None:
        while self._dirty:
            dirty, self._dirty = self._dirty, set()
            recheck, self._recheck_vips = self._recheck_vips, False
            await self.mesh.prepare()
            async with self._lock:
                await self.mesh.sync_locked()
                await self._sync(dirty, recheck=recheck)

    async def _sync(self, networks: set[str], *, recheck: bool = False) -> None:
        containers: dict[str, str] = {}
        for network_id in sorted(networks):
            local = self._local.get(network_id)
            if local is None:
                continue
            try:
                await vxlan.sync_peers(local.netns, local.spec.vni, self._wanted(network_id))
            except NetworkError as exc:
                log.error("cannot program the peers of overlay %s: %s", network_id[:12], exc)
            for endpoint in self.ctl.state.endpoints_of_network(network_id):
                sandbox = self.ctl.state.sandboxes.get(endpoint.container_id)
                if sandbox is not None and sandbox.netns:
                    containers[endpoint.container_id] = sandbox.netns
        for container_id, netns in containers.items():
            await self._sync_vips(container_id, netns, recheck=recheck)

    def _push_dns(self, network_id: str) -> None:
        """Make the DNS table's overlay records of ``network_id`` those of the peer table."""
        table = self.ctl.dns.table
        old = self._dns.get(network_id, {})
        new = self.peers.dns_records(network_id)
        for key in old.keys() - new.keys():
            table.remove_records(network_id, key)
        for key, (names, addresses) in new.items():
            if old.get(key) != (names, addresses):
                table.set_records(network_id, key, names, addresses)
        if new:
            self._dns[network_id] = new
        else:
            self._dns.pop(network_id, None)

    async def _sync_vips(
        self, container_id: str, netns: str, *, joining: str = "", leaving: str = "", recheck: bool = False
    ) -> None:
        """Load the container's virtual IP table for the overlays it is on (``joining`` included).

        A container without virtual IPs is left alone unless this process loaded a table there, or
        ``recheck`` (a table may be left from before a restart).
        """
        networks = set(self._overlays_of(container_id)) - {leaving}
        if joining:
            networks.add(joining)
        if not all(self.peers.known(n) for n in networks):
            return  # after a restart, before the first full frame: keep what is loaded
        vips: dict[str, tuple[str, ...]] = {}
        for network_id in sorted(networks):
            vips.update(self.peers.virtual_ips(network_id))
        if not vips and not recheck and container_id not in self.vips.containers():
            return
        try:
            await self.vips.apply(container_id, netns, vips)
        except NetworkError as exc:
            log.error("cannot load the virtual IPs of container %s: %s", container_id[:12], exc)
