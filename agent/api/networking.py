"""Containers of the local API on the host's networks, when the API is given a network controller.

What the runc executor does for tasks, done for ``docker create``: a container asking for the default
network (``""``, ``default``, ``bridge``), a user-defined network or ``container:<ref>`` gets a network
sandbox from :class:`~agent.network.controller.NetworkController` — a namespace joined to the network, its
published ports (``PortBindings``, ``PublishAllPorts``), DNS names and ``/etc`` files — and runs in that
namespace. ``host`` and ``none`` stay the runtime's own, as without a controller.

How a sandbox is keyed to its container: by the container's id, which is decided before the container
exists (:meth:`ContainerRuntime.reserve <agent.runtime.containers.runtime.ContainerRuntime.reserve>`
gives the id and holds the name), because the sandbox's namespace path is part of the container's config.
The sandbox's ``/etc`` files live in the container's own state directory (``containers/<id>/etc/``, as
Docker keeps them with the container), which also marks the sandboxes this module owns: a controller
shared with the runc executor holds task sandboxes too, keyed by task id, and those are never touched.

Lifetime: made at create (before the runtime's create; undone if anything after it fails), kept while the
container stops and starts again (the namespace and its ports outlive the processes), removed when the
container is removed — by the API, by auto-remove, or by a create failing half way — through the
runtime's removal hooks. At start, sandboxes of containers removed while no API was serving go too.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.api.create import DEFAULT_NETWORKS, CreateRequest, EndpointRequest, NetworkRequest
from agent.api.errors import BadParameter
from agent.network.controller import NetworkController
from agent.network.errors import NetworkError
from agent.network.model import DEFAULT_BRIDGE_NETWORK, EndpointRecord, NetworkRecord, PortBinding
from agent.network.ports import parse_exposed, parse_publish
from agent.network.sandbox import Sandbox, SandboxConfig
from agent.runtime.containers.config import ContainerConfig, ImageConfig
from agent.runtime.containers.state import ContainerRecord
from agent.runtime.errors import ContainerNotFound
from agent.runtime.local import LocalRuntime

_RUNTIME_MODES = ("host", "none")


class ContainerNetworks:
    """Network sandboxes of the API's containers (see the module docstring)."""

    def __init__(self, runtime: LocalRuntime, controller: NetworkController) -> None:
        self.runtime = runtime
        self.controller = controller

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Follow container removals; drop sandboxes whose container went while nobody followed."""
        if self._released not in self.runtime.removal_hooks:
            self.runtime.removal_hooks.append(self._released)
        for sandbox in list(self.controller.state.sandboxes.values()):
            if self._owns(sandbox.container_id, sandbox.etc_dir) and not self._exists(sandbox.container_id):
                await self._drop(sandbox.container_id)

    async def stop(self) -> None:
        """Stop following removals (the API is going away; the runtime may stay)."""
        with contextlib.suppress(ValueError):
            self.runtime.removal_hooks.remove(self._released)

    def etc_dir(self, container_id: str) -> Path:
        """Where the container's ``hosts``, ``hostname`` and ``resolv.conf`` live."""
        return self.runtime.containers.store.container_dir(container_id) / "etc"

    def _owns(self, container_id: str, etc_dir: str) -> bool:
        return etc_dir == str(self.etc_dir(container_id))

    def _exists(self, container_id: str) -> bool:
        try:
            return self.runtime.containers.inspect(container_id).id == container_id
        except ContainerNotFound:
            return False

    def _sandbox(self, container_id: str) -> Sandbox | None:
        """The container's sandbox if this module made it."""
        record = self.controller.state.sandboxes.get(container_id)
        if record is None or not self._owns(container_id, record.etc_dir):
            return None
        return self.controller.sandbox(container_id)

    async def _released(self, record: ContainerRecord) -> None:
        """Removal hook: the container is gone, so is its sandbox."""
        if self._sandbox(record.id) is not None:
            await self._drop(record.id)

    async def _drop(self, container_id: str) -> None:
        with contextlib.suppress(NetworkError):
            await self.controller.remove_sandbox(container_id)
        shutil.rmtree(self.etc_dir(container_id), ignore_errors=True)
        if not self._exists(container_id):
            # A create that failed before the runtime recorded the container: only etc/ was there.
            with contextlib.suppress(OSError):
                self.etc_dir(container_id).parent.rmdir()

    # --- create -------------------------------------------------------------------------------------------

    async def create(self, parsed: CreateRequest, name: str | None) -> ContainerRecord:
        """``docker create`` with networking: the sandbox first, then the container in its namespace."""
        net = parsed.network or NetworkRequest()
        config = parsed.config
        if net.mode in _RUNTIME_MODES:
            return await self._runtime_create(parsed, replace(config, network_mode=net.mode), name)
        # Everything that can be refused without making anything comes first: the image, the networks.
        image = self.runtime.image(config.image)
        exposed = set(ImageConfig.from_oci(image.config.container).exposed_ports) | set(net.exposed)
        mode, first, others = self._networks(net)
        if mode in _RUNTIME_MODES:  # container:<ref> of a container in host mode
            return await self._runtime_create(parsed, replace(config, network_mode=mode), name)
        with self.runtime.containers.reserve(name) as (container_id, name):
            etc_dir = self.etc_dir(container_id)
            try:
                sandbox = await self.controller.create_sandbox(
                    SandboxConfig(
                        container_id=container_id,
                        name=name,
                        network_mode=mode,
                        hostname=config.hostname or "",
                        domainname=config.domainname,
                        aliases=first.aliases,
                        ip=first.ip,
                        ip6=first.ip6,
                        dns=net.dns,
                        extra_hosts=net.extra_hosts,
                        publish=net.publish,
                        publish_all=net.publish_all,
                        exposed=tuple(sorted(exposed)),
                        links=net.links,
                        env=config.env,
                        etc_dir=str(etc_dir),
                    )
                )
                for network, endpoint in others:
                    await self.controller.connect(
                        container_id, network.id, aliases=endpoint.aliases, ip=endpoint.ip, ip6=endpoint.ip6
                    )
                self.controller.etc_files(container_id).write(etc_dir)
                config = replace(config, network_mode=sandbox.runtime_mode, etc_dir=str(etc_dir))
                return await self._runtime_create(parsed, config, name, container_id)
            except BaseException:
                await self._drop(container_id)
                raise

    async def _runtime_create(
        self,
        parsed: CreateRequest,
        config: ContainerConfig,
        name: str | None,
        container_id: str | None = None,
    ) -> ContainerRecord:
        return await self.runtime.create(
            config,
            name,
            mounts=parsed.mounts,
            volumes=parsed.volumes,
            volumes_from=parsed.volumes_from,
            container_id=container_id,
        )

    def _networks(
        self, net: NetworkRequest
    ) -> tuple[str, EndpointRequest, list[tuple[NetworkRecord, EndpointRequest]]]:
        """The sandbox's mode, the endpoint settings on its first network, and the other networks to join.

        Unknown networks raise :class:`~agent.network.errors.NetworkNotFound` (404) here, before anything
        is made.
        """
        state = self.controller.state
        if net.mode.startswith("container:"):
            ref = net.mode.split(":", 1)[1]
            target = self.runtime.containers.inspect(ref)
            if target.config.network_mode == "host":
                return "host", EndpointRequest(), []
            if self._sandbox(target.id) is None:
                raise BadParameter(
                    "HostConfig.NetworkMode", f"container {ref} has no network namespace of its own to share"
                )
            return f"container:{target.id}", EndpointRequest(), []
        mode = DEFAULT_BRIDGE_NETWORK if net.mode in DEFAULT_NETWORKS else net.mode
        first_network = state.network(mode)
        first = EndpointRequest()
        others = []
        for key, endpoint in net.endpoints.items():
            network = state.network(DEFAULT_BRIDGE_NETWORK if key in DEFAULT_NETWORKS else key)
            if network.id == first_network.id:
                first = endpoint
            else:
                others.append((network, endpoint))
        return mode, first, others

    # --- what inspect and ps show ---------------------------------------------------------------------------

    def _endpoints(self, container_id: str) -> tuple[Sandbox, list[tuple[NetworkRecord, EndpointRecord]]]:
        sandbox = self._sandbox(container_id)
        assert sandbox is not None
        state = self.controller.state
        if state.sandboxes[container_id].shared_with:
            return sandbox, []  # container:<ref>: the network is the other container's, as Docker shows it
        out = []
        for endpoint in sandbox.endpoints:
            network = state.networks.get(endpoint.network_id)
            if network is not None:
                out.append((network, endpoint))
        return sandbox, out

    def _exposed(self, record: ContainerRecord) -> list[tuple[int, str]]:
        sandbox = self.controller.state.sandboxes[record.id]
        return parse_exposed({*record.image_config.exposed_ports, *sandbox.exposed})

    def inspect(self, record: ContainerRecord, data: dict[str, Any]) -> None:
        """Fill ``GET /containers/{id}/json`` output with the sandbox: ``NetworkSettings``, the request in
        ``HostConfig``, the ``/etc`` file paths. Containers without a sandbox of ours are left alone."""
        if self._sandbox(record.id) is None:
            return
        sandbox, endpoints = self._endpoints(record.id)
        stored = self.controller.state.sandboxes[record.id]
        networks = {network.name: _endpoint_json(network, endpoint) for network, endpoint in endpoints}
        default = next((networks[n.name] for n, _ in endpoints if n.is_default_bridge), {})
        # Exposed but not published: null, as in Docker.
        ports: dict[str, list[dict[str, str]] | None] = {
            f"{p}/{proto}": None for p, proto in self._exposed(record)
        }
        if not stored.shared_with:
            for binding in sandbox.ports:
                key = f"{binding.container_port}/{binding.protocol}"
                ports[key] = [*(ports.get(key) or []), _binding_json(binding)]
        data["NetworkSettings"] = {
            "Bridge": "",
            "SandboxID": record.id,
            "HairpinMode": False,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "Ports": ports,
            "SandboxKey": sandbox.netns,
            "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None,
            # The top-level address fields describe the default bridge only, as in Docker.
            **{key: default.get(key, "") for key in _TOP_LEVEL},
            "IPPrefixLen": default.get("IPPrefixLen", 0),
            "GlobalIPv6PrefixLen": default.get("GlobalIPv6PrefixLen", 0),
            "Networks": networks,
        }
        host = data["HostConfig"]
        host["NetworkMode"] = stored.mode
        host["PortBindings"] = _port_bindings(stored.publish)
        host["PublishAllPorts"] = stored.publish_all
        host["Dns"], host["DnsSearch"] = list(stored.dns.servers), list(stored.dns.search)
        host["DnsOptions"] = list(stored.dns.options)
        host["ExtraHosts"] = [f"{name}:{address}" for name, address in stored.extra_hosts] or None
        exposed_keys: dict[str, dict[str, str]] = {
            f"{port}/{proto}": {} for port, proto in self._exposed(record)
        }
        data["Config"]["ExposedPorts"] = exposed_keys or None
        etc = self.etc_dir(record.id)
        data["HostsPath"], data["HostnamePath"] = str(etc / "hosts"), str(etc / "hostname")
        data["ResolvConfPath"] = str(etc / "resolv.conf")

    def summary(self, record: ContainerRecord, data: dict[str, Any]) -> None:
        """Fill one ``GET /containers/json`` element: ``Ports``, ``NetworkSettings``, ``NetworkMode``."""
        if self._sandbox(record.id) is None:
            return
        sandbox, endpoints = self._endpoints(record.id)
        stored = self.controller.state.sandboxes[record.id]
        published = [] if stored.shared_with else list(sandbox.ports)
        done = {(b.container_port, b.protocol) for b in published}
        ports: list[dict[str, Any]] = [
            {"IP": b.host_ip or "0.0.0.0", "PrivatePort": b.container_port, "PublicPort": b.host_port,
             "Type": b.protocol}
            for b in published
        ]  # fmt: skip
        ports += [
            {"PrivatePort": port, "Type": proto}
            for port, proto in self._exposed(record)
            if (port, proto) not in done
        ]
        data["Ports"] = sorted(ports, key=lambda p: (p["PrivatePort"], p["Type"], p.get("PublicPort", 0)))
        data["HostConfig"] = {"NetworkMode": stored.mode}
        data["NetworkSettings"] = {
            "Networks": {network.name: _endpoint_json(network, endpoint) for network, endpoint in endpoints}
        }


