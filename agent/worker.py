"""The worker: reconciles the tasks the manager assigns against what the executor runs.

The session hands every ``assignments`` frame to :meth:`Worker.assign`. Each assigned task gets a
:class:`~agent.controller.TaskController` and a small loop that steps it and reports every status
change; a task that changes (desired state SHUTDOWN, new spec) wakes its loop. Tasks that are no longer
assigned — absent from a full set, or listed in ``removed`` — are shut down and their executor state
removed. Tasks that stay assigned after they ended are kept (so their container and logs remain) until
the manager drops them.

At start the worker asks the executor what it created earlier (an agent restart); whatever of that the
first full set does not claim is shut down and removed. A task the set still lists but the manager has
ended meanwhile (ORPHANED: the agent was away longer than the heartbeat grace, and the task now runs
elsewhere) is shut down too, and removed once the manager drops it. Anything the executor did not create
is never listed, so never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from agent.controller import TaskController
from agent.errors import ExecutorError
from agent.executor import Executor, TaskDependencies
from api import Network, Secret, Task
from api.objects import Meta, TaskStatus
from api.session import Assignments, StatusUpdate

log = logging.getLogger(__name__)

Reporter = Callable[[str, TaskStatus], None]


class Worker:
    """Runs the tasks assigned to one node through an executor, reporting their statuses."""

    def __init__(self, executor: Executor, report: Reporter) -> None:
        self.executor = executor
        self._report = report
        self.controllers: dict[str, TaskController] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self.networks: dict[str, Network] = {}
        self.secrets: dict[str, Secret] = {}
        #: Tasks the executor held when the worker started, not (yet) claimed by an assignment.
        self._leftovers: set[str] = set()
        self._cleanups: set[asyncio.Task[None]] = set()
        self._had_full = False

    async def start(self) -> None:
        """Learn what the executor already holds (from before a restart)."""
        self._leftovers = await self.executor.list_tasks()

    async def stop(self) -> None:
        """Stop the task loops. Tasks keep running where the executor allows (an agent restart)."""
        tasks = [*self._runners.values(), *self._cleanups]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._runners.clear()

    # --- assignments in -------------------------------------------------------------------------------
    def assign(self, frame: Assignments) -> None:
        """Apply one ``assignments`` frame from the manager."""
        if frame.full:
            self.networks = {n.meta.id: n for n in frame.networks}
            self.secrets = {s.meta.id: s for s in frame.secrets}
        else:
            self.networks.update((n.meta.id, n) for n in frame.networks)
            self.secrets.update((s.meta.id, s) for s in frame.secrets)
        assigned = {t.meta.id for t in frame.tasks}
        for task in frame.tasks:
            ctl = self.controllers.get(task.meta.id)
            if ctl is None:
                self._add(task)
            else:
                ctl.update(task)
        gone = set(frame.removed)
        if frame.full:
            gone |= set(self.controllers) - assigned
        for task_id in gone:
            ctl = self.controllers.get(task_id)
            if ctl is not None:
                ctl.unassign()
        self._forget_unused_secrets()
        if frame.full and not self._had_full:
            self._had_full = True
            for task_id in self._leftovers - assigned:
                # Only the id survives a restart here; the executor knows how it stops what it made.
                self._spawn_cleanup(Task(meta=Meta(id=task_id)))
            self._leftovers.clear()

    def _forget_unused_secrets(self) -> None:
        """Keep (in memory) only the secrets some task here still uses; the manager forgets the same."""
        used = {r.secret_id for ctl in self.controllers.values() for r in ctl.task.spec.container.secrets}
        if len(used) < len(self.secrets):
            self.secrets = {k: v for k, v in self.secrets.items() if k in used}

    def _add(self, task: Task) -> None:
        ctl = TaskController(task, self.executor, self.dependencies)
        self.controllers[task.meta.id] = ctl
        if task.meta.id in self._leftovers and task.status.state.is_terminal:
            # Its controller starts from the manager's verdict and does nothing more, but the executor may
            # still run what it started before this agent went away: stop that (its slot runs elsewhere).
            self._spawn_cleanup(task, remove=False)
        self._leftovers.discard(task.meta.id)
        self._runners[task.meta.id] = asyncio.get_running_loop().create_task(
            self._run(ctl), name=f"task-{task.meta.id}"
        )

    def dependencies(self, task: Task) -> TaskDependencies:
        """The networks and secrets ``task`` uses, from what the manager sent."""
        networks = {
            a.network_id: self.networks[a.network_id] for a in task.networks if a.network_id in self.networks
        }
        secrets = {
            r.secret_id: self.secrets[r.secret_id]
            for r in task.spec.container.secrets
            if r.secret_id in self.secrets
        }
        return TaskDependencies(networks, secrets)

    def task(self, task_id: str) -> Task | None:
        """The task as last assigned, if it is assigned here (logs are served only for those)."""
        ctl = self.controllers.get(task_id)
        return ctl.task if ctl is not None else None

    # --- statuses out -----------------------------------------------------------------------------------
    def statuses(self) -> list[StatusUpdate]:
        """The current status of every task here (sent again after the session reconnects)."""
        return [StatusUpdate(task_id, ctl.status) for task_id, ctl in self.controllers.items()]

    # --- one task's loop ----------------------------------------------------------------------------------
    async def _run(self, ctl: TaskController) -> None:
        task_id = ctl.task.meta.id
        try:
            while True:
                ctl.clear_changed()
                try:
                    status = await ctl.step()
                except Exception:
                    # A bug or an executor raising something unexpected: keep the loop alive, retry later.
                    log.exception("task %s: step failed", task_id)
                    await asyncio.sleep(1.0)
                    continue
                if status is not None:
                    self._report(task_id, status)
                    continue
                if ctl.done and ctl.unassigned:
                    await self._remove(task_id)
                    return
                if not ctl.changed:
                    await ctl.wait_changed()
        finally:
            if self.controllers.get(task_id) is ctl:
                del self.controllers[task_id]
            if self._runners.get(task_id) is asyncio.current_task():
                del self._runners[task_id]

    async def _remove(self, task_id: str) -> None:
        try:
            await self.executor.remove(task_id)
        except ExecutorError as e:
            log.warning("could not remove task %s: %s", task_id, e)

    def _spawn_cleanup(self, task: Task, *, remove: bool = True) -> None:
        """Shut down (and unless ``remove`` is false, remove) a task left over from before a restart."""
        task_id = task.meta.id

        async def cleanup() -> None:
            try:
                await self.executor.shutdown(task)
                if remove:
                    await self.executor.remove(task_id)
                log.info(
                    "%s task %s left over from before a restart", "removed" if remove else "stopped", task_id
                )
            except ExecutorError as e:
                log.warning("could not clean up task %s: %s", task_id, e)

        job = asyncio.get_running_loop().create_task(cleanup(), name=f"cleanup-{task_id}")
        self._cleanups.add(job)
        job.add_done_callback(self._cleanups.discard)
