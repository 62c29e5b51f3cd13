"""The runc executor: tasks become real busybox containers, end with their real exit codes, and leave
nothing behind when removed."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.errors import ExecutorError, TaskNotFound
from agent.executor import TaskDependencies
from agent.executor_runc import LABEL_TASK_ID, RuncExecutor
from agent.runtime.containers import cgroups
from agent.runtime.images.baseimages import make_busybox
from agent.runtime.local import LocalRuntimeOptions
from api import Annotations, Task
from api.objects import SECOND, ContainerSpec, Meta, TaskSpec, new_id

pytestmark = pytest.mark.root


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


def task(*args: str, image: str = "busybox", grace: int = 2) -> Task:
    return Task(
        meta=Meta(id=new_id()),
        service_id="svc1",
        slot=1,
        node_id="node1",
        service_annotations=Annotations(name="web"),
        spec=TaskSpec(
            container=ContainerSpec(image=image, args=tuple(args), stop_grace_period_ns=grace * SECOND)
        ),
    )


async def test_a_task_runs_as_a_container_and_reports_its_exit_code(executor: RuncExecutor) -> None:
    t = task("sh", "-c", "echo hello; exit 3")
    await executor.prepare(t, TaskDependencies())
    await executor.prepare(t, TaskDependencies())  # idempotent: still one container
    (record,) = executor.runtime.list_containers(all=True)
    assert record.name == f"web.1.{t.meta.id}"
    assert record.config.labels[LABEL_TASK_ID] == t.meta.id
    await executor.start(t)
    status = await executor.wait(t)
    assert status.exit_code == 3
    assert await executor.list_tasks() == {t.meta.id}
    await executor.remove(t.meta.id)
    assert await executor.list_tasks() == set()
    with pytest.raises(TaskNotFound):
        await executor.wait(t)


async def test_shutdown_stops_a_long_running_task(executor: RuncExecutor) -> None:
    t = task("sleep", "1000", grace=1)
    await executor.prepare(t, TaskDependencies())
    await executor.start(t)
    cid = executor.runtime.list_containers()[0].id
    assert executor.runtime.containers.inspect(cid).state.status == "running"
    await executor.shutdown(t)
    status = await executor.wait(t)
    assert status.exit_code in (137, 143)
    await executor.remove(t.meta.id)
    runc = subprocess.run(
        ["runc", "--root", str(executor.runtime.root / "runc"), "list", "-q"], capture_output=True, text=True
    )
    assert runc.stdout.strip() == ""


async def test_unknown_image_and_missing_command_fail_clearly(executor: RuncExecutor) -> None:
    bad = task("true", image="127.0.0.1:1/nothing:here")
    with pytest.raises(ExecutorError, match="No such image"):
        await executor.prepare(bad, TaskDependencies())
    assert await executor.list_tasks() == set()

    missing = task("/no/such/command")
    await executor.prepare(missing, TaskDependencies())
    with pytest.raises(ExecutorError):
        await executor.start(missing)
    assert executor.runtime.list_containers(all=True)[0].state.exit_code == 127
