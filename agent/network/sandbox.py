"""The container side of the controller: sandboxes, endpoints, published ports, links and ``/etc`` files.

A sandbox is a container's network namespace. ``create`` makes it (or adopts one given, or shares another
container's for ``--network container:<id>``), joins the first network, publishes ports, loads the rules and
attaches the embedded DNS. Every step registers its undo; if a later step fails the undos run in reverse,
so a failure (a host port in use, a bad ``--ip``) leaves no veth, address, port or rule behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from agent.network import ipam, netlink
from agent.network.driver import SandboxRef
from agent.network.errors import (
    AddressInUse,
    EndpointExists,
    EndpointNotFound,
    InvalidNetworkConfig,
    LinkError,
    NetworkError,
    SandboxExists,
)
from agent.network.etcfiles import (
    HOST_GATEWAY,
    EtcFiles,
    host_resolv_conf,
    hostname_file,
    hosts_file,
    parse_add_host,
    resolv_conf,
    upstream_servers,
)
from agent.network.links import link_env, link_hosts_entry, parse_link
from agent.network.model import (
    DEFAULT_BRIDGE_NETWORK,
    HOST_NETWORK,
    NONE_NETWORK,
    DNSConfig,
    EndpointRecord,
    LinkRecord,
    NetworkRecord,
    PortBinding,
    SandboxRecord,
)
from agent.network.nsutil import acreate_netns, acreate_netns_with, remove_netns
from agent.network.ports import PortRequest, parse_exposed, parse_publish, publish_all_requests

if TYPE_CHECKING:
    from agent.network.controller import NetworkController

log = logging.getLogger(__name__)

Undo = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class SandboxConfig:
    """What ``docker run`` asks of the network for one container."""

    container_id: str
    name: str
    #: ``bridge`` (default), ``none``, ``host``, ``container:<name|id>`` or a network's name or id.
    network_mode: str = DEFAULT_BRIDGE_NETWORK
    hostname: str = ""
    domainname: str = ""
    #: ``--network-alias`` on the first network (user-defined networks only).
    aliases: tuple[str, ...] = ()
    ip: str = ""
    ip6: str = ""
    dns: DNSConfig = field(default_factory=DNSConfig)
    #: ``--add-host name:address`` entries (``host-gateway`` allowed).
    extra_hosts: tuple[str, ...] = ()
    #: ``-p`` specifications.
    publish: tuple[str, ...] = ()
    publish_all: bool = False
    #: Ports the image exposes (``80/tcp``), for ``-P`` and for links to this container.
    exposed: tuple[str, ...] = ()
    #: ``--link name[:alias]``.
    links: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    #: An existing namespace to use instead of creating one (it is not removed with the sandbox).
    netns: str = ""
    #: Keep ``hosts``, ``hostname`` and ``resolv.conf`` in this directory up to date.
    etc_dir: str = ""


@dataclass(frozen=True)
class Sandbox:
    """A container's network as the runtime needs it."""

    container_id: str
    #: The namespace path (empty in host mode).
    netns: str
    #: What to give the runtime as network mode: ``host`` or the namespace path.
    runtime_mode: str
    endpoints: tuple[EndpointRecord, ...]
    ports: tuple[PortBinding, ...]
    #: Environment added by legacy links.
    env: tuple[str, ...]
    files: EtcFiles


class _Undo:
    """Undo steps, run in reverse when the operation fails."""

    def __init__(self) -> None:
        self.steps: list[Undo] = []

    def push(self, step: Undo) -> None:
        self.steps.append(step)

    async def run(self) -> None:
        for step in reversed(self.steps):
            try:
                await step()
            except Exception:
                log.exception("network: undo step failed")
        self.steps.clear()


