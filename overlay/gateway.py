"""The gateway bridge: outbound traffic of containers on overlay networks (Docker's ``docker_gwbridge``).

An overlay network's namespace has no way out of the cluster, so each container on a non-internal overlay
also gets an interface on a bridge of the host (``shoal_gwbridge``) that carries its default route, with
the container's traffic masqueraded behind the host's address. Containers cannot talk to each other over
it (inter-container traffic is off: they meet on their overlays), other bridges cannot reach it, and
nothing from it reaches the host's loopback addresses.

The gateway network is an ordinary network of the host controller's state (so ``network ls`` and
``inspect`` show it and a restart restores it), driven by :class:`GatewayBridgeDriver`, which is the bridge
driver under another name. It is marked predefined: it is not a user-defined network, so containers'
names are not registered on it (only their overlay addresses must answer to them). Its subnet is chosen
like an automatic bridge subnet, clear of every other network and of the host's routes.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.network import ipam, netlink
from agent.network.bridge import BridgeDriver
from agent.network.driver import SandboxRef
from agent.network.model import EndpointRecord, IPAMPool, NetworkRecord
from agent.network.nft import Ruleset

if TYPE_CHECKING:
    from agent.network.controller import NetworkController

GATEWAY_DRIVER = "gwbridge"
GATEWAY_NETWORK = "shoal_gwbridge"


class GatewayBridgeDriver(BridgeDriver):
    """The bridge driver for the gateway network, adding that bridge's own firewall rules."""

    name = GATEWAY_DRIVER
    local_ipam = False

    def firewall(self, network: NetworkRecord, endpoints: Sequence[EndpointRecord], rules: Ruleset) -> None:
        """Masquerade outbound traffic; no traffic between its containers or to other bridges; no loopback."""
        br = json.dumps(network.interface)
        rules.bridges.append(network.interface)
        for pool in network.ipam:
            fam = "ip6" if ipaddress.ip_network(pool.subnet).version == 6 else "ip"
            rules.postrouting.append(f"{fam} saddr {pool.subnet} oifname != {br} masquerade")
        rules.input.append(f"iifname {br} ip daddr 127.0.0.0/8 ct state != {{ established, related }} drop")
        rules.forward.append(f"iifname {br} oifname {br} drop")
        rules.forward.append(f"iifname {br} oifname != {br} oifname @bridges drop")


class GatewayBridge:
    """Attaches containers to the gateway network, creating the network on first use."""

    def __init__(self, controller: NetworkController, name: str = GATEWAY_NETWORK) -> None:
        self.ctl = controller
        self.name = name
        config = controller.config
        self.driver = GatewayBridgeDriver(config.host_netns, ip_forward=config.ip_forward)

    def network(self) -> NetworkRecord | None:
        """The gateway network, if this host has one."""
        for network in self.ctl.state.networks.values():
            if network.name == self.name and network.driver == GATEWAY_DRIVER:
                return network
        return None

    async def ensure(self) -> NetworkRecord:
        """The gateway network, created (record and bridge) if missing. Call with the controller's lock."""
        existing = self.network()
        if existing is not None:
            return existing
        async with netlink.iproute(self.ctl.config.host_netns) as ipr:
            taken = await netlink.host_routes(ipr)
        taken += [ipaddress.ip_network(p.subnet) for n in self.ctl.state.networks.values() for p in n.ipam]
        subnet = ipam.auto_subnet(taken, self.ctl.config.address_pools)
        record = NetworkRecord(
            id=secrets.token_hex(32),
            name=self.name,
            driver=GATEWAY_DRIVER,
            created=datetime.now(UTC).isoformat(),
            ipam=(ipam.resolve_pool(IPAMPool(str(subnet))),),
            interface=self.name[: netlink.IFNAMSIZ],
            icc=False,
            predefined=True,
            options={
                "com.docker.network.bridge.enable_icc": "false",
                "com.docker.network.bridge.enable_ip_masquerade": "true",
                "com.docker.network.bridge.name": self.name[: netlink.IFNAMSIZ],
            },
        )
        await self.driver.create(record)
        self.ctl.state.put_network(record)
        return record

    def endpoint_of(self, container_id: str) -> EndpointRecord | None:
        """The container's endpoint on the gateway network."""
        network = self.network()
        return self.ctl.state.endpoint(container_id, network.id) if network is not None else None

    async def attach(
        self, sandbox: SandboxRef, container_name: str, taken_ifnames: Sequence[str]
    ) -> EndpointRecord:
        """Give the container an interface on the gateway network with its default route (idempotent)."""
        current = self.endpoint_of(sandbox.container_id)
        if current is not None:
            return current
        network = await self.ensure()
        pool = network.ipam[0]
        used = [a for e in self.ctl.state.endpoints_of_network(network.id) for a in e.addresses]
        address = ipam.allocate(pool, used, "")
        taken = {*taken_ifnames, *(e.ifname for e in self.ctl.state.endpoints_of(sandbox.container_id))}
        ifname = next(f"eth{i}" for i in range(len(taken) + 1) if f"eth{i}" not in taken)
        endpoint = EndpointRecord(
            id=secrets.token_hex(32),
            network_id=network.id,
            container_id=sandbox.container_id,
            container_name=container_name,
            ifname=ifname,
            addresses=(address,),
            gateways=(pool.gateway,),
        )
        info = await self.driver.join(network, endpoint, sandbox)
        endpoint = replace(endpoint, mac=info.mac, host_ifname=info.host_ifname)
        self.ctl.state.put_endpoint(endpoint)
        return endpoint

    async def detach(self, sandbox: SandboxRef) -> None:
        """Remove the container's gateway interface (nothing if it has none)."""
        network = self.network()
        endpoint = self.endpoint_of(sandbox.container_id)
        if network is None or endpoint is None:
            return
        await self.driver.leave(network, endpoint, sandbox)
        self.ctl.state.drop_endpoint(endpoint.id)
