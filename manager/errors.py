"""Errors of the manager; all derive from :class:`ManagerError`. The API maps each to one HTTP status."""

from __future__ import annotations

from api.errors import ShoalError


class ManagerError(ShoalError):
    """Root of the manager's errors."""


class NotFound(ManagerError):
    """No object of that kind with that id (or name)."""

    def __init__(self, kind: str, ref: str) -> None:
        super().__init__(f"{kind.rstrip('s')} {ref} not found")
        self.kind = kind
        self.ref = ref


class AlreadyExists(ManagerError):
    """An object with that id (or name) exists already."""

    def __init__(self, kind: str, ref: str) -> None:
        super().__init__(f"{kind.rstrip('s')} {ref} already exists")
        self.kind = kind
        self.ref = ref


class Conflict(ManagerError):
    """The object changed (or vanished) since it was read: read it again and retry the change."""

    def __init__(self, kind: str, ref: str, version: int) -> None:
        super().__init__(
            f"update out of sequence: {kind.rstrip('s')} {ref} changed since version {version}; retry"
        )
        self.kind = kind
        self.ref = ref
        self.version = version


class InvalidSpec(ManagerError):
    """A spec that decodes but makes no sense (a bad name, a negative count, an unparsable constraint)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid {field}: {message}")
        self.field = field
        self.message = message


class InUse(ManagerError):
    """An object others depend on (a network used by a service, a secret referenced by a task)."""

    def __init__(self, kind: str, ref: str, user: str) -> None:
        super().__init__(f"{kind.rstrip('s')} {ref} is in use by {user}")
        self.kind = kind
        self.ref = ref
        self.user = user


class NodeNotDown(ManagerError):
    """Removing a node whose agent is still connected, without force (Docker's wording)."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"node {ref} is not down and can't be removed (use --force)")
        self.ref = ref


class Unauthenticated(ManagerError):
    """A request that needs a client certificate of this cluster and came without a valid one."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Forbidden(ManagerError):
    """A caller whose certificate is valid but does not allow this (a worker calling the manager's API,
    a removed node), or a join token that admits nobody."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unavailable(ManagerError):
    """This manager cannot serve the request now (no session with the node that could); ``message`` says
    what to do instead."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
