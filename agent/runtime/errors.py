"""Errors of the agent's local runtime (images, snapshots, containers).

One root, :class:`ContainerRuntimeError`, with typed subclasses per area that carry data. The local API maps
them to Docker's status codes in one place.
"""

from __future__ import annotations

from api.errors import ShoalError


class ContainerRuntimeError(ShoalError):
    """Root of every error the local runtime raises on purpose."""


# --- containers -------------------------------------------------------------------------------------------


class ContainerError(ContainerRuntimeError):
    """Root of the container lifecycle's errors; ``container`` is the id or name asked for."""

    def __init__(self, container: str, message: str) -> None:
        super().__init__(f"container {container}: {message}" if container else message)
        self.container = container
        self.message = message


class ContainerNotFound(ContainerError):
    """No container has that id, id prefix or name."""

    def __init__(self, container: str) -> None:
        super().__init__(container, "no such container")


class NameConflict(ContainerError):
    """The name is already used by another container (``owner`` is its id)."""

    def __init__(self, name: str, owner: str) -> None:
        super().__init__(name, f"name already in use by container {owner}")
        self.owner = owner


class AmbiguousContainer(ContainerError):
    """An id prefix matches several containers (``matches`` are their ids)."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        super().__init__(prefix, "multiple containers match this id prefix")
        self.matches = matches


class ContainerStateConflict(ContainerError):
    """The container is in a state that does not allow the operation (``state`` is that state)."""

    def __init__(self, container: str, state: str, operation: str) -> None:
        super().__init__(container, f"cannot {operation}: container is {state}")
        self.state = state
        self.operation = operation


class InvalidContainerConfig(ContainerError):
    """A container's configuration is invalid; ``field`` names the offending option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__("", f"{field}: {message}")
        self.field = field


class OCIRuntimeError(ContainerError):
    """The OCI runtime (runc) or the monitor (conmon) failed; ``exit_code`` follows Docker (125/126/127)."""

    def __init__(self, container: str, message: str, exit_code: int = 125) -> None:
        super().__init__(container, message)
        self.exit_code = exit_code


# --- volumes ----------------------------------------------------------------------------------------------


class VolumeError(ContainerRuntimeError):
    """Root of the volume store's errors; ``volume`` is the volume's name (may be empty)."""

    def __init__(self, volume: str, message: str) -> None:
        super().__init__(message)
        self.volume = volume
        self.message = message


class VolumeNotFound(VolumeError):
    """No volume has that name."""

    def __init__(self, volume: str) -> None:
        super().__init__(volume, f"get {volume}: no such volume")


class VolumeInUse(VolumeError):
    """Removal refused: containers (``containers``, their ids) use the volume."""

    def __init__(self, volume: str, containers: list[str]) -> None:
        super().__init__(volume, f"remove {volume}: volume is in use - [{', '.join(containers)}]")
        self.containers = containers


class InvalidVolume(VolumeError):
    """A volume name, option, mount specification or filter that cannot be used."""

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__(spec, f"invalid volume specification {spec!r}: {reason}" if spec else reason)
        self.reason = reason


# --- images / snapshots: subclasses below ------------------------------------------------------------------


class ImageError(ContainerRuntimeError):
    """Root of the image store's, archives' and registry client's errors."""


class InvalidReference(ImageError):
    """A string that is not a valid image reference, digest or filter; ``reason`` says what is wrong."""

    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"invalid reference format {reference!r}: {reason}")
        self.reference = reference
        self.reason = reason


class InvalidFilter(ImageError):
    """A list filter that is unknown or malformed (``label=``, ``dangling=``, ``reference=``…)."""

    def __init__(self, filter_: str, reason: str) -> None:
        super().__init__(f"invalid filter {filter_!r}: {reason}")
        self.filter = filter_
        self.reason = reason


class ImageNotFound(ImageError):
    """No local image matches the reference, id or id prefix."""

    def __init__(self, reference: str) -> None:
        super().__init__(f"No such image: {reference}")
        self.reference = reference


class AmbiguousImage(ImageError):
    """An id prefix matches several images (``matches`` are their ids)."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        super().__init__(f"image id prefix {prefix!r} is ambiguous ({len(matches)} images match)")
        self.prefix = prefix
        self.matches = matches


class ImageInUse(ImageError):
    """Removal refused without force: containers use the image, or it has several references."""

    def __init__(
        self, reference: str, image_id: str, reason: str, containers: list[str] | None = None
    ) -> None:
        super().__init__(f"conflict: unable to remove {reference} (must force) - {reason}")
        self.reference = reference
        self.image_id = image_id
        self.reason = reason
        self.containers = containers or []


class BlobNotFound(ImageError):
    """A blob the image needs is not in the store."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"blob {digest} not found")
        self.digest = digest


class BlobCorrupted(ImageError):
    """Content does not match its digest (or declared size): detected on write or on read."""

    def __init__(self, expected: str, actual: str, where: str = "", size: int | None = None) -> None:
        detail = f" ({where})" if where else ""
        super().__init__(f"content corrupted{detail}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual
        self.where = where
        self.size = size


class InvalidImage(ImageError):
    """A manifest, index or config that cannot be used (malformed, unsupported media type or schema)."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


class InvalidChange(ImageError):
    """An ``import --change`` line that is not a supported Dockerfile instruction."""

    def __init__(self, line: str, reason: str) -> None:
        super().__init__(f"invalid change {line!r}: {reason}")
        self.line = line
        self.reason = reason


class ArchiveError(ImageError):
    """An image archive (docker save, OCI layout, rootfs tarball) that cannot be read."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid archive: {reason}")
        self.reason = reason


class RegistryError(ImageError):
    """A registry request failed; ``status`` is the HTTP status (0 when none) and ``code`` the error code."""

    def __init__(self, registry: str, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(f"registry {registry}: {message}")
        self.registry = registry
        self.message = message
        self.status = status
        self.code = code


class RegistryUnauthorized(RegistryError):
    """The registry refused the credentials (or wants some and none are configured)."""


class InsecureRegistry(RegistryError):
    """The registry does not speak verified HTTPS and is not listed as insecure."""


class RemoteNotFound(RegistryError):
    """The registry has no such repository, tag or manifest."""


class PlatformNotFound(RegistryError):
    """A manifest list / OCI index has no manifest for the wanted platform."""


class SnapshotError(ContainerRuntimeError):
    """Root of the snapshotters' errors; ``container`` is the snapshot's container id (may be empty)."""

    def __init__(self, container: str, message: str) -> None:
        super().__init__(f"snapshot {container}: {message}" if container else message)
        self.container = container
        self.message = message


class SnapshotNotFound(SnapshotError):
    """No snapshot exists for that container."""

    def __init__(self, container: str) -> None:
        super().__init__(container, "no such snapshot")


class SnapshotExists(SnapshotError):
    """A snapshot already exists for that container."""

    def __init__(self, container: str) -> None:
        super().__init__(container, "snapshot already exists")


class MountError(SnapshotError):
    """mount(2) or umount(2) failed; ``errno`` is the error number."""

    def __init__(self, container: str, message: str, errno: int = 0) -> None:
        super().__init__(container, message)
        self.errno = errno


class UnsafeLayer(SnapshotError):
    """A layer tar entry that would escape the layer directory or cannot be applied."""

    def __init__(self, entry: str, reason: str) -> None:
        super().__init__("", f"layer entry {entry!r}: {reason}")
        self.entry = entry
        self.reason = reason
