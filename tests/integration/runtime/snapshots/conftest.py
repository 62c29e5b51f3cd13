"""Fixtures for snapshot tests: busybox stores shared with the image tests."""

from tests.integration.runtime.images.support import busybox_store, image_store

__all__ = ["busybox_store", "image_store"]
