"""The peer table: what the cluster says is on each overlay network, and what follows from it on a host.

The agent feeds :class:`PeerTable` with the managers' ``peers`` frames (api/peers.py). Everything else is
derived, purely, from the table:

* :meth:`PeerTable.entries`: the static neighbour (IP → MAC) and forwarding (MAC → remote host) entries a
  host programs on the network's VXLAN device — one per *remote* endpoint, none for local ones (the bridge
  reaches those directly). As in libnetwork, an endpoint's MAC is derived from its IPv4 address
  (``02:42:`` + the four address bytes), so neither side has to learn or send it, and an address reused by
  another task maps to the same MAC with a new destination.
* :meth:`PeerTable.dns_records`: the names the embedded DNS answers on the network — a service's name and
  aliases (its virtual IP, or its tasks' addresses in ``dnsrr`` mode), ``tasks.<name>`` (the tasks'
  addresses), and each task's container name.
* :meth:`PeerTable.virtual_ips`: each virtual IP with the addresses of the tasks serving behind it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from api.objects import EndpointMode
from api.peers import NetworkPeers, PeerEndpoint, Peers

#: DNS table keys the overlay owns, by kind (the host networking keys its own records by endpoint id).
SERVICE_KEY = "overlay-svc:"
TASKS_KEY = "overlay-tasks:"
TASK_KEY = "overlay-task:"

DNSRecords = dict[str, tuple[tuple[str, ...], tuple[str, ...]]]


def mac_for(ip: str) -> str:
    """The MAC address of an overlay endpoint: ``02:42:`` and the bytes of its IPv4 address (libnetwork)."""
    packed = ipaddress.IPv4Address(ip.split("/")[0]).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed)


def host_of(addr: str) -> str:
    """A node address without a port: ``10.0.0.1:2377`` → ``10.0.0.1``, ``[fd00::1]:2377`` → ``fd00::1``."""
    if addr.startswith("["):
        return addr[1:].partition("]")[0]
    if addr.count(":") == 1:
        return addr.partition(":")[0]
    return addr


def ipv4_of(endpoint: PeerEndpoint) -> str:
    """The endpoint's IPv4 address without prefix length, or ``""``."""
    for address in endpoint.addresses:
        if ":" not in address:
            return address.split("/")[0]
    return ""


@dataclass(frozen=True, order=True)
class PeerEntry:
    """One remote endpoint as a host programs it: ``ip`` has ``mac``, which lives behind host ``vtep``."""

    ip: str
    mac: str
    vtep: str


