"""The filters: each decides whether one node can take a task of the current batch.

A filter follows SwarmKit's shape: :meth:`Filter.set_task` says whether it applies to the batch at all,
:meth:`Filter.check` judges one node, :meth:`Filter.explain` words a failure count. On top of that,
:meth:`Filter.rejection` names the exact reason for one failing node (which expression, which port), so
explanations can say ``constraint node.labels.zone==eu not met on 4 nodes``.

Filters come in three kinds, by what their answer depends on:

- ``STATIC``: only the node snapshot (readiness, availability, platform, constraints). They also give a
  bit mask of passing nodes (:meth:`Filter.mask`), computed from :class:`NodeIndex` and cached for the run.
- ``BATCH``: what already runs on the node, in a way placing *this* batch cannot make worse (positive
  affinities, dependencies). Checked once per node per batch.
- ``DYNAMIC``: capacity that placing this batch uses up (resources, host ports, max replicas per node,
  container slots, anti-affinities). Checked each time a node is about to take a task; once a node
  fails one, it stays failed for the rest of the batch, because placing only ever adds tasks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from scheduler.expr import Affinity, Constraint
from scheduler.nodeinfo import NodeIndex, NodeInfo
from scheduler.reasons import (
    REASON_AFFINITY,
    REASON_CONSTRAINT,
    REASON_CONTAINER_SLOTS,
    REASON_DEPENDENCY,
    REASON_HOST_PORT,
    REASON_INSUFFICIENT_CPU,
    REASON_INSUFFICIENT_MEMORY,
    REASON_MAX_REPLICAS,
    REASON_NODE_DOWN,
    REASON_NODE_DRAINED,
    REASON_NODE_NOT_READY,
    REASON_NODE_PAUSED,
    REASON_PLATFORM,
)
from scheduler.spec import CompiledSpec
from scheduler.types import Availability, HostPort, NodeSnapshot, NodeState, Platform

STATIC = "static"
BATCH = "batch"
DYNAMIC = "dynamic"


def _nodes(count: int) -> str:
    return f"{count} node{'' if count == 1 else 's'}"


class Filter(ABC):
    """One placement rule. Instances are reused batch after batch: ``set_task`` re-arms them."""

    #: The switch in :class:`~scheduler.config.SchedulerConfig` that turns the filter on or off.
    name: ClassVar[str]
    kind: ClassVar[str]

    @abstractmethod
    def set_task(self, spec: CompiledSpec) -> bool:
        """Prepare for a batch of ``spec``; False when the filter has nothing to check for it."""

    @abstractmethod
    def check(self, node: NodeInfo) -> bool:
        """Whether ``node`` can take one more task of the batch."""

    @abstractmethod
    def rejection(self, node: NodeInfo) -> tuple[str, str]:
        """For a node that failed :meth:`check`: (reason constant, detail)."""

    @abstractmethod
    def explain(self, count: int) -> str:
        """A failure count in words, for this filter as a whole."""

    def mask(self, index: NodeIndex) -> int:
        """``STATIC`` filters: the nodes of ``index`` that pass, as a bit mask."""
        raise NotImplementedError(f"{type(self).__name__} is not a static filter")

    def prepare(self, index: NodeIndex, nodes: list[NodeInfo]) -> None:  # noqa: B027 - optional hook
        """Called once per scheduling run, before any batch (for per-run precomputation)."""


class ReadyFilter(Filter):
    """Only nodes whose agent reports ``ready`` take tasks."""

    name = "ready"
    kind = STATIC

    def set_task(self, spec: CompiledSpec) -> bool:
        return True

    def check(self, node: NodeInfo) -> bool:
        return node.node.state is NodeState.READY

    def rejection(self, node: NodeInfo) -> tuple[str, str]:
        return (REASON_NODE_DOWN if node.node.state is NodeState.DOWN else REASON_NODE_NOT_READY), ""

    def explain(self, count: int) -> str:
        return f"{_nodes(count)} not ready"

    def mask(self, index: NodeIndex) -> int:
        return index.mask_where("ready", _is_ready)


def _is_ready(node: NodeSnapshot) -> bool:
    return node.state is NodeState.READY


def _is_active(node: NodeSnapshot) -> bool:
    return node.availability is Availability.ACTIVE


class AvailabilityFilter(Filter):
    """Paused and drained nodes take nothing new."""

    name = "availability"
    kind = STATIC

    def set_task(self, spec: CompiledSpec) -> bool:
        return True

    def check(self, node: NodeInfo) -> bool:
        return node.node.availability is Availability.ACTIVE

    def rejection(self, node: NodeInfo) -> tuple[str, str]:
        return (
            REASON_NODE_DRAINED if node.node.availability is Availability.DRAIN else REASON_NODE_PAUSED
        ), ""

    def explain(self, count: int) -> str:
        return f"{_nodes(count)} paused or drained"

    def mask(self, index: NodeIndex) -> int:
        return index.mask_where("active", _is_active)


class PlatformFilter(Filter):
    """The node's OS and architecture must be one the image supports."""

    name = "platform"
    kind = STATIC

    def __init__(self) -> None:
        self.platforms: tuple[Platform, ...] = ()

    def set_task(self, spec: CompiledSpec) -> bool:
        self.platforms = spec.spec.platforms
        return bool(self.platforms)

    def _ok(self, node: NodeSnapshot) -> bool:
        return any(p.matches(node.platform) for p in self.platforms)

    def check(self, node: NodeInfo) -> bool:
        return self._ok(node.node)

    def rejection(self, node: NodeInfo) -> tuple[str, str]:
        return REASON_PLATFORM, ""

    def explain(self, count: int) -> str:
        return f"unsupported platform on {_nodes(count)}"

    def mask(self, index: NodeIndex) -> int:
        return index.mask_where(("platform", self.platforms), self._ok)