_TOP_LEVEL = ("EndpointID", "Gateway", "GlobalIPv6Address", "IPAddress", "IPv6Gateway", "MacAddress")


def _binding_json(binding: PortBinding) -> dict[str, str]:
    return {"HostIp": binding.host_ip or "0.0.0.0", "HostPort": str(binding.host_port)}


def _port_bindings(specs: tuple[str, ...]) -> dict[str, list[dict[str, str]]]:
    """The ``-p`` specifications as Docker's ``HostConfig.PortBindings`` (what was asked, not chosen)."""
    out: dict[str, list[dict[str, str]]] = {}
    for spec in specs:
        for req in parse_publish(spec):
            if not req.host_first:
                host_port = ""
            elif req.host_first == req.host_last:
                host_port = str(req.host_first)
            else:
                host_port = f"{req.host_first}-{req.host_last}"
            key = f"{req.container_port}/{req.protocol}"
            out.setdefault(key, []).append({"HostIp": req.host_ip, "HostPort": host_port})
    return out


def _pool_gateway(network: NetworkRecord, version: int) -> str:
    for pool in network.ipam:
        if pool.gateway and (":" in pool.gateway) == (version == 6):
            return pool.gateway
    return ""


def _prefix(addresses: tuple[str, ...], v6: bool) -> tuple[str, int]:
    for address in addresses:
        if (":" in address) == v6:
            ip, _, length = address.partition("/")
            return ip, int(length or 0)
    return "", 0


def _endpoint_json(network: NetworkRecord, endpoint: EndpointRecord) -> dict[str, Any]:
    """One entry of ``NetworkSettings.Networks``."""
    ip, length = _prefix(endpoint.addresses, False)
    ip6, length6 = _prefix(endpoint.addresses, True)
    aliases = list(endpoint.aliases)
    if network.user_defined:
        aliases.append(endpoint.container_id[:12])  # Docker 1.43 lists the short id, which DNS answers
    return {
        "IPAMConfig": None,
        "Links": None,
        "Aliases": aliases or None,
        "NetworkID": network.id,
        "EndpointID": endpoint.id,
        "Gateway": _pool_gateway(network, 4) if ip else "",
        "IPAddress": ip,
        "IPPrefixLen": length,
        "IPv6Gateway": _pool_gateway(network, 6) if ip6 else "",
        "GlobalIPv6Address": ip6,
        "GlobalIPv6PrefixLen": length6,
        "MacAddress": endpoint.mac,
        "DriverOpts": None,
    }


NETWORKS = web.AppKey("networks", ContainerNetworks)


def networks_of(request: web.Request) -> ContainerNetworks | None:
    """The API's container networking, or ``None`` when it was served without a network controller."""
    return request.app.get(NETWORKS)
