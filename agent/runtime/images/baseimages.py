"""Local base images, built without a registry: ``busybox:latest`` and ``debian:bookworm-minbase``.

* ``busybox:latest`` comes from the host's static busybox (Debian's busybox-static) plus one symlink per
  applet (``busybox --list-full``), a minimal ``/etc`` and the usual empty directories. Every file time is
  clamped to the binary's mtime and owners are root, so the same binary always gives the same image id.
* ``debian:bookworm-minbase`` is ``debootstrap --variant=minbase bookworm`` from the mirror of the host's
  apt configuration. That takes minutes, so the root file system tarball is cached (by default in
  ``/var/cache/shoal-test-images``) and later runs only import it.

Both are imported through :func:`~agent.runtime.images.archive.import_rootfs` as one-layer images with
``CMD`` and ``ENV PATH``. Running again is cheap: an image already in the store is left alone.

Usage: ``scripts/make-base-images [--store DIR] [--cache DIR] [--no-debian]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from agent.runtime.errors import ImageError
from agent.runtime.images.archive import import_rootfs
from agent.runtime.images.image import Image
from agent.runtime.images.store import ImageStore
from agent.runtime.snapshots.mounts import mounts_under, unmount_all

BUSYBOX_REF = "busybox:latest"
DEBIAN_REF = "debian:bookworm-minbase"
DEFAULT_STORE = Path(os.environ.get("SHOAL_IMAGE_STORE", "/var/lib/shoal/images"))
DEFAULT_CACHE = Path(os.environ.get("SHOAL_BASE_IMAGE_CACHE", "/var/cache/shoal-test-images"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_DIRECTORIES = (
    ("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755), ("proc", 0o555), ("root", 0o700),
    ("sys", 0o555), ("tmp", 0o1777), ("usr/bin", 0o755), ("usr/sbin", 0o755), ("sbin", 0o755),
    ("var/spool/mail", 0o755), ("var/www", 0o755),
)  # fmt: skip
_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tar_directory(
    root: Path, out: BinaryIO, *, clamp_mtime: int | None = None, root_owned: bool = False
) -> None:
    """Write ``root``'s tree as a reproducible tar: sorted names, numeric owners, clamped times, xattrs."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            here = Path(dirpath)
            names = sorted(filenames) + [d for d in dirnames if (here / d).is_symlink()]
            for name in [None, *sorted(names)]:
                path = here if name is None else here / name
                if path == root:
                    continue
                arcname = str(path.relative_to(root))
                info = tar.gettarinfo(str(path), arcname)
                if info is None:  # sockets
                    continue
                info.uname = info.gname = ""
                if root_owned:
                    info.uid = info.gid = 0
                if clamp_mtime is not None:
                    info.mtime = min(int(info.mtime), clamp_mtime)
                xattrs = _xattrs(path)
                if xattrs:
                    info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in xattrs.items()}
                if info.isreg():
                    with open(path, "rb") as file:
                        tar.addfile(info, file)
                else:
                    tar.addfile(info)


