"""mount(2) / umount2(2) through libc, and the mount table, for snapshotters and their tests.

Calling libc directly avoids a fork+exec of ``mount`` per container start. Overlay option strings longer
than a page do not fit in one mount(2) call; :func:`mount_overlay` then runs ``mount`` in the layers'
directory so the lower directories can be given as short relative paths.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import functools
import os
import subprocess
from pathlib import Path

from agent.runtime.errors import MountError

MNT_DETACH = 2
MS_RDONLY = 1
MS_BIND = 4096
MS_REC = 16384
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount(
    source: str, target: Path | str, fstype: str, flags: int = 0, data: str = "", *, owner: str = ""
) -> None:
    """mount(2); raises :class:`MountError` with the errno."""
    rc = _libc.mount(source.encode(), os.fsencode(target), fstype.encode(), flags, data.encode() or None)
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(owner, f"mount {fstype} on {target}: {os.strerror(err)}", err)


def mount_overlay(
    target: Path, lowers: list[str], upper: Path, work: Path, *, cwd: Path, owner: str = ""
) -> None:
    """Mount an overlay on ``target``; ``lowers`` are topmost first, relative to ``cwd`` when long."""
    options = f"upperdir={upper},workdir={work}"
    extra = _overlay_extras()
    absolute = ":".join(str(cwd / lower) for lower in lowers)
    data = f"lowerdir={absolute},{options}{extra}"
    if len(data) < _PAGE - 1:
        mount("overlay", target, "overlay", 0, data, owner=owner)
        return
    # Too long for one page: let mount(8) resolve short relative lower paths from the layers directory.
    data = f"lowerdir={':'.join(lowers)},{options}{extra}"
    if len(data) >= _PAGE - 1:
        raise MountError(owner, f"too many layers for one overlay mount ({len(lowers)})", errno_mod.E2BIG)
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", data, str(target)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise MountError(owner, f"mount overlay on {target}: {proc.stderr.strip()}", errno_mod.EIO)


@functools.cache
def _overlay_extras() -> str:
    # Same choices as Docker's overlay2: no inode index (layers are shared between many mounts) and no
    # redirect_dir / metacopy, so an upper directory always holds whole files and plain whiteouts, which is
    # what diff and commit read.
    params = Path("/sys/module/overlay/parameters")
    extra = ""
    if (params / "index").exists():
        extra += ",index=off"
    if (params / "redirect_dir").exists():
        extra += ",redirect_dir=off"
    if (params / "metacopy").exists():
        extra += ",metacopy=off"
    return extra


def umount(target: Path | str, *, detach: bool = False, owner: str = "") -> None:
    """umount2(2); a target that is not mounted is not an error. ``detach`` is a lazy unmount."""
    rc = _libc.umount2(os.fsencode(target), MNT_DETACH if detach else 0)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno_mod.EINVAL, errno_mod.ENOENT) and not is_mountpoint(target):
            return
        raise MountError(owner, f"umount {target}: {os.strerror(err)}", err)


def unmount_all(target: Path | str, *, owner: str = "") -> None:
    """Unmount ``target`` and everything mounted below it (deepest first), lazily if busy."""
    for point in sorted(mounts_under(target), key=lambda p: p.count("/"), reverse=True):
        try:
            umount(point, owner=owner)
        except MountError as exc:
            if exc.errno != errno_mod.EBUSY:
                raise
            umount(point, detach=True, owner=owner)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    if "\\" not in field:
        return field  # nearly every line: the table is read whole on every container start and removal
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> list[str]:
    """Every mount point of this mount namespace."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as file:
        return [_unescape(line.split()[4]) for line in file if line.strip()]


def mounts_under(target: Path | str) -> list[str]:
    """Mount points at ``target`` or below it."""
    base = os.path.realpath(target)
    prefix = base.rstrip("/") + "/"
    return [p for p in mount_points() if p == base or p.startswith(prefix)]


def is_mountpoint(target: Path | str) -> bool:
    return os.path.realpath(target) in set(mount_points())


def overlay_supported() -> bool:
    """True when the kernel lists overlay and this process may mount (root)."""
    try:
        with open("/proc/filesystems", encoding="ascii") as file:
            listed = any(line.split()[-1] == "overlay" for line in file if line.strip())
    except OSError:
        return False
    return listed and os.geteuid() == 0
