"""What a reconcile function returns, and the task helpers every orchestrator shares."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from api import Service, Task, TaskState, new_id
from api.objects import Meta, TaskStatus


@dataclass
class Plan:
    """Writes a reconcile wants: new tasks, changed tasks (desired states), tasks to delete, and when to look
    again (a restart delay running out) if nothing else happens before."""

    create: list[Task] = field(default_factory=list)
    update: list[Task] = field(default_factory=list)
    delete: list[Task] = field(default_factory=list)
    wake_at: datetime | None = None

    def wake_no_later_than(self, when: datetime) -> None:
        """Ask to be reconciled again by ``when``."""
        if self.wake_at is None or when < self.wake_at:
            self.wake_at = when

    def shut_down(self, task: Task) -> None:
        """Set the task's desired state to SHUTDOWN (its agent stops it)."""
        if task.desired_state < TaskState.SHUTDOWN:
            self.update.append(replace(task, desired_state=TaskState.SHUTDOWN))

    def merge(self, other: Plan) -> None:
        """Add another plan's writes to this one."""
        self.create += other.create
        self.update += other.update
        self.delete += other.delete
        if other.wake_at is not None:
            self.wake_no_later_than(other.wake_at)

    @property
    def empty(self) -> bool:
        """Whether the plan changes nothing."""
        return not (self.create or self.update or self.delete)


def new_task(service: Service, slot: int, now: datetime, node_id: str = "") -> Task:
    """A fresh task for ``service`` in ``slot`` (0 for global services, which use ``node_id`` instead)."""
    return Task(
        meta=Meta(id=new_id(), created_at=now, updated_at=now),
        service_id=service.meta.id,
        slot=slot,
        node_id=node_id,
        spec=service.spec.task,
        service_annotations=service.spec.annotations,
        desired_state=TaskState.RUNNING,
        status=TaskStatus(state=TaskState.NEW, timestamp=now, message="created"),
    )


def is_dirty(service: Service, task: Task) -> bool:
    """Whether the task runs an older spec than the service's (so a rolling update must replace it)."""
    return task.spec != service.spec.task


def wants_running(task: Task) -> bool:
    """The orchestrator still wants this task to run (it has not been told to stop)."""
    return task.desired_state <= TaskState.RUNNING


def group_by_slot(tasks: Iterable[Task]) -> dict[int, list[Task]]:
    """Tasks of a replicated service by slot, each slot's list oldest first."""
    slots: dict[int, list[Task]] = defaultdict(list)
    for t in tasks:
        slots[t.slot].append(t)
    for history in slots.values():
        history.sort(key=lambda t: (t.meta.created_at, t.meta.id))
    return dict(slots)


def group_by_node(tasks: Iterable[Task]) -> dict[str, list[Task]]:
    """Tasks of a global service by node, each node's list oldest first."""
    nodes: dict[str, list[Task]] = defaultdict(list)
    for t in tasks:
        nodes[t.node_id].append(t)
    for history in nodes.values():
        history.sort(key=lambda t: (t.meta.created_at, t.meta.id))
    return dict(nodes)