class SandboxManager:
    """Container networking, inside :class:`~agent.network.controller.NetworkController`'s lock."""

    def __init__(self, controller: NetworkController) -> None:
        self.ctl = controller
        self.state = controller.state

    # --- views ------------------------------------------------------------------------------------------

    def view(self, ref: str) -> Sandbox:
        """The network side of a container."""
        sandbox = self.state.sandbox(ref)
        owner = self.state.owner(sandbox)
        endpoints = tuple(self.state.endpoints_of(owner.container_id))
        ports = tuple(b for e in endpoints for b in e.ports)
        runtime_mode = HOST_NETWORK if owner.mode == HOST_NETWORK else owner.netns
        return Sandbox(
            sandbox.container_id,
            owner.netns,
            runtime_mode,
            endpoints,
            ports,
            tuple(self.link_env(sandbox)),
            self.etc_files(sandbox.container_id),
        )

    def port(self, ref: str) -> list[PortBinding]:
        """``docker port``: the container's published ports."""
        return list(self.view(ref).ports)

    def link_env(self, sandbox: SandboxRecord) -> list[str]:
        """The environment the container's legacy links add."""
        default = self.state.default_bridge()
        env: list[str] = []
        for link in sandbox.links:
            target = self.state.sandboxes.get(link.target)
            endpoint = self.state.endpoint(link.target, default.id) if default else None
            if target is None or endpoint is None:
                continue
            env += link_env(
                link.alias, sandbox.name, endpoint.ipv4, parse_exposed(target.exposed), target.env
            )
        return env

    def etc_files(self, ref: str) -> EtcFiles:
        """The container's ``/etc/hosts``, ``/etc/hostname`` and ``/etc/resolv.conf``."""
        sandbox = self.state.sandbox(ref)
        owner = self.state.owner(sandbox)
        host = host_resolv_conf(self.ctl.config.resolv_conf)
        extra = [self._resolve_extra(entry) for entry in owner.extra_hosts]
        if owner.mode == HOST_NETWORK:
            hostname = socket.gethostname()
            try:
                hosts_text = Path("/etc/hosts").read_text()
            except OSError:
                hosts_text = "127.0.0.1\tlocalhost\n"
            hosts_text += "".join(f"{address}\t{name}\n" for name, address in extra)
            return EtcFiles(hosts_text, hostname_file(hostname), resolv_conf(owner.dns, host, embedded=False))
        endpoints = self.state.endpoints_of(owner.container_id)
        links = []
        default = self.state.default_bridge()
        for link in owner.links:
            target = self.state.sandboxes.get(link.target)
            endpoint = self.state.endpoint(link.target, default.id) if default else None
            if target is not None and endpoint is not None and endpoint.ipv4:
                links.append(link_hosts_entry(link.alias, target.name, endpoint.ipv4))
        addresses = [a for e in endpoints for a in e.addresses]
        embedded = bool(self.state.dns_networks(owner.container_id))
        return EtcFiles(
            hosts=hosts_file(owner.hostname, owner.domainname, addresses, extra, links),
            hostname=hostname_file(owner.hostname),
            resolv_conf=resolv_conf(owner.dns, host, embedded=embedded, upstreams=self._upstreams(owner)),
        )

    def _resolve_extra(self, entry: tuple[str, str]) -> tuple[str, str]:
        name, address = entry
        if address == HOST_GATEWAY:
            default = self.state.default_bridge()
            pool = ipam.pool_for(default.ipam, 4) if default else None
            address = pool.gateway if pool else "127.0.0.1"
        return name, address

    def _write_etc(self, sandbox: SandboxRecord) -> None:
        for record in self.state.sandboxes.values():
            if record.etc_dir and self.state.owner(record).container_id == sandbox.container_id:
                self.etc_files(record.container_id).write(Path(record.etc_dir))

    # --- create / remove --------------------------------------------------------------------------------

    async def create(self, config: SandboxConfig) -> Sandbox:
        """Give a container its network (see the module docstring); all or nothing."""
        if config.container_id in self.state.sandboxes:
            raise SandboxExists(config.container_id)
        # A namespace of its own is made, and its loopback brought up, before taking the lock: that touches
        # nothing the lock guards, and it is a good part of a sandbox's time, which every other container
        # starting on the host would otherwise wait for. The thread that makes it also opens the netlink
        # socket every later step in it uses.
        fresh = ""
        try:
            async with contextlib.AsyncExitStack() as stack:
                if self._needs_netns(config):
                    name = f"{self.ctl.config.sandbox_prefix}{config.container_id[:12]}"
                    fresh, sock = await acreate_netns_with(name, netlink.rtnl_socket)
                    await stack.enter_async_context(netlink.holding(fresh, sock))
                    await netlink.loopback_up(fresh)
                async with self.ctl.lock:
                    if config.container_id in self.state.sandboxes:
                        raise SandboxExists(config.container_id)
                    undo = _Undo()
                    try:
                        await self._create_locked(config, undo, fresh)
                    except BaseException:
                        await undo.run()
                        raise
                    return self.view(config.container_id)
        finally:
            if fresh:
                record = self.state.sandboxes.get(config.container_id)
                if record is None or record.netns != fresh:
                    remove_netns(fresh)  # failed, or not needed after all (a host network given by id)

    @staticmethod
    def _needs_netns(config: SandboxConfig) -> bool:
        """Whether the container gets a namespace of its own (a network given by id may still say host)."""
        mode = config.network_mode or DEFAULT_BRIDGE_NETWORK
        return not (config.netns or mode == HOST_NETWORK or mode.startswith("container:"))

    async def _create_locked(self, config: SandboxConfig, undo: _Undo, fresh: str = "") -> None:
        # Registered first so it runs last: the rules are reloaded once the state is rolled back.
        undo.push(self.ctl.sync_firewall)
        mode = config.network_mode or DEFAULT_BRIDGE_NETWORK
        extra_hosts = tuple(parse_add_host(h) for h in config.extra_hosts)
        requests = self._port_requests(config)
        record = SandboxRecord(
            container_id=config.container_id,
            name=config.name.lstrip("/"),
            mode=mode,
            hostname=config.hostname or config.container_id[:12],
            domainname=config.domainname,
            dns=config.dns,
            extra_hosts=extra_hosts,
            exposed=tuple(config.exposed),
            env=tuple(config.env),
            publish=tuple(config.publish),
            publish_all=config.publish_all,
            etc_dir=config.etc_dir,
        )
        if mode.startswith("container:"):
            if requests:
                raise InvalidNetworkConfig("-p", "port publishing conflicts with a container network mode")
            owner = self.state.owner(self.state.sandbox(mode.split(":", 1)[1]))
            record = replace(record, netns=owner.netns, owned=False, shared_with=owner.container_id)
            self._put_sandbox(record, undo)
            self._write_etc(owner)
            return
        if mode == HOST_NETWORK:
            self._put_sandbox(replace(record, netns="", owned=False), undo)
            self._write_etc(record)
            return
        network = None if mode == NONE_NETWORK else self.state.network(mode)
        if network is not None and not self.ctl.drivers[network.driver].has_interfaces:
            # "--network <id of host or none>" by id or name: same as the mode itself.
            return await self._create_locked(replace(config, network_mode=network.name), undo, fresh)
        links = self._resolve_links(config, network)
        record = replace(record, links=links)
        if config.netns:
            record = replace(record, netns=config.netns, owned=False)
            await netlink.loopback_up(record.netns)
        else:
            path = fresh or await acreate_netns(f"{self.ctl.config.sandbox_prefix}{config.container_id[:12]}")
            record = replace(record, netns=path, owned=True)
            undo.push(lambda: _async(remove_netns, path))
            if not fresh:
                await netlink.loopback_up(path)
        self._put_sandbox(record, undo)
        if network is not None:
            if requests and (network.internal or not self.ctl.drivers[network.driver].publishes_ports):
                raise InvalidNetworkConfig("-p", f"ports cannot be published on network {network.name}")
            await self._join(record, network, config.aliases, config.ip, config.ip6, requests, undo)
        await self.ctl.sync_firewall()
        undo.push(lambda: self.ctl.dns.detach(record.container_id))
        await self._sync_dns(record)
        self._write_etc(record)

    def _put_sandbox(self, record: SandboxRecord, undo: _Undo) -> None:
        self.state.put_sandbox(record)
        undo.push(lambda: _async(self.state.drop_sandbox, record.container_id))

    def _port_requests(self, config: SandboxConfig) -> list[PortRequest]:
        requests: list[PortRequest] = []
        for spec in config.publish:
            requests += parse_publish(spec)
        if config.publish_all:
            requests += publish_all_requests(config.exposed, requests)
        return requests

    def _resolve_links(self, config: SandboxConfig, network: NetworkRecord | None) -> tuple[LinkRecord, ...]:
        out = []
        for spec in config.links:
            name, alias = parse_link(spec)
            if network is None or not network.is_default_bridge:
                raise LinkError(spec, "links are supported on the default bridge network only")
            try:
                target = self.state.sandbox(name)
            except NetworkError:
                raise LinkError(spec, f"no container named {name}") from None
            if self.state.endpoint(target.container_id, network.id) is None:
                raise LinkError(spec, f"container {name} is not on the default bridge network")
            out.append(LinkRecord(target.container_id, alias))
        return tuple(out)

    async def remove(self, ref: str) -> None:
        """The container is gone: remove its endpoints, ports, DNS records and (owned) namespace."""
        async with self.ctl.lock:
            await self.remove_locked(self.state.sandbox(ref).container_id)

    async def remove_locked(self, container_id: str) -> None:
        """:meth:`remove` for callers that hold the lock."""
        sandbox = self.state.sandboxes.get(container_id)
        if sandbox is None:
            return
        for endpoint in self.state.endpoints_of(container_id):
            await self._leave(sandbox, endpoint)
        await self.ctl.dns.detach(container_id)
        if sandbox.owned and sandbox.netns:
            remove_netns(sandbox.netns)
        self.state.drop_sandbox(container_id)
        await self.ctl.sync_firewall()

    # --- connect / disconnect ---------------------------------------------------------------------------

    async def connect(
        self, container: str, network_ref: str, *, aliases: Iterable[str] = (), ip: str = "", ip6: str = ""
    ) -> EndpointRecord:
        """``network connect``: join another network while the container runs."""
        async with self.ctl.lock:
            sandbox = self.state.owner(self.state.sandbox(container))
            network = self.state.network(network_ref)
            if sandbox.mode == HOST_NETWORK or not sandbox.netns:
                raise InvalidNetworkConfig("network", "a container in host mode cannot join other networks")
            if not self.ctl.drivers[network.driver].has_interfaces:
                raise InvalidNetworkConfig("network", f"cannot connect a running container to {network.name}")
            if self.state.endpoint(sandbox.container_id, network.id) is not None:
                raise EndpointExists(sandbox.name, network.name)
            undo = _Undo()
            undo.push(self.ctl.sync_firewall)
            try:
                endpoint = await self._join(sandbox, network, tuple(aliases), ip, ip6, [], undo)
                await self.ctl.sync_firewall()
                await self._sync_dns(sandbox)
            except BaseException:
                await undo.run()
                raise
            self._write_etc(sandbox)
            return endpoint

    async def disconnect(self, container: str, network_ref: str, *, force: bool = False) -> None:
        """``network disconnect``: leave one network (its published ports go with it)."""
        async with self.ctl.lock:
            sandbox = self.state.owner(self.state.sandbox(container))
            network = self.state.network(network_ref)
            endpoint = self.state.endpoint(sandbox.container_id, network.id)
            if endpoint is None:
                if force:
                    return
                raise EndpointNotFound(sandbox.name, network.name)
            await self._leave(sandbox, endpoint)
            await self._move_gateway(sandbox, endpoint)
            await self.ctl.sync_firewall()
            await self._sync_dns(sandbox)
            self._write_etc(sandbox)

    # --- joining and leaving ----------------------------------------------------------------------------

    async def _join(
        self,
        sandbox: SandboxRecord,
        network: NetworkRecord,
        aliases: tuple[str, ...],
        ip: str,
        ip6: str,
        requests: list[PortRequest],
        undo: _Undo,
    ) -> EndpointRecord:
        if aliases and not network.user_defined:
            raise InvalidNetworkConfig("--alias", "network-scoped aliases need a user-defined network")
        driver = self.ctl.drivers[network.driver]
        used = [a for e in self.state.endpoints_of_network(network.id) for a in e.addresses]
        addresses: list[str] = []
        for version, wanted in ((4, ip), (6, ip6)):
            pool = ipam.pool_for(network.ipam, version)
            if pool is None:
                if wanted:
                    raise AddressInUse(wanted, f"network {network.name} has no IPv{version} subnet")
                continue
            if not driver.local_ipam:
                # Cluster networks: the managers' allocator chose the address; the agent only applies it.
                if not wanted:
                    message = f"network {network.name} needs an IPv{version} address from the allocator"
                    raise InvalidNetworkConfig("ip", message)
                prefix = ipaddress.ip_network(pool.subnet).prefixlen
                addresses.append(f"{ipaddress.ip_address(wanted)}/{prefix}")
                continue
            if wanted and not network.user_defined:
                raise InvalidNetworkConfig("--ip", "user-specified addresses need a user-defined network")
            addresses.append(ipam.allocate(pool, used, wanted))
        mine = self.state.endpoints_of(sandbox.container_id)
        has_gateway = any(e.gateways for e in mine)
        gateways = (
            () if network.internal or has_gateway else tuple(p.gateway for p in network.ipam if p.gateway)
        )
        taken = {e.ifname for e in mine}
        ifname = next(f"eth{i}" for i in range(len(taken) + 1) if f"eth{i}" not in taken)
        endpoint = EndpointRecord(
            id=secrets.token_hex(32),
            network_id=network.id,
            container_id=sandbox.container_id,
            container_name=sandbox.name,
            ifname=ifname,
            addresses=tuple(addresses),
            gateways=gateways,
            aliases=tuple(aliases),
        )
        # Ports first: a port in use must fail before any device exists.
        bindings = self.ctl.ports.hold_all(requests)
        undo.push(lambda: _async(self.ctl.ports.release, bindings))
        info = await driver.join(network, endpoint, SandboxRef(sandbox.container_id, sandbox.netns))
        endpoint = replace(endpoint, mac=info.mac, host_ifname=info.host_ifname, ports=tuple(bindings))
        undo.push(lambda: driver.leave(network, endpoint, SandboxRef(sandbox.container_id, sandbox.netns)))
        self.state.put_endpoint(endpoint)
        undo.push(lambda: _async(self.state.drop_endpoint, endpoint.id))
        entry = self.state.dns_entries(endpoint)
        if entry is not None:
            self.ctl.dns.table.set_records(entry.network, entry.key, entry.names, entry.addresses)
            undo.push(lambda: _async(self.ctl.dns.table.remove_records, entry.network, entry.key))
        return endpoint

    async def _leave(self, sandbox: SandboxRecord, endpoint: EndpointRecord) -> None:
        network = self.state.networks.get(endpoint.network_id)
        if network is not None:
            self.ctl.dns.table.remove_records(network.id, endpoint.id)
            driver = self.ctl.drivers.get(network.driver)
            if driver is not None:
                await driver.leave(network, endpoint, SandboxRef(sandbox.container_id, sandbox.netns))
        self.ctl.ports.release(endpoint.ports)
        self.state.drop_endpoint(endpoint.id)

    async def _move_gateway(self, sandbox: SandboxRecord, gone: EndpointRecord) -> None:
        """The endpoint that held the default route left: give the route to the next candidate."""
        if not gone.gateways:
            return
        for endpoint in self.state.endpoints_of(sandbox.container_id):
            network = self.state.networks.get(endpoint.network_id)
            if network is None or network.internal or not self.ctl.drivers[network.driver].has_interfaces:
                continue
            gateways = tuple(p.gateway for p in network.ipam if p.gateway)
            try:
                await netlink.set_default_routes(sandbox.netns, endpoint.ifname, gateways)
            except NetworkError as exc:
                log.warning("cannot move the default route of %s: %s", sandbox.name, exc)
                return
            self.state.put_endpoint(replace(endpoint, gateways=gateways))
            return

    def _upstreams(self, sandbox: SandboxRecord) -> tuple[str, ...]:
        """Where the embedded DNS forwards the sandbox's queries: ``--dns``, the agent's, or the host's."""
        if sandbox.dns.servers:
            return tuple(sandbox.dns.servers)
        if self.ctl.config.dns_upstreams:
            return tuple(self.ctl.config.dns_upstreams)
        return upstream_servers(sandbox.dns, host_resolv_conf(self.ctl.config.resolv_conf))

    async def _sync_dns(self, sandbox: SandboxRecord) -> None:
        """Serve 127.0.0.11 in the sandbox while it is on a user-defined network, with its names."""
        networks = self.state.dns_networks(sandbox.container_id)
        dns = self.ctl.dns
        if not networks:
            await dns.detach(sandbox.container_id)
            return
        upstreams = self._upstreams(sandbox)
        if dns.attached(sandbox.container_id):
            dns.update(sandbox.container_id, networks=networks, upstreams=upstreams)
        else:
            await dns.attach(sandbox.container_id, sandbox.netns, networks, upstreams)

    # --- agent restart ----------------------------------------------------------------------------------

    async def restore(self) -> None:
        """Rebuild ports, DNS records and DNS listeners from the state; forget sandboxes that are gone."""
        for sandbox in list(self.state.sandboxes.values()):
            if sandbox.netns and not os.path.exists(sandbox.netns):
                log.info("network sandbox of %s is gone; forgetting it", sandbox.name)
                for endpoint in self.state.endpoints_of(sandbox.container_id):
                    self.state.drop_endpoint(endpoint.id)
                self.state.drop_sandbox(sandbox.container_id)
        for endpoint in list(self.state.endpoints.values()):
            if (
                endpoint.container_id not in self.state.sandboxes
                or endpoint.network_id not in self.state.networks
            ):
                self.state.drop_endpoint(endpoint.id)
                continue
            for binding in endpoint.ports:
                try:
                    self.ctl.ports.hold(binding)
                except NetworkError as exc:
                    log.error(
                        "published port %s of %s cannot be held again: %s",
                        binding,
                        endpoint.container_name,
                        exc,
                    )
            entry = self.state.dns_entries(endpoint)
            if entry is not None:
                self.ctl.dns.table.set_records(entry.network, entry.key, entry.names, entry.addresses)
        for sandbox in self.state.sandboxes.values():
            if sandbox.netns and not sandbox.shared_with:
                try:
                    await self._sync_dns(sandbox)
                except (OSError, NetworkError) as exc:
                    log.error("cannot serve DNS in the sandbox of %s: %s", sandbox.name, exc)


async def _async(fn: Callable[..., object], *args: object) -> None:
    """An undo step from a plain function."""
    with contextlib.suppress(FileNotFoundError):
        fn(*args)
