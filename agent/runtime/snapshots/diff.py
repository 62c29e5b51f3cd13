"""What changed in a container's file system compared with its image (``docker diff``), and as a layer.

Two ways to find changes, one per snapshotter:

* :func:`overlay_changes` reads the overlay upper directory: a character device 0/0 is a deletion, an
  entry that also exists in the image's layers is a change, anything else was added; an opaque directory
  hides every lower entry it does not itself contain (those are reported deleted).
* :func:`tree_changes` compares two full trees (``vfs``): type, permissions, owner, device, size, mtime and
  symlink target decide "changed", as Docker's naive differ does.

As in ``docker diff``, a directory that holds a change is itself reported as changed, a deleted directory is
reported once (not each file in it) and an added directory is reported with everything in it.
:func:`write_changes` turns a change list into a layer tarball (``.wh.`` whiteouts for deletions), which is
what ``commit`` stores.
"""

from __future__ import annotations

import contextlib
import enum
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from agent.runtime.snapshots.layers import OVERLAY_OPAQUE_XATTR, WHITEOUT_PREFIX


class ChangeKind(enum.Enum):
    """Docker's letters, and its numbers in the API (0 modified, 1 added, 2 deleted)."""

    CHANGED = "C"
    ADDED = "A"
    DELETED = "D"

    @property
    def api(self) -> int:
        return {"C": 0, "A": 1, "D": 2}[self.value]


@dataclass(frozen=True, order=True)
class Change:
    """One line of ``docker diff``: ``path`` is absolute inside the container (``/etc/hosts``)."""

    path: str
    kind: ChangeKind

    def __str__(self) -> str:
        return f"{self.kind.value} {self.path}"

    def docker(self) -> dict[str, Any]:
        return {"Path": self.path, "Kind": self.kind.api}


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``root`` as (relative path, lstat), parents before children."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(root / rel if rel else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        subdirs = []
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            info = entry.stat(follow_symlinks=False)
            yield child, info
            if stat.S_ISDIR(info.st_mode):
                subdirs.append(child)
        stack.extend(reversed(subdirs))


def _is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _with_parents(changes: dict[str, ChangeKind]) -> list[Change]:
    """Add a "changed" line for every directory that holds a change, then sort."""
    out = dict(changes)
    for rel in list(changes):
        parent = rel.rpartition("/")[0]
        while parent and parent not in out:
            out[parent] = ChangeKind.CHANGED
            parent = parent.rpartition("/")[0]
    return sorted(Change("/" + rel, kind) for rel, kind in out.items())


class _Lowers:
    """The image's layer directories (topmost first), looked at through overlay rules."""

    def __init__(self, layers: Sequence[Path]) -> None:
        self.layers = list(layers)

    def exists(self, rel: str) -> bool:
        parts = rel.split("/")
        for layer in self.layers:
            current = layer
            opaque_above = False
            for i, part in enumerate(parts):
                current = current / part
                try:
                    info = os.lstat(current)
                except FileNotFoundError:
                    break
                if _is_whiteout(info):
                    return False
                if i == len(parts) - 1:
                    return True
                if not stat.S_ISDIR(info.st_mode):
                    return False  # a file here hides whatever lower layers have below this name
                if _is_opaque(current):
                    opaque_above = True
            if opaque_above:
                return False
        return False

    def children(self, rel: str) -> set[str]:
        names: set[str] = set()
        for layer in self.layers:
            with contextlib.suppress(OSError):
                names.update(os.listdir(layer / rel))
        return {n for n in names if self.exists(f"{rel}/{n}" if rel else n)}


def overlay_changes(upper: Path, lowers: Sequence[Path]) -> list[Change]:
    """Changes recorded in an overlay ``upper`` directory over ``lowers`` (topmost first)."""
    below = _Lowers(lowers)
    changes: dict[str, ChangeKind] = {}
    for rel, info in _walk(upper):
        if _is_whiteout(info):
            if below.exists(rel):
                changes[rel] = ChangeKind.DELETED
            continue
        changes[rel] = ChangeKind.CHANGED if below.exists(rel) else ChangeKind.ADDED
        if stat.S_ISDIR(info.st_mode) and _is_opaque(upper / rel):
            present = set(os.listdir(upper / rel))
            for name in below.children(rel) - present:
                changes[f"{rel}/{name}"] = ChangeKind.DELETED
    return _with_parents(changes)


def _differs(old: os.stat_result, new: os.stat_result, old_path: Path, new_path: Path) -> bool:
    if stat.S_IFMT(old.st_mode) != stat.S_IFMT(new.st_mode):
        return True
    if (old.st_mode & 0o7777, old.st_uid, old.st_gid, old.st_rdev) != (
        new.st_mode & 0o7777,
        new.st_uid,
        new.st_gid,
        new.st_rdev,
    ):
        return True
    if stat.S_ISDIR(new.st_mode):
        return False  # a directory's size and mtime change with its entries; those are reported themselves
    if stat.S_ISLNK(new.st_mode):
        return os.readlink(old_path) != os.readlink(new_path)
    return old.st_size != new.st_size or old.st_mtime_ns != new.st_mtime_ns


def tree_changes(base: Path, current: Path) -> list[Change]:
    """Changes of the tree ``current`` compared with ``base`` (both complete root file systems)."""
    old = dict(_walk(base))
    changes: dict[str, ChangeKind] = {}
    seen: set[str] = {""}
    for rel, info in _walk(current):
        seen.add(rel)
        before = old.get(rel)
        if before is None:
            changes[rel] = ChangeKind.ADDED
        elif _differs(before, info, base / rel, current / rel):
            changes[rel] = ChangeKind.CHANGED
    for rel in old:
        if rel not in seen and rel.rpartition("/")[0] in seen:
            changes[rel] = ChangeKind.DELETED
    return _with_parents(changes)


def write_changes(changes: Sequence[Change], rootfs: Path, out: BinaryIO) -> None:
    """A layer tarball of ``changes``, taking content from the container's mounted ``rootfs``."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for change in sorted(changes):
            rel = change.path.lstrip("/")
            if change.kind is ChangeKind.DELETED:
                parent, _, name = rel.rpartition("/")
                info = tarfile.TarInfo(
                    f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else f"{WHITEOUT_PREFIX}{name}"
                )
                tar.addfile(info)
                continue
            path = rootfs / rel
            info = tar.gettarinfo(str(path), rel)
            if info is None:
                continue
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as file:
                    tar.addfile(info, file)
            else:
                tar.addfile(info)
