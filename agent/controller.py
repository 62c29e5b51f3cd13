"""The task controller: one task's lifecycle on the agent, advanced one step at a time.

Each call of :meth:`TaskController.step` looks at the task's observed state and its desired state, does
at most one thing through the executor and returns the new status (or None when there is nothing to do
until the task changes). So the whole state machine of a task lives here, and the worker only loops::

    ASSIGNED → ACCEPTED → PREPARING ─prepare()→ READY → STARTING ─start()→ RUNNING ─wait()→ COMPLETE | FAILED
                                   └─ error → REJECTED          └─ error → FAILED
    desired state past RUNNING, or no longer assigned:  shutdown() → SHUTDOWN

Every transition is checked against the lifecycle table (api.states), so a bug here cannot produce a
status the manager would have to refuse. Executor failures become statuses with the error in ``err``,
never exceptions out of the controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace

from agent.errors import ExecutorError
from agent.executor import Executor, ExitStatus, TaskDependencies
from api import Task, TaskState, check_transition, utcnow
from api.objects import TaskStatus

log = logging.getLogger(__name__)


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
            try:
                await self.executor.start(task)
            except ExecutorError as e:
                return self._set(TaskState.FAILED, "starting failed", err=e.message)
            return self._set(TaskState.RUNNING, "started")
        # RUNNING: wait for the exit, unless the task changes first (then the caller steps again).
        try:
            exit_status = await self._wait_or_change(task)
        except ExecutorError as e:
            return self._set(TaskState.FAILED, "lost track of the task", err=e.message)
        if exit_status is None:
            return None
        if exit_status.exit_code == 0:
            return self._set(TaskState.COMPLETE, "finished", exit_code=0)
        return self._set(
            TaskState.FAILED,
            "task exited",
            err=f"task: non-zero exit ({exit_status.exit_code})",
            exit_code=exit_status.exit_code,
        )

    async def _wait_or_change(self, task: Task) -> ExitStatus | None:
        waiter = asyncio.ensure_future(self.executor.wait(task))
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({waiter, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
        if waiter.cancelled():
            return None
        return waiter.result()

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
