"""The replicated orchestrator's decisions, case by case, without a cluster."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from api import Annotations, Node, Service, Task, TaskState
from api.objects import (
    SECOND,
    Meta,
    NodeState,
    NodeStatus,
    RestartCondition,
    RestartPolicy,
    ServiceSpec,
    TaskSpec,
    TaskStatus,
)
from manager.orchestrator.plan import Plan, new_task
from manager.orchestrator.replicated import reconcile_replicated

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_service(replicas: int, policy: RestartPolicy | None = None) -> Service:
    spec = ServiceSpec(
        annotations=Annotations(name="web"),
        replicas=replicas,
        task=TaskSpec(restart_policy=policy or RestartPolicy()),
    )
    return Service(meta=Meta(id="svc", version=1), spec=spec)


def ready_nodes(*ids: str) -> dict[str, Node]:
    return {i: Node(meta=Meta(id=i), status=NodeStatus(state=NodeState.READY)) for i in ids}


def running(svc: Service, slot: int, node: str = "n1", at: datetime = T0) -> Task:
    t = new_task(svc, slot, at, node_id=node)
    return replace(t, status=TaskStatus(state=TaskState.RUNNING, timestamp=at))


def ended(task: Task, state: TaskState, at: datetime) -> Task:
    return replace(task, status=replace(task.status, state=state, timestamp=at))


def apply(tasks: list[Task], plan: Plan) -> list[Task]:
    """The task list after the plan's writes, as the store would hold it."""
    by_id = {t.meta.id: t for t in tasks}
    for t in plan.update:
        by_id[t.meta.id] = t
    for t in plan.delete:
        del by_id[t.meta.id]
    return [*by_id.values(), *plan.create]


def test_a_new_service_gets_one_task_per_slot() -> None:
    svc = make_service(3)
    plan = reconcile_replicated(svc, [], {}, T0)
    assert sorted(t.slot for t in plan.create) == [1, 2, 3]
    assert all(t.desired_state is TaskState.RUNNING and t.status.state is TaskState.NEW for t in plan.create)
    assert all(t.spec == svc.spec.task and t.service_id == "svc" for t in plan.create)
    assert reconcile_replicated(svc, apply([], plan), {}, T0).empty


def test_scale_up_fills_free_slots_and_scale_down_drops_the_least_useful() -> None:
    svc = make_service(2)
    tasks = [running(svc, 1, "n1"), running(svc, 3, "n2")]
    plan = reconcile_replicated(
        replace(svc, spec=replace(svc.spec, replicas=4)), tasks, ready_nodes("n1", "n2"), T0
    )
    assert sorted(t.slot for t in plan.create) == [2, 4]

    tasks = [running(svc, 1, "n1"), running(svc, 2, "n1"), running(svc, 3, "n2"), running(svc, 4, "n3")]
    pending = replace(new_task(svc, 5, T0), status=TaskStatus(state=TaskState.PENDING))
    plan = reconcile_replicated(svc, [*tasks, pending], ready_nodes("n1", "n2", "n3"), T0)
    stopped = {t.slot for t in plan.update if t.desired_state is TaskState.SHUTDOWN}
    # The pending task goes first, then the higher of the two slots sharing n1, then (one task per node
    # left) the highest slot.
    assert stopped == {5, 2, 4}
    assert not plan.create


def test_failed_task_is_restarted_after_the_delay_in_the_same_slot() -> None:
    svc = make_service(1, RestartPolicy(condition=RestartCondition.ANY, delay_ns=5 * SECOND))
    failed = ended(running(svc, 1), TaskState.FAILED, T0 + timedelta(seconds=10))
    early = reconcile_replicated(svc, [failed], ready_nodes("n1"), T0 + timedelta(seconds=12))
    assert early.empty and early.wake_at == T0 + timedelta(seconds=15)

    plan = reconcile_replicated(svc, [failed], ready_nodes("n1"), T0 + timedelta(seconds=15))
    assert [t.slot for t in plan.create] == [1]
    assert [(t.meta.id, t.desired_state) for t in plan.update] == [(failed.meta.id, TaskState.SHUTDOWN)]
    after = apply([failed], plan)
    assert reconcile_replicated(svc, after, ready_nodes("n1"), T0 + timedelta(seconds=16)).empty


