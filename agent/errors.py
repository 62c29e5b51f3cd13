"""Errors of the agent daemon; all derive from :class:`AgentError`.

The local runtime has its own root (agent.runtime.errors.ContainerRuntimeError); executors turn runtime
failures into :class:`ExecutorError` so the task controller can tell "the task failed" from a bug.
"""

from __future__ import annotations

from api.errors import ShoalError


class AgentError(ShoalError):
    """Root of the agent's errors."""


class ExecutorError(AgentError):
    """An executor could not do what the task needed; the task is rejected or fails with this message."""

    def __init__(self, task_id: str, message: str) -> None:
        super().__init__(f"task {task_id}: {message}")
        self.task_id = task_id
        self.message = message


class TaskNotFound(ExecutorError):
    """The executor holds nothing for this task (never prepared, already removed, lost in a restart)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id, "no such task in the executor")


class ExecutorUnavailable(AgentError):
    """The chosen executor cannot run on this host (or is not part of this build yet)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"executor {name!r} is not available: {reason}")
        self.name = name
        self.reason = reason


class SessionRefused(AgentError):
    """A manager refused the agent's session; ``fatal`` ones (bad token, removed node) end the agent."""

    def __init__(self, code: str, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal
