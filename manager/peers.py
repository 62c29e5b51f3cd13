"""The ``peers`` frames a dispatcher sends: every endpoint and service of the overlay networks a node uses.

:class:`PeerIndex` follows the store's changes (through the dispatcher) and knows, for each network, the
tasks that have an endpoint on it — assigned to a node, not ended, with an address there — and a
*version* that grows whenever what an agent would be told about the network changes: a task gets an
endpoint or loses it, starts or stops serving (RUNNING and wanted), moves; a service is renamed, changes
endpoint mode, gets a virtual IP or aliases; a node's address changes. Changes an agent cannot see (a task
going from PREPARING to STARTING) leave the version alone, so they cost no frame.

Each session keeps a :class:`PeerSession`: the version of every network it last sent. When the
dispatcher's writer wakes it calls :meth:`PeerIndex.frame`, which sends the whole of each network whose
version moved (built once per version and shared by every session) and the networks the node stopped
using. The first frame of a session is ``full``: every network the node uses, replacing what the agent
had. The index also knows which nodes watch which network, so a change wakes only their sessions.

The ingress network (the routing mesh's) is every node's: each one gets its peers, tasks there or not,
with the network itself (to build it), every node's own address there as an endpoint without a task, and
each service's ports published in ingress mode.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from api import Network, Node, Service, Task, TaskState
from api.objects import EndpointMode, PortConfig, PublishMode
from api.peers import NetworkPeers, PeerEndpoint, Peers, PeerService, task_container_name
from manager.store import Change, ObjectStore

#: Only overlay networks span hosts; the agents of other drivers need no peers.
OVERLAY_DRIVER = "overlay"


def is_endpoint(task: Task) -> bool:
    """Whether the task holds its addresses on its networks: assigned to a node and not ended."""
    state = task.status.state
    return bool(task.node_id and task.networks) and state >= TaskState.ASSIGNED and state.is_live


def is_serving(task: Task) -> bool:
    """Whether the task answers for its service: running, and not being stopped."""
    return task.status.state is TaskState.RUNNING and task.desired_state <= TaskState.RUNNING


def host_of(addr: str) -> str:
    """A node address without a port (``10.0.0.1:4242`` → ``10.0.0.1``; ``[fd00::1]:1`` → ``fd00::1``)."""
    if addr.startswith("["):
        return addr[1:].partition("]")[0]
    if addr.count(":") == 1:
        return addr.partition(":")[0]
    return addr


def _task_view(task: Task | None) -> Any:
    """What of a task goes into peers frames (None: it has no endpoint)."""
    if task is None or not is_endpoint(task):
        return None
    return (
        task.node_id,
        task.networks,
        is_serving(task),
        task.service_id,
        task.service_annotations.name,
        task.slot,
    )


def _service_view(service: Service | None) -> Any:
    if service is None:
        return None
    return (
        service.spec.annotations.name,
        service.spec.endpoint.mode,
        tuple(sorted(service.status.endpoint.virtual_ips.items())),
        tuple((n.target, n.aliases) for n in service.spec.task.networks),
        _mesh_ports(service),
    )


def _mesh_ports(service: Service) -> tuple[PortConfig, ...]:
    return tuple(p for p in service.status.endpoint.ports if p.publish_mode is PublishMode.INGRESS)


def _node_view(node: Node | None) -> Any:
    """What of a node goes into peers frames: its address and its own places on networks."""
    if node is None:
        return None
    return host_of(node.status.addr), node.attachments


@dataclass
class PeerSession:
    """What one agent has been sent: network id → the version it got."""

    sent: dict[str, int] = field(default_factory=dict)
    #: The next frame must be full (a new session).
    full: bool = True
    #: Something it depends on may have changed (its node's tasks, a network it watches): look again.
    pending: bool = True


class PeerIndex:
    """Endpoints and services per overlay network, built from one manager's store cache."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._members: dict[str, set[str]] | None = None
        self._versions: dict[str, int] = {}
        self._built: dict[str, NetworkPeers] = {}
        #: network id → node ids of the sessions using it (their writers wake when it changes).
        self.watchers: dict[str, set[str]] = {}
        self._watching: dict[str, set[str]] = {}

    # --- following the store ----------------------------------------------------------------------------

    def _index(self) -> dict[str, set[str]]:
        if self._members is None:
            # Built from the cache on first use; from then on every task change re-derives its task's place
            # from the cache, so changes delivered after the scan cannot leave it wrong.
            members: dict[str, set[str]] = {}
            for task in self.store.objects(Task):
                if is_endpoint(task):
                    for attachment in task.networks:
                        members.setdefault(attachment.network_id, set()).add(task.meta.id)
            self._members = members
        return self._members

    def version(self, network_id: str) -> int:
        """The network's version (0 until something about it changes)."""
        return self._versions.get(network_id, 0)

    def _bump(self, networks: Iterable[str]) -> set[str]:
        out = set(networks)
        for network_id in out:
            self._versions[network_id] = self._versions.get(network_id, 0) + 1
            self._built.pop(network_id, None)
        return out

    def on_change(self, change: Change) -> set[str]:
        """Take in one store change; the ids of the networks whose peers it changed."""
        if change.kind == "tasks":
            return self._on_task(change.old, change.new)
        if change.kind == "services":
            return self._on_service(change.old, change.new)
        old, new = change.old, change.new
        if change.kind == "nodes" and _node_view(old) != _node_view(new):
            node = new or old
            networks = {a.network_id for n in (old, new) if n is not None for a in n.attachments}
            if old is not None and new is not None and host_of(old.status.addr) != host_of(new.status.addr):
                tasks = self.store.tasks_on_node(node.meta.id)
                networks.update(a.network_id for t in tasks if is_endpoint(t) for a in t.networks)
            return self._bump(networks)
        if change.kind == "networks" and new is not None and new.spec.ingress:
            # Every node takes part in the ingress network, tasks there or not: wake every session.
            self.watchers.setdefault(new.meta.id, set()).update(self._watching)
            return self._bump({new.meta.id})
        if change.kind == "networks" and change.action == "delete":
            network_id = change.old.meta.id
            if self._members is not None:
                self._members.pop(network_id, None)
            self._built.pop(network_id, None)
        return set()

    def _on_task(self, old: Task | None, new: Task | None) -> set[str]:
        if _task_view(old) == _task_view(new):
            return set()
        task_id = (new or old).meta.id  # type: ignore[union-attr]
        networks = {a.network_id for t in (old, new) if t is not None for a in t.networks}
        if self._members is not None:
            current = self.store.get(Task, task_id)
            now = {a.network_id for a in current.networks} if current and is_endpoint(current) else set()
            for network_id in networks | now:
                if network_id in now:
                    self._members.setdefault(network_id, set()).add(task_id)
                else:
                    self._members.get(network_id, set()).discard(task_id)
        return self._bump(networks)

    def _on_service(self, old: Service | None, new: Service | None) -> set[str]:
        if _service_view(old) == _service_view(new):
            return set()
        service = new or old
        assert service is not None
        networks = {n for s in (old, new) if s is not None for n in s.status.endpoint.virtual_ips}
        if any(_mesh_ports(s) for s in (old, new) if s is not None):
            networks.update(n.meta.id for n in self.store.objects(Network) if n.spec.ingress)
        for task in self.store.tasks_of_service(service.meta.id):
            if is_endpoint(task):
                networks.update(a.network_id for a in task.networks)
        return self._bump(networks)

    # --- building ---------------------------------------------------------------------------------------

    def network_peers(self, network_id: str) -> NetworkPeers:
        """Everything on the network now (built once per version)."""
        built = self._built.get(network_id)
        if built is not None:
            return built
        store = self.store
        network = store.get(Network, network_id)
        ingress = network is not None and network.spec.ingress
        endpoints: list[PeerEndpoint] = []
        services: dict[str, Service] = {}
        for task_id in sorted(self._index().get(network_id, ())):
            task = store.get(Task, task_id)
            if task is None or not is_endpoint(task):
                continue
            attachment = next((a for a in task.networks if a.network_id == network_id), None)
            if attachment is None:
                continue
            node = store.get(Node, task.node_id)
            endpoints.append(
                PeerEndpoint(
                    task_id=task_id,
                    service_id=task.service_id,
                    node_id=task.node_id,
                    node_addr=host_of(node.status.addr) if node is not None else "",
                    addresses=attachment.addresses,
                    # Tasks answer to their names on their own networks, not on the mesh's.
                    name="" if ingress else task_container_name(task),
                    serving=is_serving(task),
                )
            )
            service = store.get(Service, task.service_id) if task.service_id else None
            if service is not None:
                services[service.meta.id] = service
        for service in store.objects(Service):
            if network_id in service.status.endpoint.virtual_ips or (ingress and _mesh_ports(service)):
                services[service.meta.id] = service
        if ingress:
            for node in store.objects(Node):
                for attachment in node.attachments:
                    if attachment.network_id == network_id:
                        endpoints.append(
                            PeerEndpoint(
                                node_id=node.meta.id,
                                node_addr=host_of(node.status.addr),
                                addresses=attachment.addresses,
                            )
                        )
        built = NetworkPeers(
            network_id=network_id,
            endpoints=tuple(endpoints),
            services=tuple(_peer_service(s, network_id, network) for _, s in sorted(services.items())),
            network=network if ingress else None,
        )
        self._built[network_id] = built
        return built

    # --- sessions ---------------------------------------------------------------------------------------

    def wanted(self, tasks: Iterable[Task]) -> set[str]:
        """The overlay networks a node with ``tasks`` needs peers of."""
        out = {n.meta.id for n in self.store.objects(Network) if n.spec.ingress and n.status.vni}
        for task in tasks:
            if not is_endpoint(task):
                continue
            for attachment in task.networks:
                network = self.store.get(Network, attachment.network_id)
                if network is not None and network.spec.driver == OVERLAY_DRIVER:
                    out.add(attachment.network_id)
        return out

    def frame(self, node_id: str, session: PeerSession, wanted: set[str]) -> Peers | None:
        """The next ``peers`` frame for a node using ``wanted`` networks, or None when it is up to date."""
        session.pending = False
        self._watch(node_id, wanted)
        if session.full:
            session.full = False
            session.sent = {n: self.version(n) for n in wanted}
            return Peers(full=True, networks=tuple(self.network_peers(n) for n in sorted(wanted)))
        removed = sorted(n for n in session.sent if n not in wanted)
        changed = sorted(n for n in wanted if session.sent.get(n) != self.version(n))
        if not removed and not changed:
            return None
        for network_id in removed:
            del session.sent[network_id]
        for network_id in changed:
            session.sent[network_id] = self.version(network_id)
        return Peers(
            full=False, networks=tuple(self.network_peers(n) for n in changed), removed=tuple(removed)
        )

    def _watch(self, node_id: str, networks: set[str]) -> None:
        known = self._watching.get(node_id)
        if known == networks:
            return
        # Recorded even when it watches nothing: a new ingress network wakes every session (on_change).
        before = known or set()
        for network_id in before - networks:
            self.watchers.get(network_id, set()).discard(node_id)
        for network_id in networks - before:
            self.watchers.setdefault(network_id, set()).add(node_id)
        self._watching[node_id] = set(networks)

    def unwatch(self, node_id: str) -> None:
        """The node's session ended (and no other replaced it)."""
        self._watch(node_id, set())
        self._watching.pop(node_id, None)


def _peer_service(service: Service, network_id: str, network: Network | None) -> PeerService:
    if network is not None and network.spec.ingress:
        # The mesh needs the ports; names on the ingress network would only shadow the service's own.
        return PeerService(service_id=service.meta.id, ports=_mesh_ports(service))
    names = {network_id}
    if network is not None:
        names.add(network.spec.annotations.name)
    aliases = tuple(a for n in service.spec.task.networks if n.target in names for a in n.aliases)
    mode = service.spec.endpoint.mode
    vip = service.status.endpoint.virtual_ips.get(network_id, "") if mode is EndpointMode.VIP else ""
    return PeerService(
        service_id=service.meta.id,
        name=service.spec.annotations.name,
        endpoint_mode=mode,
        virtual_ip=vip,
        aliases=aliases,
    )
