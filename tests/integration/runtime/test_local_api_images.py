"""Images through the Docker-API socket: list, inspect, history, tag, remove, save/load, import, pull/push."""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import pytest

from agent.runtime.images.baseimages import build_busybox_rootfs, find_busybox, tar_directory
from tests.integration.runtime import local_support as support
from tests.integration.runtime.containers_support import requires_runc
from tests.integration.runtime.images.support import (
    RegistryServer,
    busybox_store,
    registry,
    requires_registry,
    unique_repo,
)
from tests.integration.runtime.local_support import ApiEnv

pytestmark = [pytest.mark.root, requires_runc]

__all__ = ["busybox_store", "registry"]
local_env = support.local_env
docker_api = support.docker_api


def busybox_tarball(extra: dict[str, bytes]) -> bytes:
    """A busybox root file system as a tar, with ``extra`` files (path → content) added."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "rootfs"
        root.mkdir()
        build_busybox_rootfs(root, find_busybox())
        for path, content in extra.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(content)
        out = io.BytesIO()
        tar_directory(root, out, root_owned=True)
        return out.getvalue()


async def test_list_inspect_history_tag_and_remove(docker_api: ApiEnv) -> None:
    api = docker_api.api
    images = (await api.get("/images/json")).json()
    assert [i["RepoTags"] for i in images] == [["busybox:latest"]]
    image_id = images[0]["Id"]
    inspect = (await api.get("/images/busybox/json")).json()
    assert inspect["Id"] == image_id and inspect["Config"]["Cmd"] == ["sh"]
    assert inspect["Os"] == "linux" and inspect["RootFS"]["Type"] == "layers"
    assert (await api.get(f"/images/{image_id[7:19]}/json")).json()["Id"] == image_id
    history = (await api.get("/images/busybox:latest/history")).json()
    assert history[0]["Id"] == image_id and history[0]["Size"] > 0

    assert (
        await api.post("/images/busybox/tag", params={"repo": "example.org/team/tool", "tag": "v1"})
    ).status == 201
    tagged = (await api.get("/images/example.org/team/tool:v1/json")).json()
    assert tagged["Id"] == image_id and "example.org/team/tool:v1" in tagged["RepoTags"]
    filtered = await api.get("/images/json", params={"filters": '{"reference": ["example.org/*/*"]}'})
    assert [i["Id"] for i in filtered.json()] == [image_id]
    assert (await api.get("/images/json", params={"filters": '{"dangling": ["true"]}'})).json() == []

    # A container uses the image: removal is refused, even forced while the container runs.
    cid = await api.create(Cmd=["sleep", "60"])
    assert (await api.post(f"/containers/{cid}/start")).status == 204
    untagged = await api.delete("/images/example.org/team/tool:v1")
    assert untagged.json() == [{"Untagged": "example.org/team/tool:v1"}]  # other tags remain: only untag
    refused = await api.delete("/images/busybox")
    assert refused.status == 409 and "must force" in refused.message
    forced = await api.delete("/images/busybox", params={"force": "1"})
    assert forced.status == 409 and "running container" in forced.message
    assert (await api.delete(f"/containers/{cid}", params={"force": "1"})).status == 204
    removed = (await api.delete("/images/busybox")).json()
    assert removed == [{"Untagged": "busybox:latest"}, {"Deleted": image_id}]
    assert (await api.get("/images/json")).json() == []
    missing = await api.get("/images/busybox/json")
    assert (missing.status, missing.message) == (404, "No such image: busybox")
    assert (await api.delete("/images/busybox")).status == 404


async def test_save_then_load_round_trip(docker_api: ApiEnv) -> None:
    api = docker_api.api
    saved = await api.get("/images/get", params={"names": "busybox"})
    assert saved.status == 200 and saved.headers["Content-Type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(saved.body)) as tar:
        assert "manifest.json" in tar.getnames()
    one = await api.get("/images/busybox:latest/get")
    assert one.status == 200 and len(one.body) == len(saved.body)
    assert (await api.delete("/images/busybox")).status == 200
    loaded = await api.post("/images/load", data=saved.body, headers={"Content-Type": "application/x-tar"})
    assert loaded.status == 200
    assert loaded.lines() == [{"stream": "Loaded image: busybox:latest\n"}]
    _, code = await api.run(Cmd=["true"])
    assert code == 0
    bad = await api.post("/images/load", data=b"not a tarball" * 100)
    assert bad.status == 400 and "archive" in bad.message


async def test_import_with_changes(docker_api: ApiEnv) -> None:
    api = docker_api.api
    tarball = busybox_tarball({"srv/greeting": b"imported\n"})
    reply = await api.post(
        "/images/create",
        params=[
            ("fromSrc", "-"),
            ("repo", "imported"),
            ("tag", "v2"),
            ("changes", 'CMD ["cat", "/srv/greeting"]'),
            ("changes", "LABEL origin=tarball"),
            ("message", "from a test"),
        ],
        data=tarball,
    )
    assert reply.status == 200, reply.body
    image_id = reply.lines()[-1]["status"]
    inspect = (await api.get("/images/imported:v2/json")).json()
    assert inspect["Id"] == image_id and inspect["Config"]["Labels"] == {"origin": "tarball"}
    cid, code = await api.run(Image="imported:v2")
    assert code == 0 and await api.logs(cid) == [(1, b"imported\n")]
    labelled = await api.get("/images/json", params={"filters": '{"label": ["origin=tarball"]}'})
    assert [i["Id"] for i in labelled.json()] == [image_id]


@requires_registry
async def test_push_and_pull_through_a_registry(docker_api: ApiEnv, registry: RegistryServer) -> None:
    api = docker_api.api
    repo = f"{registry.host}/{unique_repo('api')}"
    assert (await api.post("/images/busybox/tag", params={"repo": repo, "tag": "v1"})).status == 201
    pushed = await api.post(f"/images/{repo}/push", params={"tag": "v1"})
    assert pushed.status == 200
    lines = pushed.lines()
    assert not any("error" in line for line in lines), lines
    assert lines[0]["status"].startswith("The push refers to repository")
    assert any(line.get("status") == "Pushed" for line in lines)
    assert lines[-1]["status"].startswith("v1: digest: sha256:")

    assert (await api.delete(f"/images/{repo}:v1")).status == 200
    pulled = await api.post("/images/create", params={"fromImage": repo, "tag": "v1"})
    assert pulled.status == 200
    lines = pulled.lines()
    assert not any("error" in line for line in lines), lines
    assert lines[-1]["status"] == f"Status: Image is up to date for {repo}:v1"  # layers were all here
    inspect = (await api.get(f"/images/{repo}:v1/json")).json()
    assert any(d.startswith(f"{repo}@sha256:") for d in inspect["RepoDigests"])

    # Gone entirely (every reference, the blobs): the next pull downloads the layer again.
    image_id = inspect["Id"]
    assert (await api.delete(f"/images/{image_id}", params={"force": "1"})).status == 200
    assert (await api.get("/images/json")).json() == []
    pulled = await api.post("/images/create", params={"fromImage": repo, "tag": "v1"})
    lines = pulled.lines()
    assert lines[0]["status"].startswith("Pulling from") and lines[-1]["status"].startswith(
        "Status: Downloaded"
    )
    assert any(line.get("status") == "Pull complete" for line in lines)
    _, code = await api.run(Image=f"{repo}:v1", Cmd=["true"])
    assert code == 0

    missing = await api.post(
        "/images/create", params={"fromImage": f"{registry.host}/nosuch/repo", "tag": "x"}
    )
    assert missing.status == 404 and "nosuch" in missing.message
    invalid = await api.post("/images/create", params={"fromImage": "UPPER/case"})
    assert invalid.status == 400
    not_local = await api.post(f"/images/{registry.host}/not-here/push", params={"tag": "v1"})
    assert not_local.status == 404