class ConstraintFilter(Filter):
    """Hard constraints, in either syntax, ANDed."""

    name = "constraints"
    kind = STATIC

    def __init__(self) -> None:
        self.constraints: tuple[Constraint, ...] = ()

    def set_task(self, spec: CompiledSpec) -> bool:
        self.constraints = spec.constraints
        return bool(self.constraints)

    def check(self, node: NodeInfo) -> bool:
        return all(c.check(node.node) for c in self.constraints)

    def rejection(self, node: NodeInfo) -> tuple[str, str]:
        for c in self.constraints:
            if not c.check(node.node):
                return REASON_CONSTRAINT, c.expression
        return REASON_CONSTRAINT, ""

    def explain(self, count: int) -> str:
        return f"scheduling constraints not satisfied on {_nodes(count)}"

    def mask(self, index: NodeIndex) -> int:
        mask = index.all_mask
        for c in self.constraints:
            mask &= index.constraint_mask(c)
        return mask


class _AffinityBase(Filter):
    def __init__(self) -> None:
        self.affinities: tuple[Affinity, ...] = ()

    def check(self, node: NodeInfo) -> bool:
        return all(node.affinity_ok(a) for a in self.affinities)

    def rejection(self, node: NodeInfo) -> tuple[str, str]:
        for a in self.affinities:
            if not node.affinity_ok(a):
                return REASON_AFFINITY, a.expression
        return REASON_AFFINITY, ""

    def explain(self, count: int) -> str:
        return f"affinities not satisfied on {_nodes(count)}"


class AffinityFilter(_AffinityBase):
    """Hard ``==`` affinities: the node must run a matching container, or hold a matching image."""

    name = "affinity"
    kind = BATCH

    def set_task(self, spec: CompiledSpec) -> bool:
        self.affinities = spec.affinities
        return bool(self.affinities)


class AntiAffinityFilter(_AffinityBase):
    """Hard ``!=`` affinities: the node must run no matching container. Placing the batch can make a node
    fail (``container!=web*`` for the web tasks themselves), so this one is checked per placement."""

    name = "affinity"
    kind = DYNAMIC

    def set_task(self, spec: CompiledSpec) -> bool:
        self.affinities = spec.anti_affinities
        return bool(self.affinities)


class DependencyFilter(Filter):
    """Containers named in ``volumes_from``, ``links`` or ``network_mode: container:<name>`` must run on
    the node; tasks that depend on each other thus land together, or fail saying what is missing."""

    name = "dependencies"
    kind = BATCH

    def __init__(self) -> None:
        self.names: tuple[str, ...] = ()

    def set_task(self, spec: CompiledSpec) -> bool:
        self.names = spec.dependencies
        return bool(self.names)

    def check(self, node: NodeInfo) -> bool:
        names = node.names
        return all(n in names for n in self.names)

    def rejection(self, node: NodeInfo) -> tuple[str, str]:
        return REASON_DEPENDENCY, ", ".join(n for n in self.names if n not in node.names)

    def explain(self, count: int) -> str:
        return f"dependencies missing on {_nodes(count)}"


