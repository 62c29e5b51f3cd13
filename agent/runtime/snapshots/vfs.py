"""The vfs snapshotter: plain copies, for hosts (or users) that cannot mount overlayfs.

Layout under ``<root>/vfs``::

    images/<chain-id hex>/        the image's layers applied one over the other (whiteouts applied)
    containers/<id>/rootfs        a full copy of that tree (``cp -a``; reflinks where the fs has them)
    containers/<id>/meta.json

The flattened image is built once per chain of layers (the OCI chain id) and shared by containers.
Deleting and changing files works without any kernel support; the cost is one copy per container.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.runtime.errors import SnapshotError
from agent.runtime.images.image import Image
from agent.runtime.snapshots.base import Snapshotter, remove_stale_staging, remove_tree, staging, unpack
from agent.runtime.snapshots.diff import Change, tree_changes
from agent.runtime.snapshots.layers import Mode


def chain_id(diff_ids: Sequence[str]) -> str:
    """OCI chain id: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    chain = ""
    for diff_id in diff_ids:
        chain = (
            diff_id if not chain else "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
        )
    return chain or "sha256:" + hashlib.sha256(b"").hexdigest()


class VfsSnapshotter(Snapshotter):
    """Snapshots as full copies of the flattened image."""

    driver = "vfs"

    def __init__(self, root: Path | str, store: Any) -> None:
        super().__init__(root, store)
        self.images_dir = self.root / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)

    def image_dir(self, diff_ids: Sequence[str]) -> Path:
        return self.images_dir / chain_id(diff_ids).partition(":")[2]

    def _ensure_image(self, image: Image) -> Path:
        final = self.image_dir(image.diff_ids)
        with self._unpacking_lock(final.name):
            if not final.is_dir():
                with staging(self.images_dir, final.name) as tmp:
                    tree = tmp / "tree"
                    tree.mkdir(mode=0o755)
                    for layer, diff_id in zip(image.manifest.layers, image.diff_ids, strict=True):
                        unpack(self.store, layer, diff_id, tree, Mode.APPLY)
                    with contextlib.suppress(OSError):
                        os.rename(tree, final)
        return final

    def _unpack(self, image: Image) -> None:
        self._ensure_image(image)

    def _rootfs_path(self, cdir: Path) -> Path:
        return cdir / "rootfs"

    def _create(self, container_id: str, image: Image, cdir: Path) -> Path:
        base = self._ensure_image(image)
        rootfs = cdir / "rootfs"
        proc = subprocess.run(
            ["cp", "-a", "--reflink=auto", f"{base}/.", str(rootfs)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SnapshotError(container_id, f"copying the image failed: {proc.stderr.strip()}")
        return rootfs

    def _mount(self, container_id: str, meta: dict[str, Any], cdir: Path) -> None:
        return None

    def _changes(self, meta: dict[str, Any], cdir: Path) -> list[Change]:
        base = self.image_dir(meta["diff_ids"])
        if not base.is_dir():
            raise SnapshotError(str(meta.get("id", "")), "the image's flattened tree is gone")
        return tree_changes(base, cdir / "rootfs")

    def _live_layers(self, keep_diff_ids: set[str]) -> int:
        # Flattened trees are per chain: keep those of images in the store and of containers.
        keep = set()
        for image in self.store.images():
            keep.add(self.image_dir(image.diff_ids).name)
        for cid in self.containers():
            keep.add(self.image_dir(self.meta(cid)["diff_ids"]).name)
        remove_stale_staging(self.images_dir)
        removed = 0
        for tree in list(self.images_dir.iterdir()):
            if tree.name.startswith(".") or tree.name in keep:
                continue
            remove_tree(tree)
            removed += 1
        return removed