class PeerTable:
    """The overlay networks the node uses, as the managers last described them."""

    def __init__(self) -> None:
        self.networks: dict[str, NetworkPeers] = {}
        #: Whether a full frame has arrived: until then the table knows nothing, which is not the same as
        #: knowing that a network is empty (an agent that just restarted must not wipe its entries).
        self.complete = False

    def apply(self, frame: Peers) -> set[str]:
        """Take in one frame; the ids of the networks whose picture changed (removed ones included)."""
        changed: set[str] = set()
        if frame.full:
            listed = {n.network_id for n in frame.networks}
            for network_id in list(self.networks):
                if network_id not in listed:
                    del self.networks[network_id]
                    changed.add(network_id)
            self.complete = True
        for network_id in frame.removed:
            if self.networks.pop(network_id, None) is not None:
                changed.add(network_id)
        for peers in frame.networks:
            if self.networks.get(peers.network_id) != peers:
                self.networks[peers.network_id] = peers
                changed.add(peers.network_id)
        return changed

    def known(self, network_id: str) -> bool:
        """Whether the table speaks for ``network_id`` (a full frame came, or the network was listed)."""
        return self.complete or network_id in self.networks

    def endpoints(self, network_id: str) -> tuple[PeerEndpoint, ...]:
        """Every endpoint on the network, local ones included."""
        peers = self.networks.get(network_id)
        return peers.endpoints if peers is not None else ()

    # --- derived: forwarding ---------------------------------------------------------------------------

    def entries(
        self, network_id: str, local_vteps: Iterable[str], local_ips: Iterable[str] = ()
    ) -> set[PeerEntry]:
        """The neighbour and forwarding entries for the network's remote endpoints.

        An endpoint is local when its node's address is one of ``local_vteps`` or its address is one of
        ``local_ips`` (the containers attached on this host), whatever the managers believe.
        """
        vteps = {host_of(v) for v in local_vteps}
        mine = {ip.split("/")[0] for ip in local_ips}
        out: set[PeerEntry] = set()
        for endpoint in self.endpoints(network_id):
            ip = ipv4_of(endpoint)
            vtep = host_of(endpoint.node_addr)
            if not ip or not vtep or vtep in vteps or ip in mine:
                continue
            out.add(PeerEntry(ip, mac_for(ip), vtep))
        return _one_per_address(out)

    # --- derived: service discovery --------------------------------------------------------------------

    def dns_records(self, network_id: str) -> DNSRecords:
        """``key → (names, addresses)`` for the embedded DNS on the network (keys start ``overlay-``)."""
        peers = self.networks.get(network_id)
        if peers is None:
            return {}
        serving: dict[str, list[str]] = {}
        records: DNSRecords = {}
        for endpoint in sorted(peers.endpoints, key=lambda e: e.task_id):
            addresses = tuple(a.split("/")[0] for a in endpoint.addresses)
            if not endpoint.serving or not addresses:
                continue
            serving.setdefault(endpoint.service_id, []).extend(addresses)
            if endpoint.name:
                records[TASK_KEY + endpoint.task_id] = ((endpoint.name,), addresses)
        for service in peers.services:
            if not service.name:
                continue
            names = (service.name, *service.aliases)
            tasks = tuple(serving.get(service.service_id, ()))
            if service.endpoint_mode is EndpointMode.VIP and service.virtual_ip:
                records[SERVICE_KEY + service.service_id] = (names, (service.virtual_ip.split("/")[0],))
            elif service.endpoint_mode is EndpointMode.DNSRR:
                records[SERVICE_KEY + service.service_id] = (names, tasks)
            records[TASKS_KEY + service.service_id] = (tuple(f"tasks.{n}" for n in names), tasks)
        return records

    def virtual_ips(self, network_id: str) -> dict[str, tuple[str, ...]]:
        """Each virtual IP on the network → the IPv4 addresses of the tasks serving behind it (sorted)."""
        peers = self.networks.get(network_id)
        if peers is None:
            return {}
        serving: dict[str, set[str]] = {}
        for endpoint in peers.endpoints:
            ip = ipv4_of(endpoint)
            if endpoint.serving and ip:
                serving.setdefault(endpoint.service_id, set()).add(ip)
        out: dict[str, tuple[str, ...]] = {}
        for service in peers.services:
            if service.endpoint_mode is not EndpointMode.VIP or not service.virtual_ip:
                continue
            vip = service.virtual_ip.split("/")[0]
            if ":" in vip:
                continue
            out[vip] = tuple(sorted(serving.get(service.service_id, ()), key=ipaddress.IPv4Address))
        return out


def _one_per_address(entries: set[PeerEntry]) -> set[PeerEntry]:
    """At most one entry per address. Two endpoints with one address only happen with stale state (an
    ended task the managers have not caught up with); every host keeps the same one, the first in order."""
    by_ip: dict[str, PeerEntry] = {}
    for entry in sorted(entries):
        by_ip.setdefault(entry.ip, entry)
    return set(by_ip.values())


def records_diff(old: Mapping[str, object], new: Mapping[str, object]) -> tuple[set[str], set[str]]:
    """Keys to remove and keys to (re)set, going from ``old`` to ``new``."""
    removed = set(old) - set(new)
    changed = {k for k, v in new.items() if old.get(k) != v}
    return removed, changed
