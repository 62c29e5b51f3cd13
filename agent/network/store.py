"""The local network state: one JSON file per network, endpoint and sandbox under the agent's state dir.

Layout::

    <state>/networks/<id>.json
    <state>/endpoints/<id>.json
    <state>/sandboxes/<container id>.json

Every write goes to a temporary file that is renamed over the old one, so a crash of the agent leaves either
the old or the new version. The controller keeps everything in memory and writes through; the files are read
only when the agent starts (to rebuild bridges, nftables and the DNS table).

Only networks are also synced to disk (``fsync``) before the rename: they must survive the host. Endpoints
and sandboxes describe namespaces under ``/run/netns``, a tmpfs, so after a crash of the host they are
forgotten anyway (the controller drops sandboxes whose namespace is gone); syncing them would only cost
every container start a disk flush while it holds the controller's lock.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, TypeVar

from agent.network.model import EndpointRecord, NetworkRecord, SandboxRecord, from_json, to_json

log = logging.getLogger(__name__)

T = TypeVar("T")


class NetworkStore:
    """JSON files for networks, endpoints and sandboxes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for sub in ("networks", "endpoints", "sandboxes"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _path(self, kind: str, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"invalid {kind} key {key!r}")
        return self.root / kind / f"{key}.json"

    def _write(self, kind: str, key: str, value: Any, *, durable: bool = False) -> None:
        path = self._path(kind, key)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as fh:
            json.dump(to_json(value), fh, indent=1, sort_keys=True)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _delete(self, kind: str, key: str) -> None:
        self._path(kind, key).unlink(missing_ok=True)

    def _load(self, kind: str, cls: type[T]) -> list[T]:
        out = []
        for path in sorted((self.root / kind).glob("*.json")):
            try:
                out.append(from_json(cls, json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # A damaged file must not keep the agent from starting; say so and go on without it.
                log.error("ignoring unreadable network state %s: %s", path, exc)
        return out

    def save_network(self, network: NetworkRecord) -> None:
        """Write ``network``."""
        self._write("networks", network.id, network, durable=True)

    def delete_network(self, network_id: str) -> None:
        """Forget network ``network_id``."""
        self._delete("networks", network_id)

    def networks(self) -> list[NetworkRecord]:
        """Every stored network."""
        return self._load("networks", NetworkRecord)

    def save_endpoint(self, endpoint: EndpointRecord) -> None:
        """Write ``endpoint``."""
        self._write("endpoints", endpoint.id, endpoint)

    def delete_endpoint(self, endpoint_id: str) -> None:
        """Forget endpoint ``endpoint_id``."""
        self._delete("endpoints", endpoint_id)

    def endpoints(self) -> list[EndpointRecord]:
        """Every stored endpoint."""
        return self._load("endpoints", EndpointRecord)

    def save_sandbox(self, sandbox: SandboxRecord) -> None:
        """Write ``sandbox``."""
        self._write("sandboxes", sandbox.container_id, sandbox)

    def delete_sandbox(self, container_id: str) -> None:
        """Forget the sandbox of ``container_id``."""
        self._delete("sandboxes", container_id)

    def sandboxes(self) -> list[SandboxRecord]:
        """Every stored sandbox."""
        return self._load("sandboxes", SandboxRecord)
