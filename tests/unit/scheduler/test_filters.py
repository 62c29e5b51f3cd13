"""Every filter, table-driven over one fixed cluster: which nodes pass, and how failures are explained."""

from __future__ import annotations

import pytest

from scheduler import (
    Availability,
    HostPort,
    NodeSnapshot,
    NodeState,
    Platform,
    Resources,
    RunningTask,
    Scheduler,
    SchedulerConfig,
    TaskRequest,
    TaskSpec,
)
from scheduler.filters import FILTER_NAMES, FILTER_TYPES, Filter
from scheduler.nodeinfo import mask_indices
from scheduler.reasons import ALL_REASONS, FILTER_OF_REASON
from scheduler.spec import compile_spec

GIB = 1 << 30
CORE = 1_000_000_000

# The fixed node order every table below refers to.
NODES = (
    NodeSnapshot(
        "n1",
        hostname="alpha",
        labels={"zone": "eu"},
        resources=Resources(4 * CORE, 8 * GIB),
        tasks=(
            RunningTask(
                "t-web-1",
                service_id="web",
                image="nginx:1.25",
                container_name="web.1",
                host_ports=(HostPort(80),),
                labels={"tier": "front"},
            ),
        ),
    ),
    NodeSnapshot(
        "n2",
        hostname="beta",
        platform=Platform("linux", "aarch64"),
        labels={"zone": "us", "containerslots": "2"},
        resources=Resources(2 * CORE, 2 * GIB),
        reserved=Resources(1 * CORE, 1 * GIB),
        tasks=(RunningTask("t-db-1", service_id="db", image="redis:7", container_name="db"),),
    ),
    NodeSnapshot("n3", hostname="gamma", state=NodeState.DOWN, resources=Resources(4 * CORE, 8 * GIB)),
    NodeSnapshot(
        "n4", hostname="delta", availability=Availability.DRAIN, resources=Resources(4 * CORE, 8 * GIB)
    ),
    NodeSnapshot(
        "n5", hostname="epsilon", availability=Availability.PAUSE, resources=Resources(4 * CORE, 8 * GIB)
    ),
    NodeSnapshot(
        "n6",
        hostname="zeta",
        platform=Platform("windows", "amd64"),
        resources=Resources(8 * CORE, 16 * GIB),
        images=frozenset({"busybox:latest"}),
    ),
    NodeSnapshot("n7", hostname="eta", state=NodeState.UNKNOWN, resources=Resources(4 * CORE, 8 * GIB)),
    NodeSnapshot(
        "n8", hostname="theta", engine_labels={"containerslots": "0"}, resources=Resources(4 * CORE, 8 * GIB)
    ),
)


def evaluate(
    spec: TaskSpec, config: SchedulerConfig | None = None, service: str = "svc"
) -> tuple[list[str], str]:
    """The nodes passing every filter (checked node by node, as SwarmKit's pipeline does) and the
    explanation of the others; also asserts that the fast path (masks) agrees node for node."""
    sched = Scheduler(NODES, config)
    pipeline = sched.pipeline
    pipeline.set_task(compile_spec(service, spec))
    slow = [n.id for n in sched.nodes if pipeline.process(n)]
    explanation = "; ".join(r.describe() for r in pipeline.rejections())
    fast = [
        sched.nodes[i].id
        for i in mask_indices(pipeline.static_mask())
        if all(f.check(sched.nodes[i]) for f in pipeline.batch + pipeline.dynamic)
    ]
    assert fast == slow
    assert "; ".join(r.describe() for r in pipeline.explain()) == explanation
    return slow, explanation


# Nodes n3, n4, n5 and n7 never pass; n8 has no container slots, but a node is counted against the first
# filter it fails, and static filters (readiness, availability, platform, constraints) run first.
BASE = "1 node down; 1 node not ready; 1 node drained; 1 node paused"
SLOTS = "no container slots left on 1 node"

