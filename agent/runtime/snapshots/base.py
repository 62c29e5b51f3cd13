"""The snapshotter interface the container runtime uses, and what both implementations share.

Interface for the container runtime::

    snap = open_snapshotter(root, image_store)           # overlay when the kernel allows, else vfs
    rootfs: Path = snap.prepare(container_id, image_id)  # an id, id prefix or reference
    ...                                                   # runc uses rootfs as the container's root
    snap.remove(container_id)                             # unmounts and deletes; idempotent

``prepare`` is all-or-nothing: if anything fails (a corrupted layer, a failed mount) nothing of the
container's snapshot is left behind, mounts included. ``rootfs(container_id)`` mounts an existing snapshot
again if needed (after a host reboot) and returns the same path; ``unmount`` releases the mount but keeps
the writable layer; ``diff`` lists changes against the image (``docker diff``); ``export`` writes them as
a layer tarball (for ``commit``); ``prune_layers`` drops unpacked layers no image and no container needs;
``unpack_image`` makes an image's content ready ahead of its first container (as ``docker load`` leaves
an image), so that container does not pay for it.

Layers are unpacked once per snapshotter and shared by every image and container that uses them; each
one is checked against its diff id while unpacking, and published with an atomic rename. Containers
preparing the same image at once wait for one unpacking rather than each doing its own (unpacking takes
a CPU for a good part of a second for an ordinary layer).
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from agent.runtime.errors import BlobCorrupted, SnapshotError, SnapshotExists, SnapshotNotFound
from agent.runtime.images.image import Image
from agent.runtime.images.oci import Descriptor
from agent.runtime.images.store import ImageStore
from agent.runtime.snapshots.diff import Change, write_changes
from agent.runtime.snapshots.layers import Mode, extract_layer
from agent.runtime.snapshots.mounts import mounts_under, unmount_all

_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
META = "meta.json"


def check_container_id(container_id: str) -> str:
    if not _CONTAINER_ID.fullmatch(container_id):
        raise SnapshotError(container_id, "invalid container id")
    return container_id


def unpack(store: ImageStore, layer: Descriptor, diff_id: str, dest: Path, mode: Mode) -> None:
    """Unpack one layer blob into ``dest``, verifying the blob digest and the uncompressed diff id."""
    with store.blobs.open(layer.digest) as reader:
        actual = extract_layer(reader, dest, mode)
        reader.drain()
    if actual != diff_id:
        raise BlobCorrupted(diff_id, actual, f"layer {layer.digest} (uncompressed)")


def remove_tree(path: Path, owner: str = "") -> None:
    """Delete ``path`` after making sure nothing is mounted below it (never delete through a mount)."""
    unmount_all(path, owner=owner)
    if mounts_under(path):
        raise SnapshotError(owner, f"{path} is still mounted")
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SnapshotError(owner, f"cannot delete {exc.filename or path}: {exc.strerror}") from None


def remove_stale_staging(parent: Path, max_age: float = 3600.0) -> None:
    """Delete staging directories a crashed process left in ``parent`` (older than ``max_age`` seconds)."""
    now = time.time()
    for tmp in parent.glob(".tmp-*"):
        with contextlib.suppress(OSError, SnapshotError):
            if now - tmp.stat().st_mtime > max_age:
                remove_tree(tmp)


class Snapshotter(abc.ABC):
    """A container root file system made from an image's layers plus a writable layer."""

    driver: ClassVar[str]

    def __init__(self, root: Path | str, store: ImageStore) -> None:
        self.root = Path(root) / self.driver
        self.store = store
        self.containers_dir = self.root / "containers"
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._unpacking: dict[str, threading.Lock] = {}

    @contextlib.contextmanager
    def _unpacking_lock(self, key: str) -> Iterator[None]:
        """Held while the content named ``key`` (a layer, a flattened image) is looked for or unpacked."""
        with self._lock:
            lock = self._unpacking.setdefault(key, threading.Lock())
        with lock:
            yield

    # --- what implementations provide -----------------------------------------------------------------
    @abc.abstractmethod
    def _create(self, container_id: str, image: Image, cdir: Path) -> Path:
        """Make the snapshot in the empty ``cdir``; returns the root file system path."""

    @abc.abstractmethod
    def _rootfs_path(self, cdir: Path) -> Path: ...

    @abc.abstractmethod
    def _mount(self, container_id: str, meta: dict[str, Any], cdir: Path) -> None:
        """Make ``_rootfs_path(cdir)`` usable again (no-op for copies)."""

    @abc.abstractmethod
    def _changes(self, meta: dict[str, Any], cdir: Path) -> list[Change]: ...

    @abc.abstractmethod
    def _unpack(self, image: Image) -> None:
        """Make the image's unpacked content ready (under :meth:`_unpacking_lock`)."""

    @abc.abstractmethod
    def _live_layers(self, keep_diff_ids: set[str]) -> int:
        """Delete unpacked content not in ``keep_diff_ids`` (and not used by containers); returns a count."""

    # --- the interface ---------------------------------------------------------------------------------
    def _dir(self, container_id: str) -> Path:
        return self.containers_dir / check_container_id(container_id)

    def exists(self, container_id: str) -> bool:
        return (self._dir(container_id) / META).is_file()

    def containers(self) -> list[str]:
        return sorted(p.name for p in self.containers_dir.iterdir() if (p / META).is_file())

    def meta(self, container_id: str) -> dict[str, Any]:
        try:
            value: dict[str, Any] = json.loads((self._dir(container_id) / META).read_bytes())
        except FileNotFoundError:
            raise SnapshotNotFound(container_id) from None
        return value

    def unpack_image(self, image_id: str) -> None:
        """Unpack the image's layers now, if they are not yet, so its first container starts at once."""
        self._unpack(self.store.get(image_id))

    def prepare(self, container_id: str, image_id: str) -> Path:
        """Create and mount the snapshot of ``container_id`` from an image; returns its root file system.

        ``image_id`` is anything the image store resolves: an id, an id prefix or a reference.

        Idempotent: preparing an existing snapshot from the same image returns its (re)mounted root file
        system; from another image it raises :class:`SnapshotExists`. A half-made snapshot left by a crash
        is discarded and made again.
        """
        cdir = self._dir(container_id)
        resolved = self.store.get(image_id)
        with self._lock:
            if (cdir / META).is_file():
                if self.meta(container_id).get("image") != resolved.id:
                    raise SnapshotExists(container_id)
                return self.rootfs(container_id)
            if cdir.exists():
                remove_tree(cdir, container_id)
            cdir.mkdir()
        try:
            meta = {
                "id": container_id,
                "driver": self.driver,
                "image": resolved.id,
                "diff_ids": list(resolved.diff_ids),
                "created": datetime.now(UTC).isoformat(),
            }
            # Written first so a concurrent prune_layers keeps this image's layers.
            _write_json(cdir / "meta.partial", meta)
            rootfs = self._create(container_id, resolved, cdir)
            os.replace(cdir / "meta.partial", cdir / META)
            return rootfs
        except BaseException:
            with contextlib.suppress(Exception):
                remove_tree(cdir, container_id)
            raise

    def rootfs(self, container_id: str) -> Path:
        """The root file system of an existing snapshot, mounted again if it is not."""
        meta = self.meta(container_id)
        cdir = self._dir(container_id)
        with self._lock:
            self._mount(container_id, meta, cdir)
        return self._rootfs_path(cdir)

    def unmount(self, container_id: str) -> None:
        """Release the mount (the writable layer is kept)."""
        unmount_all(self._rootfs_path(self._dir(container_id)), owner=container_id)

    def remove(self, container_id: str) -> None:
        """Unmount and delete the snapshot; nothing is left, not even a mount. Removing twice is fine."""
        cdir = self._dir(container_id)
        if not cdir.exists():
            return
        with self._lock:
            remove_tree(cdir, container_id)

    def diff(self, container_id: str) -> list[Change]:
        """``docker diff``: what the container added, changed and deleted compared with its image."""
        meta = self.meta(container_id)
        return self._changes(meta, self._dir(container_id))

    def export(self, container_id: str, out: BinaryIO) -> list[Change]:
        """Write the container's changes as a layer tarball (whiteouts for deletions); returns them."""
        changes = self.diff(container_id)
        write_changes(changes, self.rootfs(container_id), out)
        return changes

    def usage(self, container_id: str) -> int:
        """Bytes of the container's writable layer (``docker ps --size``)."""
        return _tree_size(self._writable(self._dir(container_id)))

    def _writable(self, cdir: Path) -> Path:
        return self._rootfs_path(cdir)

    def prune_layers(self) -> int:
        """Drop unpacked layers no image in the store and no container needs; returns how many."""
        with self._lock:
            keep = self.store.diff_ids()
            for cid in self.containers():
                keep.update(self.meta(cid).get("diff_ids", []))
            for partial in self.containers_dir.glob("*/meta.partial"):
                with contextlib.suppress(OSError, ValueError):
                    keep.update(json.loads(partial.read_bytes()).get("diff_ids", []))
            return self._live_layers(keep)


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(value, sort_keys=True))
    os.replace(tmp, path)


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


@contextlib.contextmanager
def staging(parent: Path, name: str) -> Iterator[Path]:
    """A private directory next to where ``name`` will live; removed unless the caller renamed it."""
    tmp = parent / f".tmp-{name[:16]}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        if tmp.exists():
            remove_tree(tmp)
