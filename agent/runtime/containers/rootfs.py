"""Where a container's root filesystem comes from: the snapshotter, behind a small protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class RootfsProvider(Protocol):
    """Prepares a writable root filesystem for a container from an image, and removes it again."""

    def prepare(self, container_id: str, image_id: str) -> Path:
        """Return the path of a fresh rootfs for ``container_id`` (idempotent for the same id)."""
        ...

    def remove(self, container_id: str) -> None:
        """Unmount and delete the container's rootfs; a missing one is not an error."""
        ...
