"""The task controller with the simulated executor: one lifecycle step per call, failures as statuses."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from agent.controller import TaskController
from agent.executor import TaskDependencies
from agent.executor_sim import SimExecutor
from api import TRANSITIONS, Task, TaskState
from api.objects import ContainerSpec, Meta, TaskSpec, TaskStatus

LIFECYCLE = [TaskState.ACCEPTED, TaskState.PREPARING, TaskState.READY, TaskState.STARTING, TaskState.RUNNING]


def task(task_id: str = "t1", *, env: tuple[str, ...] = (), state: TaskState = TaskState.ASSIGNED) -> Task:
    return Task(
        meta=Meta(id=task_id, version=1),
        node_id="n1",
        spec=TaskSpec(container=ContainerSpec(image="busybox", env=env)),
        status=TaskStatus(state=state),
    )


def controller(t: Task, ex: SimExecutor | None = None) -> TaskController:
    return TaskController(t, ex or SimExecutor(start_delay=0), lambda _: TaskDependencies())


async def steps_until(ctl: TaskController, state: TaskState) -> list[TaskState]:
    seen: list[TaskState] = []
    while not seen or seen[-1] is not state:
        status = await asyncio.wait_for(ctl.step(), 2)
        assert status is not None, f"stalled after {seen}"
        seen.append(status.state)
    return seen


async def test_an_assigned_task_goes_through_every_state_to_running() -> None:
    ex = SimExecutor(start_delay=0)
    ctl = controller(task(), ex)
    assert await steps_until(ctl, TaskState.RUNNING) == LIFECYCLE
    assert ex.running() == {"t1"}
    assert ctl.status.message == "started"


async def test_every_step_is_a_transition_the_lifecycle_allows() -> None:
    ctl = controller(task())
    before = ctl.status.state
    for _ in LIFECYCLE:
        after = (await ctl.step()).state  # type: ignore[union-attr]
        assert after in TRANSITIONS[before]
        before = after


async def test_a_task_that_cannot_be_prepared_is_rejected_with_the_reason() -> None:
    ctl = controller(task(env=("SHOAL_SIM_FAIL=prepare",)))
    assert await steps_until(ctl, TaskState.REJECTED) == [*LIFECYCLE[:2], TaskState.REJECTED]
    assert "simulated failure preparing 'busybox'" in ctl.status.err
    assert await ctl.step() is None, "an ended task stays ended"


async def test_a_task_that_cannot_start_fails() -> None:
    ex = SimExecutor(start_delay=0)
    ex.fail_next("t1", "start")
    ctl = controller(task(), ex)
    assert (await steps_until(ctl, TaskState.FAILED))[-2:] == [TaskState.STARTING, TaskState.FAILED]
    assert ctl.status.err.endswith("simulated failure starting the task")


async def test_the_exit_code_decides_complete_or_failed() -> None:
    ex = SimExecutor(start_delay=0)
    ok, bad = controller(task("ok"), ex), controller(task("bad"), ex)
    await steps_until(ok, TaskState.RUNNING)
    await steps_until(bad, TaskState.RUNNING)
    ex.exit("ok", 0)
    ex.exit("bad", 2)
    assert (await ok.step()).state is TaskState.COMPLETE  # type: ignore[union-attr]
    failed = await bad.step()
    assert failed is not None and failed.state is TaskState.FAILED
    assert failed.exit_code == 2 and failed.err == "task: non-zero exit (2)"


async def test_desired_shutdown_interrupts_the_wait_and_stops_the_task() -> None:
    ex = SimExecutor(start_delay=0)
    ctl = controller(task(), ex)
    await steps_until(ctl, TaskState.RUNNING)
    waiting = asyncio.create_task(ctl.step())
    await asyncio.sleep(0.01)
    assert not waiting.done(), "a running task waits for its exit"

    ctl.update(replace(ctl.task, desired_state=TaskState.SHUTDOWN))
    assert await asyncio.wait_for(waiting, 1) is None, "the change ends the wait"
    stopped = await ctl.step()
    assert stopped is not None and stopped.state is TaskState.SHUTDOWN
    assert ex.running() == set()


async def test_a_task_unassigned_before_it_was_prepared_is_shut_down_without_touching_the_executor() -> None:
    ex = SimExecutor(start_delay=0)
    ctl = controller(task(), ex)
    await ctl.step()  # ACCEPTED
    ctl.unassign()
    stopped = await ctl.step()
    assert stopped is not None and stopped.state is TaskState.SHUTDOWN
    assert ex.tasks == {}


async def test_desired_ready_prepares_without_starting() -> None:
    ex = SimExecutor(start_delay=0)
    ctl = controller(replace(task(), desired_state=TaskState.READY), ex)
    assert await steps_until(ctl, TaskState.READY) == LIFECYCLE[:3]
    assert await ctl.step() is None
    assert ex.running() == set()


async def test_a_running_task_the_executor_does_not_know_fails() -> None:
    # The manager says RUNNING (seeded status), but this host holds nothing: e.g. the host rebooted.
    ctl = controller(task(state=TaskState.RUNNING))
    failed = await ctl.step()
    assert failed is not None and failed.state is TaskState.FAILED
    assert "no such task" in failed.err


async def test_the_managers_status_of_a_known_task_is_ignored() -> None:
    ctl = controller(task())
    await steps_until(ctl, TaskState.READY)
    ctl.update(replace(ctl.task, status=TaskStatus(state=TaskState.ASSIGNED)))
    assert ctl.status.state is TaskState.READY
    assert (await ctl.step()).state is TaskState.STARTING  # type: ignore[union-attr]
