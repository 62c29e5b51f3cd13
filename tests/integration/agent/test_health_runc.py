"""Health checks of real busybox containers under the runc executor: a CMD-SHELL check that fails once a
file is gone turns the task FAILED with "unhealthy container"; a check past its timeout is killed inside
the container; an image's own HEALTHCHECK applies unless the spec says NONE."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.controller import TaskController
from agent.executor import TaskDependencies
from agent.executor_runc import RuncExecutor
from agent.health import UNHEALTHY_ERROR, HealthState
from agent.runtime.containers import cgroups
from agent.runtime.images.baseimages import make_busybox
from agent.runtime.images.oci import OCI_CONFIG, Descriptor, Manifest
from agent.runtime.local import LocalRuntimeOptions
from api import Annotations, Task, TaskState
from api.objects import SECOND, ContainerSpec, HealthConfig, Meta, TaskSpec, TaskStatus, new_id

pytestmark = pytest.mark.root

MS = 1_000_000
INTERVAL = 0.2
RETRIES = 2
CHECK = HealthConfig(
    test=("CMD-SHELL", "test -f /tmp/ok || { echo /tmp/ok is gone; exit 1; }"),
    interval_ns=int(INTERVAL * SECOND),
    timeout_ns=2 * SECOND,
    retries=RETRIES,
)


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


def task(*args: str, check: HealthConfig | None = CHECK, image: str = "busybox") -> Task:
    return Task(
        meta=Meta(id=new_id()),
        service_id="svc1",
        slot=1,
        node_id="node1",
        service_annotations=Annotations(name="web"),
        spec=TaskSpec(
            container=ContainerSpec(image=image, args=args, healthcheck=check, stop_grace_period_ns=SECOND)
        ),
        status=TaskStatus(state=TaskState.ASSIGNED),
    )


async def run_to(ctl: TaskController, state: TaskState, timeout: float = 10) -> None:
    while ctl.status.state is not state:
        status = await asyncio.wait_for(ctl.step(), timeout)
        assert status is not None and not (status.state.is_terminal and status.state is not state), status


def container_id(executor: RuncExecutor, t: Task) -> str:
    (record,) = executor.runtime.list_containers(all=True, filters={"name": [t.meta.id]})
    return record.id


async def test_a_task_whose_check_starts_failing_is_failed_as_unhealthy(executor: RuncExecutor) -> None:
    t = task("sh", "-c", "touch /tmp/ok; exec sleep 1000")
    ctl = TaskController(t, executor, lambda _: TaskDependencies())
    await run_to(ctl, TaskState.RUNNING)
    assert ctl.health is not None and ctl.health.status is HealthState.HEALTHY
    cid = container_id(executor, t)

    removed = await executor.runtime.containers.exec(cid, ["rm", "/tmp/ok"])
    assert removed.exit_code == 0
    began = time.monotonic()
    failed = await asyncio.wait_for(ctl.step(), INTERVAL * RETRIES + 5)
    took = time.monotonic() - began
    assert failed is not None and (failed.state, failed.err) == (TaskState.FAILED, UNHEALTHY_ERROR)
    assert took < INTERVAL * (RETRIES + 1) + 2, f"unhealthy after {took:.1f}s"
    health = ctl.health
    assert health.status.value == "unhealthy"
    assert [p.output for p in health.log[-RETRIES:]] == ["/tmp/ok is gone\n"] * RETRIES
    assert executor.runtime.containers.inspect(cid).state.status == "exited", "the container was stopped"


async def test_a_check_past_its_timeout_is_killed_in_the_container(executor: RuncExecutor) -> None:
    t = task("sleep", "1000")
    await executor.prepare(t, TaskDependencies())
    await executor.start(t)
    cid = container_id(executor, t)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(executor.exec_check(t, ["sh", "-c", "exec sleep 77"]), 0.5)
    top = await executor.runtime.containers.top(cid)
    commands = [" ".join(row[len(top.titles) - 1 :]) for row in top.processes]
    assert not any("sleep 77" in c for c in commands), commands
    out = await executor.exec_check(t, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert out.exit_code == 3
    assert sorted(out.output.splitlines()) == ["err", "out"], "stdout and stderr, together"
    missing = await executor.exec_check(t, ["/no/such/check"])
    assert missing.exit_code == 127 and missing.output


def image_with_healthcheck(executor: RuncExecutor, healthcheck: dict[str, object]) -> str:
    """busybox with a HEALTHCHECK in its config (what a Dockerfile's HEALTHCHECK line records)."""
    store = executor.runtime.images
    base = store.get("busybox")
    body = json.loads(base.config.raw)
    body["config"]["Healthcheck"] = healthcheck
    raw = json.dumps(body).encode()
    digest = store.blobs.write(raw)
    manifest = Manifest.build(Descriptor(OCI_CONFIG, digest, len(raw)), base.manifest.layers)
    store.add(manifest, ["busybox-checked:latest"])
    return "busybox-checked:latest"


async def test_the_images_healthcheck_applies_unless_the_spec_says_none(executor: RuncExecutor) -> None:
    image = image_with_healthcheck(
        executor, {"Test": ["CMD-SHELL", "echo image check; exit 1"], "Interval": 100 * MS, "Retries": 1}
    )
    inherits = task("sleep", "1000", check=None, image=image)
    assert await executor.healthcheck(inherits) == HealthConfig(
        test=("CMD-SHELL", "echo image check; exit 1"), interval_ns=100 * MS, retries=1
    )
    assert (
        await executor.healthcheck(
            replace(
                inherits,
                spec=TaskSpec(container=ContainerSpec(image=image, healthcheck=HealthConfig(test=("NONE",)))),
            )
        )
        is None
    )

    ctl = TaskController(inherits, executor, lambda _: TaskDependencies())
    await run_to(ctl, TaskState.FAILED)
    assert ctl.status.err == UNHEALTHY_ERROR
    assert ctl.health is not None and ctl.health.log[0].output == "image check\n"
