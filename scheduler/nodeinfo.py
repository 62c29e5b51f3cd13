"""The scheduler's working view of nodes.

:class:`NodeInfo` is the mutable per-node state a scheduling run updates as it places tasks (reservations,
task counts per service, bound host ports, container names, images, labels). :class:`NodeIndex` holds the
immutable side: the snapshots in their fixed order and, per node attribute, which nodes carry which value
as bit masks (bit *i* is node *i*). Filters that depend only on the snapshot evaluate an expression once
per distinct attribute value instead of once per node, and the result is cached for the whole run, so a
batch of a service's tasks costs a few big-integer ANDs instead of ``nodes * constraints`` checks.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Sequence

from scheduler.expr import AFFINITY_CONTAINER, AFFINITY_IMAGE, Affinity, Constraint, attribute_values
from scheduler.spec import CompiledSpec, image_names
from scheduler.types import HostPort, NodeSnapshot, RunningTask

CONTAINER_SLOTS_LABEL = "containerslots"


def _container_slots(node: NodeSnapshot) -> int | None:
    raw = node.labels.get(CONTAINER_SLOTS_LABEL, node.engine_labels.get(CONTAINER_SLOTS_LABEL))
    if raw is None:
        return None
    try:
        slots = int(raw)
    except ValueError:
        return None  # as classic Swarm: an unreadable value sets no limit
    return slots if slots >= 0 else None


class NodeInfo:
    """One node plus what this scheduling run has placed on it."""

    __slots__ = (
        "cpu_reserved",
        "cpu_scale",
        "cpu_total",
        "id",
        "images",
        "index",
        "labels",
        "mem_reserved",
        "mem_scale",
        "mem_total",
        "names",
        "node",
        "ports",
        "service_counts",
        "slots",
        "task_count",
    )

    def __init__(self, index: int, node: NodeSnapshot) -> None:
        self.index = index
        self.node = node
        self.id = node.id
        self.cpu_total = node.resources.nano_cpus
        self.mem_total = node.resources.memory_bytes
        self.cpu_reserved = node.reserved.nano_cpus
        self.mem_reserved = node.reserved.memory_bytes
        # cpu% + mem% as classic Swarm scores nodes; a node reporting no capacity scores 0.
        self.cpu_scale = 100.0 / self.cpu_total if self.cpu_total > 0 else 0.0
        self.mem_scale = 100.0 / self.mem_total if self.mem_total > 0 else 0.0
        self.task_count = 0
        self.service_counts: dict[str, int] = {}
        self.ports: set[HostPort] = set()
        self.names: set[str] = set()
        self.images: dict[str, int] = {}
        for ref in node.images:
            for name in image_names(ref):
                self.images[name] = self.images.get(name, 0) + 1
        self.labels: dict[str, dict[str, int]] = {}
        self.slots = _container_slots(node)
        for task in node.tasks:
            self._add_running(task)

    def _add_running(self, task: RunningTask) -> None:
        self.task_count += 1
        self.service_counts[task.service_id] = self.service_counts.get(task.service_id, 0) + 1
        self.ports.update(task.host_ports)
        if task.container_name:
            self.names.add(task.container_name)
        for name in image_names(task.image):
            self.images[name] = self.images.get(name, 0) + 1
        self._add_labels(task.labels.items())

    def _add_labels(self, labels: Iterable[tuple[str, str]]) -> None:
        for key, value in labels:
            values = self.labels.setdefault(key, {})
            values[value] = values.get(value, 0) + 1

    def add_task(self, spec: CompiledSpec, container_name: str) -> None:
        """Account for one more task of ``spec`` placed here."""
        self.task_count += 1
        counts = self.service_counts
        counts[spec.service_id] = counts.get(spec.service_id, 0) + 1
        self.cpu_reserved += spec.nano_cpus
        self.mem_reserved += spec.memory_bytes
        if spec.host_ports:
            self.ports.update(spec.host_ports)
        if container_name:
            self.names.add(container_name)
        images = self.images
        for name in spec.image_names:
            images[name] = images.get(name, 0) + 1
        if spec.spec.labels:
            self._add_labels(spec.spec.labels)

    def weight(self, nano_cpus: int, memory_bytes: int) -> float:
        """Classic Swarm's score: CPU% + memory% reserved once a task of this size is added."""
        cpu = (self.cpu_reserved + nano_cpus) * self.cpu_scale
        return cpu + (self.mem_reserved + memory_bytes) * self.mem_scale

    def affinity_hit(self, affinity: Affinity) -> bool:
        """Whether some container (or image) on this node matches ``affinity``'s value, ignoring ``!=``."""
        matcher = affinity.matcher
        if affinity.kind == AFFINITY_CONTAINER:
            values: Collection[str] = self.names
        elif affinity.kind == AFFINITY_IMAGE:
            values = self.images
        else:
            values = self.labels.get(affinity.label, ())
        if matcher.pattern is None and not matcher.fold:
            return matcher.literal in values
        return any(matcher(v) for v in values)

    def affinity_ok(self, affinity: Affinity) -> bool:
        """Whether this node satisfies ``affinity`` (``==``: some match; ``!=``: none)."""
        return self.affinity_hit(affinity) != affinity.negate

    def __repr__(self) -> str:
        return f"NodeInfo({self.id!r}, tasks={self.task_count})"


