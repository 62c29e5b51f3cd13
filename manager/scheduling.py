"""The leader's use of the scheduler: a snapshot of the cluster in, assignments and reasons out.

The scheduler is pure and speaks its own small types; ``scheduler.from_api`` converts the object model.
This module decides *which* tasks count: a node carries the tasks that still hold resources on it (assigned
and wanted running, not yet ended).
"""

from __future__ import annotations

from collections.abc import Iterable

from api import Node, Task, TaskState
from scheduler import Scheduler, SchedulerConfig, ScheduleResult
from scheduler.from_api import node_snapshot, task_request


def holds_resources(task: Task) -> bool:
    """Whether the task occupies its node (ports, reservations, slots) as far as placement goes."""
    return (
        bool(task.node_id)
        and task.desired_state <= TaskState.RUNNING
        and task.status.state >= TaskState.ASSIGNED
        and not task.status.state.is_terminal
    )


def place(
    nodes: Iterable[Node],
    tasks_on: dict[str, list[Task]],
    pending: list[Task],
    config: SchedulerConfig | None = None,
) -> ScheduleResult:
    """Where each pending task goes (or why it fits nowhere), given the nodes and what already runs there."""
    snapshot = [
        node_snapshot(n, [t for t in tasks_on.get(n.meta.id, []) if holds_resources(t)]) for n in nodes
    ]
    return Scheduler(snapshot, config).schedule(task_request(t) for t in pending)