FILTER_TABLE: list[tuple[str, TaskSpec, list[str], str]] = [
    ("no requirements", TaskSpec(), ["n1", "n2", "n6"], f"{BASE}; {SLOTS}"),
    # platform
    (
        "platform os",
        TaskSpec(platforms=(Platform("linux", ""),)),
        ["n1", "n2"],
        f"{BASE}; unsupported platform on 1 node; {SLOTS}",
    ),
    (
        "platform arch alias",
        TaskSpec(platforms=(Platform("", "arm64"),)),
        ["n2"],
        f"unsupported platform on 3 nodes; {BASE}",
    ),
    (
        "platform any of",
        TaskSpec(platforms=(Platform("windows", "amd64"), Platform("linux", "x86_64"))),
        ["n1", "n6"],
        f"{BASE}; unsupported platform on 1 node; {SLOTS}",
    ),
    # constraints, both syntaxes
    (
        "swarmkit label",
        TaskSpec(constraints=("node.labels.zone==eu",)),
        ["n1"],
        f"constraint node.labels.zone==eu not met on 3 nodes; {BASE}",
    ),
    (
        "classic label glob",
        TaskSpec(constraints=("constraint:zone!=e*",)),
        ["n2", "n6"],
        f"{BASE}; constraint constraint:zone!=e* not met on 1 node; {SLOTS}",
    ),
    (
        "first failing constraint is named",
        TaskSpec(constraints=("node.hostname!=beta", "constraint:node==/^(alpha|beta)$/")),
        ["n1"],
        f"constraint constraint:node==/^(alpha|beta)$/ not met on 2 nodes; {BASE}; "
        "constraint node.hostname!=beta not met on 1 node",
    ),
    # affinities
    (
        "container affinity",
        TaskSpec(affinities=("affinity:container==web.1",)),
        ["n1"],
        f"affinity affinity:container==web.1 not met on 3 nodes; {BASE}",
    ),
    (
        "container glob affinity",
        TaskSpec(affinities=("container==web*",)),
        ["n1"],
        f"affinity container==web* not met on 3 nodes; {BASE}",
    ),
    (
        "container anti-affinity",
        TaskSpec(affinities=("affinity:container!=web*",)),
        ["n2", "n6"],
        f"{BASE}; affinity affinity:container!=web* not met on 1 node; {SLOTS}",
    ),
    (
        "image affinity, repository only",
        TaskSpec(affinities=("affinity:image==redis",)),
        ["n2"],
        f"affinity affinity:image==redis not met on 3 nodes; {BASE}",
    ),
    (
        "image affinity with tag",
        TaskSpec(affinities=("affinity:image==redis:7",)),
        ["n2"],
        f"affinity affinity:image==redis:7 not met on 3 nodes; {BASE}",
    ),
    (
        "image present on the engine",
        TaskSpec(affinities=("affinity:image==busybox",)),
        ["n6"],
        f"affinity affinity:image==busybox not met on 3 nodes; {BASE}",
    ),
    (
        "image regex",
        TaskSpec(affinities=("affinity:image==/^(nginx|busybox)/",)),
        ["n1", "n6"],
        f"affinity affinity:image==/^(nginx|busybox)/ not met on 2 nodes; {BASE}",
    ),
    (
        "label affinity",
        TaskSpec(affinities=("affinity:tier==front",)),
        ["n1"],
        f"affinity affinity:tier==front not met on 3 nodes; {BASE}",
    ),
    (
        "label anti-affinity",
        TaskSpec(affinities=("affinity:tier!=front",)),
        ["n2", "n6"],
        f"{BASE}; affinity affinity:tier!=front not met on 1 node; {SLOTS}",
    ),
    # dependencies
    (
        "volumes-from",
        TaskSpec(volumes_from=("db:ro",)),
        ["n2"],
        f"dependency db missing on 3 nodes; {BASE}",
    ),
    ("link", TaskSpec(links=("web.1:web",)), ["n1"], f"dependency web.1 missing on 3 nodes; {BASE}"),
    (
        "net=container",
        TaskSpec(network_mode="container:db"),
        ["n2"],
        f"dependency db missing on 3 nodes; {BASE}",
    ),
    (
        "dependencies on two nodes",
        TaskSpec(volumes_from=("db",), links=("web.1",)),
        [],
        f"dependency db, web.1 missing on 2 nodes; {BASE}; "
        "dependency db missing on 1 node; dependency web.1 missing on 1 node",
    ),
    # resources
    (
        "cpu",
        TaskSpec(reservations=Resources(2 * CORE, 0)),
        ["n1", "n6"],
        f"{BASE}; insufficient CPU on 1 node; {SLOTS}",
    ),
    (
        "memory",
        TaskSpec(reservations=Resources(0, 4 * GIB)),
        ["n1", "n6"],
        f"{BASE}; insufficient memory on 1 node; {SLOTS}",
    ),
    (
        "too big for all",
        TaskSpec(reservations=Resources(0, 9 * GIB)),
        ["n6"],
        f"insufficient memory on 3 nodes; {BASE}",
    ),
    # host ports
    (
        "host port",
        TaskSpec(host_ports=(HostPort(80),)),
        ["n2", "n6"],
        f"{BASE}; host port 80/tcp in use on 1 node; {SLOTS}",
    ),
    (
        "other protocol",
        TaskSpec(host_ports=(HostPort(80, "udp"),)),
        ["n1", "n2", "n6"],
        f"{BASE}; {SLOTS}",
    ),
    # max replicas per node (the service has no task anywhere yet)
    ("max replicas", TaskSpec(max_replicas=1), ["n1", "n2", "n6"], f"{BASE}; {SLOTS}"),
]


