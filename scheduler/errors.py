"""The scheduler's errors: one root, :class:`SchedulerError`, with typed subclasses that carry data."""

from __future__ import annotations

from api.errors import ShoalError


class SchedulerError(ShoalError):
    """Root of every error the scheduler raises on purpose."""


class InvalidExpression(SchedulerError):
    """A constraint, affinity or placement preference that cannot be parsed.

    ``expression`` is the text exactly as the user wrote it, so the message can point at it.
    """

    def __init__(self, expression: str, reason: str) -> None:
        super().__init__(f"invalid expression {expression!r}: {reason}")
        self.expression = expression
        self.reason = reason


class DuplicateNode(SchedulerError):
    """The node snapshot lists the same node id twice."""

    def __init__(self, node_id: str) -> None:
        super().__init__(f"node {node_id!r} appears twice in the snapshot")
        self.node_id = node_id


class DuplicateTask(SchedulerError):
    """The same task id was handed to the scheduler twice (in one call or across calls)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} was already scheduled")
        self.task_id = task_id
