"""The controller's in-memory network state, written through to the JSON store.

Holds networks, endpoints and sandboxes with the lookups the controller needs (by id, id prefix or name),
and derives from them what other parts consume: the nftables ruleset and the embedded DNS records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.network.driver import NetworkDriver
from agent.network.errors import AmbiguousNetwork, NetworkNotFound, SandboxNotFound
from agent.network.model import EndpointRecord, NetworkRecord, SandboxRecord
from agent.network.nft import BridgeView, LinkAccept, PortMapping, Ruleset, add_bridge_rules
from agent.network.ports import parse_exposed
from agent.network.store import NetworkStore


@dataclass(frozen=True)
class DNSEntry:
    """One endpoint's records for the embedded DNS: ``names`` → ``addresses`` on ``network``."""

    network: str
    key: str
    names: tuple[str, ...]
    addresses: tuple[str, ...]


class NetworkState:
    """Networks, endpoints and sandboxes, in memory and in the store."""

    def __init__(self, store: NetworkStore) -> None:
        self.store = store
        self.networks: dict[str, NetworkRecord] = {}
        self.endpoints: dict[str, EndpointRecord] = {}
        self.sandboxes: dict[str, SandboxRecord] = {}

    def load(self) -> None:
        """Read everything from the store."""
        self.networks = {n.id: n for n in self.store.networks()}
        self.endpoints = {e.id: e for e in self.store.endpoints()}
        self.sandboxes = {s.container_id: s for s in self.store.sandboxes()}

    # --- writes -----------------------------------------------------------------------------------------

    def put_network(self, network: NetworkRecord) -> None:
        """Add or replace a network."""
        self.store.save_network(network)
        self.networks[network.id] = network

    def drop_network(self, network_id: str) -> None:
        """Forget a network."""
        self.store.delete_network(network_id)
        self.networks.pop(network_id, None)

    def put_endpoint(self, endpoint: EndpointRecord) -> None:
        """Add or replace an endpoint."""
        self.store.save_endpoint(endpoint)
        self.endpoints[endpoint.id] = endpoint

    def drop_endpoint(self, endpoint_id: str) -> None:
        """Forget an endpoint."""
        self.store.delete_endpoint(endpoint_id)
        self.endpoints.pop(endpoint_id, None)

    def put_sandbox(self, sandbox: SandboxRecord) -> None:
        """Add or replace a sandbox."""
        self.store.save_sandbox(sandbox)
        self.sandboxes[sandbox.container_id] = sandbox

    def drop_sandbox(self, container_id: str) -> None:
        """Forget a sandbox."""
        self.store.delete_sandbox(container_id)
        self.sandboxes.pop(container_id, None)

    # --- lookups ----------------------------------------------------------------------------------------

    def network(self, ref: str) -> NetworkRecord:
        """A network by full id, exact name, or unique id prefix."""
        if ref in self.networks:
            return self.networks[ref]
        for network in self.networks.values():
            if network.name == ref:
                return network
        matches = [n for n in self.networks.values() if ref and n.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise AmbiguousNetwork(ref, [n.id for n in matches])
        raise NetworkNotFound(ref)

    def sandbox(self, ref: str) -> SandboxRecord:
        """A sandbox by container id, container name, or unique id prefix."""
        if ref in self.sandboxes:
            return self.sandboxes[ref]
        for sandbox in self.sandboxes.values():
            if sandbox.name == ref.lstrip("/"):
                return sandbox
        matches = [s for s in self.sandboxes.values() if ref and s.container_id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        raise SandboxNotFound(ref)

    def owner(self, sandbox: SandboxRecord) -> SandboxRecord:
        """The sandbox that owns ``sandbox``'s namespace (itself unless it is ``container:<id>``)."""
        seen = set()
        while sandbox.shared_with and sandbox.shared_with not in seen:
            seen.add(sandbox.shared_with)
            nxt = self.sandboxes.get(sandbox.shared_with)
            if nxt is None:
                break
            sandbox = nxt
        return sandbox

    def endpoints_of_network(self, network_id: str) -> list[EndpointRecord]:
        """The network's endpoints."""
        return [e for e in self.endpoints.values() if e.network_id == network_id]

    def endpoints_of(self, container_id: str) -> list[EndpointRecord]:
        """A sandbox's endpoints, in interface order (``eth0`` first)."""
        found = [e for e in self.endpoints.values() if e.container_id == container_id]
        return sorted(found, key=lambda e: (len(e.ifname), e.ifname))

    def endpoint(self, container_id: str, network_id: str) -> EndpointRecord | None:
        """The sandbox's endpoint on a network, if any."""
        for endpoint in self.endpoints.values():
            if endpoint.container_id == container_id and endpoint.network_id == network_id:
                return endpoint
        return None

    def default_bridge(self) -> NetworkRecord | None:
        """The default bridge network."""
        for network in self.networks.values():
            if network.is_default_bridge:
                return network
        return None

    def users_of(self, network_id: str) -> list[str]:
        """Containers connected to a network."""
        return sorted({e.container_id for e in self.endpoints_of_network(network_id)})

    # --- derived: nftables and DNS ----------------------------------------------------------------------

    def ruleset(self, table: str, drivers: Mapping[str, NetworkDriver]) -> Ruleset:
        """The whole nftables table for the current state."""
        rules = Ruleset(table=table)
        bridges: list[BridgeView] = []
        mappings: list[PortMapping] = []
        for network in sorted(self.networks.values(), key=lambda n: n.created):
            if network.driver == "bridge":
                bridges.append(
                    BridgeView(
                        interface=network.interface,
                        subnets=tuple(p.subnet for p in network.ipam),
                        internal=network.internal,
                        icc=network.icc,
                        masquerade=network.masquerade,
                    )
                )
            else:
                driver = drivers.get(network.driver)
                if driver is not None:
                    driver.firewall(network, self.endpoints_of_network(network.id), rules)
        for endpoint in sorted(self.endpoints.values(), key=lambda e: e.id):
            on = self.networks.get(endpoint.network_id)
            if on is None or on.driver != "bridge":
                continue
            for binding in endpoint.ports:
                for ip in (endpoint.ipv4, endpoint.ipv6):
                    if ip:
                        mappings.append(PortMapping(binding, ip, on.interface))
        add_bridge_rules(rules, bridges, mappings, self.link_accepts())
        return rules

    def link_accepts(self) -> list[LinkAccept]:
        """Forward-accept rules for legacy links on the default bridge (they matter with icc off)."""
        default = self.default_bridge()
        if default is None:
            return []
        out = []
        for sandbox in self.sandboxes.values():
            source = self.endpoint(sandbox.container_id, default.id)
            if source is None or not source.ipv4:
                continue
            for link in sandbox.links:
                target_sb = self.sandboxes.get(link.target)
                target = self.endpoint(link.target, default.id)
                if target_sb is None or target is None or not target.ipv4:
                    continue
                for port, proto in parse_exposed(target_sb.exposed):
                    out.append(LinkAccept(default.interface, source.ipv4, target.ipv4, port, proto))
        return out

    def dns_entries(self, endpoint: EndpointRecord) -> DNSEntry | None:
        """What the embedded DNS answers for ``endpoint`` (only on user-defined networks)."""
        network = self.networks.get(endpoint.network_id)
        if network is None or not network.user_defined:
            return None
        sandbox = self.sandboxes.get(endpoint.container_id)
        name = (sandbox.name if sandbox else endpoint.container_name).lstrip("/")
        names = [f"{name}.{network.name}", name, *endpoint.aliases, endpoint.container_id[:12]]
        addresses = tuple(a.split("/")[0] for a in endpoint.addresses)
        return DNSEntry(network.id, endpoint.id, tuple(n for n in names if n), addresses)

    def dns_networks(self, container_id: str) -> list[str]:
        """The user-defined networks whose names a sandbox resolves."""
        out = []
        for endpoint in self.endpoints_of(container_id):
            network = self.networks.get(endpoint.network_id)
            if network is not None and network.user_defined:
                out.append(network.id)
        return out


def label_match(labels: Mapping[str, str], wanted: Iterable[str]) -> bool:
    """Docker's ``label=key`` / ``label=key=value`` filters: every one must match."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True
