"""Applying layer tarballs to directories, with whiteouts, in the two forms snapshotters need.

``OVERLAY`` extracts one layer into its own empty directory and turns the OCI whiteouts into overlayfs'
own: ``.wh.NAME`` becomes a character device 0/0 named ``NAME``, and ``.wh..wh..opq`` sets the
``trusted.overlay.opaque=y`` xattr on its directory. ``APPLY`` applies a layer on top of the layers
below it in one directory (the ``vfs`` snapshotter): ``.wh.NAME`` deletes ``NAME``, and an opaque marker
empties its directory of everything the lower layers put there (entries of this same layer stay).

Entries are confined to the target directory: names with ``..`` are refused, and a parent component that
is a symlink is resolved inside the target the way a ``chroot`` would (a layer cannot write through
``etc -> /etc`` onto the host). Owners, modes, times, device numbers and ``SCHILY.xattr.*`` extended
attributes are kept (owners and devices only when running as root).

The tar stream is hashed as it is read; :func:`extract_layer` returns that digest so callers check it
against the image's diff id before they publish the result.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import shutil
import stat
import tarfile
from pathlib import Path

from agent.runtime.errors import UnsafeLayer
from agent.runtime.images.compression import Readable, open_layer

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
_MAX_LINKS = 40


class Mode(enum.Enum):
    OVERLAY = "overlay"
    APPLY = "apply"


def _clean_name(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayer(name, "path contains '..'")
    return "/".join(parts)


def secure_join(root: Path, relative: str) -> Path:
    """``root/relative`` with symlinks in the *parent* components resolved inside ``root``.

    The last component is not followed (it is what gets created or replaced).
    """
    parts = [p for p in relative.split("/") if p not in ("", ".")]
    if not parts:
        return root
    resolved: list[str] = []
    pending = parts[:-1]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if stat.S_ISLNK(info.st_mode):
            hops += 1
            if hops > _MAX_LINKS:
                raise UnsafeLayer(relative, "too many levels of symbolic links")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        resolved.append(part)
    return root.joinpath(*resolved, parts[-1])


def _remove(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _mkdirs(root: Path, path: Path) -> None:
    """Create missing parents of ``path`` (mode 0755, as Docker does for implied directories)."""
    missing = []
    parent = path.parent
    while parent != root and not parent.exists() and not parent.is_symlink():
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o755)


class _Applier:
    def __init__(self, root: Path, mode: Mode) -> None:
        self.root = root
        self.mode = mode
        self.is_root = os.geteuid() == 0
        self.created: set[str] = set()
        self.dir_times: list[tuple[Path, int]] = []
        self.skipped: list[str] = []

    def whiteout(self, name: str) -> None:
        parent, _, base = name.rpartition("/")
        if base == OPAQUE_MARKER:
            directory = secure_join(self.root, parent + "/x").parent if parent else self.root
            if self.mode is Mode.OVERLAY:
                if not directory.exists():
                    _mkdirs(self.root, directory / "x")
                os.setxattr(directory, OVERLAY_OPAQUE_XATTR, b"y")
            elif directory.is_dir():
                for child in list(directory.iterdir()):
                    rel = str(child.relative_to(self.root))
                    if rel not in self.created:
                        _remove(child)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): nothing to apply
        target_name = f"{parent}/{base[len(WHITEOUT_PREFIX) :]}" if parent else base[len(WHITEOUT_PREFIX) :]
        target = secure_join(self.root, target_name)
        if self.mode is Mode.OVERLAY:
            _mkdirs(self.root, target)
            _remove(target)
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        else:
            _remove(target)

    def entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        path = secure_join(self.root, name)
        _mkdirs(self.root, path)
        try:
            existing = os.lstat(path)
        except FileNotFoundError:
            existing = None
        if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
            if member.islnk() and _clean_name(member.linkname) == name:
                return  # a hard link to itself
            _remove(path)
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                path.mkdir(mode=0o700)
        elif member.isreg():
            source = tar.extractfile(member)
            with open(path, "wb") as out:
                if source is not None:
                    shutil.copyfileobj(source, out, 1 << 20)
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            target = secure_join(self.root, _clean_name(member.linkname))
            if not target.exists() and not target.is_symlink():
                raise UnsafeLayer(member.name, f"hard link to missing {member.linkname!r}")
            os.link(target, path, follow_symlinks=False)
            self.created.add(name)
            return  # a hard link shares the target's inode and attributes
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            try:
                os.mknod(path, kind | (member.mode & 0o7777), os.makedev(member.devmajor, member.devminor))
            except PermissionError:
                self.skipped.append(name)  # device nodes need CAP_MKNOD; the runtime provides /dev anyway
                return
        else:
            self.skipped.append(name)
            return
        self.created.add(name)
        self.attributes(path, member)

    def attributes(self, path: Path, member: tarfile.TarInfo) -> None:
        if self.is_root:
            os.lchown(path, member.uid, member.gid)
        for key, value in member.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                with contextlib.suppress(OSError):
                    os.setxattr(
                        path,
                        key[len("SCHILY.xattr.") :],
                        value.encode("utf-8", "surrogateescape"),
                        follow_symlinks=False,
                    )
        if not member.issym():
            # After chown, which clears set-id bits.
            os.chmod(path, member.mode & 0o7777)
        mtime_ns = int(member.mtime * 1_000_000_000)
        if member.isdir():
            self.dir_times.append((path, mtime_ns))
        else:
            with contextlib.suppress(OSError):
                os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def finish(self) -> None:
        # Directory times last, deepest first: creating entries inside a directory changes its mtime.
        for path, mtime_ns in sorted(self.dir_times, key=lambda item: -len(item[0].parts)):
            with contextlib.suppress(OSError):
                os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def extract_layer(source: Readable, root: Path, mode: Mode) -> str:
    """Apply the layer tar in ``source`` (plain or compressed) to ``root``; returns the tar's digest."""
    stream, _ = open_layer(source)
    applier = _Applier(root, mode)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                name = _clean_name(member.name)
                if not name:
                    continue
                base = name.rpartition("/")[2]
                if base.startswith(WHITEOUT_PREFIX):
                    applier.whiteout(name)
                else:
                    applier.entry(tar, member, name)
    except tarfile.TarError as exc:
        raise UnsafeLayer("", f"invalid tar stream ({exc})") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise
        raise UnsafeLayer(getattr(exc, "filename", "") or "", f"cannot apply ({exc.strerror})") from exc
    applier.finish()
    stream.drain()
    return stream.digest
