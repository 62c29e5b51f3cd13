"""A container's record and its persistence: one JSON file per container in the state directory.

Records are frozen; a change is a new record written atomically (write a temporary file, then rename), so a
runtime killed at any moment leaves either the old or the new state, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.runtime.containers.config import ContainerConfig, ImageConfig

STATUSES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")
STATE_FILE = "state.json"
SCHEMA_VERSION = 1


def now_ns() -> int:
    """Wall-clock time in nanoseconds (what Docker shows as StartedAt/FinishedAt)."""
    return time.time_ns()


def rfc3339(ns: int) -> str:
    """Docker's time format; the zero time for 0."""
    if not ns:
        return "0001-01-01T00:00:00Z"
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


@dataclass(frozen=True)
class ContainerState:
    """Docker's ``State``: status plus the facts of the last run."""

    status: str = "created"
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    started_at: int = 0
    finished_at: int = 0
    oom_killed: bool = False
    restart_count: int = 0
    manually_stopped: bool = False
    conmon_pid: int = 0

    @property
    def running(self) -> bool:
        """Running or paused: a live process exists."""
        return self.status in ("running", "paused")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class ContainerRecord:
    """Everything the runtime knows about one container."""

    id: str
    name: str
    created: int
    config: ContainerConfig
    image_config: ImageConfig
    rootfs: str
    path: str
    args: tuple[str, ...]
    cgroups_path: str
    state: ContainerState = field(default_factory=ContainerState)

    @property
    def short_id(self) -> str:
        """The 12-character id Docker prints."""
        return self.id[:12]

    def with_state(self, **changes: Any) -> ContainerRecord:
        """A copy with some state fields changed."""
        return replace(self, state=replace(self.state, **changes))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict for the state file."""
        image = self.image_config
        return {
            "schema": SCHEMA_VERSION,
            "id": self.id,
            "name": self.name,
            "created": self.created,
            "config": self.config.to_json(),
            "image_config": {
                "Cmd": list(image.cmd),
                "Entrypoint": list(image.entrypoint),
                "Env": list(image.env),
                "WorkingDir": image.working_dir,
                "User": image.user,
                "StopSignal": image.stop_signal,
                "ExposedPorts": {p: {} for p in image.exposed_ports},
                "Volumes": {v: {} for v in image.volumes},
                "Labels": dict(image.labels),
            },
            "rootfs": self.rootfs,
            "path": self.path,
            "args": list(self.args),
            "cgroups_path": self.cgroups_path,
            "state": self.state.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerRecord:
        """Inverse of :meth:`to_json`."""
        return cls(
            id=data["id"],
            name=data["name"],
            created=data["created"],
            config=ContainerConfig.from_json(data["config"]),
            image_config=ImageConfig.from_oci(data.get("image_config")),
            rootfs=data["rootfs"],
            path=data["path"],
            args=tuple(data["args"]),
            cgroups_path=data["cgroups_path"],
            state=ContainerState(**data["state"]),
        )


class StateStore:
    """The on-disk layout under ``<state_dir>``: ``containers/<id>/``, ``exits/``, ``runc/``."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.containers = state_dir / "containers"
        self.exits = state_dir / "exits"
        for path in (self.containers, self.exits):
            path.mkdir(parents=True, exist_ok=True)

    def container_dir(self, container_id: str) -> Path:
        """Where one container's files live (bundle, logs, pid files)."""
        return self.containers / container_id

    def exit_file(self, container_id: str) -> Path:
        """Where conmon writes the exit code of the container's last run."""
        return self.exits / container_id

    def save(self, record: ContainerRecord) -> None:
        """Write the record atomically."""
        directory = self.container_dir(record.id)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (STATE_FILE + ".tmp")
        # No fsync: the rename is what keeps a killed runtime from leaving half a record, and the state
        # changes on every start and exit, where an fsync costs milliseconds on a busy disk. After a power
        # loss a record may be one transition behind; adoption reconciles it with runc and the exit files.
        with open(tmp, "w") as f:
            json.dump(record.to_json(), f)
        os.replace(tmp, directory / STATE_FILE)

    def load_all(self) -> list[ContainerRecord]:
        """Every container record on disk (unreadable ones are skipped)."""
        records = []
        for directory in sorted(self.containers.iterdir()):
            path = directory / STATE_FILE
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
                records.append(ContainerRecord.from_json(json.loads(path.read_text())))
        return records

    def read_exit_code(self, container_id: str) -> int | None:
        """The exit code conmon recorded, or None when it has not written one."""
        try:
            text = self.exit_file(container_id).read_text().strip()
        except FileNotFoundError:
            return None
        try:
            return int(text)
        except ValueError:
            return None