def mask_indices(mask: int) -> list[int]:
    """The positions of the set bits of ``mask``, ascending (i.e. node indices in snapshot order)."""
    if not mask:
        return []
    bits = bin(mask)[:1:-1]  # least significant bit first, without the "0b"
    out: list[int] = []
    at = bits.find("1")
    while at >= 0:
        out.append(at)
        at = bits.find("1", at + 1)
    return out


class NodeIndex:
    """The snapshot's nodes in a fixed order, with cached bit masks over node attributes."""

    def __init__(self, nodes: Sequence[NodeSnapshot]) -> None:
        self.nodes: tuple[NodeSnapshot, ...] = tuple(nodes)
        self.size = len(self.nodes)
        self.all_mask = (1 << self.size) - 1
        self._by_value: dict[str, dict[str, int]] = {}
        self._masks: dict[Hashable, int] = {}
        self._columns: dict[str, list[str]] = {}

    def value_masks(self, attribute: str) -> dict[str, int]:
        """For ``attribute``: each value → the mask of nodes that have it."""
        table = self._by_value.get(attribute)
        if table is None:
            table = {}
            for i, node in enumerate(self.nodes):
                bit = 1 << i
                for value in attribute_values(node, attribute):
                    table[value] = table.get(value, 0) | bit
            self._by_value[attribute] = table
        return table

    def column(self, attribute: str) -> list[str]:
        """The (first) value of ``attribute`` for every node, in snapshot order."""
        col = self._columns.get(attribute)
        if col is None:
            col = [attribute_values(node, attribute)[0] for node in self.nodes]
            self._columns[attribute] = col
        return col

    def constraint_mask(self, constraint: Constraint) -> int:
        """The nodes that satisfy ``constraint`` (evaluated once per distinct value, then cached)."""
        key = ("constraint", constraint.expression)
        mask = self._masks.get(key)
        if mask is None:
            hit = 0
            matcher = constraint.matcher
            for value, nodes in self.value_masks(constraint.attribute).items():
                if matcher(value):
                    hit |= nodes
            mask = (self.all_mask & ~hit) if constraint.negate else hit
            self._masks[key] = mask
        return mask

    def mask_where(self, key: Hashable, predicate: Callable[[NodeSnapshot], bool]) -> int:
        """The nodes for which ``predicate`` holds, cached under ``key`` for the whole run."""
        mask = self._masks.get(key)
        if mask is None:
            mask = 0
            for i, node in enumerate(self.nodes):
                if predicate(node):
                    mask |= 1 << i
            self._masks[key] = mask
        return mask
