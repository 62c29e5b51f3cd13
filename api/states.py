"""The task lifecycle, as SwarmKit defines it, with its allowed transitions.

A task only ever moves forward. The manager drives the first steps (NEW → PENDING by the allocator,
PENDING → ASSIGNED by the scheduler); the agent drives the rest (ACCEPTED … RUNNING) and reports how the
task ended. Any live task can be shut down, and a task that ended can only be marked for removal::

    NEW → PENDING → ASSIGNED → ACCEPTED → PREPARING → READY → STARTING → RUNNING → COMPLETE
                        │          │          │                   │          │   └→ FAILED
                        └──────────┴──────────┴→ REJECTED          └──────────┴→ FAILED
    any live state → SHUTDOWN;  ASSIGNED … RUNNING → ORPHANED (its node was lost)
    any state but REMOVE → REMOVE
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping

from api.errors import InvalidTransition


class TaskState(enum.Enum):
    """The state of a task, observed (task.status.state) or desired (task.desired_state)."""

    NEW = "new"
    PENDING = "pending"
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    PREPARING = "preparing"
    READY = "ready"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETE = "complete"
    SHUTDOWN = "shutdown"
    FAILED = "failed"
    REJECTED = "rejected"
    ORPHANED = "orphaned"
    REMOVE = "remove"

    @property
    def is_terminal(self) -> bool:
        """Whether the task has ended (nothing runs, nothing will)."""
        return self in TERMINAL_STATES

    @property
    def is_live(self) -> bool:
        """Whether the task may still be running or about to run."""
        return self not in TERMINAL_STATES

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, TaskState):
            return NotImplemented
        return _ORDER[self] < _ORDER[other]

    def __le__(self, other: object) -> bool:
        if not isinstance(other, TaskState):
            return NotImplemented
        return _ORDER[self] <= _ORDER[other]


# The order SwarmKit compares states in (e.g. "desired state > RUNNING" means "should stop").
_ORDER: dict[TaskState, int] = {s: i for i, s in enumerate(TaskState)}

TERMINAL_STATES: frozenset[TaskState] = frozenset(
    {
        TaskState.COMPLETE,
        TaskState.SHUTDOWN,
        TaskState.FAILED,
        TaskState.REJECTED,
        TaskState.ORPHANED,
        TaskState.REMOVE,
    }
)

_LIVE = [
    TaskState.NEW,
    TaskState.PENDING,
    TaskState.ASSIGNED,
    TaskState.ACCEPTED,
    TaskState.PREPARING,
    TaskState.READY,
    TaskState.STARTING,
    TaskState.RUNNING,
]


def _build_transitions() -> dict[TaskState, frozenset[TaskState]]:
    allowed: dict[TaskState, set[TaskState]] = {s: set() for s in TaskState}
    for here, nxt in itertools.pairwise(_LIVE):
        allowed[here].add(nxt)  # one step forward along the happy path
    for s in _LIVE:
        allowed[s].add(TaskState.SHUTDOWN)  # anything live can be stopped
    # The agent refuses a task it cannot run before it starts preparing it, or when preparing fails
    # (e.g. the image cannot be pulled), as SwarmKit's agent does.
    for s in (TaskState.ASSIGNED, TaskState.ACCEPTED, TaskState.PREPARING):
        allowed[s].add(TaskState.REJECTED)
    # Once the agent owns the task, anything from preparation on can fail.
    for s in _LIVE[_LIVE.index(TaskState.ACCEPTED) :]:
        allowed[s].add(TaskState.FAILED)
    allowed[TaskState.RUNNING].add(TaskState.COMPLETE)
    # A task whose node is lost is orphaned from the moment it was assigned to that node.
    for s in _LIVE[_LIVE.index(TaskState.ASSIGNED) :]:
        allowed[s].add(TaskState.ORPHANED)
    for s in TaskState:
        if s is not TaskState.REMOVE:
            allowed[s].add(TaskState.REMOVE)
    return {s: frozenset(targets) for s, targets in allowed.items()}


#: For each state, the states a task may move to next.
TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = _build_transitions()


def can_transition(current: TaskState, requested: TaskState) -> bool:
    """Whether a task in ``current`` may move to ``requested``."""
    return requested in TRANSITIONS[current]


def check_transition(current: TaskState, requested: TaskState, task_id: str = "") -> None:
    """Raise :class:`InvalidTransition` unless ``current → requested`` is allowed."""
    if requested not in TRANSITIONS[current]:
        raise InvalidTransition(task_id, current.name, requested.name)