@pytest.mark.parametrize(
    ("name", "spec", "expected", "reasons"), FILTER_TABLE, ids=[r[0] for r in FILTER_TABLE]
)
def test_filter_table(name: str, spec: TaskSpec, expected: list[str], reasons: str) -> None:
    nodes, explanation = evaluate(spec)
    assert nodes == expected
    assert explanation == reasons


def test_max_replicas_counts_the_service_tasks_already_on_a_node() -> None:
    nodes, explanation = evaluate(TaskSpec(max_replicas=1), service="web")
    assert nodes == ["n2", "n6"]
    assert "max replicas per node (1) reached on 1 node" in explanation


def test_container_slots_count_every_task_on_the_node() -> None:
    spec = TaskSpec(constraints=("node.id==n2",))
    result = Scheduler(NODES).schedule([TaskRequest("t0", "svc", spec), TaskRequest("t1", "svc", spec)])
    # n2 allows 2 containers and already runs one.
    assert list(result.assignments) == ["t0"]
    assert "no container slots left on 1 node" in result.unassigned["t1"].message


SWITCH_TABLE: list[tuple[str, TaskSpec, list[str]]] = [
    ("ready", TaskSpec(), ["n1", "n2", "n3", "n6", "n7"]),
    ("availability", TaskSpec(), ["n1", "n2", "n4", "n5", "n6"]),
    ("platform", TaskSpec(platforms=(Platform("solaris", "sparc"),)), ["n1", "n2", "n6"]),
    ("constraints", TaskSpec(constraints=("node.labels.zone==mars",)), ["n1", "n2", "n6"]),
    ("affinity", TaskSpec(affinities=("container==nothing", "container!=web.1")), ["n1", "n2", "n6"]),
    ("dependencies", TaskSpec(links=("nothing",)), ["n1", "n2", "n6"]),
    ("resources", TaskSpec(reservations=Resources(64 * CORE, 0)), ["n1", "n2", "n6"]),
    ("ports", TaskSpec(host_ports=(HostPort(80),)), ["n1", "n2", "n6"]),
    ("containerslots", TaskSpec(), ["n1", "n2", "n6", "n8"]),
]


@pytest.mark.parametrize(("flag", "spec", "expected"), SWITCH_TABLE, ids=[r[0] for r in SWITCH_TABLE])
def test_every_filter_can_be_switched_off(flag: str, spec: TaskSpec, expected: list[str]) -> None:
    on, _ = evaluate(spec)
    off, _ = evaluate(spec, SchedulerConfig().without(flag))
    assert off == expected
    assert on != off


def test_max_replicas_switch() -> None:
    on, _ = evaluate(TaskSpec(max_replicas=1), service="web")
    off, _ = evaluate(TaskSpec(max_replicas=1), SchedulerConfig(max_replicas=False), service="web")
    assert on == ["n2", "n6"] and off == ["n1", "n2", "n6"]


def test_every_reason_belongs_to_a_filter_with_a_switch() -> None:
    assert set(FILTER_OF_REASON) == set(ALL_REASONS)
    assert set(FILTER_OF_REASON.values()) - {"node"} == FILTER_NAMES


def test_every_filter_has_a_switch() -> None:
    config = SchedulerConfig()
    for cls in FILTER_TYPES:
        assert config.filter_enabled(cls.name)
    with pytest.raises(KeyError):
        config.filter_enabled("strategy")
    with pytest.raises(KeyError):
        config.without("seed")
    assert not config.without("ports", "ready").filter_enabled("ready")


EXPLAIN_TABLE = [(cls, 1) for cls in FILTER_TYPES] + [(cls, 3) for cls in FILTER_TYPES]


@pytest.mark.parametrize(("cls", "count"), EXPLAIN_TABLE)
def test_explain_words_a_count(cls: type[Filter], count: int) -> None:
    text = cls().explain(count)
    assert f"{count} node{'' if count == 1 else 's'}" in text
