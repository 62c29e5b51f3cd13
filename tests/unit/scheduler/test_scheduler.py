"""Whole scheduling runs: explanations, soft expressions, strategies, preferences, pre-assigned tasks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest

from scheduler import (
    Availability,
    DuplicateNode,
    DuplicateTask,
    HostPort,
    InvalidExpression,
    NodeSnapshot,
    Resources,
    RunningTask,
    Scheduler,
    SchedulerConfig,
    Strategy,
    TaskRequest,
    TaskSpec,
    schedule,
)
from scheduler.reasons import REASON_CONSTRAINT, REASON_INSUFFICIENT_MEMORY, REASON_NODE_DRAINED

GIB = 1 << 30
CORE = 1_000_000_000


def node(node_id: str, *, cpu: int = 4, mem: int = 8, **kwargs: Any) -> NodeSnapshot:
    return NodeSnapshot(node_id, hostname=node_id, resources=Resources(cpu * CORE, mem * GIB), **kwargs)


def tasks(service: str, spec: TaskSpec, count: int, *, start: int = 0) -> list[TaskRequest]:
    return [
        TaskRequest(f"{service}.{i}", service, spec, container_name=f"{service}.{i}")
        for i in range(start, count)
    ]


def per_node(assignments: Mapping[str, str]) -> Counter[str]:
    return Counter(assignments.values())


def test_explanation_counts_each_node_once_under_its_first_failing_filter() -> None:
    nodes = [node(f"us{i}", labels={"zone": "us"}) for i in range(4)]
    nodes += [node(f"eu{i}", mem=1, labels={"zone": "eu"}) for i in range(2)]
    nodes.append(node("eu-drained", labels={"zone": "eu"}, availability=Availability.DRAIN))
    spec = TaskSpec(constraints=("node.labels.zone==eu",), reservations=Resources(0, 2 * GIB))
    result = schedule(nodes, tasks("api", spec, 3))
    assert result.assignments == {}
    why = result.unassigned["api.0"]
    assert why.message == (
        "no suitable node (constraint node.labels.zone==eu not met on 4 nodes; "
        "insufficient memory on 2 nodes; 1 node drained)"
    )
    assert why.counts() == {REASON_CONSTRAINT: 4, REASON_INSUFFICIENT_MEMORY: 2, REASON_NODE_DRAINED: 1}
    assert why.counts_by_filter() == {"constraints": 4, "resources": 2, "availability": 1}
    assert str(why) == why.message
    assert result.unassigned["api.2"] is why  # one explanation per batch


def test_leftover_tasks_are_explained_by_the_state_after_placement() -> None:
    nodes = [node(f"n{i}", mem=2) for i in range(3)]
    result = schedule(nodes, tasks("api", TaskSpec(reservations=Resources(0, 2 * GIB)), 5))
    assert sorted(per_node(result.assignments).values()) == [1, 1, 1]
    assert set(result.unassigned) == {"api.3", "api.4"}
    assert result.unassigned["api.3"].message == "no suitable node (insufficient memory on 3 nodes)"


def test_no_nodes_at_all() -> None:
    result = schedule([], tasks("api", TaskSpec(), 1))
    assert result.unassigned["api.0"].message == "no suitable node"


def test_a_soft_constraint_nothing_satisfies_is_dropped() -> None:
    nodes = [node("a", labels={"zone": "eu"}), node("b", labels={"zone": "us"})]
    result = schedule(nodes, tasks("api", TaskSpec(constraints=("constraint:zone==~mars",)), 4))
    assert per_node(result.assignments) == {"a": 2, "b": 2}


def test_a_soft_constraint_is_preferred_then_relaxed_when_its_nodes_are_full() -> None:
    nodes = [node("us1", mem=8, labels={"zone": "us"}), node("eu1", mem=2, labels={"zone": "eu"})]
    spec = TaskSpec(constraints=("constraint:zone==~eu",), reservations=Resources(0, 1 * GIB))
    result = schedule(nodes, tasks("api", spec, 5))
    # Both tasks that fit on eu1 go there first, although spread alone would alternate.
    assert result.assignments["api.0"] == "eu1" and result.assignments["api.1"] == "eu1"
    assert per_node(result.assignments) == {"eu1": 2, "us1": 3}


def test_soft_anti_affinity_prefers_other_nodes() -> None:
    nodes = [
        node("a", tasks=(RunningTask("x", service_id="cache", container_name="cache"),)),
        node("b"),
        node("c"),
    ]
    spec = TaskSpec(affinities=("affinity:container!=~cache",))
    result = schedule(nodes, tasks("api", spec, 4))
    assert per_node(result.assignments) == {"b": 2, "c": 2}


def test_hard_constraint_in_classic_syntax_with_regex() -> None:
    nodes = [node(f"node{i}") for i in range(1, 5)]
    spec = TaskSpec(constraints=("constraint:node==/node[12]$/",))
    result = schedule(nodes, tasks("api", spec, 4))
    assert per_node(result.assignments) == {"node1": 2, "node2": 2}


def test_spread_prefers_the_node_with_less_reserved() -> None:
    nodes = [node("busy", reserved=Resources(2 * CORE, 4 * GIB)), node("idle")]
    result = schedule(nodes, tasks("api", TaskSpec(), 1))
    assert result.assignments == {"api.0": "idle"}


def test_spread_evens_out_one_service_before_looking_at_load() -> None:
    nodes = [
        node("a", tasks=tuple(RunningTask(f"o{i}", service_id="other") for i in range(5))),
        node("b"),
    ]
    result = schedule(nodes, tasks("api", TaskSpec(), 4))
    assert per_node(result.assignments) == {"a": 2, "b": 2}


def test_binpack_fills_the_fullest_node_that_fits_first() -> None:
    nodes = [node("empty", mem=4), node("half", mem=4, reserved=Resources(0, 2 * GIB)), node("full", mem=4)]
    spec = TaskSpec(reservations=Resources(0, 1 * GIB))
    result = schedule(nodes, tasks("api", spec, 5), SchedulerConfig(strategy=Strategy.BINPACK))
    placed = [result.assignments[f"api.{i}"] for i in range(5)]
    assert placed == ["half", "half", "empty", "empty", "empty"]


def test_random_is_reproducible_for_a_seed() -> None:
    nodes = [node(f"n{i}") for i in range(20)]
    batch = tasks("api", TaskSpec(), 40)
    first = schedule(nodes, batch, SchedulerConfig(strategy=Strategy.RANDOM, seed=7)).assignments
    again = schedule(nodes, batch, SchedulerConfig(strategy=Strategy.RANDOM, seed=7)).assignments
    other = schedule(nodes, batch, SchedulerConfig(strategy=Strategy.RANDOM, seed=8)).assignments
    assert first == again
    assert first != other
    assert len(first) == 40


def test_random_still_respects_filters() -> None:
    nodes = [node(f"n{i}", mem=1) for i in range(5)] + [node("big", mem=64)]
    spec = TaskSpec(reservations=Resources(0, 2 * GIB))
    result = schedule(nodes, tasks("api", spec, 10), SchedulerConfig(strategy=Strategy.RANDOM))
    assert per_node(result.assignments) == {"big": 10}


def test_preference_evens_out_label_values_not_nodes() -> None:
    nodes = [node(f"eu{i}", labels={"zone": "eu"}) for i in range(4)] + [node("us0", labels={"zone": "us"})]
    spec = TaskSpec(preferences=("spread=node.labels.zone",))
    result = schedule(nodes, tasks("api", spec, 8))
    zones = Counter(result.assignments[t].rstrip("0123456789") for t in result.assignments)
    assert zones == {"eu": 4, "us": 4}


def test_preference_counts_tasks_already_running_and_groups_unlabelled_nodes() -> None:
    nodes = [
        node(
            "eu0",
            labels={"zone": "eu"},
            tasks=tuple(RunningTask(f"r{i}", service_id="api") for i in range(3)),
        ),
        node("us0", labels={"zone": "us"}),
        node("plain0"),
        node("plain1"),
    ]
    result = schedule(nodes, tasks("api", TaskSpec(preferences=("spread=node.labels.zone",)), 6))
    # Branches: "" (plain0, plain1), eu (3 running), us. Totals even out at 3 each.
    got = per_node(result.assignments)
    assert got["eu0"] == 0 and got["us0"] == 3 and got["plain0"] + got["plain1"] == 3


def test_nested_preferences() -> None:
    nodes = [
        node(f"{zone}-{rack}-{i}", labels={"zone": zone, "rack": rack})
        for zone in ("eu", "us")
        for rack in (("r1", "r2", "r3") if zone == "eu" else ("r9",))
        for i in range(2)
    ]
    spec = TaskSpec(preferences=("spread=node.labels.zone", "spread=node.labels.rack"))
    result = schedule(nodes, tasks("api", spec, 12))
    by_zone = Counter(n.split("-")[0] for n in result.assignments.values())
    by_rack = Counter("-".join(n.split("-")[:2]) for n in result.assignments.values())
    assert by_zone == {"eu": 6, "us": 6}
    assert by_rack == {"eu-r1": 2, "eu-r2": 2, "eu-r3": 2, "us-r9": 6}


def test_a_full_branch_hands_its_share_to_the_others() -> None:
    nodes = [node("eu0", mem=1, labels={"zone": "eu"}), node("us0", mem=8, labels={"zone": "us"})]
    spec = TaskSpec(preferences=("spread=node.labels.zone",), reservations=Resources(0, 1 * GIB))
    result = schedule(nodes, tasks("api", spec, 6))
    assert per_node(result.assignments) == {"eu0": 1, "us0": 5}


def test_host_ports_are_unique_per_node_within_a_batch() -> None:
    nodes = [node("a"), node("b", tasks=(RunningTask("x", host_ports=(HostPort(8080),)),)), node("c")]
    result = schedule(nodes, tasks("web", TaskSpec(host_ports=(HostPort(8080),)), 3))
    assert per_node(result.assignments) == {"a": 1, "c": 1}
    assert result.unassigned["web.2"].message == "no suitable node (host port 8080/tcp in use on 3 nodes)"


def test_anti_affinity_to_the_service_itself_places_one_task_per_node() -> None:
    nodes = [node(f"n{i}") for i in range(3)]
    result = schedule(nodes, tasks("web", TaskSpec(affinities=("affinity:container!=web.*",)), 4))
    assert per_node(result.assignments) == {"n0": 1, "n1": 1, "n2": 1}
    assert "affinity affinity:container!=web.* not met on 3 nodes" in result.unassigned["web.3"].message


def test_dependent_tasks_land_on_the_node_of_their_dependency() -> None:
    nodes = [node(f"n{i}") for i in range(4)]
    sched = Scheduler(nodes)
    result = sched.schedule(
        [
            TaskRequest("db.1", "db", TaskSpec(), container_name="db"),
            TaskRequest("app.1", "app", TaskSpec(links=("db:database",)), container_name="app"),
            TaskRequest("sidecar.1", "sidecar", TaskSpec(network_mode="container:app")),
        ]
    )
    assert result.assignments["app.1"] == result.assignments["db.1"] == result.assignments["sidecar.1"]


def test_max_replicas_holds_across_calls() -> None:
    sched = Scheduler([node("a"), node("b")])
    spec = TaskSpec(max_replicas=1)
    first = sched.schedule(tasks("api", spec, 1))
    second = sched.schedule(tasks("api", spec, 3, start=1))
    assert len(first.assignments) == 1 and len(second.assignments) == 1
    assert set(first.assignments.values()) | set(second.assignments.values()) == {"a", "b"}
    assert (
        second.unassigned["api.2"].message
        == "no suitable node (max replicas per node (1) reached on 2 nodes)"
    )
    assert sched.node("a").service_counts["api"] == 1


def test_preassigned_tasks_are_confirmed_or_explained() -> None:
    nodes = [node("a", mem=2), node("b", availability=Availability.PAUSE)]
    spec = TaskSpec(reservations=Resources(0, 1 * GIB))
    result = schedule(
        nodes,
        [
            TaskRequest("g.a", "g", spec, node_id="a"),
            TaskRequest("g.b", "g", spec, node_id="b"),
            TaskRequest("g.x", "g", spec, node_id="x"),
            TaskRequest("big.a", "big", TaskSpec(reservations=Resources(0, 2 * GIB)), node_id="a"),
        ],
    )
    assert result.assignments == {"g.a": "a"}
    assert result.unassigned["g.b"].message == "no suitable node (1 node paused)"
    assert result.unassigned["g.x"].message == "no suitable node (1 node not in the cluster)"
    assert result.unassigned["big.a"].message == "no suitable node (insufficient memory on 1 node)"


def test_equal_specs_in_distinct_objects_form_one_batch() -> None:
    nodes = [node("a"), node("b")]
    batch = [TaskRequest(f"api.{i}", "api", TaskSpec(constraints=("node.id==zzz",))) for i in range(3)]
    result = schedule(nodes, batch)
    assert len({id(r) for r in result.unassigned.values()}) == 1


def test_duplicate_nodes_and_tasks_are_refused() -> None:
    with pytest.raises(DuplicateNode) as dup_node:
        Scheduler([node("a"), node("a")])
    assert dup_node.value.node_id == "a"
    sched = Scheduler([node("a", tasks=(RunningTask("running"),))])
    with pytest.raises(DuplicateTask):
        sched.schedule([TaskRequest("t", "s"), TaskRequest("t", "s")])
    with pytest.raises(DuplicateTask):
        sched.schedule([TaskRequest("running", "s")])
    sched.schedule([TaskRequest("t", "s")])
    with pytest.raises(DuplicateTask) as dup_task:
        sched.schedule([TaskRequest("t", "s")])
    assert dup_task.value.task_id == "t"


def test_unassigned_tasks_can_be_retried() -> None:
    sched = Scheduler([node("a", mem=1)])
    spec = TaskSpec(reservations=Resources(0, 1 * GIB))
    sched.schedule(tasks("api", spec, 2))
    assert sched.schedule([TaskRequest("api.1", "api", spec)]).unassigned


def test_a_malformed_expression_fails_the_call_before_anything_is_placed() -> None:
    sched = Scheduler([node("a")])
    good = TaskRequest("ok", "svc", TaskSpec())
    bad = TaskRequest("bad", "svc2", TaskSpec(constraints=("node.labels.zone=eu",)))
    with pytest.raises(InvalidExpression) as info:
        sched.schedule([good, bad])
    assert info.value.expression == "node.labels.zone=eu"
    assert sched.node("a").task_count == 0
    assert sched.schedule([good]).assignments == {"ok": "a"}
