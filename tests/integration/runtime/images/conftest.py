"""Fixtures for image tests: a session busybox store, per-test stores, a session registry (see support.py)."""

from tests.integration.runtime.images.support import busybox_store, image_store, registry

__all__ = ["busybox_store", "image_store", "registry"]
