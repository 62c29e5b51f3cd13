"""Writing the task statuses agents report into the store: forward only, batched, conditional.

Agents report every state change of their tasks. Between two writes several reports of one task usually
arrive (ACCEPTED, PREPARING, READY … within milliseconds), so :class:`StatusWriter` keeps only the furthest
one per task and writes many tasks per store transaction. Every write is conditional on the version read;
on :class:`~manager.errors.Conflict` (the leader changed the task meanwhile) it re-reads and applies the
report again.

:func:`next_status` is the rule: a report is taken only if the lifecycle (api.states) leads from the
stored state to the reported one. Stale or backwards reports — a RUNNING that arrives after the task was
shut down, an old report resent after a reconnect — are dropped, and a task that ended never changes state
again. A report may skip states (the agent resends only its latest status after a reconnect), hence
"leads to" and not "is one step from".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace

from api import TRANSITIONS, Task, TaskState
from api.objects import TaskStatus
from kvstore_adapters import KVError
from manager.errors import Conflict
from manager.store import ObjectStore, Update

log = logging.getLogger(__name__)

#: Writes per store transaction (etcd refuses more than 128 operations by default).
BATCH = 100
#: Attempts to write one task's status when its version keeps changing under us.
RETRIES = 5

#: The states an agent reports; anything else in a report is ignored (only managers orphan or remove).
AGENT_STATES: frozenset[TaskState] = frozenset(
    {
        TaskState.ACCEPTED,
        TaskState.PREPARING,
        TaskState.READY,
        TaskState.STARTING,
        TaskState.RUNNING,
        TaskState.COMPLETE,
        TaskState.FAILED,
        TaskState.REJECTED,
        TaskState.SHUTDOWN,
    }
)


def _closure(edges: Mapping[TaskState, frozenset[TaskState]]) -> dict[TaskState, frozenset[TaskState]]:
    reach: dict[TaskState, frozenset[TaskState]] = {}
    for start in edges:
        seen: set[TaskState] = set()
        todo = list(edges[start])
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo.extend(edges[s])
        reach[start] = frozenset(seen)
    return reach


#: For each state, every state the lifecycle leads to from it (in one or more steps).
REACHABLE: Mapping[TaskState, frozenset[TaskState]] = _closure(TRANSITIONS)


def next_status(current: TaskStatus, reported: TaskStatus) -> TaskStatus | None:
    """The status to store after an agent reported ``reported``, or None to keep ``current``."""
    if reported.state not in AGENT_STATES or reported.state not in REACHABLE[current.state]:
        return None
    return reported


class StatusWriter:
    """Collects agents' status reports and writes them to the store in batches.

    ``submit`` never blocks; a background loop (``start``/``stop``) writes what accumulated, at once when
    idle and then at most every ``interval`` seconds while reports keep coming, so a burst becomes a few
    transactions instead of one write per report.
    """

    def __init__(self, store: ObjectStore, *, interval: float = 0.025) -> None:
        self.store = store
        self.interval = interval
        #: task id → (reporting node id, furthest status reported since the last write).
        self._pending: dict[str, tuple[str, TaskStatus]] = {}
        #: Tasks as this writer last wrote them, until the cache catches up (avoids needless Conflicts).
        self._written: dict[str, Task] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        #: Status writes that reached the store (for tests and metrics).
        self.written = 0

    def submit(self, node_id: str, task_id: str, status: TaskStatus) -> None:
        """Queue one report of ``node_id`` about ``task_id``."""
        held = self._pending.get(task_id)
        if held is not None and held[0] == node_id and status.state not in REACHABLE[held[1].state]:
            return  # not newer than what is already queued
        self._pending[task_id] = (node_id, status)
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        """Start writing in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="task-status-writer")

    async def stop(self) -> None:
        """Write what is queued (best effort), then stop."""
        if self._pending:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), 5)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drained(self) -> None:
        """Wait until everything submitted so far has been written (or dropped)."""
        await self._idle.wait()

    async def _run(self) -> None:
        last = 0.0
        while True:
            await self._wake.wait()
            # Under load, give reports a moment to accumulate; when idle, write at once.
            pause = self.interval - (time.monotonic() - last)
            await asyncio.sleep(max(pause, 0.0))
            self._wake.clear()
            last = time.monotonic()
            try:
                await self.flush()
            except Exception:
                log.exception("writing task statuses failed; will retry with the next reports")

    async def flush(self) -> None:
        """Write every queued report now."""
        pending, self._pending = self._pending, {}
        try:
            updates = [u for u in (self._prepare(tid, nid, st) for tid, (nid, st) in pending.items()) if u]
            chunks = [updates[i : i + BATCH] for i in range(0, len(updates), BATCH)]
            await asyncio.gather(*(self._write_chunk(c, pending) for c in chunks))
        finally:
            if not self._pending:
                self._idle.set()
            self._prune()

    def _current(self, task_id: str) -> Task | None:
        cached = self.store.get(Task, task_id)
        mine = self._written.get(task_id)
        if mine is not None and (cached is None or mine.meta.version > cached.meta.version):
            return mine
        return cached

    def _prepare(self, task_id: str, node_id: str, reported: TaskStatus) -> Task | None:
        task = self._current(task_id)
        if task is None or task.node_id != node_id:
            return None  # gone, or not this node's task (any more): not the reporter's to change
        status = next_status(task.status, reported)
        if status is None:
            return None
        return replace(task, status=status)

    async def _write_chunk(self, tasks: list[Task], pending: Mapping[str, tuple[str, TaskStatus]]) -> None:
        try:
            written = await self.store.batch([Update(t) for t in tasks])
        except Conflict:
            # One task changed under us; the batch is all-or-nothing, so write them one by one.
            for t in tasks:
                node_id, reported = pending[t.meta.id]
                await self._write_one(t, node_id, reported)
            return
        except KVError as e:
            log.warning("could not write %d task statuses: %s; requeueing", len(tasks), e)
            self._requeue(tasks, pending)
            return
        self._remember(written)

    async def _write_one(self, task: Task | None, node_id: str, reported: TaskStatus) -> None:
        for _ in range(RETRIES):
            if task is None:
                return
            try:
                self._remember([await self.store.update(task)])
                return
            except Conflict:
                fresh = await self.store.fetch(Task, task.meta.id)
                if fresh is None or fresh.node_id != node_id:
                    return
                status = next_status(fresh.status, reported)
                task = replace(fresh, status=status) if status is not None else None
        log.warning("gave up writing a task status after %d conflicts", RETRIES)

    def _requeue(self, tasks: Iterable[Task], pending: Mapping[str, tuple[str, TaskStatus]]) -> None:
        for t in tasks:
            if t.meta.id not in self._pending:
                self._pending[t.meta.id] = pending[t.meta.id]
        self._wake.set()

    def _remember(self, tasks: Iterable[Task]) -> None:
        for t in tasks:
            self._written[t.meta.id] = t
            self.written += 1

    def _prune(self) -> None:
        stale = [
            tid
            for tid, t in self._written.items()
            if (c := self.store.get(Task, tid)) is None or c.meta.version >= t.meta.version
        ]
        for tid in stale:
            del self._written[tid]
