"""Logs of real containers: a busybox task that echoes, read by the runc executor from conmon's CRI log
(stdout and stderr apart, tail, since, follow until the container exits), and the same lines through a
manager's ``GET /tasks/{id}/logs`` from an agent running the runc executor."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agent.agent import Agent, AgentConfig
from agent.executor import TaskDependencies
from agent.executor_runc import RuncExecutor
from agent.runtime.containers import cgroups
from agent.runtime.images.baseimages import make_busybox
from agent.runtime.local import LocalRuntimeOptions
from api import Annotations, Task, TaskState
from api.join import MANAGER_SERVER_NAME
from api.logs import LogLine, LogOptions
from api.objects import ContainerSpec, Meta, TaskSpec, TaskStatus, new_id
from tests.integration.control_plane.conftest import ControlPlane, eventually
from tests.integration.control_plane.test_logs import admin_context
from tests.servers import unique_prefix

pytestmark = pytest.mark.root

SCRIPT = "echo out one; echo err one >&2; echo out two; sleep 0.5; echo after a while; printf 'no newline'"
#: What it writes, per stream (conmon reads the two pipes apart, so their lines interleave as they come).
STDOUT = ["out one", "out two", "after a while", "no newline"]
STDERR = ["err one"]


@pytest.fixture
async def executor(tmp_path: Path) -> AsyncIterator[RuncExecutor]:
    parent = f"/shoal-test-{uuid.uuid4().hex[:10]}"
    ex = RuncExecutor(
        tmp_path / "runtime", hostname="node1", options=LocalRuntimeOptions(cgroup_parent=parent)
    )
    make_busybox(ex.runtime.images)
    try:
        yield ex
    finally:
        for task_id in await ex.list_tasks():
            await ex.remove(task_id)
        await ex.close()
        cgroups.remove_parent_if_empty(parent)


def echoing(node_id: str = "node1") -> Task:
    return Task(
        meta=Meta(id=new_id()),
        service_id="svc1",
        slot=1,
        node_id=node_id,
        service_annotations=Annotations(name="echo"),
        spec=TaskSpec(container=ContainerSpec(image="busybox", args=("sh", "-c", SCRIPT))),
        status=TaskStatus(state=TaskState.ASSIGNED),
    )


async def lines(executor: RuncExecutor, task: Task, **options: object) -> list[LogLine]:
    return [line async for line in executor.logs(task, LogOptions(**options))]  # type: ignore[arg-type]


async def test_a_containers_lines_streams_tail_since_and_follow(executor: RuncExecutor) -> None:
    task = echoing()
    assert await lines(executor, task) == []  # no container yet: nothing written
    await executor.prepare(task, TaskDependencies())
    await executor.start(task)
    followed = await lines(executor, task, follow=True)  # from the start until the container exits
    assert (await executor.wait(task)).exit_code == 0
    assert [x.text for x in followed if x.stream == "stdout"] == STDOUT
    assert [x.text for x in followed if x.stream == "stderr"] == STDERR
    every = await lines(executor, task)
    assert every == followed
    assert [x.text for x in await lines(executor, task, tail=2)] == ["after a while", "no newline"]
    assert [x.text for x in await lines(executor, task, stdout=False)] == ["err one"]
    later = every[-2].time_ns
    assert max(x.time_ns for x in every[:3]) < later  # the sleep is between them
    assert [x.text for x in await lines(executor, task, since_ns=later)] == ["after a while", "no newline"]


async def test_logs_of_a_container_through_a_manager(tmp_path: Path) -> None:
    plane = ControlPlane(f"memory://{unique_prefix('runc-logs')}", tmp_path)
    parent = f"/shoal-test-{uuid.uuid4().hex[:10]}"
    executor = RuncExecutor(
        tmp_path / "runtime", hostname="node1", options=LocalRuntimeOptions(cgroup_parent=parent)
    )
    make_busybox(executor.runtime.images)
    try:
        m = await plane.manager()
        agent = Agent(
            AgentConfig(
                managers=[m.addr],
                token=plane.worker_token,
                state_dir=tmp_path / "node1",
                hostname="node1",
                backoff=(0.02, 0.2),
            ),
            executor,
        )
        plane.agents.append(agent)
        agent.start()
        (node_id,) = await plane.connected(agent)
        task = await plane.store.create(echoing(node_id))
        await plane.task_state(task.meta.id, TaskState.RUNNING)
        url = f"https://{m.addr}/tasks/{task.meta.id}/logs"
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                url,
                params={"follow": "1"},
                ssl=admin_context(m, tmp_path),
                server_hostname=MANAGER_SERVER_NAME,
            ) as resp,
        ):
            started = time.monotonic()
            body = await asyncio.wait_for(resp.read(), 20)  # the stream ends when the container exits
        objects = [json.loads(line) for line in body.splitlines()]
        assert [o["text"] for o in objects if o["stream"] == "stdout"] == STDOUT
        assert [o["text"] for o in objects if o["stream"] == "stderr"] == STDERR
        assert {o["node"] for o in objects} == {node_id} and time.monotonic() - started < 15
        await eventually(lambda: plane.store.must_get(Task, task.meta.id).status.state is TaskState.COMPLETE)
    finally:
        await plane.close()
        for task_id in await executor.list_tasks():
            await executor.remove(task_id)
        await executor.close()
        cgroups.remove_parent_if_empty(parent)
