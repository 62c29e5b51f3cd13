"""Properties of whole scheduling runs over generated clusters and services (hypothesis).

The checks replay the assignments in the order they were made (``ScheduleResult.assignments`` keeps it)
against an independent model of each node, so a placement that was only valid before an earlier one in
the same run is caught too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import (
    Availability,
    HostPort,
    NodeSnapshot,
    NodeState,
    Resources,
    RunningTask,
    Scheduler,
    SchedulerConfig,
    ScheduleResult,
    Strategy,
    TaskRequest,
    TaskSpec,
    parse_affinity,
    parse_constraint,
    schedule,
)
from scheduler.nodeinfo import NodeIndex

GIB = 1 << 30
CORE = 1_000_000_000
PORTS = (80, 443, 8080)

CONSTRAINTS = (
    "node.labels.zone==eu",
    "node.labels.zone!=us",
    "node.hostname!=n3",
    "node.role==worker",
    "constraint:disk==ssd",
    "constraint:zone!=e*",
    "constraint:node==/n[0-4]$/",
    "constraint:zone==~ap",
    "constraint:disk!=~hdd",
)
ANTI_AFFINITIES = ("affinity:container!=svc0.*", "affinity:container!=svc1.1", "affinity:image!=redis")


@st.composite
def clusters(draw: st.DrawFn, *, min_nodes: int = 1, max_nodes: int = 9) -> list[NodeSnapshot]:
    """Nodes of every state and availability, with labels, capacity, reservations and running tasks."""
    nodes = []
    for i in range(draw(st.integers(min_nodes, max_nodes))):
        labels: dict[str, str] = {}
        for key, values in (("zone", ("eu", "us", "ap")), ("disk", ("ssd", "hdd"))):
            value = draw(st.sampled_from((None, *values)))
            if value is not None:
                labels[key] = value
        if draw(st.integers(0, 4)) == 0:
            labels["containerslots"] = str(draw(st.integers(0, 4)))
        cpu, mem = draw(st.integers(0, 8)) * CORE, draw(st.integers(0, 16)) * GIB
        running = tuple(
            RunningTask(
                f"r{i}.{j}",
                service_id=draw(st.sampled_from(("svc0", "svc1", "other"))),
                image=draw(st.sampled_from(("redis:7", "nginx", ""))),
                container_name=f"running{i}.{j}",
                host_ports=tuple(HostPort(p) for p in draw(st.lists(st.sampled_from(PORTS), max_size=1))),
            )
            for j in range(draw(st.integers(0, 2)))
        )
        nodes.append(
            NodeSnapshot(
                f"n{i}",
                hostname=f"n{i}",
                state=draw(st.sampled_from([NodeState.READY] * 4 + [NodeState.DOWN, NodeState.UNKNOWN])),
                availability=draw(
                    st.sampled_from([Availability.ACTIVE] * 4 + [Availability.PAUSE, Availability.DRAIN])
                ),
                labels=labels,
                resources=Resources(cpu, mem),
                reserved=Resources(draw(st.integers(0, cpu)), draw(st.integers(0, mem))),
                tasks=running,
            )
        )
    return nodes


@st.composite
def workloads(draw: st.DrawFn) -> list[TaskRequest]:
    """Up to three services with constraints (hard and soft), anti-affinities, reservations, host ports,
    max replicas and preferences."""
    tasks: list[TaskRequest] = []
    for s in range(draw(st.integers(1, 3))):
        spec = TaskSpec(
            image=draw(st.sampled_from(("redis:7", "app:1"))),
            constraints=tuple(draw(st.lists(st.sampled_from(CONSTRAINTS), max_size=2, unique=True))),
            affinities=tuple(draw(st.lists(st.sampled_from(ANTI_AFFINITIES), max_size=1))),
            reservations=Resources(draw(st.integers(0, 3)) * CORE // 2, draw(st.integers(0, 4)) * GIB // 2),
            host_ports=tuple(HostPort(p) for p in draw(st.lists(st.sampled_from(PORTS), max_size=1))),
            max_replicas=draw(st.integers(0, 3)),
            preferences=draw(st.sampled_from(((), ("spread=node.labels.zone",)))),
        )
        sid = f"svc{s}"
        count = draw(st.integers(1, 25))
        tasks += [TaskRequest(f"{sid}.{i}", sid, spec, container_name=f"{sid}.{i}") for i in range(count)]
    return tasks


@dataclass
class Model:
    """An independent account of one node, for checking placements."""

    snapshot: NodeSnapshot
    cpu: int = 0
    mem: int = 0
    ports: set[HostPort] = field(default_factory=set)
    services: Counter[str] = field(default_factory=Counter)
    names: set[str] = field(default_factory=set)
    images: set[str] = field(default_factory=set)
    count: int = 0

    def __post_init__(self) -> None:
        self.cpu, self.mem = self.snapshot.reserved.nano_cpus, self.snapshot.reserved.memory_bytes
        for t in self.snapshot.tasks:
            self.ports.update(t.host_ports)
            self.services[t.service_id] += 1
            self.names.add(t.container_name)
            self.images.update({t.image, t.image.split(":")[0]} - {""})
        self.count = len(self.snapshot.tasks)

    def violations(self, task: TaskRequest) -> list[str]:
        """What would be wrong with placing ``task`` here now (empty: it may go here)."""
        node, spec, out = self.snapshot, task.spec, []
        if node.state is not NodeState.READY or node.availability is not Availability.ACTIVE:
            out.append("node cannot take tasks")
        for text in spec.constraints:
            c = parse_constraint(text)
            if not c.soft and not c.check(node):
                out.append(f"constraint {text}")
        if spec.reservations.nano_cpus or spec.reservations.memory_bytes:
            if self.cpu + spec.reservations.nano_cpus > node.resources.nano_cpus:
                out.append("cpu")
            if self.mem + spec.reservations.memory_bytes > node.resources.memory_bytes:
                out.append("memory")
        if self.ports & set(spec.host_ports):
            out.append("port")
        if spec.max_replicas and self.services[task.service_id] >= spec.max_replicas:
            out.append("max replicas")
        slots = node.labels.get("containerslots")
        if slots is not None and self.count >= int(slots):
            out.append("slots")
        for text in spec.affinities:
            a = parse_affinity(text)
            values = self.names if a.kind == "container" else self.images
            if any(a.matcher(v) for v in values):
                out.append(f"anti-affinity {text}")
        return out

    def add(self, task: TaskRequest) -> None:
        self.cpu += task.spec.reservations.nano_cpus
        self.mem += task.spec.reservations.memory_bytes
        self.ports.update(task.spec.host_ports)
        self.services[task.service_id] += 1
        self.names.add(task.container_name)
        self.images.update({task.spec.image, task.spec.image.split(":")[0]})
        self.count += 1


def replay(
    nodes: Sequence[NodeSnapshot], tasks: list[TaskRequest], result: ScheduleResult
) -> dict[str, Model]:
    """Check every assignment in the order it was made; returns the final models."""
    models = {n.id: Model(n) for n in nodes}
    by_id = {t.id: t for t in tasks}
    for task_id, node_id in result.assignments.items():
        task = by_id[task_id]
        assert models[node_id].violations(task) == [], (task_id, node_id)
        models[node_id].add(task)
    assert set(result.assignments) | set(result.unassigned) == set(by_id)
    assert not set(result.assignments) & set(result.unassigned)
    return models


@settings(max_examples=150, deadline=None)
@given(clusters(), workloads(), st.sampled_from(list(Strategy)), st.integers(0, 3))
def test_no_placement_breaks_a_hard_rule_and_no_task_is_left_where_one_fits(
    nodes: list[NodeSnapshot], tasks: list[TaskRequest], strategy: Strategy, seed: int
) -> None:
    result = schedule(nodes, tasks, SchedulerConfig(strategy=strategy, seed=seed))
    models = replay(nodes, tasks, result)
    by_id = {t.id: t for t in tasks}
    for task_id, why in result.unassigned.items():
        task = by_id[task_id]
        assert all(m.violations(task) for m in models.values()), task_id
        assert why.message.startswith("no suitable node")
        assert sum(r.count for r in why.rejections) <= len(nodes)


@settings(max_examples=60, deadline=None)
@given(clusters(), workloads(), st.sampled_from(list(Strategy)))
def test_same_input_same_decisions(
    nodes: list[NodeSnapshot], tasks: list[TaskRequest], strategy: Strategy
) -> None:
    config = SchedulerConfig(strategy=strategy, seed=11)
    first, second = schedule(nodes, tasks, config), schedule(nodes, tasks, config)
    assert list(first.assignments.items()) == list(second.assignments.items())
    assert {k: v.message for k, v in first.unassigned.items()} == {
        k: v.message for k, v in second.unassigned.items()
    }


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=12),
    st.lists(st.integers(1, 40), min_size=1, max_size=4),
    st.integers(0, 1),
)
def test_spread_over_identical_nodes_keeps_each_service_within_one(
    other_tasks: list[int], replicas: list[int], reserve: int
) -> None:
    # Same capacity everywhere, but other services' tasks load the nodes unevenly: per-service
    # spreading still evens out each service.
    node_count = len(other_tasks)
    nodes = [
        NodeSnapshot(
            f"n{i}",
            resources=Resources(64 * CORE, 64 * GIB),
            tasks=tuple(RunningTask(f"o{i}.{j}", service_id="other") for j in range(others)),
        )
        for i, others in enumerate(other_tasks)
    ]
    tasks = []
    for s, count in enumerate(replicas):
        spec = TaskSpec(reservations=Resources(reserve * CORE // 10, reserve * GIB // 10))
        tasks += [TaskRequest(f"s{s}.{i}", f"s{s}", spec) for i in range(count)]
    result = schedule(nodes, tasks)
    assert not result.unassigned
    for s in range(len(replicas)):
        counts = Counter(n for t, n in result.assignments.items() if t.startswith(f"s{s}."))
        per_node = [counts.get(f"n{i}", 0) for i in range(node_count)]
        assert max(per_node) - min(per_node) <= 1


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 8), st.integers(1, 5), st.lists(st.integers(1, 15), min_size=1, max_size=3))
def test_binpack_fills_a_node_before_the_next(node_count: int, capacity: int, replicas: list[int]) -> None:
    nodes = [NodeSnapshot(f"n{i}", resources=Resources(8 * CORE, capacity * GIB)) for i in range(node_count)]
    spec = TaskSpec(reservations=Resources(0, GIB))
    tasks = [
        TaskRequest(f"s{s}.{i}", f"s{s}", spec) for s, count in enumerate(replicas) for i in range(count)
    ]
    result = schedule(nodes, tasks, SchedulerConfig(strategy=Strategy.BINPACK))
    placed = min(len(tasks), node_count * capacity)
    assert len(result.assignments) == placed
    counts = Counter(result.assignments.values())
    full, rest = divmod(placed, capacity)
    expected = [capacity] * full + ([rest] if rest else [])
    expected += [0] * (node_count - len(expected))
    assert [counts.get(f"n{i}", 0) for i in range(node_count)] == expected
    # And in order: each task went to the first node with room left.
    order = [int(n[1:]) for n in result.assignments.values()]
    assert order == sorted(order)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(("a", "b", "c", "d", None)), st.sampled_from(("r1", "r2"))), min_size=1
    ),
    st.integers(1, 60),
    st.sampled_from(list(Strategy)),
)
def test_preferences_even_out_across_label_values(
    placement: list[tuple[str | None, str]], count: int, strategy: Strategy
) -> None:
    nodes = []
    for i, (zone, rack) in enumerate(placement):
        labels = {"rack": rack} if zone is None else {"zone": zone, "rack": rack}
        nodes.append(NodeSnapshot(f"n{i}", labels=labels, resources=Resources(64 * CORE, 64 * GIB)))
    spec = TaskSpec(preferences=("spread=node.labels.zone", "spread=node.labels.rack"))
    tasks = [TaskRequest(f"t{i}", "svc", spec) for i in range(count)]
    result = schedule(nodes, tasks, SchedulerConfig(strategy=strategy))
    assert len(result.assignments) == count
    zone_of = {n.id: n.labels.get("zone", "") for n in nodes}
    rack_of = {n.id: n.labels["rack"] for n in nodes}
    by_zone = Counter(zone_of[n] for n in result.assignments.values())
    zones = set(zone_of.values())
    totals = [by_zone.get(z, 0) for z in zones]
    assert max(totals) - min(totals) <= 1
    for zone in zones:
        racks = {rack_of[n.id] for n in nodes if zone_of[n.id] == zone}
        in_zone = Counter(rack_of[n] for n in result.assignments.values() if zone_of[n] == zone)
        per_rack = [in_zone.get(r, 0) for r in racks]
        assert max(per_rack) - min(per_rack) <= 1


@settings(max_examples=100, deadline=None)
@given(clusters(min_nodes=0), st.sampled_from((*CONSTRAINTS, "constraint:node==n1", "node.labels.disk!=ssd")))
def test_constraint_masks_agree_with_checking_node_by_node(nodes: list[NodeSnapshot], text: str) -> None:
    constraint = parse_constraint(text)
    mask = NodeIndex(nodes).constraint_mask(constraint)
    assert [bool(mask >> i & 1) for i in range(len(nodes))] == [constraint.check(n) for n in nodes]


@settings(max_examples=40, deadline=None)
@given(clusters(), workloads())
def test_scheduling_in_two_calls_respects_the_first(
    nodes: list[NodeSnapshot], tasks: list[TaskRequest]
) -> None:
    sched = Scheduler(nodes)
    half = len(tasks) // 2
    first, second = sched.schedule(tasks[:half]), sched.schedule(tasks[half:])
    combined = ScheduleResult(
        assignments={**first.assignments, **second.assignments},
        unassigned={**first.unassigned, **second.unassigned},
    )
    replay(nodes, tasks, combined)
