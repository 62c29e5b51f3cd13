"""The worker reconciling assignment frames against the simulated executor, reporting every state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from agent.executor import TaskDependencies
from agent.executor_sim import SimExecutor
from agent.worker import Worker
from api import Network, Secret, Task, TaskState
from api.objects import (
    ContainerSpec,
    Meta,
    NetworkAttachment,
    SecretReference,
    SecretSpec,
    TaskSpec,
    TaskStatus,
)
from api.session import Assignments


def task(task_id: str, **changes: object) -> Task:
    t = Task(
        meta=Meta(id=task_id, version=1),
        node_id="n1",
        spec=TaskSpec(container=ContainerSpec(image="busybox")),
        status=TaskStatus(state=TaskState.ASSIGNED),
    )
    return replace(t, **changes)  # type: ignore[arg-type]


class Reports:
    """What the worker reported, per task, in order."""

    def __init__(self) -> None:
        self.by_task: dict[str, list[TaskState]] = {}

    def __call__(self, task_id: str, status: TaskStatus) -> None:
        self.by_task.setdefault(task_id, []).append(status.state)

    def last(self, task_id: str) -> TaskState | None:
        states = self.by_task.get(task_id)
        return states[-1] if states else None


async def until(check: Callable[[], object], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {check}")
        await asyncio.sleep(0.005)


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Worker, SimExecutor, Reports]]:
    ex = SimExecutor(start_delay=0)
    reports = Reports()
    worker = Worker(ex, reports)
    await worker.start()
    yield worker, ex, reports
    await worker.stop()


async def test_a_full_set_starts_every_task_and_reports_each_state(
    setup: tuple[Worker, SimExecutor, Reports],
) -> None:
    worker, ex, reports = setup
    worker.assign(Assignments(full=True, tasks=(task("a"), task("b"))))
    await until(
        lambda: ex.running() == {"a", "b"} and reports.last("a") is reports.last("b") is TaskState.RUNNING
    )
    expected = [
        TaskState.ACCEPTED,
        TaskState.PREPARING,
        TaskState.READY,
        TaskState.STARTING,
        TaskState.RUNNING,
    ]
    assert reports.by_task == {"a": expected, "b": expected}
    assert {u.task_id: u.status.state for u in worker.statuses()} == {
        "a": TaskState.RUNNING,
        "b": TaskState.RUNNING,
    }


async def test_a_task_missing_from_a_full_set_is_shut_down_and_removed(
    setup: tuple[Worker, SimExecutor, Reports],
) -> None:
    worker, ex, reports = setup
    worker.assign(Assignments(full=True, tasks=(task("a"), task("b"))))
    await until(lambda: ex.running() == {"a", "b"})
    worker.assign(Assignments(full=True, tasks=(task("a"),)))
    await until(lambda: ex.removed == ["b"])
    assert reports.last("b") is TaskState.SHUTDOWN
    assert ex.running() == {"a"}
    assert set(worker.controllers) == {"a"}


async def test_a_removed_task_is_shut_down_and_removed(setup: tuple[Worker, SimExecutor, Reports]) -> None:
    worker, ex, reports = setup
    worker.assign(Assignments(full=True, tasks=(task("a"),)))
    await until(lambda: ex.running() == {"a"})
    worker.assign(Assignments(removed=("a",)))
    await until(lambda: ex.removed == ["a"])
    assert reports.last("a") is TaskState.SHUTDOWN


async def test_desired_shutdown_stops_the_task_but_keeps_it_until_unassigned(
    setup: tuple[Worker, SimExecutor, Reports],
) -> None:
    worker, ex, reports = setup
    worker.assign(Assignments(full=True, tasks=(task("a"),)))
    await until(lambda: reports.last("a") is TaskState.RUNNING)
    worker.assign(Assignments(tasks=(task("a", desired_state=TaskState.SHUTDOWN),)))
    await until(lambda: reports.last("a") is TaskState.SHUTDOWN)
    await asyncio.sleep(0.02)
    assert ex.running() == set()
    assert "a" in ex.tasks and ex.removed == [], "an ended task's leftovers stay while it is assigned"
    worker.assign(Assignments(removed=("a",)))
    await until(lambda: ex.removed == ["a"])


async def test_a_task_that_exits_is_reported_once_and_left_alone(
    setup: tuple[Worker, SimExecutor, Reports],
) -> None:
    worker, ex, reports = setup
    worker.assign(Assignments(full=True, tasks=(task("a"),)))
    await until(lambda: reports.last("a") is TaskState.RUNNING)
    ex.exit("a", 0)
    await until(lambda: reports.last("a") is TaskState.COMPLETE)
    worker.assign(Assignments(tasks=(task("a", spec=TaskSpec(force_update=1)),)))
    await asyncio.sleep(0.02)
    assert reports.by_task["a"].count(TaskState.COMPLETE) == 1
    assert reports.last("a") is TaskState.COMPLETE


async def test_leftovers_from_before_a_restart_are_cleaned_up_and_foreign_things_kept() -> None:
    ex = SimExecutor(start_delay=0)
    for t in (task("old"), task("kept")):
        await ex.prepare(t, TaskDependencies())
        await ex.start(t)
    ex.foreign.add("someone-elses-container")
    worker = Worker(ex, Reports())
    await worker.start()
    try:
        # The manager still assigns "kept" (as RUNNING); "old" is no longer this node's.
        worker.assign(
            Assignments(full=True, tasks=(task("kept", status=TaskStatus(state=TaskState.RUNNING)),))
        )
        await until(lambda: ex.removed == ["old"])
        assert ex.running() == {"kept"}
        assert ex.foreign == {"someone-elses-container"}
    finally:
        await worker.stop()


async def test_a_leftover_the_manager_ended_meanwhile_is_stopped_and_removed_once_dropped() -> None:
    ex = SimExecutor(start_delay=0)
    for t in (task("orphan"), task("kept")):
        await ex.prepare(t, TaskDependencies())
        await ex.start(t)
    reports = Reports()
    worker = Worker(ex, reports)
    await worker.start()
    try:
        # Away longer than the grace: the manager marked "orphan" ORPHANED and runs its slot elsewhere, but
        # still lists it (history) for this node.
        ended = TaskStatus(state=TaskState.ORPHANED)
        orphan = task("orphan", status=ended, desired_state=TaskState.SHUTDOWN)
        kept = task("kept", status=TaskStatus(state=TaskState.RUNNING))
        worker.assign(Assignments(full=True, tasks=(orphan, kept)))
        await until(lambda: ex.running() == {"kept"})
        await asyncio.sleep(0.02)
        assert "orphan" in ex.tasks and ex.removed == [], "kept while the manager lists it"
        assert "orphan" not in reports.by_task, "the manager's verdict stands; nothing to report"
        worker.assign(Assignments(removed=("orphan",)))
        await until(lambda: ex.removed == ["orphan"])
    finally:
        await worker.stop()


async def test_networks_and_secrets_of_a_task_reach_the_executor(
    setup: tuple[Worker, SimExecutor, Reports],
) -> None:
    worker, ex, _ = setup
    net = Network(meta=Meta(id="net1", version=3))
    secret = Secret(meta=Meta(id="s1", version=4), spec=SecretSpec(data=b"hunter2"))
    t = task(
        "a",
        networks=(NetworkAttachment(network_id="net1", addresses=("10.0.0.3/24",)),),
        spec=TaskSpec(container=ContainerSpec(image="busybox", secrets=(SecretReference(secret_id="s1"),))),
    )
    worker.assign(Assignments(full=True, tasks=(t,), networks=(net,), secrets=(secret,)))
    await until(lambda: "a" in ex.tasks)
    deps = ex.tasks["a"].deps
    assert dict(deps.networks) == {"net1": net}
    assert dict(deps.secrets) == {"s1": secret}
