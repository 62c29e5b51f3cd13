"""A task run by the runc executor gets its network from the host's network controller: an address on the
default bridge that answers from the host, the sandbox's /etc files, no network once it stopped, and nothing
left once it is removed."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agent.executor import TaskDependencies
from agent.executor_runc import LABEL_TASK_ID, RuncExecutor
from agent.network.controller import NetworkController
from agent.runtime.containers import cgroups
from agent.runtime.images.baseimages import make_busybox
from agent.runtime.local import LocalRuntimeOptions
from api import Annotations, Task
from api.objects import SECOND, ContainerSpec, Meta, TaskSpec, new_id
from tests.integration.network.conftest import Lab, can_connect, requires_netns

pytestmark = [pytest.mark.root, requires_netns]


async def test_task_gets_a_bridge_address_that_answers(
    ctl: NetworkController, lab: Lab, tmp_path: Path
) -> None:
    parent = f"/shoal-test-{uuid.uuid4().hex[:10]}"
    ex = RuncExecutor(tmp_path / "runtime", options=LocalRuntimeOptions(cgroup_parent=parent), network=ctl)
    make_busybox(ex.runtime.images)
    task = Task(
        meta=Meta(id=new_id()),
        service_id="svc",
        slot=1,
        service_annotations=Annotations(name="web"),
        spec=TaskSpec(
            container=ContainerSpec(
                image="busybox", args=("httpd", "-f", "-p", "8080", "-h", "/etc"), stop_grace_period_ns=SECOND
            )
        ),
    )
    try:
        await ex.prepare(task, TaskDependencies())
        await ex.start(task)
        (endpoint,) = ctl.sandbox(task.meta.id).endpoints
        ip = endpoint.addresses[0].split("/")[0]
        assert ip.startswith("172.17.")
        for _ in range(50):
            if await can_connect(lab.host, ip, 8080):
                break
        else:
            pytest.fail(f"the task's httpd on {ip}:8080 never answered from the host")
        hosts = (tmp_path / "runtime" / "netetc" / task.meta.id / "hosts").read_text()
        assert task.meta.id[:12] in hosts
        # The container sees the sandbox's files (its own address in /etc/hosts), not the runtime's own.
        (record,) = ex.runtime.list_containers(filters={"label": [f"{LABEL_TASK_ID}={task.meta.id}"]})
        assert f"{ip}\t{task.meta.id[:12]}" in Path(f"/proc/{record.state.pid}/root/etc/hosts").read_text()
        assert Path(f"/proc/{record.state.pid}/root/etc/hostname").read_text() == f"{task.meta.id[:12]}\n"
        # Stopped, the task keeps its container (until removed) but no longer its network, as in Docker.
        await ex.shutdown(task)
        assert task.meta.id in await ex.list_tasks()
        with pytest.raises(Exception, match="has no network sandbox"):
            ctl.sandbox(task.meta.id)
    finally:
        await ex.shutdown(task)
        await ex.remove(task.meta.id)
        await ex.close()
        cgroups.remove_parent_if_empty(parent)
    with pytest.raises(Exception, match="has no network sandbox"):
        ctl.sandbox(task.meta.id)
    assert not (tmp_path / "runtime" / "netetc" / task.meta.id).exists()
