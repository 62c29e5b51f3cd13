"""The replicated orchestrator: keep ``replicas`` slots of a service filled, restart what ends, and trim
each slot's history.

A slot is *active* while its newest task is wanted running (desired state ≤ RUNNING). That task may have
ended: then the restart policy decides whether a new task takes the slot (after the restart delay) or the
slot stays as it ended (``docker service ps`` shows it Complete/Failed and it still counts toward the
replicas, as in Docker). A task on a drained node is replaced at once. Scaling down shuts whole slots
down, choosing the least useful first: slots
whose task is not running, then slots on the nodes holding most of the service, then the highest numbers.
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import datetime

from api import Node, Service, Task, TaskState
from api.objects import NodeAvailability
from manager.orchestrator import restart
from manager.orchestrator.plan import Plan, group_by_slot, new_task, wants_running


def reconcile_replicated(
    service: Service, tasks: list[Task], nodes: dict[str, Node], now: datetime, history_limit: int = 5
) -> Plan:
    """The writes that bring ``service``'s tasks to its spec. ``tasks`` are all of the service's tasks."""
    plan = Plan()
    slots = group_by_slot(tasks)
    active: dict[int, Task] = {}
    for slot, history in slots.items():
        newest = history[-1]
        if not wants_running(newest):
            continue
        orphaned = restart.orphan_if_node_lost(newest, nodes, now)
        if orphaned is not None:
            newest = orphaned
            history[-1] = orphaned
            plan.update.append(orphaned)
        active[slot] = newest
        if restart.has_ended(newest):
            _restart_slot(plan, service, slot, newest, history, now)
        elif _drained(newest, nodes):
            # A drained node's tasks move elsewhere at once: no restart policy, no delay.
            _replace_in_plan(plan, restart.replace_ended(newest))
            plan.create.append(new_task(service, slot, now))

    _scale(plan, service, active, now)
    plan.delete += trim_history(slots, history_limit)
    return plan


def _drained(task: Task, nodes: dict[str, Node]) -> bool:
    node = nodes.get(task.node_id) if task.node_id else None
    return node is not None and node.spec.availability is NodeAvailability.DRAIN


def _restart_slot(
    plan: Plan, service: Service, slot: int, ended: Task, history: list[Task], now: datetime
) -> None:
    decision = restart.decide(service.spec.task.restart_policy, ended, history, now)
    if not decision.restart:
        return  # the slot stays as it ended
    assert decision.not_before is not None
    if decision.not_before > now:
        plan.wake_no_later_than(decision.not_before)
        return
    _replace_in_plan(plan, restart.replace_ended(ended))
    plan.create.append(new_task(service, slot, now))


def _replace_in_plan(plan: Plan, task: Task) -> None:
    """Put ``task`` in the plan's updates, superseding an earlier update of the same task."""
    plan.update = [t for t in plan.update if t.meta.id != task.meta.id]
    plan.update.append(task)


def _scale(plan: Plan, service: Service, active: dict[int, Task], now: datetime) -> None:
    want = service.spec.replicas
    if len(active) < want:
        free = (n for n in itertools.count(1) if n not in active)
        for _ in range(want - len(active)):
            plan.create.append(new_task(service, next(free), now))
    elif len(active) > want:
        per_node = Counter(t.node_id for t in active.values() if t.node_id)
        candidates = dict(active)
        for _ in range(len(active) - want):
            # Drop the least useful slot first: not running, then on the busiest node, then the highest
            # number; recount after each drop so the survivors stay spread over the nodes.
            slot, task = min(
                candidates.items(),
                key=lambda item: (
                    item[1].status.state is TaskState.RUNNING,
                    -per_node[item[1].node_id] if item[1].node_id else 0,
                    -item[0],
                ),
            )
            del candidates[slot]
            if task.node_id:
                per_node[task.node_id] -= 1
            if any(t.slot == slot for t in plan.create):
                plan.create = [t for t in plan.create if t.slot != slot]  # a restart planned above
            else:
                _replace_in_plan(plan, restart.replace_ended(task))


def trim_history(slots: dict[int, list[Task]], limit: int) -> list[Task]:
    """Tasks to delete so each slot keeps at most ``limit`` tasks; only stopped, unwanted ones go, oldest
    first."""
    doomed: list[Task] = []
    for history in slots.values():
        excess = len(history) - max(limit, 1)
        for task in history:
            if excess <= 0:
                break
            if task.status.state.is_terminal and not wants_running(task):
                doomed.append(task)
                excess -= 1
    return doomed