def test_restart_conditions() -> None:
    at = T0 + timedelta(seconds=1)
    later = T0 + timedelta(minutes=1)
    for condition, state, restarted in [
        (RestartCondition.NONE, TaskState.FAILED, False),
        (RestartCondition.ON_FAILURE, TaskState.COMPLETE, False),
        (RestartCondition.ON_FAILURE, TaskState.FAILED, True),
        (RestartCondition.ON_FAILURE, TaskState.REJECTED, True),
        (RestartCondition.ANY, TaskState.COMPLETE, True),
    ]:
        svc = make_service(1, RestartPolicy(condition=condition, delay_ns=0))
        task = ended(running(svc, 1), state, at)
        plan = reconcile_replicated(svc, [task], ready_nodes("n1"), later)
        assert bool(plan.create) is restarted, (condition, state)
        if not restarted:
            assert plan.empty  # the slot stays as it ended and still counts toward the replicas


def test_on_failure_max_attempts_stops_after_that_many_restarts() -> None:
    svc = make_service(1, RestartPolicy(condition=RestartCondition.ON_FAILURE, delay_ns=0, max_attempts=3))
    nodes = ready_nodes("n1")
    tasks: list[Task] = []
    now = T0
    starts = 0
    for _ in range(10):
        plan = reconcile_replicated(svc, tasks, nodes, now)
        if not plan.create:
            break
        starts += len(plan.create)
        tasks = apply(tasks, plan)
        now += timedelta(seconds=1)
        # Every task runs and fails at once.
        tasks = [
            ended(t, TaskState.FAILED, now) if t.desired_state is TaskState.RUNNING else t for t in tasks
        ]
    assert starts == 4  # the first run and 3 restarts
    assert len(tasks) == 4


def test_restart_window_forgets_old_attempts() -> None:
    policy = RestartPolicy(condition=RestartCondition.ANY, delay_ns=0, max_attempts=1, window_ns=60 * SECOND)
    svc = make_service(1, policy)
    first = replace(ended(running(svc, 1), TaskState.FAILED, T0), desired_state=TaskState.SHUTDOWN)
    second = ended(running(svc, 1, at=T0 + timedelta(seconds=1)), TaskState.FAILED, T0 + timedelta(seconds=2))
    soon = reconcile_replicated(svc, [first, second], ready_nodes("n1"), T0 + timedelta(seconds=3))
    assert not soon.create
    much_later = reconcile_replicated(svc, [first, second], ready_nodes("n1"), T0 + timedelta(minutes=5))
    assert [t.slot for t in much_later.create] == [1]


def test_tasks_of_a_down_node_are_orphaned_and_replaced() -> None:
    svc = make_service(2, RestartPolicy(delay_ns=0))
    a, b = running(svc, 1, "n1"), running(svc, 2, "n2")
    nodes = ready_nodes("n1", "n2")
    nodes["n2"] = replace(nodes["n2"], status=NodeStatus(state=NodeState.DOWN))
    plan = reconcile_replicated(svc, [a, b], nodes, T0 + timedelta(seconds=30))
    assert [t.slot for t in plan.create] == [2]
    (gone,) = plan.update
    assert gone.meta.id == b.meta.id
    assert gone.status.state is TaskState.ORPHANED and gone.desired_state is TaskState.SHUTDOWN


def test_history_is_trimmed_to_the_limit_keeping_the_newest() -> None:
    svc = make_service(1)
    old = [
        replace(
            ended(running(svc, 1, at=T0 + timedelta(seconds=i)), TaskState.FAILED, T0),
            desired_state=TaskState.SHUTDOWN,
        )
        for i in range(7)
    ]
    current = running(svc, 1, at=T0 + timedelta(seconds=100))
    plan = reconcile_replicated(
        svc, [*old, current], ready_nodes("n1"), T0 + timedelta(seconds=200), history_limit=5
    )
    assert [t.meta.id for t in plan.delete] == [t.meta.id for t in old[:3]]
    assert not plan.create and not plan.update


def test_tasks_of_a_drained_node_move_at_once() -> None:
    from api.objects import NodeAvailability, NodeSpec

    svc = make_service(2, RestartPolicy(condition=RestartCondition.NONE, delay_ns=60 * SECOND))
    a, b = running(svc, 1, "n1"), running(svc, 2, "n2")
    nodes = ready_nodes("n1", "n2")
    nodes["n2"] = replace(nodes["n2"], spec=NodeSpec(availability=NodeAvailability.DRAIN))
    plan = reconcile_replicated(svc, [a, b], nodes, T0)
    assert [t.slot for t in plan.create] == [2] and plan.create[0].node_id == ""
    assert [(t.meta.id, t.desired_state) for t in plan.update] == [(b.meta.id, TaskState.SHUTDOWN)]
