"""Named and anonymous volumes with the ``local`` driver: one directory per volume under the state dir.

Layout under ``root``::

    <name>/volume.json     name, driver, labels, options, creation time
    <name>/_data/          what containers see (bind-mounted at the mount point)

A volume is "in use" while any container (running or not) mounts it; who uses what is the container
runtime's knowledge, so the store asks through the ``users`` callback (volume name → container ids).
Anonymous volumes carry Docker's label ``com.docker.volume.anonymous``; ``prune`` removes only those
unless asked for ``all``, as Docker 23+ does.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.runtime.errors import InvalidVolume, VolumeError, VolumeInUse, VolumeNotFound
from agent.runtime.snapshots.layers import secure_join

DRIVER = "local"
ANONYMOUS_LABEL = "com.docker.volume.anonymous"
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
META = "volume.json"
DATA = "_data"
LIST_FILTERS = frozenset({"name", "label", "dangling", "driver"})
PRUNE_FILTERS = frozenset({"label", "label!", "all"})

Users = Callable[[str], Collection[str]]
"""``users(volume_name)`` → ids of the containers that mount the volume."""


def validate_name(name: str) -> str:
    """Docker's rule for volume names (two characters at least, no slashes)."""
    if not NAME_RE.match(name):
        reason = (
            "volume name is too short, names should be at least two alphanumeric characters"
            if len(name) < 2
            else "includes invalid characters for a local volume name, only "
            '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed'
        )
        raise InvalidVolume(name, reason)
    return name


def _rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@dataclass(frozen=True)
class Volume:
    """One volume: its name, where its data lives, and what it was created with."""

    name: str
    mountpoint: Path
    created_at: str
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)
    driver: str = DRIVER

    @property
    def anonymous(self) -> bool:
        """Made for one container (an image's VOLUME or ``-v /path``), not by name."""
        return ANONYMOUS_LABEL in self.labels

    def docker(self, usage: tuple[int, int] | None = None) -> dict[str, Any]:
        """The object ``GET /volumes/{name}`` returns (``usage``: size in bytes, reference count)."""
        out: dict[str, Any] = {
            "CreatedAt": self.created_at,
            "Driver": self.driver,
            "Labels": dict(self.labels),
            "Mountpoint": str(self.mountpoint),
            "Name": self.name,
            "Options": dict(self.options),
            "Scope": "local",
        }
        if usage is not None:
            out["UsageData"] = {"Size": usage[0], "RefCount": usage[1]}
        return out


