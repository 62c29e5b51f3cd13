"""Judging convergence from one snapshot of a service and its tasks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from api import Annotations, Node, Service, Task, TaskState
from api.objects import (
    ContainerSpec,
    Meta,
    NodeAvailability,
    NodeSpec,
    NodeState,
    NodeStatus,
    Placement,
    ServiceMode,
    ServiceSpec,
    ServiceStatus,
    TaskSpec,
    TaskStatus,
    UpdateState,
)
from swarmctl.progress import Target, assess

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def service(replicas: int = 2, image: str = "nginx:1", **status: object) -> Service:
    spec = ServiceSpec(
        annotations=Annotations(name="web"),
        replicas=replicas,
        task=TaskSpec(container=ContainerSpec(image=image)),
    )
    return Service(meta=Meta(id="svc"), spec=spec, status=ServiceStatus(**status))  # type: ignore[arg-type]


def task(
    svc: Service,
    slot: int,
    state: TaskState,
    *,
    spec: TaskSpec | None = None,
    desired: TaskState = TaskState.RUNNING,
    message: str = "",
    err: str = "",
) -> Task:
    return Task(
        meta=Meta(id=f"t{slot}{state.value}", created_at=T0),
        service_id=svc.meta.id,
        slot=slot,
        spec=spec or svc.spec.task,
        service_annotations=svc.spec.annotations,
        desired_state=desired,
        status=TaskStatus(state=state, message=message, err=err, timestamp=T0),
    )


def test_converged_when_every_replica_of_the_current_spec_runs() -> None:
    svc = service()
    a = assess(
        Target("svc", "web"), svc, [task(svc, 1, TaskState.RUNNING), task(svc, 2, TaskState.STARTING)], []
    )
    assert (a.running, a.desired, a.converged) == (1, 2, False)
    a = assess(
        Target("svc", "web"), svc, [task(svc, 1, TaskState.RUNNING), task(svc, 2, TaskState.RUNNING)], []
    )
    assert a.converged and a.summary() == "2/2 running, converged"


def test_tasks_of_an_older_spec_keep_it_from_converging() -> None:
    svc = service()
    old = TaskSpec(container=ContainerSpec(image="nginx:0"))
    tasks = [
        task(svc, 1, TaskState.RUNNING),
        task(svc, 2, TaskState.RUNNING),
        task(svc, 3, TaskState.RUNNING, spec=old),
    ]
    assert not assess(Target("svc", "web"), svc, tasks, []).converged
    tasks[2] = replace(tasks[2], desired_state=TaskState.SHUTDOWN)
    assert assess(Target("svc", "web"), svc, tasks, []).converged


def test_pending_reasons_are_the_problem() -> None:
    svc = service(replicas=1)
    why = "no suitable node (constraint node.labels.zone==mars not met on 3 nodes)"
    a = assess(Target("svc", "web"), svc, [task(svc, 1, TaskState.PENDING, message=why)], [])
    assert a.problems == (f"web.1: {why}",) and not a.failure


def test_failures_are_reported_newest_first() -> None:
    svc = service(replicas=1)
    failed = task(svc, 1, TaskState.REJECTED, desired=TaskState.SHUTDOWN, err="pull access denied")
    a = assess(Target("svc", "web"), svc, [failed, task(svc, 1, TaskState.PREPARING)], [])
    assert a.problems == ("web.1 rejected: pull access denied",)


def test_an_update_of_this_command_that_paused_or_rolled_back_fails() -> None:
    before = T0
    started = T0 + timedelta(seconds=1)
    target = Target("svc", "web", baseline=before)
    paused = service(
        update_state=UpdateState.PAUSED, update_message="task x failed", update_started_at=started
    )
    assert assess(target, paused, [], []).failure == "update paused: task x failed"
    rolling = service(
        update_state=UpdateState.ROLLBACK_STARTED,
        update_message="update failed: task y",
        update_started_at=started,
    )
    assert assess(target, rolling, [], []).update == "rolling back"
    done = service(
        update_state=UpdateState.ROLLBACK_COMPLETED,
        update_message="rollback completed",
        update_started_at=started,
    )
    assert assess(target, done, [], []).failure == "update rolled back: update failed: task y"


def test_old_update_states_are_not_this_commands() -> None:
    svc = service(replicas=1, update_state=UpdateState.ROLLBACK_COMPLETED, update_started_at=T0)
    a = assess(Target("svc", "web", baseline=T0), svc, [task(svc, 1, TaskState.RUNNING)], [])
    assert a.converged and not a.failure
    # A requested rollback that completes is a success.
    svc = service(
        replicas=1, update_state=UpdateState.ROLLBACK_COMPLETED, update_started_at=T0 + timedelta(seconds=1)
    )
    assert assess(
        Target("svc", "web", baseline=T0, rollback=True), svc, [task(svc, 1, TaskState.RUNNING)], []
    ).converged


def test_global_services_want_one_task_per_eligible_node() -> None:
    svc = service()
    svc = replace(
        svc,
        spec=replace(
            svc.spec,
            mode=ServiceMode.GLOBAL,
            replicas=0,
            task=replace(svc.spec.task, placement=Placement(constraints=("node.labels.zone==eu",))),
        ),
    )

    def node(
        i: int,
        zone: str,
        state: NodeState = NodeState.READY,
        avail: NodeAvailability = NodeAvailability.ACTIVE,
    ) -> Node:
        return Node(
            meta=Meta(id=f"n{i}"),
            spec=NodeSpec(annotations=Annotations(labels={"zone": zone}), availability=avail),
            status=NodeStatus(state=state),
        )

    nodes = [
        node(1, "eu"),
        node(2, "eu"),
        node(3, "us"),
        node(4, "eu", NodeState.DOWN),
        node(5, "eu", avail=NodeAvailability.DRAIN),
    ]
    a = assess(Target("svc", "web"), svc, [task(svc, 0, TaskState.RUNNING)], nodes)
    assert (a.running, a.desired) == (1, 2)
