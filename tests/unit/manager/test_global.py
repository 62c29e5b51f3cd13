"""The global orchestrator: one task per eligible node."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from api import Node, TaskState
from api.objects import (
    Annotations,
    Meta,
    NodeAvailability,
    NodeSpec,
    NodeState,
    NodeStatus,
    RestartPolicy,
    ServiceMode,
)
from manager.orchestrator.global_ import reconcile_global
from tests.unit.manager.test_replicated import T0, apply, ended, make_service, ready_nodes, running


def global_service(policy: RestartPolicy | None = None):  # type: ignore[no-untyped-def]
    svc = make_service(0, policy)
    return replace(svc, spec=replace(svc.spec, mode=ServiceMode.GLOBAL))


def test_one_task_per_ready_active_node_including_late_joiners() -> None:
    svc = global_service()
    nodes = ready_nodes("n1", "n2")
    nodes["n3"] = Node(meta=Meta(id="n3"), status=NodeStatus(state=NodeState.DOWN))
    nodes["n4"] = Node(
        meta=Meta(id="n4"),
        spec=NodeSpec(availability=NodeAvailability.PAUSE),
        status=NodeStatus(state=NodeState.READY),
    )
    plan = reconcile_global(svc, [], nodes, T0)
    assert sorted(t.node_id for t in plan.create) == ["n1", "n2"]
    assert all(t.slot == 0 for t in plan.create)
    tasks = apply([], plan)
    assert reconcile_global(svc, tasks, nodes, T0).empty

    nodes.update(ready_nodes("n5"))  # a node joins later
    plan = reconcile_global(svc, tasks, nodes, T0)
    assert [t.node_id for t in plan.create] == ["n5"]


def test_constraints_and_drain_shut_tasks_down() -> None:
    svc = global_service()
    nodes = ready_nodes("n1", "n2", "n3")
    nodes["n1"] = replace(nodes["n1"], spec=NodeSpec(annotations=Annotations(labels={"zone": "eu"})))
    tasks = [running(svc, 0, n) for n in ("n1", "n2", "n3")]
    nodes["n3"] = replace(nodes["n3"], spec=NodeSpec(availability=NodeAvailability.DRAIN))

    def only_eu(node: Node) -> bool:
        return node.spec.annotations.labels.get("zone") == "eu"

    plan = reconcile_global(svc, tasks, nodes, T0, matches=only_eu)
    assert sorted(t.node_id for t in plan.update if t.desired_state is TaskState.SHUTDOWN) == ["n2", "n3"]
    assert not plan.create


def test_a_down_node_gets_its_task_back_when_it_returns() -> None:
    svc = global_service(RestartPolicy(delay_ns=0))
    nodes = ready_nodes("n1")
    tasks = [running(svc, 0, "n1")]
    down = {"n1": replace(nodes["n1"], status=NodeStatus(state=NodeState.DOWN))}
    plan = reconcile_global(svc, tasks, down, T0)
    assert [(t.status.state, t.desired_state) for t in plan.update] == [
        (TaskState.ORPHANED, TaskState.SHUTDOWN)
    ]
    assert not plan.create
    tasks = apply(tasks, plan)
    back = reconcile_global(svc, tasks, nodes, T0 + timedelta(seconds=60))
    assert [t.node_id for t in back.create] == ["n1"]


def test_an_ended_task_restarts_on_its_node() -> None:
    svc = global_service(RestartPolicy(delay_ns=0))
    task = ended(running(svc, 0, "n1"), TaskState.FAILED, T0)
    plan = reconcile_global(svc, [task], ready_nodes("n1"), T0 + timedelta(seconds=1))
    assert [t.node_id for t in plan.create] == ["n1"]
    assert [t.desired_state for t in plan.update] == [TaskState.SHUTDOWN]
