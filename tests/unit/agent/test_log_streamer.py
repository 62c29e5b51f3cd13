"""The agent's log streamer over the simulated executor: lines batched into frames, never more frames in
flight than the manager's window, reading paused while there is no credit, tasks it does not have, long
lines, cancellation and the end of a session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agent.executor import TaskDependencies
from agent.executor_sim import SimExecutor
from agent.logs import MAX_LINE, MAX_LINES, READ_AHEAD, LogStreamer
from api import Task
from api.logs import LogLine, LogOptions, LogsAck, LogsBatch, LogsCancel, LogsEnd, LogsSubscribe
from api.objects import ContainerSpec, Meta, TaskSpec


class CountingSim(SimExecutor):
    """The simulated executor, counting the lines its log reader has handed out."""

    read = 0

    async def logs(self, task: Task, options: LogOptions) -> AsyncIterator[LogLine]:
        async for line in super().logs(task, options):
            self.read += 1
            yield line


class Manager:
    """The manager's end of the session: what the streamer sent."""

    def __init__(self) -> None:
        self.frames: list[LogsBatch | LogsEnd] = []

    async def send(self, frame: LogsBatch | LogsEnd) -> None:
        self.frames.append(frame)

    def batches(self) -> list[LogsBatch]:
        return [f for f in self.frames if isinstance(f, LogsBatch)]

    def lines(self) -> list[str]:
        return [line.text for f in self.batches() for line in f.lines]

    def ends(self) -> list[LogsEnd]:
        return [f for f in self.frames if isinstance(f, LogsEnd)]


async def started(ex: SimExecutor, *env: str) -> Task:
    task = Task(meta=Meta(id=f"t{len(ex.tasks)}"), spec=TaskSpec(container=ContainerSpec(env=env)))
    await ex.prepare(task, TaskDependencies())
    await ex.start(task)
    return task


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


@pytest.fixture
def ex() -> CountingSim:
    return CountingSim(start_delay=0)


async def test_lines_come_in_batches_and_the_subscription_ends(ex: CountingSim) -> None:
    task = await started(ex, "SHOAL_SIM_LOG=first")
    for i in range(1, 1200):
        ex.write_log(task.meta.id, f"line {i}", "stderr" if i % 2 else "stdout")
    streamer, manager = LogStreamer(ex, {task.meta.id: task}.get), Manager()
    streamer.handle(LogsSubscribe("s", (task.meta.id,), window=100), manager.send)
    await settle()
    assert manager.lines() == ["first", *(f"line {i}" for i in range(1, 1200))]
    assert all(len(b.lines) <= MAX_LINES for b in manager.batches())
    assert len(manager.batches()) == 3
    assert manager.ends() == [LogsEnd("s")]
    assert streamer.active == 0


async def test_no_more_frames_than_the_window_and_reading_waits_for_credit(ex: CountingSim) -> None:
    task = await started(ex, "SHOAL_SIM_LOG=")
    for i in range(9_000):
        ex.write_log(task.meta.id, f"line {i}")
    streamer, manager = LogStreamer(ex, {task.meta.id: task}.get), Manager()
    streamer.handle(LogsSubscribe("s", (task.meta.id,), window=2), manager.send)
    await settle()
    assert len(manager.batches()) == 2 and not manager.ends()
    # What was read but not sent is bounded: a queue's worth and the batch being made.
    assert ex.read <= 2 * MAX_LINES + READ_AHEAD + MAX_LINES + 1
    read = ex.read
    await settle()
    assert (len(manager.batches()), ex.read) == (2, read)  # stalled, not spinning through the file

    streamer.handle(LogsAck("s", 1), manager.send)
    await settle()
    assert len(manager.batches()) == 3
    streamer.handle(LogsAck("s", 1_000), manager.send)
    await settle()
    assert len(manager.lines()) == 9_000 and manager.ends() == [LogsEnd("s")]


async def test_a_task_not_on_this_node_is_reported_and_the_others_go_on(ex: CountingSim) -> None:
    task = await started(ex, "SHOAL_SIM_LOG=here")
    streamer, manager = LogStreamer(ex, {task.meta.id: task}.get), Manager()
    streamer.handle(LogsSubscribe("s", ("elsewhere", task.meta.id)), manager.send)
    await settle()
    assert manager.lines() == ["here"]
    assert manager.ends() == [LogsEnd("s", "elsewhere", "task elsewhere is not on this node"), LogsEnd("s")]


async def test_long_lines_go_in_pieces(ex: CountingSim) -> None:
    task = await started(ex, "SHOAL_SIM_LOG=")
    ex.write_log(task.meta.id, "x" * (2 * MAX_LINE + 5))
    streamer, manager = LogStreamer(ex, {task.meta.id: task}.get), Manager()
    streamer.handle(LogsSubscribe("s", (task.meta.id,)), manager.send)
    await settle()
    assert [len(text) for text in manager.lines()] == [MAX_LINE, MAX_LINE, 5]


async def test_follow_until_the_task_ends_or_the_manager_cancels(ex: CountingSim) -> None:
    one, two = await started(ex), await started(ex)
    tasks = {one.meta.id: one, two.meta.id: two}
    streamer, manager = LogStreamer(ex, tasks.get), Manager()
    follow = LogOptions(follow=True, tail=0)
    streamer.handle(LogsSubscribe("a", (one.meta.id,), follow), manager.send)
    streamer.handle(LogsSubscribe("b", (two.meta.id,), follow), manager.send)
    await settle()
    ex.write_log(one.meta.id, "live")
    await settle()
    assert manager.lines() == ["live"]

    streamer.handle(LogsCancel("b"), manager.send)
    ex.exit(one.meta.id, 0)
    await settle()
    assert manager.ends() == [LogsEnd("a")]  # a cancelled subscription ends without a word
    assert streamer.active == 0


async def test_the_end_of_the_session_ends_its_subscriptions(ex: CountingSim) -> None:
    task = await started(ex)
    streamer, manager = LogStreamer(ex, {task.meta.id: task}.get), Manager()
    streamer.handle(LogsSubscribe("s", (task.meta.id,), LogOptions(follow=True)), manager.send)
    await settle()
    assert streamer.active == 1
    streamer.reset()
    await settle()
    ex.write_log(task.meta.id, "after")
    await settle()
    assert manager.lines() == [f"task {task.meta.id} running"] and streamer.active == 0