def _label_matches(labels: Mapping[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _truthy(value: str, key: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0"):
        raise InvalidVolume("", f"invalid filter '{key}={value}': expected true or false")
    return lowered in ("true", "1")


def check_filters(filters: Mapping[str, Sequence[str]], known: frozenset[str]) -> None:
    """Reject filter keys the operation does not know."""
    for key in filters:
        if key not in known:
            raise InvalidVolume("", f"invalid filter {key!r}")


def tree_size(path: Path) -> int:
    """Bytes of the regular files below ``path`` (hard links counted once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(dirpath, name))
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_size
    return total


class VolumeStore:
    """The volumes of one host (see the module docstring)."""

    def __init__(self, root: Path | str, users: Users | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.users: Users = users or (lambda _name: ())
        self._lock = threading.RLock()

    def _dir(self, name: str) -> Path:
        return self.root / validate_name(name)

    def _load(self, directory: Path) -> Volume:
        meta = json.loads((directory / META).read_text())
        return Volume(
            name=meta["name"],
            mountpoint=directory / DATA,
            created_at=meta.get("created_at", ""),
            labels=dict(meta.get("labels") or {}),
            options=dict(meta.get("options") or {}),
            driver=meta.get("driver", DRIVER),
        )

    def get(self, name: str) -> Volume:
        """The volume called ``name``; raises :class:`VolumeNotFound`."""
        try:
            directory = self._dir(name)
        except InvalidVolume:
            raise VolumeNotFound(name) from None
        try:
            return self._load(directory)
        except (FileNotFoundError, ValueError, KeyError):
            raise VolumeNotFound(name) from None

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
        except VolumeNotFound:
            return False
        return True

    def create(
        self,
        name: str | None = None,
        *,
        driver: str = DRIVER,
        labels: Mapping[str, str] | None = None,
        options: Mapping[str, str] | None = None,
        anonymous: bool = False,
    ) -> Volume:
        """Create a volume (a random name when none is given); an existing name returns that volume."""
        if driver not in ("", DRIVER):
            raise InvalidVolume(name or "", f"volume driver {driver!r} is not supported (only {DRIVER!r})")
        if options:
            raise InvalidVolume(
                name or "", f"the {DRIVER} driver takes no options here ({', '.join(options)})"
            )
        name = validate_name(name) if name else os.urandom(32).hex()
        all_labels = dict(labels or {})
        if anonymous:
            all_labels[ANONYMOUS_LABEL] = ""
        with self._lock:
            with contextlib.suppress(VolumeNotFound):
                return self.get(name)
            directory = self.root / name
            staging = self.root / f".tmp-{name[:32]}-{os.urandom(4).hex()}"
            (staging / DATA).mkdir(parents=True)
            (staging / DATA).chmod(0o755)
            meta = {"name": name, "driver": DRIVER, "labels": all_labels, "options": {}}
            meta["created_at"] = _rfc3339(time.time())
            (staging / META).write_text(json.dumps(meta, sort_keys=True))
            try:
                os.rename(staging, directory)
            except OSError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise VolumeError(name, f"cannot create volume {name}: {exc.strerror}") from None
            return self._load(directory)

    def list(self, filters: Mapping[str, Sequence[str]] | None = None) -> list[Volume]:
        """Every volume by name, narrowed by the filters ``name``, ``label``, ``dangling``, ``driver``."""
        filters = filters or {}
        check_filters(filters, LIST_FILTERS)
        out = []
        for directory in sorted(self.root.iterdir()):
            if directory.name.startswith(".") or not (directory / META).is_file():
                continue
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
                volume = self._load(directory)
                if self._matches(volume, filters):
                    out.append(volume)
        return out

    def _matches(self, volume: Volume, filters: Mapping[str, Sequence[str]]) -> bool:
        names = filters.get("name", ())
        if names and not any(n in volume.name for n in names):
            return False
        drivers = filters.get("driver", ())
        if drivers and volume.driver not in drivers:
            return False
        if not all(_label_matches(volume.labels, w) for w in filters.get("label", ())):
            return False
        return all(
            _truthy(v, "dangling") == (not self.users(volume.name)) for v in filters.get("dangling", ())
        )

    def usage(self, volume: Volume) -> tuple[int, int]:
        """Bytes stored and the number of containers that use it (``system df``'s view)."""
        return tree_size(volume.mountpoint), len(self.users(volume.name))

    def remove(self, name: str, *, force: bool = False) -> None:
        """Delete a volume and its data; refused while a container uses it (``force``: missing is fine)."""
        with self._lock:
            try:
                self.get(name)
            except VolumeNotFound:
                if force:
                    return
                raise
            users = sorted(self.users(name))
            if users:
                raise VolumeInUse(name, users)
            self._delete(self.root / name)

    def _delete(self, directory: Path) -> None:
        # Rename first: a half-deleted volume must not look like a valid one after a crash.
        trash = self.root / f".tmp-rm-{directory.name[:32]}-{os.urandom(4).hex()}"
        os.rename(directory, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def prune(self, filters: Mapping[str, Sequence[str]] | None = None) -> tuple[builtins.list[str], int]:
        """Delete unused volumes: anonymous ones only, or every unused one with ``all=true``.

        Returns the names deleted and the bytes reclaimed.
        """
        filters = filters or {}
        check_filters(filters, PRUNE_FILTERS)
        every = any(_truthy(v, "all") for v in filters.get("all", ()))
        deleted: list[str] = []
        reclaimed = 0
        with self._lock:
            for volume in self.list():
                if not (every or volume.anonymous) or self.users(volume.name):
                    continue
                if not all(_label_matches(volume.labels, w) for w in filters.get("label", ())):
                    continue
                if any(_label_matches(volume.labels, w) for w in filters.get("label!", ())):
                    continue
                size = tree_size(volume.mountpoint)
                with contextlib.suppress(OSError):
                    self._delete(self.root / volume.name)
                    deleted.append(volume.name)
                    reclaimed += size
        return deleted, reclaimed

    def remove_stale(self) -> None:
        """Delete what a crash left half-made or half-deleted."""
        for tmp in self.root.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def copy_image_content(rootfs: Path, target: str, volume: Volume) -> bool:
    """Docker's copy-on-first-mount: fill an empty volume with what the image has at ``target``.

    Nothing is copied when the volume already holds something or the image has no directory there;
    the volume's root takes the directory's owner and mode, so a non-root process can use it. Returns
    True when something was copied.
    """
    source = secure_join(rootfs, target.rstrip("/") + "/_").parent  # every component resolved in rootfs
    dest = volume.mountpoint
    if any(dest.iterdir()) or not source.is_dir() or source.is_symlink():
        return False
    entries = list(source.iterdir())
    if entries:
        # cp -a keeps owners, modes, times, links, devices and xattrs, which shutil would not.
        proc = subprocess.run(
            ["cp", "-a", "--", *[str(e) for e in entries], str(dest)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise VolumeError(volume.name, f"copying {target} into the volume failed: {proc.stderr.strip()}")
    info = source.stat()
    os.chown(dest, info.st_uid, info.st_gid)
    dest.chmod(info.st_mode & 0o7777)
    return bool(entries)
