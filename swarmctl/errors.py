"""Errors of swarmctl; all derive from :class:`SwarmctlError`, and each carries the exit code it ends with.

The CLI prints ``str(error)`` after ``Error:`` on stderr and exits with ``error.exit_code``:

- 1: bad usage or input (a flag value, a stack file) or a request the manager refused;
- 2: the manager cannot be reached;
- 3: the change was applied but did not converge (the reason says why).
"""

from __future__ import annotations

from api.errors import ShoalError

EXIT_USAGE = 1
EXIT_UNREACHABLE = 2
EXIT_NOT_CONVERGED = 3


class SwarmctlError(ShoalError):
    """Root of swarmctl's errors."""

    exit_code = EXIT_USAGE


class InvalidValue(SwarmctlError):
    """A flag or field value that cannot be parsed (``--limit-memory 12Q``); ``what`` names it."""

    def __init__(self, what: str, value: object, reason: str) -> None:
        super().__init__(f"invalid {what} {value!r}: {reason}")
        self.what = what
        self.value = value
        self.reason = reason


class APIError(SwarmctlError):
    """The manager answered with an error status; ``message`` is its ``{"message": …}``."""

    def __init__(self, status: int, message: str, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.method = method
        self.path = path

    @property
    def not_found(self) -> bool:
        return self.status == 404


class ManagerUnreachable(SwarmctlError):
    """No connection to the manager at ``host``."""

    exit_code = EXIT_UNREACHABLE

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot reach the manager at {host}: {reason}")
        self.host = host
        self.reason = reason


class NotConverged(SwarmctlError):
    """A change that was applied but whose tasks did not all reach RUNNING; ``reason`` says why."""

    exit_code = EXIT_NOT_CONVERGED

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} did not converge: {reason}")
        self.what = what
        self.reason = reason


class TemplateError(SwarmctlError):
    """A ``--format`` template that does not parse or names a field the object lacks."""

    def __init__(self, message: str) -> None:
        super().__init__(f"template: {message}")
