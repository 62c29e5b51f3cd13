"""Resolve ``--user`` against the container's own /etc/passwd and /etc/group.

The files are read from the root filesystem, never from the host, and paths are resolved with symlinks
confined to the rootfs (an image could ship ``/etc/passwd -> /../../host/file``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.runtime.errors import InvalidContainerConfig

_MAX_SYMLINKS = 40


def secure_join(root: Path, path: str) -> Path:
    """Join ``path`` under ``root``, resolving symlinks as if ``root`` were ``/``."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            links += 1
            if links > _MAX_SYMLINKS:
                raise InvalidContainerConfig("path", f"too many symlinks resolving {path!r}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


@dataclass(frozen=True)
class ExecUser:
    """The numeric identity a container process runs as, and its home for ``HOME``."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


def _read_entries(root: Path, name: str) -> list[list[str]]:
    path = secure_join(root, f"/etc/{name}")
    try:
        text = path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(line.split(":"))
    return entries


def resolve_user(root: Path, user: str) -> ExecUser:
    """Resolve ``user``, ``uid``, ``user:group`` or ``uid:gid`` like Docker (empty means root)."""
    user_part, _, group_part = (user or "").partition(":")
    passwd = _read_entries(root, "passwd")
    groups = _read_entries(root, "group")

    uid, gid, home, username = 0, 0, "/", "root"
    matched = None
    if user_part:
        for entry in passwd:
            if len(entry) < 7:
                continue
            if entry[0] == user_part or (user_part.isdigit() and entry[2] == user_part):
                matched = entry
                break
        if matched is not None:
            username, uid, gid, home = matched[0], int(matched[2]), int(matched[3]), matched[5] or "/"
        elif user_part.isdigit():
            uid, username = int(user_part), ""
        else:
            raise InvalidContainerConfig(
                "user", f"unable to find user {user_part}: no matching entries in passwd file"
            )
    else:
        for entry in passwd:
            if len(entry) >= 7 and entry[2] == "0":
                home = entry[5] or "/"
                break

    if group_part:
        for entry in groups:
            if len(entry) >= 3 and (
                entry[0] == group_part or (group_part.isdigit() and entry[2] == group_part)
            ):
                gid = int(entry[2])
                break
        else:
            if not group_part.isdigit():
                raise InvalidContainerConfig(
                    "user", f"unable to find group {group_part}: no matching entries in group file"
                )
            gid = int(group_part)

    additional: list[int] = []
    if username and not group_part:
        for entry in groups:
            if len(entry) >= 4 and username in entry[3].split(",") and entry[2].isdigit():
                extra = int(entry[2])
                if extra != gid and extra not in additional:
                    additional.append(extra)
    return ExecUser(uid=uid, gid=gid, additional_gids=tuple(additional), home=home)


def ensure_workdir(rootfs: Path, cwd: str, user: str) -> None:
    """Create a missing working directory owned by the container user, as Docker does."""
    target = secure_join(rootfs, cwd)
    if target.exists():
        return
    ids = resolve_user(rootfs, user or "")
    target.mkdir(parents=True, exist_ok=True)
    os.chown(target, ids.uid, ids.gid)