class ResourceFilter(Filter):
    """The task's CPU and memory reservations must fit in what the node has left."""

    name = "resources"
    kind = DYNAMIC

    def __init__(self) -> None:
        self.cpu = 0
        self.mem = 0

    def set_task(self, spec: CompiledSpec) -> bool:
        self.cpu, self.mem = spec.nano_cpus, spec.memory_bytes
        return self.cpu > 0 or self.mem > 0

    def check(self, node: NodeInfo) -> bool:
        return (
            node.cpu_reserved + self.cpu <= node.cpu_total and node.mem_reserved + self.mem <= node.mem_total
        )

    def rejection(self, node: NodeInfo) -> tuple[str, str]:
        if node.cpu_reserved + self.cpu > node.cpu_total:
            return REASON_INSUFFICIENT_CPU, ""
        return REASON_INSUFFICIENT_MEMORY, ""

    def explain(self, count: int) -> str:
        return f"insufficient resources on {_nodes(count)}"


class HostPortFilter(Filter):
    """A host port is a unique resource: a node where it is bound cannot take the task."""

    name = "ports"
    kind = DYNAMIC

    def __init__(self) -> None:
        self.ports: frozenset[HostPort] = frozenset()

    def set_task(self, spec: CompiledSpec) -> bool:
        self.ports = spec.host_ports
        return bool(self.ports)

    def check(self, node: NodeInfo) -> bool:
        return node.ports.isdisjoint(self.ports)

    def rejection(self, node: NodeInfo) -> tuple[str, str]:
        taken = sorted(str(p) for p in node.ports.intersection(self.ports))
        return REASON_HOST_PORT, ", ".join(taken)

    def explain(self, count: int) -> str:
        return f"host-mode port already in use on {_nodes(count)}"


class MaxReplicasFilter(Filter):
    """At most ``max_replicas`` tasks of the service per node."""

    name = "max_replicas"
    kind = DYNAMIC

    def __init__(self) -> None:
        self.service_id = ""
        self.limit = 0

    def set_task(self, spec: CompiledSpec) -> bool:
        self.service_id, self.limit = spec.service_id, spec.spec.max_replicas
        return self.limit > 0

    def check(self, node: NodeInfo) -> bool:
        return node.service_counts.get(self.service_id, 0) < self.limit

    def rejection(self, node: NodeInfo) -> tuple[str, str]:
        return REASON_MAX_REPLICAS, str(self.limit)

    def explain(self, count: int) -> str:
        return f"max replicas per node limit exceeded on {_nodes(count)}"


class ContainerSlotsFilter(Filter):
    """A node labelled ``containerslots=N`` runs at most N tasks."""

    name = "containerslots"
    kind = DYNAMIC

    def __init__(self) -> None:
        self.any_slots = False

    def prepare(self, index: NodeIndex, nodes: list[NodeInfo]) -> None:
        # Most clusters label no node; then the filter stays out of the per-placement path.
        self.any_slots = any(n.slots is not None for n in nodes)

    def set_task(self, spec: CompiledSpec) -> bool:
        return self.any_slots

    def check(self, node: NodeInfo) -> bool:
        return node.slots is None or node.task_count < node.slots

    def rejection(self, node: NodeInfo) -> tuple[str, str]:
        return REASON_CONTAINER_SLOTS, ""

    def explain(self, count: int) -> str:
        return f"no container slots left on {_nodes(count)}"


#: Every filter, in the order the pipeline runs them (static first: cheapest and most selective).
FILTER_TYPES: tuple[type[Filter], ...] = (
    ReadyFilter,
    AvailabilityFilter,
    PlatformFilter,
    ConstraintFilter,
    AffinityFilter,
    DependencyFilter,
    ResourceFilter,
    HostPortFilter,
    MaxReplicasFilter,
    ContainerSlotsFilter,
    AntiAffinityFilter,
)

#: The names filters can be switched off by.
FILTER_NAMES: frozenset[str] = frozenset(f.name for f in FILTER_TYPES)