def _xattrs(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for name in os.listxattr(path, follow_symlinks=False):
            if name.startswith(("security.capability", "user.")):
                value = os.getxattr(path, name, follow_symlinks=False)
                out[name] = value.decode("utf-8", "surrogateescape")
    return out


# --- busybox -----------------------------------------------------------------------------------------------
def find_busybox() -> Path:
    """The host's busybox binary, preferring the static one."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    raise ImageError("busybox not found (install busybox-static)")


def build_busybox_rootfs(dest: Path, busybox: Path) -> None:
    """Lay out a busybox root file system in the empty directory ``dest``."""
    for directory, mode in _DIRECTORIES:
        (dest / directory).mkdir(parents=True, exist_ok=True)
        os.chmod(dest / directory, mode)
    shutil.copy2(busybox, dest / "bin/busybox")
    os.chmod(dest / "bin/busybox", 0o755)
    listing = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout
    for applet in sorted(set(listing.split())):
        if applet == "bin/busybox" or ".." in applet.split("/"):
            continue
        link = dest / applet
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists() and not link.is_symlink():
            os.symlink("/bin/busybox", link)
    (dest / "etc/passwd").write_text(_PASSWD)
    (dest / "etc/group").write_text(_GROUP)
    (dest / "etc/nsswitch.conf").write_text("hosts: files dns\n")
    for name in ("etc/passwd", "etc/group", "etc/nsswitch.conf"):
        os.chmod(dest / name, 0o644)


def make_busybox(store: ImageStore, reference: str = BUSYBOX_REF, busybox: Path | None = None) -> Image:
    """Import a busybox image into ``store`` unless ``reference`` is already there."""
    if store.exists(reference):
        return store.get(reference)
    binary = busybox or find_busybox()
    epoch = int(binary.stat().st_mtime)
    with tempfile.TemporaryDirectory(prefix="shoal-busybox-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        build_busybox_rootfs(rootfs, binary)
        tar_path = Path(tmp) / "rootfs.tar"
        with open(tar_path, "wb") as out:
            tar_directory(rootfs, out, clamp_mtime=epoch, root_owned=True)
        return import_rootfs(
            store,
            tar_path,
            reference=reference,
            changes=[f"ENV {PATH_ENV}", 'CMD ["sh"]'],
            message=f"busybox from {binary}",
            created=rfc3339(epoch),
        )


# --- debian (debootstrap) ----------------------------------------------------------------------------------
def apt_mirror() -> str:
    """The Debian mirror the host's apt uses (deb822 or one-line sources), or deb.debian.org."""
    sources = Path("/etc/apt")
    for path in [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            text = path.read_text()
            if path.suffix == ".sources":
                for block in text.split("\n\n"):
                    if re.search(r"^Suites:.*\bbookworm\b", block, re.M) and "debian-security" not in block:
                        match = re.search(r"^URIs:\s*(\S+)", block, re.M)
                        if match:
                            return match.group(1)
            elif path.name == "sources.list" or path.suffix == ".list":
                for line in text.splitlines():
                    match = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", line)
                    if match:
                        return match.group(1)
    return DEFAULT_MIRROR


def debian_rootfs_tar(
    cache: Path = DEFAULT_CACHE, *, mirror: str | None = None, log: BinaryIO | None = None
) -> Path:
    """The cached ``debootstrap --variant=minbase bookworm`` tarball, building it first if needed."""
    tar_path = cache / "debian-bookworm-minbase.tar"
    if tar_path.exists():
        return tar_path
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root")
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=cache))
    target = work / "rootfs"
    try:
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(target), mirror or apt_mirror()],
            stdout=log or subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if proc.returncode != 0:
            tail = (proc.stdout or b"").decode(errors="replace")[-2000:]
            raise ImageError(f"debootstrap failed ({proc.returncode}): {tail}")
        unmount_all(target)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (target / junk).glob("*"):
                if entry.is_file() and entry.name not in ("lock",):
                    entry.unlink()
        partial = work / "rootfs.tar"
        with open(partial, "wb") as out:
            tar_directory(target, out)
        os.replace(partial, tar_path)
    finally:
        unmount_all(work)
        if not mounts_under(work):
            shutil.rmtree(work, ignore_errors=True)
    return tar_path


def make_debian(store: ImageStore, reference: str = DEBIAN_REF, cache: Path = DEFAULT_CACHE) -> Image:
    """Import the debootstrap image into ``store`` unless ``reference`` is already there."""
    if store.exists(reference):
        return store.get(reference)
    tar_path = debian_rootfs_tar(cache)
    return import_rootfs(
        store,
        tar_path,
        reference=reference,
        changes=[f"ENV {PATH_ENV}", 'CMD ["bash"]'],
        message="debootstrap --variant=minbase bookworm",
        created=rfc3339(tar_path.stat().st_mtime),
        compress_level=1,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make-base-images", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--store", type=Path, default=DEFAULT_STORE, help=f"image store (default {DEFAULT_STORE})"
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="where the debootstrap tarball is kept"
    )
    parser.add_argument("--no-debian", action="store_true", help="only build busybox")
    parser.add_argument("store_dir", nargs="?", type=Path, help="image store (same as --store)")
    args = parser.parse_args(argv)
    store = ImageStore(args.store_dir or args.store)
    try:
        for image in [make_busybox(store)] + (
            [] if args.no_debian else [make_debian(store, cache=args.cache)]
        ):
            print(f"{', '.join(image.familiar_tags)}\t{image.id}\t{image.size} bytes")
    except ImageError as exc:
        print(f"make-base-images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
