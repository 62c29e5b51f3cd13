"""The overlay snapshotter: one directory per layer, containers as overlayfs mounts.

Layout under ``<root>/overlay``::

    layers/<diff-id hex>/diff     the unpacked layer, whiteouts in overlayfs form (see layers.py)
    layers/<diff-id hex>/link     the layer's short name
    l/<short name>                symlink → ../layers/<hex>/diff (keeps mount options short)
    empty/                        the lower directory of an image without layers
    containers/<id>/upper         the container's writable layer
    containers/<id>/work          overlayfs' work directory
    containers/<id>/merged        the mount point: what runc sees as the container's root
    containers/<id>/meta.json     image id and diff ids

A layer is keyed by its diff id: whatever image brings it and whatever its compression, it is unpacked
once and shared.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

from agent.runtime.images.image import Image
from agent.runtime.snapshots.base import Snapshotter, remove_stale_staging, remove_tree, staging, unpack
from agent.runtime.snapshots.diff import Change, overlay_changes
from agent.runtime.snapshots.layers import Mode
from agent.runtime.snapshots.mounts import is_mountpoint, mount_overlay

_SHORT_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


class OverlaySnapshotter(Snapshotter):
    """Snapshots as overlayfs mounts (needs root and the overlay file system)."""

    driver = "overlay"

    def __init__(self, root: Path | str, store: Any) -> None:
        super().__init__(root, store)
        self.layers_dir = self.root / "layers"
        self.links_dir = self.root / "l"
        self.empty_dir = self.root / "empty"
        for directory in (self.layers_dir, self.links_dir, self.empty_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def layer_dir(self, diff_id: str) -> Path:
        """Where the layer with ``diff_id`` is (or would be) unpacked."""
        return self.layers_dir / diff_id.partition(":")[2] / "diff"

    def _ensure_layer(self, image: Image, index: int) -> str:
        """Unpack layer ``index`` of ``image`` unless already there; returns its short link name."""
        diff_id = image.diff_ids[index]
        final = self.layers_dir / diff_id.partition(":")[2]
        with self._unpacking_lock(diff_id):
            if not (final / "link").is_file():
                with staging(self.layers_dir, final.name) as tmp:
                    (tmp / "diff").mkdir()
                    unpack(self.store, image.manifest.layers[index], diff_id, tmp / "diff", Mode.OVERLAY)
                    (tmp / "link").write_text(self._new_short())
                    with contextlib.suppress(FileExistsError, OSError):
                        # Another snapshotter on this root may have published it meanwhile; the first wins.
                        os.rename(tmp, final)
            short = (final / "link").read_text().strip()
            link = self.links_dir / short
            if not link.is_symlink():
                with contextlib.suppress(FileExistsError):
                    os.symlink(f"../layers/{final.name}/diff", link)
        return short

    def _unpack(self, image: Image) -> None:
        for index in range(len(image.diff_ids)):
            self._ensure_layer(image, index)

    def _new_short(self) -> str:
        while True:
            short = "".join(secrets.choice(_SHORT_ALPHABET) for _ in range(12))
            if not (self.links_dir / short).exists():
                return short

    def _rootfs_path(self, cdir: Path) -> Path:
        return cdir / "merged"

    def _writable(self, cdir: Path) -> Path:
        return cdir / "upper"

    def _lowers(self, diff_ids: list[str]) -> list[str]:
        """Lower directories for mount options, topmost first, relative to the snapshotter root."""
        shorts = []
        for diff_id in reversed(diff_ids):
            short = (self.layers_dir / diff_id.partition(":")[2] / "link").read_text().strip()
            shorts.append(f"l/{short}")
        return shorts or ["empty"]

    def _create(self, container_id: str, image: Image, cdir: Path) -> Path:
        self._unpack(image)
        for name in ("upper", "work", "merged"):
            (cdir / name).mkdir()
        # Just made, so not mounted yet: no need to read the mount table as _mount does.
        self._mount_new(container_id, list(image.diff_ids), cdir)
        return cdir / "merged"

    def _mount(self, container_id: str, meta: dict[str, Any], cdir: Path) -> None:
        if is_mountpoint(cdir / "merged"):
            return
        self._mount_new(container_id, list(meta["diff_ids"]), cdir)

    def _mount_new(self, container_id: str, diff_ids: list[str], cdir: Path) -> None:
        mount_overlay(
            cdir / "merged",
            self._lowers(diff_ids),
            cdir / "upper",
            cdir / "work",
            cwd=self.root,
            owner=container_id,
        )

    def _changes(self, meta: dict[str, Any], cdir: Path) -> list[Change]:
        lowers = [self.layer_dir(d) for d in reversed(meta["diff_ids"])]
        return overlay_changes(cdir / "upper", lowers)

    def _live_layers(self, keep_diff_ids: set[str]) -> int:
        keep = {d.partition(":")[2] for d in keep_diff_ids}
        remove_stale_staging(self.layers_dir)
        removed = 0
        for layer in list(self.layers_dir.iterdir()):
            if layer.name.startswith(".") or layer.name in keep:
                continue
            with contextlib.suppress(OSError):
                short = (layer / "link").read_text().strip()
                (self.links_dir / short).unlink()
            remove_tree(layer)
            removed += 1
        return removed
