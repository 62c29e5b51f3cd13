"""The root of Shoal's error hierarchy and the model's own errors.

Every package has one error root that derives from :class:`ShoalError`, with typed subclasses that carry
data. The manager's API maps them to HTTP statuses in one place; the CLI prints ``str(error)`` as one line.
"""

from __future__ import annotations


class ShoalError(Exception):
    """Root of every error Shoal raises on purpose."""


class ModelError(ShoalError):
    """Root of the object model's errors (api/)."""


class CodecError(ModelError):
    """Input that cannot be decoded into a model object; ``field`` names where, as a dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class InvalidTransition(ModelError):
    """A task state change that the lifecycle does not allow."""

    def __init__(self, task_id: str, current: str, requested: str) -> None:
        super().__init__(f"task {task_id or '?'}: cannot move from {current} to {requested}")
        self.task_id = task_id
        self.current = current
        self.requested = requested
