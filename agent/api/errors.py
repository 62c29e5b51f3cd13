"""Errors of the local API, and the one place runtime errors become Docker's status codes.

Docker answers every error with ``{"message": "…"}``; the status says what kind it is: 400 bad
parameters, 404 no such object (networks too), 409 conflicts (names in use, wrong state, in-use objects,
host ports already published), 500 anything else (the runtime or the host's networking failed).
"""

from __future__ import annotations

from agent.network.errors import (
    AddressInUse,
    AmbiguousNetwork,
    EndpointExists,
    EndpointNotFound,
    InvalidNetworkConfig,
    LinkError,
    NetworkExists,
    NetworkInUse,
    NetworkNotFound,
    PortAlreadyAllocated,
    PredefinedNetwork,
    SandboxExists,
    SandboxNotFound,
)
from agent.runtime.errors import (
    AmbiguousContainer,
    AmbiguousImage,
    ArchiveError,
    ContainerNotFound,
    ContainerRuntimeError,
    ContainerStateConflict,
    ImageInUse,
    ImageNotFound,
    InvalidChange,
    InvalidContainerConfig,
    InvalidFilter,
    InvalidImage,
    InvalidReference,
    InvalidVolume,
    NameConflict,
    OCIRuntimeError,
    RegistryUnauthorized,
    RemoteNotFound,
    VolumeInUse,
    VolumeNotFound,
)
from api.errors import ShoalError


class LocalAPIError(ShoalError):
    """Root of the local API's own errors; ``status`` is the HTTP status to answer with."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadParameter(LocalAPIError):
    """A query parameter or body field that cannot be used (``name`` says which)."""

    status = 400

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"invalid parameter {name}: {reason}" if name else reason)
        self.name = name
        self.reason = reason


class NoSuchExec(LocalAPIError):
    """No exec instance has that id."""

    status = 404

    def __init__(self, exec_id: str) -> None:
        super().__init__(f"No such exec instance: {exec_id}")
        self.exec_id = exec_id


class NotSupported(LocalAPIError):
    """A request this runtime understands but does not implement (a TTY, an attached stdin…)."""

    status = 501

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is not supported by this runtime")
        self.what = what


_BAD_REQUEST = (
    InvalidContainerConfig,
    InvalidReference,
    InvalidFilter,
    InvalidChange,
    InvalidVolume,
    InvalidImage,
    ArchiveError,
    AmbiguousContainer,
    AmbiguousImage,
)
_CONFLICT = (NameConflict, ContainerStateConflict, ImageInUse, VolumeInUse)
# As agent/network/errors.py lays out: a port already published is a conflict, not a runtime failure.
_NETWORK_NOT_FOUND = (NetworkNotFound, SandboxNotFound, EndpointNotFound)
_NETWORK_CONFLICT = (
    PortAlreadyAllocated,
    AddressInUse,
    NetworkExists,
    NetworkInUse,
    EndpointExists,
    SandboxExists,
)
_NETWORK_BAD_REQUEST = (InvalidNetworkConfig, AmbiguousNetwork, LinkError, PredefinedNetwork)


def docker_error(exc: Exception) -> tuple[int, str]:
    """The HTTP status and Docker-style message for an error raised while handling a request."""
    if isinstance(exc, LocalAPIError):
        return exc.status, exc.message
    if isinstance(exc, ContainerNotFound):
        return 404, f"No such container: {exc.container}"
    if isinstance(exc, NameConflict):
        return 409, (
            f'Conflict. The container name "/{exc.container}" is already in use by container '
            f'"{exc.owner}". You have to remove (or rename) that container to be able to reuse that name.'
        )
    if isinstance(exc, ContainerStateConflict) and exc.operation.startswith("remove"):
        return 409, (
            f"You cannot remove a {exc.state} container {exc.container}. "
            "Stop the container before attempting removal or force remove"
        )
    if isinstance(exc, (ImageNotFound, VolumeNotFound, RemoteNotFound)):
        return 404, str(exc)
    if isinstance(exc, _CONFLICT + _NETWORK_CONFLICT):
        return 409, str(exc)
    if isinstance(exc, _NETWORK_NOT_FOUND):
        return 404, str(exc)
    if isinstance(exc, _NETWORK_BAD_REQUEST):
        return 400, str(exc)
    if isinstance(exc, OCIRuntimeError):
        # Docker: a command that cannot be found or run is the caller's mistake (400), else the runtime's.
        return (400 if exc.exit_code in (126, 127) else 500), exc.message
    if isinstance(exc, _BAD_REQUEST):
        return 400, str(exc)
    if isinstance(exc, RegistryUnauthorized):
        return 401, str(exc)
    if isinstance(exc, (ContainerRuntimeError, ShoalError)):
        return 500, str(exc)
    return 500, f"{type(exc).__name__}: {exc}"
