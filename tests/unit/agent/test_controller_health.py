"""The task controller with health checks (simulated executor, probes every 10 ms): a checked task is
RUNNING only once healthy, and an unhealthy one is stopped and reported FAILED with "unhealthy container"."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from agent.controller import TaskController
from agent.executor import TaskDependencies
from agent.executor_sim import SHUTDOWN_EXIT_CODE, SimExecutor
from agent.health import UNHEALTHY_ERROR, HealthState
from api import Task, TaskState
from api.objects import ContainerSpec, HealthConfig, Meta, TaskSpec, TaskStatus

MS = 1_000_000
CHECK = HealthConfig(test=("CMD-SHELL", "true"), interval_ns=10 * MS, timeout_ns=500 * MS, retries=2)
TO_STARTING = [TaskState.ACCEPTED, TaskState.PREPARING, TaskState.READY, TaskState.STARTING]


def task(health: str = "", check: HealthConfig | None = CHECK, task_id: str = "t1") -> Task:
    env = (f"SHOAL_SIM_HEALTH={health}",) if health else ()
    return Task(
        meta=Meta(id=task_id, version=1),
        node_id="n1",
        spec=TaskSpec(container=ContainerSpec(image="busybox", env=env, healthcheck=check)),
        status=TaskStatus(state=TaskState.ASSIGNED),
    )


async def steps(ctl: TaskController, until: TaskState) -> list[TaskState]:
    seen: list[TaskState] = []
    while not seen or seen[-1] is not until:
        status = await asyncio.wait_for(ctl.step(), 5)
        assert status is not None, f"stalled after {seen}"
        seen.append(status.state)
    return seen


def controller(t: Task, ex: SimExecutor) -> TaskController:
    return TaskController(t, ex, lambda _: TaskDependencies())


async def test_a_checked_task_is_running_once_its_first_probe_passes() -> None:
    ex = SimExecutor(start_delay=0)
    ctl = controller(task("healthy"), ex)
    assert await steps(ctl, TaskState.RUNNING) == [*TO_STARTING, TaskState.RUNNING]
    assert ctl.health is not None and ctl.health.status is HealthState.HEALTHY
    assert ex.tasks["t1"].probes == 1, "RUNNING came with the first healthy probe"
    assert ctl.health.docker()["Log"][0]["ExitCode"] == 0


async def test_a_task_that_never_becomes_healthy_fails_as_unhealthy() -> None:
    ex = SimExecutor(start_delay=0)
    ctl = controller(task("unhealthy"), ex)
    assert await steps(ctl, TaskState.FAILED) == [*TO_STARTING, TaskState.FAILED]
    assert ctl.status.err == UNHEALTHY_ERROR
    assert ctl.status.exit_code == SHUTDOWN_EXIT_CODE, "it was shut down"
    assert ex.running() == set()
    assert ctl.health is not None and ctl.health.status is HealthState.UNHEALTHY
    assert [p.exit_code for p in ctl.health.log] == [1, 1], "retries=2 failures in a row"


async def test_a_running_task_that_turns_unhealthy_is_stopped_and_failed() -> None:
    ex = SimExecutor(start_delay=0)
    ctl = controller(task("after:3"), ex)
    await steps(ctl, TaskState.RUNNING)
    failed = await asyncio.wait_for(ctl.step(), 5)
    assert failed is not None and failed.state is TaskState.FAILED
    assert (failed.err, failed.message) == (UNHEALTHY_ERROR, "unhealthy")
    assert ex.tasks["t1"].probes == 5, "three passes, then two failures"
    assert ex.running() == set()


async def test_a_flaky_check_within_its_retries_keeps_the_task_running() -> None:
    ex = SimExecutor(start_delay=0)
    ctl = controller(task("flaky:2"), ex)  # every second probe fails; retries=2 needs two in a row
    await steps(ctl, TaskState.RUNNING)
    stepping = asyncio.ensure_future(ctl.step())
    while ex.tasks["t1"].probes < 8:
        await asyncio.sleep(0.01)
    assert not stepping.done(), "still running"
    ex.set_health("t1", "unhealthy")
    failed = await asyncio.wait_for(stepping, 5)
    assert failed is not None and failed.err == UNHEALTHY_ERROR


async def test_no_check_or_none_means_no_probes() -> None:
    ex = SimExecutor(start_delay=0)
    plain = controller(task("unhealthy", check=None, task_id="plain"), ex)
    off = controller(task("unhealthy", check=HealthConfig(test=("NONE",)), task_id="off"), ex)
    for ctl in (plain, off):
        assert await steps(ctl, TaskState.RUNNING) == [*TO_STARTING, TaskState.RUNNING]
        assert ctl.health is None
    await asyncio.sleep(0.05)
    assert ex.tasks["plain"].probes == ex.tasks["off"].probes == 0


async def test_a_task_stopped_while_starting_is_shut_down() -> None:
    ex = SimExecutor(start_delay=0)
    ctl = controller(task("hang", check=replace(CHECK, timeout_ns=60 * 1_000 * MS)), ex)
    await steps(ctl, TaskState.STARTING)
    waiting = asyncio.ensure_future(ctl.step())
    await asyncio.sleep(0.05)
    assert not waiting.done(), "held in STARTING until a probe answers"
    ctl.update(replace(ctl.task, desired_state=TaskState.SHUTDOWN))
    assert await asyncio.wait_for(waiting, 5) is None
    assert (await ctl.step()).state is TaskState.SHUTDOWN  # type: ignore[union-attr]
    assert ex.running() == set()


async def test_an_exit_before_the_first_healthy_probe_is_reported_as_the_exit() -> None:
    ex = SimExecutor(start_delay=0)
    ctl = controller(task("hang", check=replace(CHECK, timeout_ns=60 * 1_000 * MS)), ex)
    await steps(ctl, TaskState.STARTING)
    waiting = asyncio.ensure_future(ctl.step())
    await asyncio.sleep(0.02)
    ex.exit("t1", 3)
    failed = await asyncio.wait_for(waiting, 5)
    assert failed is not None and (failed.state, failed.err) == (TaskState.FAILED, "task: non-zero exit (3)")
