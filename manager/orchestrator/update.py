"""Rolling updates and rollbacks, decided from the service and its tasks alone.

When a service's task template changes, the API sets ``status.update_state`` to UPDATING (or, for a
rollback, ROLLBACK_STARTED with the previous spec restored). This planner then replaces the slots whose
newest task runs an older spec, ``parallelism`` slots at a time (0: all at once), waiting ``delay`` after
a batch's tasks run before starting more. ``order`` stop-first shuts the old task down as the new one is
created; start-first keeps the old one until the new one runs.

A new task that fails within ``monitor`` of starting counts as a failure; when failures exceed
``max_failure_ratio`` of the slots, ``failure_action`` applies: pause (the update stops where it is),
continue, or rollback (back to the previous spec with the rollback config). Everything is derived from the
tasks and the update's start time, so a new leader picks an update up where the old one left it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from api import Service, Task, TaskState
from api.objects import FailureAction, ServiceMode, ServiceStatus, UpdateConfig, UpdateOrder, UpdateState
from manager.orchestrator.plan import Plan, group_by_node, group_by_slot, is_dirty, new_task, wants_running

_ROLLING_BACK = (UpdateState.ROLLBACK_STARTED,)
_IN_PROGRESS = (UpdateState.UPDATING, *_ROLLING_BACK)
_FAILED = frozenset({TaskState.FAILED, TaskState.REJECTED})


@dataclass
class UpdatePlan(Plan):
    """A plan that may also change the service (its update status, or its spec on rollback)."""

    service: Service | None = None


def _ns(ns: int) -> timedelta:
    return timedelta(microseconds=ns // 1000)


def config_for(service: Service) -> UpdateConfig:
    """The update config in force: the rollback config while rolling back."""
    if service.status.update_state in _ROLLING_BACK:
        return service.spec.rollback_config
    return service.spec.update_config


def plan_update(service: Service, tasks: list[Task], now: datetime) -> UpdatePlan:
    """The next step of ``service``'s rolling update (nothing if no update is in progress)."""
    plan = UpdatePlan()
    status = service.status
    if status.update_state not in _IN_PROGRESS:
        return plan
    cfg = config_for(service)
    started = status.update_started_at or now
    # Replicated services update slot by slot, global services node by node.
    is_global = service.spec.mode is ServiceMode.GLOBAL
    if is_global:
        slots = group_by_node(tasks)
    else:
        slots = {f"{slot:09d}": history for slot, history in group_by_slot(tasks).items()}

    fresh = [t for t in tasks if not is_dirty(service, t) and t.meta.created_at >= started]
    failures = [t for t in fresh if _failed_while_monitored(t, cfg)]
    dirty: list[Task] = []
    in_flight = 0
    for _key, history in sorted(slots.items()):
        live = [t for t in history if wants_running(t)]
        if not live:
            continue
        newest = live[-1]
        if is_dirty(service, newest):
            dirty.append(newest)
            continue
        if newest.status.state < TaskState.RUNNING and not newest.status.state.is_terminal:
            in_flight += 1
        elif newest.status.state is TaskState.RUNNING:
            # start-first: the old task of the slot goes once its replacement runs.
            for old in live[:-1]:
                plan.shut_down(old)

    total = max(len(slots), 1)
    if failures and len(failures) > cfg.max_failure_ratio * total:
        action = cfg.failure_action
        if status.update_state in _ROLLING_BACK:
            action = FailureAction.PAUSE  # a failing rollback stops; it never rolls back the rollback
        if action is FailureAction.PAUSE:
            return _with_status(plan, service, _paused(service, failures[0], now))
        if action is FailureAction.ROLLBACK and service.previous_spec is not None:
            return _rollback(plan, service, failures[0], now)

    if not dirty:
        if in_flight == 0:
            done = (
                UpdateState.ROLLBACK_COMPLETED
                if status.update_state in _ROLLING_BACK
                else UpdateState.COMPLETED
            )
            message = "rollback completed" if done is UpdateState.ROLLBACK_COMPLETED else "update completed"
            return _with_status(
                plan,
                service,
                replace(status, update_state=done, update_message=message, update_completed_at=now),
            )
        return plan

    room = (cfg.parallelism or len(dirty)) - in_flight
    last_run = max((t.status.timestamp for t in fresh if t.status.state is TaskState.RUNNING), default=None)
    if room > 0 and last_run is not None and cfg.delay_ns and now < last_run + _ns(cfg.delay_ns):
        plan.wake_no_later_than(last_run + _ns(cfg.delay_ns))
        return plan
    for old in dirty[: max(room, 0)]:
        if is_global:
            plan.create.append(new_task(service, 0, now, node_id=old.node_id))
        else:
            plan.create.append(new_task(service, old.slot, now))
        if cfg.order is UpdateOrder.STOP_FIRST:
            plan.shut_down(old)
    return plan


def _failed_while_monitored(task: Task, cfg: UpdateConfig) -> bool:
    if task.status.state not in _FAILED:
        return False
    # Docker monitors each task "after each task update", that is from the moment the slot was updated
    # (the new task's creation); a task that fails later no longer counts against the update.
    return task.status.timestamp - task.meta.created_at <= _ns(cfg.monitor_ns)


def _paused(service: Service, culprit: Task, now: datetime) -> ServiceStatus:
    state = (
        UpdateState.ROLLBACK_PAUSED if service.status.update_state in _ROLLING_BACK else UpdateState.PAUSED
    )
    return replace(
        service.status,
        update_state=state,
        update_message=f"update paused due to failure or early termination of task {culprit.meta.id}",
    )


def _rollback(plan: UpdatePlan, service: Service, culprit: Task, now: datetime) -> UpdatePlan:
    assert service.previous_spec is not None
    status = replace(
        service.status,
        update_state=UpdateState.ROLLBACK_STARTED,
        update_message=f"update rolled back due to failure or early termination of task {culprit.meta.id}",
        update_started_at=now,
        update_completed_at=None,
    )
    plan.service = replace(service, spec=service.previous_spec, previous_spec=service.spec, status=status)
    return plan


def _with_status(plan: UpdatePlan, service: Service, status: ServiceStatus) -> UpdatePlan:
    plan.service = replace(service, status=status)
    return plan
