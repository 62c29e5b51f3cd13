"""The task controller: one task's lifecycle on the agent, advanced one step at a time.

Each call of :meth:`TaskController.step` looks at the task's observed state and its desired state, does
at most one thing through the executor and returns the new status (or None when there is nothing to do
until the task changes). So the whole state machine of a task lives here, and the worker only loops::

    ASSIGNED → ACCEPTED → PREPARING ─prepare()→ READY → STARTING ─start()→ RUNNING ─wait()→ COMPLETE | FAILED
                                   └─ error → REJECTED          └─ error → FAILED
    desired state past RUNNING, or no longer assigned:  shutdown() → SHUTDOWN

A task with a health check (agent/health.py; executors that implement ``HealthChecker``) stays STARTING
after its container started until its first healthy probe, as SwarmKit's controller does, so rolling
updates and load balancing count it only once it serves; its health is in :attr:`TaskController.health`.
When it becomes unhealthy — before or after RUNNING — the controller shuts it down and reports it FAILED
with SwarmKit's error "unhealthy container", and the manager's restart supervisor replaces it.

Every transition is checked against the lifecycle table (api.states), so a bug here cannot produce a
status the manager would have to refuse. Executor failures become statuses with the error in ``err``,
never exceptions out of the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from agent.errors import ExecutorError
from agent.executor import Executor, ExitStatus, HealthChecker, TaskDependencies
from agent.health import UNHEALTHY_ERROR, CheckOutput, Health, HealthMonitor, HealthState
from api import Task, TaskState, check_transition, utcnow
from api.objects import TaskStatus

log = logging.getLogger(__name__)

_HEALTHY_OR_NOT = frozenset({HealthState.HEALTHY, HealthState.UNHEALTHY})
_UNHEALTHY = frozenset({HealthState.UNHEALTHY})
#: How long to wait for the exit code of a task just stopped for being unhealthy.
_EXIT_AFTER_STOP = 5.0


class TaskController:
    """Drives one assigned task; the worker calls :meth:`step` until it returns None, then waits."""

    def __init__(
        self, task: Task, executor: Executor, dependencies: Callable[[Task], TaskDependencies]
    ) -> None:
        self.task = task
        self.executor = executor
        self._dependencies = dependencies
        status = task.status
        if status.state < TaskState.ASSIGNED:
            # The manager only sends assigned tasks; a lower state would make no step valid.
            status = replace(status, state=TaskState.ASSIGNED)
        #: The task's status as this agent observes it (the manager's copy only seeds it).
        self.status: TaskStatus = status
        #: Set when the task is no longer assigned to this node: shut it down, then remove it.
        self.unassigned = False
        self._changed = asyncio.Event()
        #: The task's health checks, once it started and if it has any.
        self.monitor: HealthMonitor | None = None
        self._started = False  # start() done by this controller (STARTING may then wait for health)
        self._health_resolved = False  # looked for the task's health check already

    # --- what the worker tells the controller -----------------------------------------------------------
    def update(self, task: Task) -> None:
        """The manager sent a new version of the task (desired state, spec …); its status is ignored."""
        self.task = task
        self.unassigned = False
        self._changed.set()

    def unassign(self) -> None:
        """The task is no longer assigned here."""
        self.unassigned = True
        self._changed.set()

    @property
    def changed(self) -> bool:
        """Whether the task changed since :meth:`clear_changed`."""
        return self._changed.is_set()

    def clear_changed(self) -> None:
        self._changed.clear()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    @property
    def stopping(self) -> bool:
        """Whether the task should stop: unassigned, or desired state past RUNNING."""
        return self.unassigned or self.task.desired_state.is_terminal

    @property
    def done(self) -> bool:
        """Whether the task has ended (nothing more will happen to it here)."""
        return self.status.state.is_terminal

    @property
    def health(self) -> Health | None:
        """The task's health (Docker's ``State.Health``), or None when it has no health check."""
        return self.monitor.health if self.monitor is not None else None

    # --- one step ------------------------------------------------------------------------------------------
    async def step(self) -> TaskStatus | None:
        """Do the next step; return the new status, or None when at rest (or when the task changed)."""
        state = self.status.state
        if state.is_terminal:
            return None
        task = self.task
        if self.stopping:
            if state >= TaskState.PREPARING:
                try:
                    await self.executor.shutdown(task)
                except ExecutorError as e:
                    return self._set(TaskState.FAILED, "shutting down failed", err=e.message)
            return self._set(TaskState.SHUTDOWN, "shutdown")
        if state >= task.desired_state and state is not TaskState.RUNNING:
            return None  # as far as wanted (e.g. desired READY: prepared, not started)
        if state <= TaskState.ASSIGNED:
            return self._set(TaskState.ACCEPTED, "accepted")
        if state is TaskState.ACCEPTED:
            return self._set(TaskState.PREPARING, "preparing")
        if state is TaskState.PREPARING:
            try:
                await self.executor.prepare(task, self._dependencies(task))
            except ExecutorError as e:
                return self._set(TaskState.REJECTED, "preparing failed", err=e.message)
            return self._set(TaskState.READY, "prepared")
        if state is TaskState.READY:
            return self._set(TaskState.STARTING, "starting")
        if state is TaskState.STARTING:
            if not self._started:
                try:
                    await self.executor.start(task)
                except ExecutorError as e:
                    return self._set(TaskState.FAILED, "starting failed", err=e.message)
                self._started = True
                await self._open_monitor(task)
            if self.monitor is None:
                return self._set(TaskState.RUNNING, "started")
            # Wait for the first healthy probe (or the end), unless the task changes first.
            try:
                outcome = await self._watch(task, _HEALTHY_OR_NOT)
            except ExecutorError as e:
                return self._set(TaskState.FAILED, "lost track of the task", err=e.message)
            if outcome is None:
                return None
            if isinstance(outcome, Health):
                if outcome.status is HealthState.HEALTHY:
                    return self._set(TaskState.RUNNING, "started")
                return await self._stop_unhealthy(task)
            if outcome.exit_code == 0:
                return self._set(TaskState.RUNNING, "started")  # the next step sees the exit: COMPLETE
            return self._exited(outcome)
        # RUNNING: wait for the exit or unhealthiness, unless the task changes first (then step again).
        if not self._health_resolved:
            await self._open_monitor(task)  # e.g. a task running since before an agent restart
        try:
            result = await self._watch(task, _UNHEALTHY)
        except ExecutorError as e:
            return self._set(TaskState.FAILED, "lost track of the task", err=e.message)
        if result is None:
            return None
        if isinstance(result, Health):
            return await self._stop_unhealthy(task)
        if result.exit_code == 0:
            return self._set(TaskState.COMPLETE, "finished", exit_code=0)
        return self._exited(result)

    def _exited(self, exit_status: ExitStatus) -> TaskStatus:
        return self._set(
            TaskState.FAILED,
            "task exited",
            err=f"task: non-zero exit ({exit_status.exit_code})",
            exit_code=exit_status.exit_code,
        )

    # --- health ---------------------------------------------------------------------------------------------
    async def _open_monitor(self, task: Task) -> None:
        """Set up the task's health monitor if the executor runs checks and the task has one."""
        self._health_resolved = True
        executor = self.executor
        if not isinstance(executor, HealthChecker):
            return
        try:
            config = await executor.healthcheck(task)
        except ExecutorError as e:
            log.warning("task %s: cannot read its health check: %s", task.meta.id, e.message)
            return
        if config is None:
            return

        async def run(command: Sequence[str]) -> CheckOutput:
            return await executor.exec_check(task, command)

        self.monitor = HealthMonitor(config, run, name=task.meta.id)

    async def _stop_unhealthy(self, task: Task) -> TaskStatus:
        """Shut the unhealthy task down and report it FAILED, as SwarmKit's agent does."""
        try:
            await self.executor.shutdown(task)
        except ExecutorError as e:
            return self._set(
                TaskState.FAILED, "unhealthy", err=f"{UNHEALTHY_ERROR} shutdown failed: {e.message}"
            )
        exit_code = None
        with contextlib.suppress(ExecutorError, TimeoutError):
            exit_code = (await asyncio.wait_for(self.executor.wait(task), _EXIT_AFTER_STOP)).exit_code
        return self._set(TaskState.FAILED, "unhealthy", err=UNHEALTHY_ERROR, exit_code=exit_code)

    async def _watch(self, task: Task, health: frozenset[HealthState]) -> ExitStatus | Health | None:
        """Wait for the task's exit, its health reaching one of ``health`` (when it has checks), or a change
        of the task (None). An exit wins over a health verdict that comes at the same time."""
        waiter = asyncio.ensure_future(self.executor.wait(task))
        changed = asyncio.ensure_future(self._changed.wait())
        jobs: set[asyncio.Future[Any]] = {waiter, changed}
        checks = None
        if self.monitor is not None:
            checks = asyncio.ensure_future(self.monitor.run_until(health))
            jobs.add(checks)
        try:
            await asyncio.wait(jobs, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for job in jobs:
                if not job.done():
                    job.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await job
        if not waiter.cancelled():
            return waiter.result()
        if checks is not None and not checks.cancelled():
            return checks.result()
        return None

    def _set(
        self, state: TaskState, message: str, *, err: str = "", exit_code: int | None = None
    ) -> TaskStatus:
        check_transition(self.status.state, state, self.task.meta.id)
        self.status = replace(
            self.status,
            state=state,
            message=message,
            err=err,
            timestamp=utcnow(),
            exit_code=exit_code if exit_code is not None else self.status.exit_code,
        )
        if err:
            log.info("task %s: %s: %s", self.task.meta.id, state.value, err)
        return self.status
