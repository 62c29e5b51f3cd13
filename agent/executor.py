"""The seam between the agent's task logic and whatever runs tasks on the host.

An :class:`Executor` does the work of each lifecycle step for one task — prepare (pull the image, create
the container), start, wait for the exit, shut down, remove — and knows nothing of the lifecycle itself:
the task controller (agent/controller.py) decides which step comes next and reports the states. Two
executors exist: ``sim`` (agent/executor_sim.py: no containers, for tests and control-plane benchmarks)
and ``runc`` (containers through agent/runtime/, chosen by :func:`make_executor`).

An executor only ever lists and touches what it created itself (``list_tasks``), so containers that other
tools made on the host are left alone. Executors that can run health checks also implement
:class:`HealthChecker`; the controller monitors a task's health only through them (agent/health.py).
Executors that keep their tasks' output implement :class:`LogReader` (agent/logs.py serves it).
"""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agent.errors import ExecutorUnavailable
from agent.health import CheckOutput
from api import Network, Secret, Task
from api.logs import LogLine, LogOptions
from api.objects import HealthConfig, NodeDescription, Platform, Resources

#: Executors ``--executor`` accepts.
EXECUTORS = ("runc", "sim")


@dataclass(frozen=True)
class ExitStatus:
    """How a task's process ended."""

    exit_code: int
    message: str = ""


@dataclass(frozen=True)
class TaskDependencies:
    """What the manager sent along with a task: the networks and secrets it uses, by id."""

    networks: Mapping[str, Network] = field(default_factory=dict)
    secrets: Mapping[str, Secret] = field(default_factory=dict)


class Executor(Protocol):
    """Runs tasks on this host. Every method may raise :class:`~agent.errors.ExecutorError`."""

    name: str

    async def describe(self) -> NodeDescription:
        """The host as the manager should see it: platform, resources, kernel, OS."""
        ...

    async def list_tasks(self) -> set[str]:
        """Ids of the tasks this executor created and still holds something for."""
        ...

    async def prepare(self, task: Task, deps: TaskDependencies) -> None:
        """Get everything ready to start (image, container, mounts, network endpoints). Idempotent."""
        ...

    async def start(self, task: Task) -> None:
        """Start the prepared task."""
        ...

    async def wait(self, task: Task) -> ExitStatus:
        """Wait until the started task exits; TaskNotFound if there is nothing to wait for."""
        ...

    async def shutdown(self, task: Task) -> None:
        """Stop the task (its stop signal, then a kill after the grace period). Fine if not running."""
        ...

    async def remove(self, task_id: str) -> None:
        """Remove everything held for the task. Fine if there is nothing."""
        ...

    async def close(self) -> None:
        """Release the executor's own resources (tasks keep running where the executor allows)."""
        ...


@runtime_checkable
class HealthChecker(Protocol):
    """The optional part of an executor that runs health checks (an executor without it runs no checks)."""

    async def healthcheck(self, task: Task) -> HealthConfig | None:
        """The check the task runs — its spec's, completed from the image's — or None for none."""
        ...

    async def exec_check(self, task: Task, command: Sequence[str]) -> CheckOutput:
        """Run ``command`` once in the task's running container, non-interactively, and return its exit
        code and output. Cancelling the call stops the command (that is how timeouts end it)."""
        ...


@runtime_checkable
class LogReader(Protocol):
    """The optional part of an executor that keeps its tasks' output (agent/logs.py streams it)."""

    def logs(self, task: Task, options: LogOptions) -> AsyncIterator[LogLine]:
        """What the task wrote (the last ``options.tail`` lines, from ``options.since_ns``), oldest first;
        with ``options.follow``, then what it writes until it stops. Nothing for a task not created here."""
        ...


def host_description(hostname: str = "", labels: Mapping[str, str] | None = None) -> NodeDescription:
    """This host's description: hostname, platform, CPUs and memory, kernel and OS."""
    return NodeDescription(
        hostname=hostname or socket.gethostname(),
        platform=Platform(os=platform.system().lower(), architecture=_arch(platform.machine())),
        resources=Resources(nano_cpus=(os.cpu_count() or 1) * 1_000_000_000, memory_bytes=_memory()),
        engine_labels=dict(labels or {}),
        kernel_version=platform.release(),
        operating_system=_os_name(),
    )


def _arch(machine: str) -> str:
    # OCI's names (image platforms use them), not the kernel's.
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def _memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _os_name() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.partition("=")[2].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def make_executor(name: str, **options: Any) -> Executor:
    """The executor ``--executor NAME`` selects; raises ExecutorUnavailable when it cannot run here."""
    if name == "sim":
        from agent.executor_sim import SimExecutor

        return SimExecutor(**options)
    if name == "runc":
        import shutil

        from agent.executor_runc import RuncExecutor

        for binary in ("runc", "conmon"):
            if shutil.which(binary) is None:
                raise ExecutorUnavailable("runc", f"{binary} is not installed (run scripts/setup)")
        return RuncExecutor(**options)
    raise ExecutorUnavailable(name, f"unknown executor (choose from {', '.join(EXECUTORS)})")
