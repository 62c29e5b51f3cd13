"""Secrets reach a task's container through a tmpfs of its own, never the disk (root: mounts)."""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.executor import TaskDependencies
from agent.executor_runc import RuncExecutor
from agent.runtime.containers import cgroups
from agent.runtime.images.baseimages import make_busybox
from agent.runtime.local import LocalRuntimeOptions
from agent.runtime.snapshots.mounts import is_mountpoint
from agent.secrets import mount_secrets, secret_files, secrets_dir, secrets_mount, unmount_secrets
from api import Secret, Task
from api.objects import Annotations, ContainerSpec, Meta, SecretReference, SecretSpec, TaskSpec, new_id

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]


def fs_type(path: Path) -> str:
    """The filesystem type mounted at ``path`` (from this namespace's mount table)."""
    real = os.path.realpath(path)
    found = ""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[4] == real:
                found = fields[fields.index("-") + 1]
    return found


def task_using(*refs: SecretReference) -> Task:
    return Task(meta=Meta(id="task1"), spec=TaskSpec(container=ContainerSpec(image="busybox", secrets=refs)))


SECRETS = {
    "s1": Secret(
        meta=Meta(id="s1"), spec=SecretSpec(annotations=Annotations(name="db-password"), data=b"hunter2")
    ),
    "s2": Secret(
        meta=Meta(id="s2"), spec=SecretSpec(annotations=Annotations(name="api-key"), data=b"\x00key")
    ),
}


def test_a_tasks_secrets_live_on_a_tmpfs_and_vanish_with_it(tmp_path: Path) -> None:
    root = tmp_path / "secrets"
    task = task_using(
        SecretReference(secret_id="s1", secret_name="db-password"),
        SecretReference(secret_id="s2", secret_name="api-key", target="key"),
    )
    files = secret_files(task, SECRETS)
    assert files == {"db-password": b"hunter2", "key": b"\x00key"}
    path = mount_secrets(task.meta.id, files, root=root)
    try:
        assert fs_type(path) == "tmpfs", "secrets are never written to the host's disk"
        assert (path / "db-password").read_bytes() == b"hunter2"
        assert stat.S_IMODE((path / "key").stat().st_mode) == 0o444
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        mount = secrets_mount(path)
        assert mount["target"] == "/run/secrets" and mount["read_only"] is True
        # Preparing again (an agent restart) refills the same mount; a secret no longer used goes.
        assert mount_secrets(task.meta.id, {"key": b"new"}, root=root) == path
        assert sorted(p.name for p in path.iterdir()) == ["key"]
        assert (path / "key").read_bytes() == b"new"
    finally:
        unmount_secrets(task.meta.id, root=root)
    assert not is_mountpoint(path) and not path.exists()
    unmount_secrets(task.meta.id, root=root)  # twice is fine


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


@pytest.mark.skipif(not shutil.which("runc") or not shutil.which("conmon"), reason="needs runc and conmon")
async def test_a_container_reads_its_secrets_at_run_secrets(executor: RuncExecutor) -> None:
    ref = SecretReference(secret_id="s1", secret_name="db-password", target="password")
    script = 'test "$(cat /run/secrets/password)" = hunter2 && ! touch /run/secrets/x 2>/dev/null'
    task = Task(
        meta=Meta(id=new_id()),
        service_id="svc1",
        slot=1,
        node_id="node1",
        service_annotations=Annotations(name="web"),
        spec=TaskSpec(container=ContainerSpec(image="busybox", args=("sh", "-c", script), secrets=(ref,))),
    )
    await executor.prepare(task, TaskDependencies(secrets=SECRETS))
    host_dir = secrets_dir(task.meta.id)
    assert fs_type(host_dir) == "tmpfs"
    await executor.start(task)
    assert (await executor.wait(task)).exit_code == 0, "the secret is there, read-only"
    await executor.remove(task.meta.id)
    assert not host_dir.exists()
