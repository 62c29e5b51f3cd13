"""The scheduler's own input and output types.

The scheduler does not read the cluster object model directly: the manager hands it a snapshot of nodes
(:class:`NodeSnapshot`) and a batch of task requests (:class:`TaskRequest`), and gets back a
:class:`ScheduleResult`. ``scheduler.from_api`` converts the object model into these types. Keeping the
inputs small and flat keeps the scheduler pure, fast and easy to test exhaustively.

All tasks of one service that share one :class:`TaskSpec` are identical for placement purposes and are
placed as one batch, so a service's tasks should share the same ``TaskSpec`` value (ideally the same object).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from scheduler.reasons import FILTER_OF_REASON, describe_reason

_EMPTY: Mapping[str, str] = MappingProxyType({})


class NodeRole(enum.StrEnum):
    """A node's role in the cluster (``node.role`` in constraints)."""

    WORKER = "worker"
    MANAGER = "manager"


class Availability(enum.StrEnum):
    """Whether a node takes new tasks: paused and drained nodes take nothing new."""

    ACTIVE = "active"
    PAUSE = "pause"
    DRAIN = "drain"


class NodeState(enum.StrEnum):
    """A node's observed state; only ``ready`` nodes take tasks."""

    UNKNOWN = "unknown"
    DOWN = "down"
    READY = "ready"
    DISCONNECTED = "disconnected"


_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "armel": "arm"}


def normalize_arch(arch: str) -> str:
    """The canonical (OCI) spelling of a CPU architecture: ``x86_64`` → ``amd64``, ``aarch64`` → ``arm64``."""
    arch = arch.strip().lower()
    return _ARCH_ALIASES.get(arch, arch)


@dataclass(frozen=True, slots=True)
class Platform:
    """An OS and CPU architecture; an empty field matches anything."""

    os: str = ""
    arch: str = ""

    def matches(self, other: Platform) -> bool:
        """Whether a node of platform ``other`` can run an image built for this platform."""
        if self.os and other.os and self.os.lower() != other.os.lower():
            return False
        return not (self.arch and other.arch and normalize_arch(self.arch) != normalize_arch(other.arch))


@dataclass(frozen=True, slots=True)
class Resources:
    """CPU in billionths of a core (``nano_cpus``) and memory in bytes."""

    nano_cpus: int = 0
    memory_bytes: int = 0


@dataclass(frozen=True, slots=True)
class HostPort:
    """A port bound on the host itself (published in host mode, or host networking)."""

    port: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True, slots=True)
class RunningTask:
    """A task already on a node, with what other tasks' filters may look at."""

    id: str
    service_id: str = ""
    image: str = ""
    container_name: str = ""
    host_ports: tuple[HostPort, ...] = ()
    volumes: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """One node as the scheduler sees it.

    ``reserved`` is what the tasks already on the node have reserved; what is left for new tasks is
    ``resources - reserved``. ``images`` lists image references already present on the node's engine
    (for ``affinity:image==…``), on top of the images of its tasks.
    """

    id: str
    hostname: str = ""
    role: NodeRole = NodeRole.WORKER
    availability: Availability = Availability.ACTIVE
    state: NodeState = NodeState.READY
    platform: Platform = Platform("linux", "amd64")
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    engine_labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    kernel_version: str = ""
    operating_system: str = ""
    storage_driver: str = ""
    resources: Resources = Resources()
    reserved: Resources = Resources()
    tasks: tuple[RunningTask, ...] = ()
    images: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Everything about a task that placement depends on; shared by the identical tasks of a service.

    - ``constraints``: SwarmKit syntax (``node.labels.zone==eu``) or classic syntax
      (``constraint:zone==eu*``, soft with ``==~``/``!=~``), ANDed;
    - ``affinities``: classic syntax, with or without the ``affinity:`` prefix
      (``container==web*``, ``image!=redis``, ``com.example.tier==~front``);
    - ``preferences``: ``spread=node.labels.<key>`` in priority order;
    - ``volumes_from``/``links``/``network_mode`` (``container:<name>``): containers this task needs on
      its own node;
    - ``max_replicas``: at most this many of the service's tasks per node (0: no limit);
    - ``platforms``: the platforms the image supports (empty: any);
    - ``labels``: the container's labels, as (key, value) pairs, for other tasks' label affinities.
    """

    image: str = ""
    constraints: tuple[str, ...] = ()
    affinities: tuple[str, ...] = ()
    preferences: tuple[str, ...] = ()
    reservations: Resources = Resources()
    host_ports: tuple[HostPort, ...] = ()
    volumes: tuple[str, ...] = ()
    volumes_from: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    network_mode: str = ""
    max_replicas: int = 0
    platforms: tuple[Platform, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """One task to place. ``node_id`` set means the task is pre-assigned (global services): the scheduler
    only confirms that it fits there."""

    id: str
    service_id: str
    spec: TaskSpec = TaskSpec()
    container_name: str = ""
    node_id: str = ""


# --- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Rejection:
    """How many nodes one reason ruled out; ``reason`` is one of the ``REASON_*`` constants of
    ``scheduler.reasons`` and ``detail`` names what exactly (the expression, the port, …)."""

    reason: str
    count: int
    detail: str = ""

    def describe(self) -> str:
        """The reason in words, SwarmKit style: ``insufficient memory on 2 nodes``."""
        return describe_reason(self.reason, self.detail, self.count)


@dataclass(frozen=True, slots=True)
class NoSuitableNode:
    """Why the tasks of one batch found no node; ``rejections`` are sorted, most nodes first."""

    service_id: str
    rejections: tuple[Rejection, ...] = ()

    @property
    def message(self) -> str:
        """``no suitable node (constraint node.labels.zone==eu not met on 4 nodes; 1 node drained)``."""
        if not self.rejections:
            return "no suitable node"
        return "no suitable node (" + "; ".join(r.describe() for r in self.rejections) + ")"

    def counts(self) -> dict[str, int]:
        """Nodes ruled out per reason constant (details summed), for metrics."""
        out: dict[str, int] = {}
        for r in self.rejections:
            out[r.reason] = out.get(r.reason, 0) + r.count
        return out

    def counts_by_filter(self) -> dict[str, int]:
        """Nodes ruled out per filter name (``resources`` sums CPU and memory), for metrics."""
        out: dict[str, int] = {}
        for r in self.rejections:
            name = FILTER_OF_REASON.get(r.reason, r.reason)
            out[name] = out.get(name, 0) + r.count
        return out

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class ScheduleResult:
    """The decisions of one ``schedule`` call: ``assignments`` maps task id → node id; ``unassigned``
    maps the id of each task that fits nowhere to the reason (shared by the tasks of its batch)."""

    assignments: Mapping[str, str]
    unassigned: Mapping[str, NoSuitableNode]
