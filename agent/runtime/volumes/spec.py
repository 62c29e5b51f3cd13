"""What a user asks to mount, in Docker's syntaxes, and how it becomes the container's mounts.

* ``-v`` / ``HostConfig.Binds``: ``/host:/ctr[:opts]`` (a bind), ``name:/ctr[:opts]`` (a named volume),
  ``/ctr`` (an anonymous volume); options ``ro``/``rw``, ``nocopy``, a propagation mode, and the SELinux
  ``z``/``Z`` (accepted, without effect here).
* ``--mount`` / ``HostConfig.Mounts``: the same as typed fields (:class:`MountRequest`).
* ``--volumes-from`` / ``HostConfig.VolumesFrom``: ``container[:ro|:rw]``.

:func:`plan_mounts` merges them the way Docker's daemon does: the mounts of ``volumes-from`` containers
first, then the user's binds and volumes replace any at the same mount point, then every path of the
image's ``VOLUME`` (and ``Config.Volumes``) not yet covered gets an anonymous volume.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from agent.runtime.containers.config import PROPAGATIONS, Mount
from agent.runtime.errors import InvalidVolume
from agent.runtime.volumes.store import validate_name

_MODES = frozenset({"ro", "rw", "z", "Z", "nocopy", *PROPAGATIONS})


@dataclass(frozen=True)
class MountRequest:
    """One mount as asked for: ``type`` is ``bind`` or ``volume``; an empty volume ``source`` is anonymous."""

    type: str
    target: str
    source: str = ""
    read_only: bool = False
    propagation: str = ""
    no_copy: bool = False
    create_host_path: bool = True


def _clean_target(target: str, spec: str) -> str:
    if not target.startswith("/"):
        raise InvalidVolume(spec, f"invalid mount config: mount path must be absolute: {target!r}")
    cleaned = posixpath.normpath(target)
    if cleaned == "/":
        raise InvalidVolume(spec, "invalid mount config: destination can't be '/'")
    return cleaned


def parse_bind(spec: str) -> MountRequest:
    """Parse one ``-v`` value (see the module docstring)."""
    parts = spec.split(":")
    if not spec or len(parts) > 3 or any(not p for p in parts):
        raise InvalidVolume(spec, "expected [source:]destination[:options]")
    if len(parts) == 1:
        return MountRequest("volume", _clean_target(parts[0], spec))
    source, target = parts[0], _clean_target(parts[1], spec)
    modes = parts[2].split(",") if len(parts) == 3 else []
    unknown = [m for m in modes if m not in _MODES]
    if unknown:
        raise InvalidVolume(spec, f"invalid mode: {','.join(unknown)}")
    if "ro" in modes and "rw" in modes:
        raise InvalidVolume(spec, "invalid mode: ro and rw are exclusive")
    propagations = [m for m in modes if m in PROPAGATIONS]
    if len(propagations) > 1:
        raise InvalidVolume(spec, "invalid mode: more than one propagation mode")
    read_only = "ro" in modes
    if source.startswith("/"):
        if "nocopy" in modes:
            raise InvalidVolume(spec, "invalid mode: nocopy applies to volumes only")
        return MountRequest(
            "bind",
            target,
            posixpath.normpath(source),
            read_only,
            propagations[0] if propagations else "",
        )
    if propagations:
        raise InvalidVolume(spec, "invalid mode: propagation applies to bind mounts only")
    return MountRequest("volume", target, validate_name(source), read_only, no_copy="nocopy" in modes)


def parse_volumes_from(spec: str) -> tuple[str, bool | None]:
    """``container[:ro|:rw]`` → (container, read-only override or None to keep each mount's mode)."""
    name, sep, mode = spec.partition(":")
    if not name or (sep and mode not in ("ro", "rw")):
        raise InvalidVolume(spec, "expected container[:ro|:rw]")
    return name, (mode == "ro") if sep else None


def request(
    type_: str,
    target: str,
    source: str = "",
    read_only: bool = False,
    propagation: str = "",
    no_copy: bool = False,
) -> MountRequest:
    """A ``--mount`` request, checked like :func:`parse_bind` checks a ``-v`` value."""
    label = f"type={type_},target={target}"
    if type_ not in ("bind", "volume"):
        raise InvalidVolume(label, f"mount type {type_!r} is not supported here")
    target = _clean_target(target, label)
    if propagation and (type_ != "bind" or propagation not in PROPAGATIONS):
        raise InvalidVolume(label, f"invalid propagation {propagation!r}")
    if type_ == "bind":
        if not source.startswith("/"):
            raise InvalidVolume(label, "bind source must be an absolute path")
        if no_copy:
            raise InvalidVolume(label, "nocopy applies to volumes only")
        # --mount does not create a missing host path (unlike -v).
        return MountRequest("bind", target, posixpath.normpath(source), read_only, propagation, False, False)
    return MountRequest("volume", target, validate_name(source) if source else "", read_only, "", no_copy)


@dataclass(frozen=True)
class PlannedMount:
    """A mount decided by :func:`plan_mounts`; ``copy`` asks for Docker's copy-on-first-mount."""

    mount: Mount
    copy: bool = False


@dataclass(frozen=True)
class VolumeSource:
    """How :func:`plan_mounts` reaches volumes and other containers."""

    volume_path: Callable[[str | None, bool], tuple[str, str]]
    """(name or None for a new anonymous volume, anonymous?) → (the volume's name, its data directory)."""
    container_mounts: Callable[[str], Sequence[Mount]]
    """A container reference → its mounts (for ``volumes-from``)."""


def plan_mounts(
    requests: Sequence[MountRequest],
    anonymous_targets: Iterable[str],
    volumes_from: Sequence[str],
    source: VolumeSource,
    tmpfs_targets: Iterable[str] = (),
) -> list[PlannedMount]:
    """The container's mounts, in Docker's order of precedence (see the module docstring)."""
    planned: dict[str, PlannedMount] = {}
    for spec in volumes_from:
        ref, read_only = parse_volumes_from(spec)
        for mount in source.container_mounts(ref):
            inherited = mount if read_only is None else replace(mount, read_only=read_only)
            planned[mount.target] = PlannedMount(inherited)
    seen: set[str] = set()
    for req in requests:
        if req.target in seen:
            raise InvalidVolume(req.target, "duplicate mount point")
        seen.add(req.target)
        if req.type == "bind":
            mount = Mount(
                "bind", req.source, req.target, req.source, req.read_only, req.propagation or "rprivate"
            )
            planned[req.target] = PlannedMount(mount)
        else:
            name, path = source.volume_path(req.source or None, not req.source)
            mount = Mount("volume", name, req.target, path, req.read_only, named=bool(req.source))
            planned[req.target] = PlannedMount(mount, copy=not req.no_copy)
    covered = set(planned) | {posixpath.normpath(t) for t in tmpfs_targets}
    for target in anonymous_targets:
        cleaned = _clean_target(target, target)
        if cleaned in covered:
            continue
        covered.add(cleaned)
        name, path = source.volume_path(None, True)
        planned[cleaned] = PlannedMount(Mount("volume", name, cleaned, path, named=False), copy=True)
    return list(planned.values())
