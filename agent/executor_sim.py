"""``--executor sim``: tasks without containers, for tests and for measuring the control plane.

A simulated task becomes RUNNING ``start_delay`` seconds after it is started and runs until it is shut
down, unless told otherwise. Failures are injected two ways:

- from the task spec, so they can be asked for through the API like any service setting — the container
  environment ``SHOAL_SIM_FAIL=prepare|start`` makes that step fail, ``SHOAL_SIM_EXIT_AFTER=SECONDS`` makes
  the task exit by itself after that long, with ``SHOAL_SIM_EXIT_CODE`` (default 0);
- from a test, with :meth:`SimExecutor.exit` (end a running task with a code) and :meth:`fail_next`.

Health checks (agent/health.py) run on the spec's schedule; a probe's result comes from
``SHOAL_SIM_HEALTH`` in the environment (or :meth:`SimExecutor.set_health`): ``healthy`` (the default),
``unhealthy`` (every probe fails), ``flaky:N`` (every N-th probe fails), ``after:N`` (N probes pass, then
every one fails) or ``hang`` (probes never answer, so the check's timeout fails them).

Logs (agent/logs.py): a started task writes one line per line of ``SHOAL_SIM_LOG`` to stdout (default
``task <id> running``) and of ``SHOAL_SIM_LOG_STDERR`` to stderr, then ``tick N`` every
``SHOAL_SIM_LOG_EVERY`` seconds while it runs; a test adds lines with :meth:`SimExecutor.write_log`.

Each :class:`SimExecutor` is one simulated host: it describes itself with configurable resources, so a
thousand of them in one process look like a thousand modest nodes to the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from agent.errors import ExecutorError, TaskNotFound
from agent.executor import ExitStatus, TaskDependencies
from agent.health import CheckOutput, effective_config
from api import Task
from api.logs import LogLine, LogOptions
from api.objects import HealthConfig, NodeDescription, Platform, Resources

#: Exit code of a simulated task that was shut down (SIGTERM, as a shell reports it).
SHUTDOWN_EXIT_CODE = 143
#: Lines of output a simulated task keeps (the oldest go first, as a rotated log file would).
LOG_LINES = 10_000


@dataclass
class SimTask:
    """What the simulated host holds for one task."""

    task_id: str
    state: str = "created"  # created → running → exited
    exit: asyncio.Future[ExitStatus] | None = None
    timer: asyncio.TimerHandle | None = None
    deps: TaskDependencies = field(default_factory=TaskDependencies)
    #: Health check probes run so far.
    probes: int = 0
    #: Its output, and how many lines it ever wrote (followers find what is new by the count).
    lines: deque[LogLine] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    written: int = 0
    #: Set (and replaced) whenever a line is written or the task ends: wakes followers.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ticker: asyncio.TimerHandle | None = None

    def write(self, text: str, stream: str = "stdout") -> None:
        self.lines.append(LogLine(stream, time.time_ns(), text))
        self.written += 1
        self.notify()

    def notify(self) -> None:
        self.wake.set()
        self.wake = asyncio.Event()

    def stop_timers(self) -> None:
        for timer in (self.timer, self.ticker):
            if timer is not None:
                timer.cancel()


def _env(task: Task) -> dict[str, str]:
    out = {}
    for item in task.spec.container.env:
        key, _, value = item.partition("=")
        out[key] = value
    return out


class SimExecutor:
    """A simulated host that runs tasks in memory."""

    name = "sim"

    def __init__(
        self,
        *,
        start_delay: float = 0.05,
        prepare_delay: float = 0.0,
        nano_cpus: int = 4_000_000_000,
        memory_bytes: int = 8 * 1024**3,
        hostname: str = "sim",
    ) -> None:
        self.start_delay = start_delay
        self.prepare_delay = prepare_delay
        self.resources = Resources(nano_cpus=nano_cpus, memory_bytes=memory_bytes)
        self.hostname = hostname
        self.tasks: dict[str, SimTask] = {}
        #: Things on the "host" this executor did not create: never listed, never touched.
        self.foreign: set[str] = set()
        #: Task ids removed so far, in order (for tests).
        self.removed: list[str] = []
        self._fail_next: dict[str, str] = {}
        self._health: dict[str, str] = {}

    async def describe(self) -> NodeDescription:
        return NodeDescription(
            hostname=self.hostname,
            platform=Platform(os="linux", architecture="amd64"),
            resources=self.resources,
            kernel_version="sim",
            operating_system="Shoal simulated host",
            storage_driver="sim",
        )

    async def list_tasks(self) -> set[str]:
        return set(self.tasks)

    # --- failure injection ------------------------------------------------------------------------------
    def fail_next(self, task_id: str, step: str) -> None:
        """Make ``step`` ("prepare" or "start") of ``task_id`` fail."""
        self._fail_next[task_id] = step

    def exit(self, task_id: str, exit_code: int = 1, message: str = "") -> None:
        """End a running task as if its process exited with ``exit_code``."""
        held = self.tasks.get(task_id)
        if held is None or held.exit is None or held.exit.done():
            raise TaskNotFound(task_id)
        held.state = "exited"
        held.exit.set_result(ExitStatus(exit_code, message or f"exited with code {exit_code}"))
        held.notify()

    def set_health(self, task_id: str, mode: str) -> None:
        """Make the task's health probes answer as ``mode`` (a ``SHOAL_SIM_HEALTH`` value) from now on."""
        self._health[task_id] = mode

    def write_log(self, task_id: str, text: str, stream: str = "stdout") -> None:
        """Make a started task write one line of output now."""
        held = self.tasks.get(task_id)
        if held is None:
            raise TaskNotFound(task_id)
        held.write(text, stream)

    def running(self) -> set[str]:
        """Ids of the tasks running now."""
        return {t.task_id for t in self.tasks.values() if t.state == "running"}

    def _should_fail(self, task: Task, step: str) -> bool:
        if self._fail_next.get(task.meta.id) == step:
            del self._fail_next[task.meta.id]
            return True
        return _env(task).get("SHOAL_SIM_FAIL") == step

    # --- the executor protocol ----------------------------------------------------------------------------
    async def prepare(self, task: Task, deps: TaskDependencies) -> None:
        if self.prepare_delay:
            await asyncio.sleep(self.prepare_delay)
        if self._should_fail(task, "prepare"):
            raise ExecutorError(task.meta.id, f"simulated failure preparing {task.spec.container.image!r}")
        held = self.tasks.setdefault(task.meta.id, SimTask(task.meta.id))
        held.deps = deps

    async def start(self, task: Task) -> None:
        held = self.tasks.get(task.meta.id)
        if held is None:
            raise TaskNotFound(task.meta.id)
        if held.state == "running":
            return
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        if self._should_fail(task, "start"):
            raise ExecutorError(task.meta.id, "simulated failure starting the task")
        loop = asyncio.get_running_loop()
        held.state = "running"
        held.exit = loop.create_future()
        env = _env(task)
        after = env.get("SHOAL_SIM_EXIT_AFTER")
        if after:
            code = int(env.get("SHOAL_SIM_EXIT_CODE", "0") or 0)
            held.timer = loop.call_later(float(after), self._exit_quietly, task.meta.id, code)
        for stream, name in (("stdout", "SHOAL_SIM_LOG"), ("stderr", "SHOAL_SIM_LOG_STDERR")):
            text = env.get(name, f"task {task.meta.id} running" if stream == "stdout" else "")
            for line in text.splitlines():
                held.write(line, stream)
        every = float(env.get("SHOAL_SIM_LOG_EVERY", "0") or 0)
        if every > 0:
            self._tick(held, every, 1)

    def _tick(self, held: SimTask, every: float, n: int) -> None:
        if n > 1:
            if held.state != "running":
                return
            held.write(f"tick {n - 1}")
        held.ticker = asyncio.get_running_loop().call_later(every, self._tick, held, every, n + 1)

    def _exit_quietly(self, task_id: str, exit_code: int) -> None:
        with contextlib.suppress(TaskNotFound):
            self.exit(task_id, exit_code)

    async def wait(self, task: Task) -> ExitStatus:
        held = self.tasks.get(task.meta.id)
        if held is None or held.exit is None:
            raise TaskNotFound(task.meta.id)
        # Shielded: the controller cancels waits when the task changes, which must not end the task.
        return await asyncio.shield(held.exit)

    async def shutdown(self, task: Task) -> None:
        held = self.tasks.get(task.meta.id)
        if held is None:
            return
        held.stop_timers()
        if held.exit is not None and not held.exit.done():
            held.exit.set_result(ExitStatus(SHUTDOWN_EXIT_CODE, "shut down"))
        held.state = "exited"
        held.notify()

    async def remove(self, task_id: str) -> None:
        held = self.tasks.pop(task_id, None)
        if held is None:
            return
        held.stop_timers()
        if held.exit is not None and not held.exit.done():
            held.exit.cancel()
        held.state = "exited"
        held.notify()
        self.removed.append(task_id)

    # --- logs ---------------------------------------------------------------------------------------------
    async def logs(self, task: Task, options: LogOptions) -> AsyncIterator[LogLine]:
        held = self.tasks.get(task.meta.id)
        if held is None:
            return
        wake = held.wake
        lines = [line for line in held.lines if options.accepts(line)]
        if options.tail >= 0:
            lines = lines[len(lines) - options.tail :] if options.tail else []
        seen = held.written
        for line in lines:
            yield line
        while options.follow:
            new = held.written - seen
            if new:
                seen = held.written
                for line in list(held.lines)[-new:]:
                    if options.accepts(line):
                        yield line
                continue
            if held.state != "running":
                return
            await wake.wait()
            wake = held.wake

    # --- health checks ----------------------------------------------------------------------------------
    async def healthcheck(self, task: Task) -> HealthConfig | None:
        return effective_config(task.spec.container.healthcheck)

    async def exec_check(self, task: Task, command: Sequence[str]) -> CheckOutput:
        held = self.tasks.get(task.meta.id)
        if held is None or held.state != "running":
            raise ExecutorError(task.meta.id, "container is not running")
        n = held.probes
        held.probes += 1
        mode = self._health.get(task.meta.id) or _env(task).get("SHOAL_SIM_HEALTH") or "healthy"
        kind, _, count = mode.partition(":")
        try:
            every = max(1, int(count or 1))
        except ValueError:
            return CheckOutput(1, f"bad SHOAL_SIM_HEALTH {mode!r}")
        if kind == "hang":
            await asyncio.Event().wait()  # until the check's timeout cancels the probe
        passed = {
            "healthy": True,
            "unhealthy": False,
            "flaky": (n + 1) % every != 0,
            "after": n < every,
        }.get(kind)
        if passed is None:
            return CheckOutput(1, f"bad SHOAL_SIM_HEALTH {mode!r}")
        return CheckOutput(0, "healthy\n") if passed else CheckOutput(1, "simulated failure\n")

    async def close(self) -> None:
        for held in self.tasks.values():
            held.stop_timers()
