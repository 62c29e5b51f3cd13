"""Shoal's cluster objects: Node, Service, Task, Network, Volume, Secret and Cluster.

Every object has ``meta`` (id, version, times), a ``spec`` (desired state, written by users through the
API) and a ``status`` (observed state, written by the system). ``meta.version`` is the store revision the
object was read at; a write is conditional on it. All types are frozen dataclasses: change them with
:func:`dataclasses.replace` (or the ``with_*`` helpers) and write the result back.

Names and defaults follow SwarmKit's API (api/specs.proto, api/objects.proto) where Shoal has the same
concept. Durations are integer nanoseconds, as in SwarmKit, so they round-trip exactly.
"""

from __future__ import annotations

import enum
import secrets as _secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from api.states import TaskState, check_transition

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SECOND = 1_000_000_000


def new_id() -> str:
    """A new object id: 25 lowercase base-36 characters, like SwarmKit's identity.NewID()."""
    n = int.from_bytes(_secrets.token_bytes(16), "big")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    for _ in range(25):
        n, r = divmod(n, 36)
        out.append(digits[r])
    return "".join(out)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only kind of time the model holds)."""
    return datetime.now(UTC)


# --- shared pieces ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Meta:
    """Identity and bookkeeping every object carries."""

    id: str = ""
    #: The store revision the object was last written at (0: never stored).
    version: int = 0
    created_at: datetime = _EPOCH
    updated_at: datetime = _EPOCH


@dataclass(frozen=True)
class Annotations:
    """A user-given name and labels."""

    name: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Platform:
    """An OS and CPU architecture, as in OCI image configs (``linux``/``amd64``)."""

    os: str = ""
    architecture: str = ""


@dataclass(frozen=True)
class Resources:
    """CPU in billionths of a core (``nano_cpus``, 1e9 = one core) and memory in bytes."""

    nano_cpus: int = 0
    memory_bytes: int = 0


@dataclass(frozen=True)
class ResourceRequirements:
    """What a task is limited to and what the scheduler reserves for it."""

    limits: Resources = field(default_factory=Resources)
    reservations: Resources = field(default_factory=Resources)


# --- Node ---------------------------------------------------------------------------------------------
class NodeRole(enum.Enum):
    WORKER = "worker"
    MANAGER = "manager"


class NodeAvailability(enum.Enum):
    """Whether the scheduler may place new tasks on the node (pause: no; drain: no, and move its tasks)."""

    ACTIVE = "active"
    PAUSE = "pause"
    DRAIN = "drain"


class NodeState(enum.Enum):
    UNKNOWN = "unknown"
    DOWN = "down"
    READY = "ready"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True)
class NodeSpec:
    annotations: Annotations = field(default_factory=Annotations)
    role: NodeRole = NodeRole.WORKER
    availability: NodeAvailability = NodeAvailability.ACTIVE


@dataclass(frozen=True)
class NodeDescription:
    """What the agent reports about its host."""

    hostname: str = ""
    platform: Platform = field(default_factory=Platform)
    resources: Resources = field(default_factory=Resources)
    engine_labels: dict[str, str] = field(default_factory=dict)
    kernel_version: str = ""
    operating_system: str = ""
    storage_driver: str = ""


@dataclass(frozen=True)
class NodeStatus:
    state: NodeState = NodeState.UNKNOWN
    message: str = ""
    #: The address the node's agent is reached at (its cluster address).
    addr: str = ""
    description: NodeDescription = field(default_factory=NodeDescription)


@dataclass(frozen=True)
class Node:
    meta: Meta = field(default_factory=Meta)
    spec: NodeSpec = field(default_factory=NodeSpec)
    status: NodeStatus = field(default_factory=NodeStatus)
    #: The node's own addresses on cluster networks: its routing mesh's place on the ingress network.
    attachments: tuple[NetworkAttachment, ...] = ()

    @property
    def id(self) -> str:
        return self.meta.id


# --- Service and its task template -------------------------------------------------------------------
class MountType(enum.Enum):
    BIND = "bind"
    VOLUME = "volume"
    TMPFS = "tmpfs"


@dataclass(frozen=True)
class Mount:
    type: MountType = MountType.VOLUME
    source: str = ""
    target: str = ""
    read_only: bool = False


@dataclass(frozen=True)
class HealthConfig:
    """A health check (``test`` as in Docker: ["CMD", …], ["CMD-SHELL", "…"] or ["NONE"])."""

    test: tuple[str, ...] = ()
    interval_ns: int = 30 * SECOND
    timeout_ns: int = 30 * SECOND
    retries: int = 3
    start_period_ns: int = 0


@dataclass(frozen=True)
class SecretReference:
    secret_id: str = ""
    secret_name: str = ""
    #: File name under /run/secrets/ in the container.
    target: str = ""


@dataclass(frozen=True)
class ContainerSpec:
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    dir: str = ""
    user: str = ""
    hostname: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    healthcheck: HealthConfig | None = None
    stop_signal: str = ""
    stop_grace_period_ns: int = 10 * SECOND
    init: bool = False
    read_only: bool = False
    secrets: tuple[SecretReference, ...] = ()


class RestartCondition(enum.Enum):
    NONE = "none"
    ON_FAILURE = "on-failure"
    ANY = "any"


@dataclass(frozen=True)
class RestartPolicy:
    condition: RestartCondition = RestartCondition.ANY
    delay_ns: int = 5 * SECOND
    #: 0: no limit.
    max_attempts: int = 0
    #: 0: attempts are counted over the task's whole history.
    window_ns: int = 0


@dataclass(frozen=True)
class PlacementPreference:
    """``spread=node.labels.zone``: even out the service's tasks over that label's values."""

    spread: str = ""


@dataclass(frozen=True)
class Placement:
    constraints: tuple[str, ...] = ()
    preferences: tuple[PlacementPreference, ...] = ()
    #: 0: no limit.
    max_replicas: int = 0
    platforms: tuple[Platform, ...] = ()


@dataclass(frozen=True)
class NetworkAttachmentConfig:
    target: str = ""
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskSpec:
    container: ContainerSpec = field(default_factory=ContainerSpec)
    resources: ResourceRequirements = field(default_factory=ResourceRequirements)
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    placement: Placement = field(default_factory=Placement)
    networks: tuple[NetworkAttachmentConfig, ...] = ()
    #: Bumped to force a redeploy of an unchanged spec (``service update --force``).
    force_update: int = 0


class ServiceMode(enum.Enum):
    REPLICATED = "replicated"
    GLOBAL = "global"


class FailureAction(enum.Enum):
    PAUSE = "pause"
    CONTINUE = "continue"
    ROLLBACK = "rollback"


class UpdateOrder(enum.Enum):
    STOP_FIRST = "stop-first"
    START_FIRST = "start-first"


@dataclass(frozen=True)
class UpdateConfig:
    """How a rolling update (or a rollback) proceeds; defaults are Docker's."""

    parallelism: int = 1
    delay_ns: int = 0
    failure_action: FailureAction = FailureAction.PAUSE
    monitor_ns: int = 5 * SECOND
    max_failure_ratio: float = 0.0
    order: UpdateOrder = UpdateOrder.STOP_FIRST


