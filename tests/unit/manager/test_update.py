"""Rolling updates and rollbacks, driven step by step: parallelism, delay, order, failure actions."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from api import Service, Task, TaskState
from api.objects import (
    SECOND,
    ContainerSpec,
    FailureAction,
    ServiceStatus,
    TaskSpec,
    TaskStatus,
    UpdateConfig,
    UpdateOrder,
    UpdateState,
)
from manager.orchestrator.update import plan_update
from tests.unit.manager.test_replicated import T0, apply, make_service, running


def updating(svc: Service, image: str, cfg: UpdateConfig, at: datetime) -> Service:
    """``svc`` after `service update --image`: new spec, previous spec kept, update started."""
    new_spec = replace(svc.spec, task=TaskSpec(container=ContainerSpec(image=image)), update_config=cfg)
    return replace(
        svc,
        spec=new_spec,
        previous_spec=svc.spec,
        status=ServiceStatus(update_state=UpdateState.UPDATING, update_started_at=at),
    )


def run_new(tasks: list[Task], at: datetime, fail: bool = False) -> list[Task]:
    """The agents start every new task (or it fails at once)."""
    state = TaskState.FAILED if fail else TaskState.RUNNING
    return [
        replace(t, status=TaskStatus(state=state, timestamp=at)) if t.status.state is TaskState.NEW else t
        for t in tasks
    ]


def stop_old(tasks: list[Task], at: datetime) -> list[Task]:
    return [
        replace(t, status=TaskStatus(state=TaskState.SHUTDOWN, timestamp=at))
        if t.desired_state is TaskState.SHUTDOWN and not t.status.state.is_terminal
        else t
        for t in tasks
    ]


def test_parallelism_and_delay_pace_the_update_until_completed() -> None:
    old = make_service(4)
    tasks = [running(old, s, f"n{s}") for s in range(1, 5)]
    cfg = UpdateConfig(parallelism=2, delay_ns=10 * SECOND)
    svc = updating(old, "busybox:2", cfg, T0)

    batches: list[list[int]] = []
    now = T0
    for _ in range(20):
        plan = plan_update(svc, tasks, now)
        if plan.service is not None:
            svc = plan.service
            if svc.status.update_state is UpdateState.COMPLETED:
                break
        if plan.create:
            batches.append(sorted(t.slot for t in plan.create))
            # stop-first: each old task is told to stop as its replacement is created
            assert sorted(t.slot for t in plan.update) == batches[-1]
        tasks = apply(tasks, plan)
        now = plan.wake_at or now + timedelta(seconds=1)
        tasks = run_new(stop_old(tasks, now), now)
    assert batches == [[1, 2], [3, 4]]
    assert svc.status.update_state is UpdateState.COMPLETED
    live = [t for t in tasks if t.desired_state is TaskState.RUNNING]
    assert sorted(t.slot for t in live) == [1, 2, 3, 4]
    assert all(t.spec.container.image == "busybox:2" for t in live)


def test_the_delay_is_honoured_between_batches() -> None:
    old = make_service(2)
    tasks = [running(old, s) for s in (1, 2)]
    svc = updating(old, "v2", UpdateConfig(parallelism=1, delay_ns=30 * SECOND), T0)
    tasks = apply(tasks, plan_update(svc, tasks, T0))
    tasks = run_new(stop_old(tasks, T0 + timedelta(seconds=1)), T0 + timedelta(seconds=1))
    waiting = plan_update(svc, tasks, T0 + timedelta(seconds=5))
    assert not waiting.create and waiting.wake_at == T0 + timedelta(seconds=31)
    assert [t.slot for t in plan_update(svc, tasks, T0 + timedelta(seconds=31)).create] == [2]


def test_start_first_keeps_the_old_task_until_the_new_one_runs() -> None:
    old = make_service(1)
    tasks = [running(old, 1)]
    t1 = T0 + timedelta(seconds=1)
    svc = updating(old, "v2", UpdateConfig(order=UpdateOrder.START_FIRST), t1)
    plan = plan_update(svc, tasks, t1)
    assert [t.slot for t in plan.create] == [1] and not plan.update
    tasks = apply(tasks, plan)
    assert not plan_update(svc, tasks, t1).update  # the new task is not running yet
    tasks = run_new(tasks, T0 + timedelta(seconds=2))
    plan = plan_update(svc, tasks, T0 + timedelta(seconds=2))
    assert [t.spec.container.image for t in plan.update] == [""]  # the old one is told to stop now
    assert plan.update[0].desired_state is TaskState.SHUTDOWN


def test_failure_pauses_the_update_by_default() -> None:
    old = make_service(3)
    tasks = [running(old, s) for s in (1, 2, 3)]
    svc = updating(old, "broken", UpdateConfig(parallelism=1), T0)
    tasks = apply(tasks, plan_update(svc, tasks, T0))
    tasks = run_new(stop_old(tasks, T0 + timedelta(seconds=1)), T0 + timedelta(seconds=1), fail=True)
    plan = plan_update(svc, tasks, T0 + timedelta(seconds=2))
    assert plan.service is not None
    assert plan.service.status.update_state is UpdateState.PAUSED
    assert "update paused due to failure" in plan.service.status.update_message
    assert not plan.create
    # Paused: nothing more happens.
    assert plan_update(plan.service, tasks, T0 + timedelta(seconds=60)).empty


def test_failure_action_rollback_restores_the_previous_spec_and_completes() -> None:
    old = make_service(2)
    tasks = [running(old, s) for s in (1, 2)]
    svc = updating(old, "broken", UpdateConfig(parallelism=1, failure_action=FailureAction.ROLLBACK), T0)
    tasks = apply(tasks, plan_update(svc, tasks, T0))
    tasks = run_new(stop_old(tasks, T0 + timedelta(seconds=1)), T0 + timedelta(seconds=1), fail=True)
    plan = plan_update(svc, tasks, T0 + timedelta(seconds=2))
    assert plan.service is not None
    svc = plan.service
    assert svc.status.update_state is UpdateState.ROLLBACK_STARTED
    assert svc.spec == old.spec and svc.previous_spec is not None
    assert svc.previous_spec.task.container.image == "broken"

    now = T0 + timedelta(seconds=3)
    for _ in range(10):
        plan = plan_update(svc, tasks, now)
        if plan.service is not None:
            svc = plan.service
            break
        tasks = apply(tasks, plan)
        now += timedelta(seconds=1)
        tasks = run_new(stop_old(tasks, now), now)
    assert svc.status.update_state is UpdateState.ROLLBACK_COMPLETED
    live = [t for t in tasks if t.desired_state is TaskState.RUNNING]
    assert sorted(t.slot for t in live) == [1, 2]
    assert all(t.spec == old.spec.task for t in live)


def test_max_failure_ratio_tolerates_some_failures() -> None:
    old = make_service(4)
    tasks = [running(old, s) for s in range(1, 5)]
    svc = updating(old, "flaky", UpdateConfig(parallelism=1, max_failure_ratio=0.5), T0)
    tasks = apply(tasks, plan_update(svc, tasks, T0))
    tasks = run_new(stop_old(tasks, T0 + timedelta(seconds=1)), T0 + timedelta(seconds=1), fail=True)
    plan = plan_update(svc, tasks, T0 + timedelta(seconds=2))
    assert plan.service is None  # 1 failure of 4 slots is within 0.5
    assert [t.slot for t in plan.create] == [2]
