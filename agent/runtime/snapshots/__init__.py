"""Container root file systems from image layers: overlayfs, or plain copies where overlayfs is missing.

``open_snapshotter(root, store)`` picks the driver; see :mod:`.base` for the interface the container
runtime uses (``prepare(container_id, image) -> Path`` and ``remove(container_id)``).
"""

from __future__ import annotations

from pathlib import Path

from agent.runtime.errors import SnapshotError
from agent.runtime.images.store import ImageStore
from agent.runtime.snapshots.base import Snapshotter
from agent.runtime.snapshots.diff import Change, ChangeKind
from agent.runtime.snapshots.mounts import overlay_supported
from agent.runtime.snapshots.overlay import OverlaySnapshotter
from agent.runtime.snapshots.vfs import VfsSnapshotter

DRIVERS: dict[str, type[Snapshotter]] = {"overlay": OverlaySnapshotter, "vfs": VfsSnapshotter}


def open_snapshotter(root: Path | str, store: ImageStore, driver: str = "auto") -> Snapshotter:
    """The snapshotter ``driver`` (``overlay``, ``vfs``, or ``auto``: overlay when this host can mount it)."""
    if driver == "auto":
        driver = "overlay" if overlay_supported() else "vfs"
    try:
        cls = DRIVERS[driver]
    except KeyError:
        raise SnapshotError("", f"unknown storage driver {driver!r} (overlay, vfs)") from None
    return cls(root, store)


__all__ = [
    "DRIVERS",
    "Change",
    "ChangeKind",
    "OverlaySnapshotter",
    "Snapshotter",
    "VfsSnapshotter",
    "open_snapshotter",
]
