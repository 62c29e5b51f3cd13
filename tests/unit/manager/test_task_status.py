"""Task status reports into the store: forward only, never undoing an end, batched, retried on Conflict."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from api import Task, TaskState
from api.objects import TaskStatus
from kvstore_adapters import open_store
from kvstore_adapters.memory import MemoryStore
from manager.store import ObjectStore
from manager.task_status import StatusWriter, next_status


def status(state: TaskState, message: str = "") -> TaskStatus:
    return TaskStatus(state=state, message=message)


@pytest.mark.parametrize(
    ("current", "reported", "taken"),
    [
        (TaskState.ASSIGNED, TaskState.ACCEPTED, True),
        (TaskState.ASSIGNED, TaskState.RUNNING, True),  # after a reconnect only the latest is resent
        (TaskState.PREPARING, TaskState.REJECTED, True),
        (TaskState.RUNNING, TaskState.COMPLETE, True),
        (TaskState.RUNNING, TaskState.SHUTDOWN, True),
        (TaskState.RUNNING, TaskState.STARTING, False),  # backwards
        (TaskState.RUNNING, TaskState.RUNNING, False),  # nothing new
        (TaskState.RUNNING, TaskState.REJECTED, False),  # too late to reject
        (TaskState.COMPLETE, TaskState.RUNNING, False),  # an end is never undone
        (TaskState.ORPHANED, TaskState.COMPLETE, False),
        (TaskState.SHUTDOWN, TaskState.FAILED, False),
        (TaskState.RUNNING, TaskState.ORPHANED, False),  # managers orphan tasks, agents do not
        (TaskState.ASSIGNED, TaskState.REMOVE, False),
    ],
)
def test_next_status(current: TaskState, reported: TaskState, taken: bool) -> None:
    result = next_status(status(current), status(reported, "x"))
    assert (result is not None) is taken
    if taken:
        assert result == status(reported, "x")


@pytest.fixture
async def store() -> AsyncIterator[ObjectStore]:
    kv = MemoryStore()
    await kv.connect()
    s = ObjectStore(kv)
    await s.start()
    yield s
    await s.stop()
    await kv.close()


async def assigned(store: ObjectStore, node_id: str = "n1") -> Task:
    t = await store.create(Task(node_id=node_id, status=status(TaskState.ASSIGNED)))
    await store.wait_for(t.meta.version)
    return t


async def test_a_burst_of_reports_becomes_one_write_of_the_furthest_state(store: ObjectStore) -> None:
    tasks = [await assigned(store) for _ in range(3)]
    writer = StatusWriter(store)
    for t in tasks:
        for state in (TaskState.ACCEPTED, TaskState.PREPARING, TaskState.READY, TaskState.RUNNING):
            writer.submit("n1", t.meta.id, status(state))
        writer.submit("n1", t.meta.id, status(TaskState.STARTING))  # arrives late: ignored
    await writer.flush()
    assert writer.written == 3
    for t in tasks:
        stored = await store.fetch(Task, t.meta.id)
        assert stored is not None and stored.status.state is TaskState.RUNNING


async def test_reports_of_another_node_or_of_unknown_tasks_are_ignored(store: ObjectStore) -> None:
    t = await assigned(store, "n1")
    writer = StatusWriter(store)
    writer.submit("n2", t.meta.id, status(TaskState.ACCEPTED))
    writer.submit("n2", "no-such-task", status(TaskState.ACCEPTED))
    await writer.flush()
    assert writer.written == 0
    assert (await store.fetch(Task, t.meta.id)).status.state is TaskState.ASSIGNED  # type: ignore[union-attr]


async def test_a_concurrent_change_is_kept_and_the_report_applied_on_top() -> None:
    name = f"memory://status-{uuid.uuid4().hex}"
    mine, leader = ObjectStore(await open_store(name)), ObjectStore(await open_store(name))
    await mine.start()
    await leader.start()
    try:
        t = await assigned(mine)
        await leader.wait_for(t.meta.version)
        await mine.stop()  # this manager's cache now lags: it will write on a stale version
        changed = await leader.update(
            replace(leader.must_get(Task, t.meta.id), desired_state=TaskState.SHUTDOWN)
        )
        writer = StatusWriter(mine)
        writer.submit("n1", t.meta.id, status(TaskState.RUNNING))
        await writer.flush()
        stored = await leader.fetch(Task, t.meta.id)
        assert stored is not None
        assert stored.status.state is TaskState.RUNNING
        assert stored.desired_state is TaskState.SHUTDOWN, "the leader's change survived"
        assert stored.meta.version > changed.meta.version
    finally:
        await leader.stop()
        await leader.kv.close()
        await mine.kv.close()


async def test_successive_flushes_do_not_conflict_with_their_own_writes(store: ObjectStore) -> None:
    t = await assigned(store)
    writer = StatusWriter(store)
    for state in (
        TaskState.ACCEPTED,
        TaskState.PREPARING,
        TaskState.READY,
        TaskState.STARTING,
        TaskState.RUNNING,
    ):
        writer.submit("n1", t.meta.id, status(state))
        await writer.flush()  # the cache may lag behind the writer's own previous write
    assert writer.written == 5
    stored = await store.fetch(Task, t.meta.id)
    assert stored is not None and stored.status.state is TaskState.RUNNING
