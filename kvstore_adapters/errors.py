"""Errors of the KV store adapters; all derive from :class:`KVError`."""

from __future__ import annotations

from api.errors import ShoalError


class KVError(ShoalError):
    """Root of every error a KV store adapter raises."""


class InvalidStoreURL(KVError):
    """A store URL that names no adapter or cannot be parsed."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"invalid store URL {url!r}: {reason}")
        self.url = url
        self.reason = reason


class StoreUnavailable(KVError):
    """The store cannot be reached (after trying every endpoint) or stopped answering."""

    def __init__(self, backend: str, endpoints: str, reason: str) -> None:
        super().__init__(f"cannot reach {backend} at {endpoints}: {reason}")
        self.backend = backend
        self.endpoints = endpoints
        self.reason = reason


class CompactedError(KVError):
    """A watch asked to start at a revision the store no longer keeps history for."""

    def __init__(self, requested: int, compact_revision: int) -> None:
        super().__init__(
            f"revision {requested} has been compacted (oldest available: {compact_revision + 1}); "
            "re-read the prefix and watch from the revision of that read"
        )
        self.requested = requested
        self.compact_revision = compact_revision


class LeaseNotFound(KVError):
    """The lease expired or was revoked; keys attached to it are gone."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id:x} not found (expired or revoked)")
        self.lease_id = lease_id


class LeadershipLost(KVError):
    """A leader's lease ran out or its key was removed: it must stop acting as leader."""

    def __init__(self, election: str, candidate: str) -> None:
        super().__init__(f"{candidate} lost the leadership of {election!r}")
        self.election = election
        self.candidate = candidate
