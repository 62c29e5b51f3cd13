"""Volumes through the Docker-API socket: named, anonymous, binds, volumes-from, backup and restore."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.integration.runtime import local_support as support
from tests.integration.runtime.containers_support import requires_runc
from tests.integration.runtime.images.support import busybox_store
from tests.integration.runtime.local_support import ApiEnv
from tests.integration.runtime.test_local_api_images import busybox_tarball

pytestmark = [pytest.mark.root, requires_runc]

__all__ = ["busybox_store"]
local_env = support.local_env
docker_api = support.docker_api


async def volume_names(docker_api: ApiEnv, **params: str) -> list[str]:
    reply = await docker_api.api.get("/volumes", params=params)
    assert reply.status == 200, reply.body
    assert reply.json()["Warnings"] == []
    return sorted(v["Name"] for v in reply.json()["Volumes"])


async def test_volume_api(docker_api: ApiEnv) -> None:
    api = docker_api.api
    made = await api.post("/volumes/create", json={"Name": "pgdata", "Labels": {"app": "db"}})
    assert made.status == 201
    volume = made.json()
    assert volume["Name"] == "pgdata" and volume["Driver"] == "local" and volume["Labels"] == {"app": "db"}
    assert Path(volume["Mountpoint"]).is_dir() and volume["Scope"] == "local"
    assert (await api.post("/volumes/create", json={"Name": "pgdata"})).json()["CreatedAt"] == volume[
        "CreatedAt"
    ]
    anonymous = (await api.post("/volumes/create", json={})).json()["Name"]
    assert len(anonymous) == 64
    assert await volume_names(docker_api) == sorted(["pgdata", anonymous])
    assert await volume_names(docker_api, filters='{"label": ["app=db"]}') == ["pgdata"]
    assert await volume_names(docker_api, filters='{"name": ["pg"]}') == ["pgdata"]
    inspect = (await api.get("/volumes/pgdata")).json()
    assert inspect["UsageData"] == {"Size": 0, "RefCount": 0}
    missing = await api.get("/volumes/nosuch")
    assert (missing.status, missing.message) == (404, "get nosuch: no such volume")
    bad = await api.post("/volumes/create", json={"Name": "x"})
    assert bad.status == 400 and "too short" in bad.message
    assert (await api.post("/volumes/create", json={"Name": "n1", "Driver": "nfs"})).status == 400

    # In use by a container (even a stopped one): removal is refused; unused anonymous ones are pruned.
    cid, code = await api.run(
        Cmd=["sh", "-c", "echo 42 > /var/lib/pg/answer"], HostConfig={"Binds": ["pgdata:/var/lib/pg"]}
    )
    assert code == 0
    assert Path(volume["Mountpoint"], "answer").read_text() == "42\n"
    assert await volume_names(docker_api, filters='{"dangling": ["true"]}') == [anonymous]
    refused = await api.delete("/volumes/pgdata")
    assert refused.status == 409 and f"volume is in use - [{cid}]" in refused.message
    assert (await api.get("/volumes/pgdata")).json()["UsageData"] == {"Size": 3, "RefCount": 1}
    inspect = (await api.get(f"/containers/{cid}/json")).json()
    assert inspect["Mounts"] == [
        {
            "Type": "volume",
            "Name": "pgdata",
            "Source": volume["Mountpoint"],
            "Destination": "/var/lib/pg",
            "Mode": "",
            "RW": True,
            "Propagation": "",
            "Driver": "local",
        }
    ]
    assert inspect["HostConfig"]["Binds"] == ["pgdata:/var/lib/pg"]
    # Created through the API (even without a name), a volume is not anonymous: prune keeps it.
    assert (await api.post("/volumes/prune")).json() == {"VolumesDeleted": None, "SpaceReclaimed": 0}
    prune_all = {"filters": '{"all": ["true"]}'}
    assert (await api.post("/volumes/prune", params=prune_all)).json()["VolumesDeleted"] == [anonymous]
    assert (await api.delete(f"/containers/{cid}")).status == 204
    pruned = (await api.post("/volumes/prune", params=prune_all)).json()
    assert pruned == {"VolumesDeleted": ["pgdata"], "SpaceReclaimed": 3}
    assert await volume_names(docker_api) == []
    assert (await api.delete("/volumes/pgdata")).status == 404
    assert (await api.delete("/volumes/pgdata", params={"force": "1"})).status == 204


async def test_image_volumes_are_anonymous_seeded_and_removed_with_rm_v(docker_api: ApiEnv) -> None:
    """An image's VOLUME gets a fresh volume holding the image's files there; ``rm -v`` removes it."""
    api = docker_api.api
    tarball = busybox_tarball({"var/lib/app/seed.txt": b"from the image\n"})
    reply = await api.post(
        "/images/create",
        params=[("fromSrc", "-"), ("repo", "seeded"), ("changes", "VOLUME /var/lib/app")],
        data=tarball,
    )
    assert reply.status == 200, reply.body
    cid, code = await api.run(
        Image="seeded", Cmd=["sh", "-c", "cat /var/lib/app/seed.txt; echo more > /var/lib/app/new"]
    )
    assert code == 0 and await api.logs(cid) == [(1, b"from the image\n")]
    mounts = (await api.get(f"/containers/{cid}/json")).json()["Mounts"]
    assert len(mounts) == 1 and mounts[0]["Destination"] == "/var/lib/app" and mounts[0]["Type"] == "volume"
    name = mounts[0]["Name"]
    assert sorted(p.name for p in Path(mounts[0]["Source"]).iterdir()) == ["new", "seed.txt"]
    volume = (await api.get(f"/volumes/{name}")).json()
    assert "com.docker.volume.anonymous" in volume["Labels"]

    # A named volume is seeded from the image too, but only while it is empty.
    cid2, _ = await api.run(Image="seeded", Cmd=["true"], HostConfig={"Binds": ["keep:/var/lib/app"]})
    keep = (await api.get("/volumes/keep")).json()["Mountpoint"]
    assert (Path(keep) / "seed.txt").read_text() == "from the image\n"
    Path(keep, "seed.txt").write_text("changed\n")
    cid3, _ = await api.run(
        Image="seeded", Cmd=["cat", "/var/lib/app/seed.txt"], HostConfig={"Binds": ["keep:/var/lib/app"]}
    )
    assert await api.logs(cid3) == [(1, b"changed\n")]
    nocopy, _ = await api.run(
        Image="seeded", Cmd=["ls", "/var/lib/app"], HostConfig={"Binds": ["bare:/var/lib/app:nocopy"]}
    )
    assert await api.logs(nocopy) == []

    assert (await api.delete(f"/containers/{cid}", params={"v": "1"})).status == 204
    assert (await api.get(f"/volumes/{name}")).status == 404  # anonymous: removed with the container
    for other in (cid2, cid3, nocopy):
        assert (await api.delete(f"/containers/{other}", params={"v": "1"})).status == 204
    assert await volume_names(docker_api) == ["bare", "keep"]  # named volumes stay


async def test_bind_mounts_ro_and_rw(docker_api: ApiEnv) -> None:
    api = docker_api.api
    host = docker_api.env.root.parent / "host-dir"
    host.mkdir()
    (host / "in.txt").write_text("from the host\n")
    cid, code = await api.run(
        Cmd=["sh", "-c", "cat /ro/in.txt; touch /ro/x 2>/dev/null || echo read-only; echo out > /rw/out.txt"],
        HostConfig={"Binds": [f"{host}:/ro:ro", f"{host}:/rw"]},
    )
    assert code == 0
    assert await api.logs(cid, stderr="0") == [(1, b"from the host\n"), (1, b"read-only\n")]
    assert (host / "out.txt").read_text() == "out\n"
    made = docker_api.env.root.parent / "made-by-v"
    assert (await api.run(Cmd=["true"], HostConfig={"Binds": [f"{made}:/m"]}))[1] == 0
    assert made.is_dir()  # -v creates a missing host directory
    refused = await api.post(
        "/containers/create",
        json={
            "Image": "busybox",
            "HostConfig": {"Mounts": [{"Type": "bind", "Source": str(host / "nope"), "Target": "/m"}]},
        },
    )
    assert refused.status == 400 and "bind source path does not exist" in refused.message


async def test_backup_and_restore_through_volumes_from(docker_api: ApiEnv, tmp_path: Path) -> None:
    """The user guide's data volume container backup and restore, with tar."""
    api = docker_api.api
    backup_dir = tmp_path / "backup"
    backup_dir.mkdir()
    # docker create -v /dbdata --name dbstore busybox … (a data volume container that wrote some data)
    _, code = await api.run(
        "dbstore",
        Cmd=["sh", "-c", "mkdir -p /dbdata/sub && echo precious > /dbdata/sub/file && echo 2 > /dbdata/top"],
        Volumes={"/dbdata": {}},
    )
    assert code == 0
    # docker run --rm --volumes-from dbstore -v $(pwd):/backup busybox tar cvf /backup/backup.tar /dbdata
    _, code = await api.run(
        Cmd=["tar", "cvf", "/backup/backup.tar", "/dbdata"],
        HostConfig={"VolumesFrom": ["dbstore"], "Binds": [f"{backup_dir}:/backup"], "AutoRemove": True},
    )
    assert code == 0
    with tarfile.open(backup_dir / "backup.tar") as tar:
        assert {"dbdata/sub/file", "dbdata/top"} <= set(tar.getnames())

    # A new container with an empty volume, restored from the archive.
    await api.create("dbstore2", Cmd=["true"], Volumes={"/dbdata": {}})
    _, code = await api.run(
        Cmd=["sh", "-c", "cd /dbdata && tar xvf /backup/backup.tar --strip 1"],
        HostConfig={"VolumesFrom": ["dbstore2"], "Binds": [f"{backup_dir}:/backup:ro"], "AutoRemove": True},
    )
    assert code == 0
    check, code = await api.run(
        Cmd=["cat", "/dbdata/sub/file", "/dbdata/top"], HostConfig={"VolumesFrom": ["dbstore2:ro"]}
    )
    assert code == 0 and await api.logs(check) == [(1, b"precious\n"), (1, b"2\n")]
    ro, code = await api.run(Cmd=["touch", "/dbdata/new"], HostConfig={"VolumesFrom": ["dbstore2:ro"]})
    assert code != 0 and b"Read-only file system" in b"".join(f[1] for f in await api.logs(ro))
    two = {m["Name"] for m in (await api.get("/containers/dbstore2/json")).json()["Mounts"]}
    one = {m["Name"] for m in (await api.get("/containers/dbstore/json")).json()["Mounts"]}
    assert len(one) == len(two) == 1 and one != two

    # rm -v of a container that only borrowed the volume leaves it to its owner.
    assert (await api.delete(f"/containers/{check}", params={"v": "1"})).status == 204
    assert (await api.get(f"/volumes/{next(iter(two))}")).status == 200
    for name in ("dbstore", "dbstore2", ro):
        assert (await api.delete(f"/containers/{name}", params={"v": "1"})).status == 204
    assert await volume_names(docker_api) == []
    assert list((docker_api.env.root / "volumes").iterdir()) == []
