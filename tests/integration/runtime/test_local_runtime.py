"""The local runtime facade on real runc: containers from image references, snapshots, volumes, adoption."""

from __future__ import annotations

import asyncio
import io

import pytest

from agent.runtime.containers.config import ContainerConfig
from agent.runtime.containers.introspect import docker_inspect
from agent.runtime.containers.logs import LogFilter
from agent.runtime.errors import ContainerNotFound, ImageInUse, ImageNotFound, VolumeInUse
from agent.runtime.images.archive import import_rootfs
from agent.runtime.local import LocalRuntime
from agent.runtime.volumes import parse_bind
from tests.integration.runtime import local_support as support
from tests.integration.runtime.containers_support import requires_runc
from tests.integration.runtime.images.support import busybox_store
from tests.integration.runtime.local_support import LocalEnv, remove_everything
from tests.integration.runtime.test_local_api_images import busybox_tarball

pytestmark = [pytest.mark.root, requires_runc]

__all__ = ["busybox_store"]
local_env = support.local_env
local_runtime = support.local_runtime


def output(rt: LocalRuntime, cid: str) -> str:
    return b"".join(e.message for e in rt.containers.logs(cid, LogFilter(stderr=False))).decode()


async def run(rt: LocalRuntime, config: ContainerConfig, **kwargs: object) -> tuple[str, int]:
    record = await rt.create(config, **kwargs)  # type: ignore[arg-type]
    await rt.containers.start(record.id)
    return record.id, await asyncio.wait_for(rt.wait(record.id), 20)


async def test_container_takes_the_image_config(local_runtime: LocalRuntime) -> None:
    rt = local_runtime
    import_rootfs(
        rt.images,
        io.BytesIO(busybox_tarball({"srv/app/hello": b"hi\n"})),
        reference="configured:1",
        changes=[
            "ENV GREETING=ahoy PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "WORKDIR /srv/app",
            "USER nobody",
            "STOPSIGNAL SIGUSR1",
            "LABEL team=infra",
            "EXPOSE 8080",
            'ENTRYPOINT ["sh", "-c"]',
            'CMD ["pwd; id -u; echo $GREETING; cat hello"]',
        ],
    )
    cid, code = await run(rt, ContainerConfig(image="configured:1", labels={"run": "one"}))
    assert code == 0
    assert output(rt, cid).split() == ["/srv/app", "65534", "ahoy", "hi"]
    record = rt.containers.inspect(cid)
    assert record.config.image_id == rt.image("configured:1").id
    inspect = docker_inspect(record)
    assert inspect["Config"]["StopSignal"] == "SIGUSR1" and inspect["Config"]["User"] == "nobody"
    assert inspect["Config"]["Labels"] == {"team": "infra", "run": "one"}
    assert inspect["Config"]["ExposedPorts"] == {"8080/tcp": {}}
    # The user's options win over the image's.
    cid, code = await run(
        rt, ContainerConfig(image="configured:1", cmd=("id -u; pwd",), user="root", working_dir="/tmp")
    )
    assert code == 0 and output(rt, cid).split() == ["0", "/tmp"]
    with pytest.raises(ImageNotFound):
        await rt.create(ContainerConfig(image="nosuch:latest"))


async def test_rm_removes_the_snapshot_and_image_rm_waits_for_it(local_runtime: LocalRuntime) -> None:
    rt = local_runtime
    cid, code = await run(rt, ContainerConfig(image="busybox", cmd=("sh", "-c", "echo x > /written")))
    assert code == 0 and rt.snapshots.exists(cid)
    assert "A /written" in [str(c) for c in rt.snapshots.diff(cid)]
    with pytest.raises(ImageInUse):
        await rt.remove_image("busybox")
    await rt.remove(cid)
    assert not rt.snapshots.exists(cid) and rt.snapshots.containers() == []
    removals = await rt.remove_image("busybox")
    assert [r.kind for r in removals] == ["Untagged", "Deleted"]
    assert (
        not any((rt.snapshots.root / "layers").glob("*")) if (rt.snapshots.root / "layers").exists() else True
    )