class EndpointMode(enum.Enum):
    VIP = "vip"
    DNSRR = "dnsrr"


class PortProtocol(enum.Enum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


class PublishMode(enum.Enum):
    INGRESS = "ingress"
    HOST = "host"


@dataclass(frozen=True)
class PortConfig:
    name: str = ""
    protocol: PortProtocol = PortProtocol.TCP
    target_port: int = 0
    #: 0: chosen by the manager.
    published_port: int = 0
    publish_mode: PublishMode = PublishMode.INGRESS


@dataclass(frozen=True)
class EndpointSpec:
    mode: EndpointMode = EndpointMode.VIP
    ports: tuple[PortConfig, ...] = ()


@dataclass(frozen=True)
class ServiceSpec:
    annotations: Annotations = field(default_factory=Annotations)
    task: TaskSpec = field(default_factory=TaskSpec)
    mode: ServiceMode = ServiceMode.REPLICATED
    #: Only for replicated services.
    replicas: int = 1
    update_config: UpdateConfig = field(default_factory=UpdateConfig)
    rollback_config: UpdateConfig = field(default_factory=UpdateConfig)
    endpoint: EndpointSpec = field(default_factory=EndpointSpec)


class UpdateState(enum.Enum):
    NONE = "none"
    UPDATING = "updating"
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK_PAUSED = "rollback_paused"
    ROLLBACK_COMPLETED = "rollback_completed"


@dataclass(frozen=True)
class Endpoint:
    """What the allocator gave the service: published ports and one virtual IP per network."""

    ports: tuple[PortConfig, ...] = ()
    #: network id → "10.0.0.2/24"
    virtual_ips: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceStatus:
    update_state: UpdateState = UpdateState.NONE
    update_message: str = ""
    update_started_at: datetime | None = None
    update_completed_at: datetime | None = None
    endpoint: Endpoint = field(default_factory=Endpoint)


@dataclass(frozen=True)
class Service:
    meta: Meta = field(default_factory=Meta)
    spec: ServiceSpec = field(default_factory=ServiceSpec)
    #: The spec before the last update, for rollback.
    previous_spec: ServiceSpec | None = None
    status: ServiceStatus = field(default_factory=ServiceStatus)

    @property
    def id(self) -> str:
        return self.meta.id


# --- Task ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkAttachment:
    """A task's place on one network: the network and the addresses allocated to the task there."""

    network_id: str = ""
    addresses: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskStatus:
    state: TaskState = TaskState.NEW
    timestamp: datetime = _EPOCH
    message: str = ""
    err: str = ""
    container_id: str = ""
    exit_code: int | None = None
    #: Host ports actually bound for the task (host publish mode).
    ports: tuple[PortConfig, ...] = ()


@dataclass(frozen=True)
class Task:
    meta: Meta = field(default_factory=Meta)
    service_id: str = ""
    #: 1-based slot of a replicated service's task; 0 for global services (one per node).
    slot: int = 0
    node_id: str = ""
    spec: TaskSpec = field(default_factory=TaskSpec)
    #: The service's annotations when the task was created (for names like web.1.<id>).
    service_annotations: Annotations = field(default_factory=Annotations)
    desired_state: TaskState = TaskState.RUNNING
    status: TaskStatus = field(default_factory=TaskStatus)
    networks: tuple[NetworkAttachment, ...] = ()
    endpoint: Endpoint = field(default_factory=Endpoint)

    @property
    def id(self) -> str:
        return self.meta.id

    def with_state(self, state: TaskState, message: str = "", *, now: datetime | None = None) -> Task:
        """This task moved to ``state``; raises InvalidTransition if the lifecycle forbids it."""
        check_transition(self.status.state, state, self.meta.id)
        status = replace(self.status, state=state, message=message, timestamp=now or utcnow())
        return replace(self, status=status)


# --- Network, Volume, Secret ---------------------------------------------------------------------------
@dataclass(frozen=True)
class IPAMConfig:
    subnet: str = ""
    gateway: str = ""
    ip_range: str = ""
    aux_addresses: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkSpec:
    annotations: Annotations = field(default_factory=Annotations)
    driver: str = "overlay"
    ipam: tuple[IPAMConfig, ...] = ()
    internal: bool = False
    attachable: bool = False
    ipv6: bool = False
    options: dict[str, str] = field(default_factory=dict)
    #: The routing mesh's network (``ingress``), which the managers create and every node joins.
    ingress: bool = False


@dataclass(frozen=True)
class NetworkStatus:
    """What the allocator chose: the VXLAN id and the subnets actually in use."""

    vni: int = 0
    ipam: tuple[IPAMConfig, ...] = ()


@dataclass(frozen=True)
class Network:
    meta: Meta = field(default_factory=Meta)
    spec: NetworkSpec = field(default_factory=NetworkSpec)
    status: NetworkStatus = field(default_factory=NetworkStatus)

    @property
    def id(self) -> str:
        return self.meta.id


@dataclass(frozen=True)
class VolumeSpec:
    annotations: Annotations = field(default_factory=Annotations)
    driver: str = "local"
    driver_opts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VolumeStatus:
    #: Nodes on which the volume has been created (local volumes live on each node that uses them).
    node_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Volume:
    meta: Meta = field(default_factory=Meta)
    spec: VolumeSpec = field(default_factory=VolumeSpec)
    status: VolumeStatus = field(default_factory=VolumeStatus)

    @property
    def id(self) -> str:
        return self.meta.id


@dataclass(frozen=True)
class SecretSpec:
    annotations: Annotations = field(default_factory=Annotations)
    #: The secret's bytes. The store keeps them encrypted; the public API never returns them; no repr
    #: shows them (a logged frame or object never carries a secret).
    data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class SecretStatus:
    #: sha256 of the data, so users can tell versions apart without reading them.
    digest: str = ""


@dataclass(frozen=True)
class Secret:
    meta: Meta = field(default_factory=Meta)
    spec: SecretSpec = field(default_factory=SecretSpec)
    status: SecretStatus = field(default_factory=SecretStatus)

    @property
    def id(self) -> str:
        return self.meta.id


# --- Cluster --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OrchestrationConfig:
    #: How many ended tasks to keep per slot (Docker's default: 5).
    task_history_retention_limit: int = 5


@dataclass(frozen=True)
class DispatcherConfig:
    #: Docker's default is 5 s; 3 s lets a dead node's tasks move within 10 s (3 missed heartbeats).
    heartbeat_period_ns: int = 3 * SECOND


@dataclass(frozen=True)
class CAConfig:
    node_cert_expiry_ns: int = 90 * 24 * 3600 * SECOND


@dataclass(frozen=True)
class ClusterSpec:
    annotations: Annotations = field(default_factory=lambda: Annotations(name="default"))
    orchestration: OrchestrationConfig = field(default_factory=OrchestrationConfig)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    ca_config: CAConfig = field(default_factory=CAConfig)


@dataclass(frozen=True)
class JoinTokens:
    worker: str = ""
    manager: str = ""


@dataclass(frozen=True)
class ClusterStatus:
    join_tokens: JoinTokens = field(default_factory=JoinTokens)
    root_ca_cert: str = ""
    #: The manager currently leading (its node id).
    leader: str = ""


@dataclass(frozen=True)
class Cluster:
    meta: Meta = field(default_factory=Meta)
    spec: ClusterSpec = field(default_factory=ClusterSpec)
    status: ClusterStatus = field(default_factory=ClusterStatus)

    @property
    def id(self) -> str:
        return self.meta.id


#: Every top-level object type, by the kind name used in store keys, events and the API.
OBJECT_KINDS: dict[str, type] = {
    "nodes": Node,
    "services": Service,
    "tasks": Task,
    "networks": Network,
    "volumes": Volume,
    "secrets": Secret,
    "clusters": Cluster,
}