async def test_a_running_containers_image_loses_an_extra_name_but_is_never_forced_away(
    local_runtime: LocalRuntime,
) -> None:
    rt = local_runtime
    rt.images.tag("busybox", "extra/name:v1")
    record = await rt.create(ContainerConfig(image="busybox", cmd=("sleep", "60")))
    await rt.containers.start(record.id)
    try:
        # One of several names goes, forced or not (docker rmi [-f] extra/name:v1).
        assert [(r.kind, r.value) for r in await rt.remove_image("extra/name:v1", force=True)] == [
            ("Untagged", "extra/name:v1")
        ]
        # The image itself stays while a container runs it, even forced.
        with pytest.raises(ImageInUse, match=r"running container \w+ \(cannot be forced\)"):
            await rt.remove_image("busybox", force=True)
        assert rt.image("busybox").id == record.config.image_id
    finally:
        await rt.remove(record.id, force=True)


async def test_a_name_on_another_manifest_of_a_running_image_is_only_untagged(
    local_runtime: LocalRuntime,
) -> None:
    rt = local_runtime
    # A docker-save tarball of busybox loaded under another name: a manifest of its own, the same image.
    saved = io.BytesIO()
    rt.images.tag("busybox", "twin:v1")
    await rt.save(["twin:v1"], saved)
    await rt.remove_image("twin:v1")
    saved.seek(0)
    await rt.load(saved)
    assert rt.image("twin:v1").id == rt.image("busybox").id
    assert rt.image("twin:v1").manifest.digest != rt.image("busybox").manifest.digest
    record = await rt.create(ContainerConfig(image="busybox", cmd=("sleep", "60")))
    await rt.containers.start(record.id)
    try:
        removals = await rt.remove_image("twin:v1", force=True)
        assert [r.kind for r in removals] == ["Untagged"]
        assert rt.image("busybox").id == record.config.image_id
        with pytest.raises(ImageNotFound):
            rt.image("twin:v1")
    finally:
        await rt.remove(record.id, force=True)


async def test_auto_remove_takes_anonymous_volumes_and_wait_removed(local_runtime: LocalRuntime) -> None:
    rt = local_runtime
    record = await rt.create(
        ContainerConfig(image="busybox", cmd=("sh", "-c", "echo data > /scratch/f"), auto_remove=True),
        volumes=["/scratch"],
        mounts=[parse_bind("kept:/kept")],
    )
    assert {m.named for m in record.config.mounts} == {True, False}
    anonymous = next(m.source for m in record.config.mounts if not m.named)
    with pytest.raises(VolumeInUse):
        rt.volumes.remove("kept")
    waiter = asyncio.ensure_future(rt.wait(record.id, "removed"))
    await asyncio.sleep(0)
    await rt.containers.start(record.id)
    assert await asyncio.wait_for(waiter, 20) == 0
    with pytest.raises(ContainerNotFound):
        rt.containers.inspect(record.id)
    assert [v.name for v in rt.volumes.list()] == ["kept"]  # --rm removes anonymous volumes only
    assert anonymous not in {v.name for v in rt.volumes.list()}
    rt.volumes.remove("kept")


async def test_failed_create_leaves_no_volumes(local_runtime: LocalRuntime) -> None:
    rt = local_runtime
    await rt.create(ContainerConfig(image="busybox", cmd=("true",)), name="taken")
    with pytest.raises(Exception, match="already in use"):
        await rt.create(ContainerConfig(image="busybox", cmd=("true",)), name="taken", volumes=["/a", "/b"])
    assert rt.volumes.list() == []
    with pytest.raises(ContainerNotFound):
        await rt.create(
            ContainerConfig(image="busybox", cmd=("true",)), volumes=["/a"], volumes_from=["nosuch"]
        )
    assert rt.volumes.list() == []


async def test_a_new_runtime_adopts_running_containers_and_their_volumes(local_env: LocalEnv) -> None:
    first = local_env.runtime()
    await first.open()
    try:
        record = await first.create(
            ContainerConfig(image="busybox", cmd=("sh", "-c", "echo up; sleep 60"), stop_timeout=0),
            mounts=[parse_bind("state:/state")],
        )
        await first.containers.start(record.id)
    finally:
        await first.close()  # the agent goes away; the container keeps running under conmon
    second = local_env.runtime()
    await second.open()
    try:
        assert [r.id for r in second.list_containers()] == [record.id]
        assert second.volume_users("state") == [record.id]
        with pytest.raises(VolumeInUse):
            second.volumes.remove("state")
        await second.containers.stop(record.id)
        assert second.containers.inspect(record.id).state.exit_code == 137
    finally:
        await remove_everything(second)
        await second.close()
