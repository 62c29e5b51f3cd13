"""Volumes without runc: Docker's mount syntaxes, mount planning, the volume store and copy-on-first-mount."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.runtime.containers.config import ContainerConfig, ImageConfig, Mount
from agent.runtime.containers.spec import SpecPaths, build_spec
from agent.runtime.errors import InvalidContainerConfig, InvalidVolume, VolumeInUse, VolumeNotFound
from agent.runtime.volumes import ANONYMOUS_LABEL, VolumeStore, copy_image_content, parse_bind, plan_mounts
from agent.runtime.volumes.spec import MountRequest, VolumeSource, parse_volumes_from, request


# --- -v / --mount / --volumes-from syntaxes ------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("/data", MountRequest("volume", "/data")),
        ("db:/var/lib/db", MountRequest("volume", "/var/lib/db", "db")),
        ("db:/var/lib/db:ro,nocopy", MountRequest("volume", "/var/lib/db", "db", True, no_copy=True)),
        ("/srv/www:/www:ro", MountRequest("bind", "/www", "/srv/www", True)),
        ("/srv//www/:/www/:rw,rshared", MountRequest("bind", "/www", "/srv/www", False, "rshared")),
        ("/etc/hosts:/h:z", MountRequest("bind", "/h", "/etc/hosts")),
    ],
)
def test_parse_bind(spec: str, expected: MountRequest) -> None:
    assert parse_bind(spec) == expected


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("", "expected"),
        ("a:b:c:d", "expected"),
        ("db:relative", "must be absolute"),
        ("db:/", "can't be '/'"),
        ("db:/x:ro,rw", "exclusive"),
        ("db:/x:bogus", "invalid mode"),
        ("x:/data", "too short"),
        ("my vol:/data", "invalid characters"),
        ("/host:/x:nocopy", "volumes only"),
        ("db:/x:rshared", "bind mounts only"),
    ],
)
def test_parse_bind_refuses(spec: str, reason: str) -> None:
    with pytest.raises(InvalidVolume, match=reason):
        parse_bind(spec)


def test_mount_requests_and_volumes_from() -> None:
    assert request("bind", "/a", "/srv") == MountRequest("bind", "/a", "/srv", create_host_path=False)
    assert request("volume", "/a") == MountRequest("volume", "/a")
    with pytest.raises(InvalidVolume, match="absolute"):
        request("bind", "/a", "relative")
    with pytest.raises(InvalidVolume, match="not supported"):
        request("npipe", "/a")
    assert parse_volumes_from("dbstore") == ("dbstore", None)
    assert parse_volumes_from("dbstore:ro") == ("dbstore", True)
    assert parse_volumes_from("dbstore:rw") == ("dbstore", False)
    with pytest.raises(InvalidVolume):
        parse_volumes_from("dbstore:rx")


class FakeSource:
    """Volumes and containers for plan_mounts, recorded so tests can see what was created."""

    def __init__(self, containers: dict[str, Sequence[Mount]] | None = None) -> None:
        self.created: list[tuple[str | None, bool]] = []
        self.containers = containers or {}

    def volume_path(self, name: str | None, anonymous: bool) -> tuple[str, str]:
        self.created.append((name, anonymous))
        real = name or f"anon{len(self.created)}"
        return real, f"/volumes/{real}/_data"

    def source(self) -> VolumeSource:
        return VolumeSource(self.volume_path, lambda ref: self.containers[ref])


def test_plan_follows_dockers_precedence() -> None:
    shared = Mount("volume", "dbdata", "/dbdata", "/volumes/dbdata/_data")
    conf = Mount("bind", "/etc/app", "/conf", "/etc/app")
    fake = FakeSource({"dbstore": [shared, conf]})
    planned = plan_mounts(
        [parse_bind("/srv/conf:/conf:ro"), parse_bind("cache:/cache")],
        ["/dbdata", "/logs", "/cache", "/run/tmp"],
        ["dbstore:ro"],
        fake.source(),
        tmpfs_targets=["/run/tmp"],
    )
    by_target = {p.mount.target: p for p in planned}
    # volumes-from comes first (mode overridden), the user's bind replaces the inherited one at /conf.
    assert by_target["/dbdata"].mount == Mount("volume", "dbdata", "/dbdata", "/volumes/dbdata/_data", True)
    assert not by_target["/dbdata"].copy
    assert by_target["/conf"].mount == Mount("bind", "/srv/conf", "/conf", "/srv/conf", True, "rprivate")
    # A named volume, copied on first mount; the image's /cache and /dbdata are already covered.
    assert by_target["/cache"].mount.named and by_target["/cache"].copy
    # Only /logs gets an anonymous volume (the tmpfs covers /run/tmp).
    assert by_target["/logs"].mount.named is False and by_target["/logs"].copy
    assert "/run/tmp" not in by_target
    assert fake.created == [("cache", False), (None, True)]


def test_plan_refuses_duplicate_targets() -> None:
    with pytest.raises(InvalidVolume, match="duplicate"):
        plan_mounts([parse_bind("a1:/x"), parse_bind("/h:/x")], [], [], FakeSource().source())


def test_mounts_go_into_the_spec_parents_first(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    config = ContainerConfig(
        image="busybox",
        cmd=("true",),
        tmpfs={"/data/tmp": ""},
        mounts=(
            Mount("bind", "/srv/conf", "/data/conf", "/srv/conf", read_only=True),
            Mount("volume", "v1", "/data", "/vol/v1/_data", named=False),
        ),
    )
    spec = build_spec(
        "c" * 64, config, ImageConfig(cmd=("sh",)), SpecPaths(rootfs=tmp_path), "/shoal/c", False
    )
    user = [m for m in spec["mounts"] if m["destination"].startswith("/data")]
    assert [m["destination"] for m in user] == ["/data", "/data/tmp", "/data/conf"]
    assert user[0] == {
        "destination": "/data",
        "type": "bind",
        "source": "/vol/v1/_data",
        "options": ["rbind", "rprivate"],
    }
    assert user[2]["options"] == ["rbind", "rprivate", "ro"]
    with pytest.raises(InvalidContainerConfig, match="duplicate mount point"):
        ContainerConfig(
            image="b", tmpfs={"/data": ""}, mounts=(Mount("volume", "v", "/data", "/v"),)
        ).validate()
    assert ContainerConfig.from_json(config.to_json()) == config


# --- the store ------------------------------------------------------------------------------------------
def test_store_create_list_filters_and_remove(tmp_path: Path) -> None:
    users: dict[str, list[str]] = {}
    store = VolumeStore(tmp_path / "volumes", users=lambda name: users.get(name, []))
    web = store.create("web", labels={"tier": "front"})
    assert web.mountpoint == tmp_path / "volumes/web/_data" and web.mountpoint.is_dir()
    assert store.create("web", labels={"other": "x"}) == web  # an existing name answers with that volume
    anon = store.create(anonymous=True)
    assert len(anon.name) == 64 and anon.anonymous and ANONYMOUS_LABEL in anon.labels
    doc = web.docker()
    assert doc["Name"] == "web" and doc["Driver"] == "local" and doc["Scope"] == "local"
    assert doc["Labels"] == {"tier": "front"} and doc["CreatedAt"].endswith("Z")

    assert [v.name for v in store.list({"label": ["tier=front"]})] == ["web"]
    assert [v.name for v in store.list({"label": ["tier"]})] == ["web"]
    assert store.list({"label": ["tier=back"]}) == []
    assert [v.name for v in store.list({"name": ["we"]})] == ["web"]
    users["web"] = ["c1"]
    assert [v.name for v in store.list({"dangling": ["true"]})] == [anon.name]
    assert [v.name for v in store.list({"dangling": ["false"]})] == ["web"]
    with pytest.raises(InvalidVolume):
        store.list({"colour": ["red"]})

    with pytest.raises(VolumeInUse) as info:
        store.remove("web")
    assert info.value.containers == ["c1"] and "volume is in use - [c1]" in str(info.value)
    users.clear()
    store.remove("web")
    with pytest.raises(VolumeNotFound, match="get web: no such volume"):
        store.get("web")
    store.remove("web", force=True)  # missing is fine when forced
    with pytest.raises(VolumeNotFound):
        store.remove("web")
    with pytest.raises(InvalidVolume, match="not supported"):
        store.create("x1", driver="nfs")
    with pytest.raises(InvalidVolume, match="no options"):
        store.create("x1", options={"type": "tmpfs"})


def test_prune_takes_unused_anonymous_volumes_unless_all(tmp_path: Path) -> None:
    users: dict[str, list[str]] = {}
    store = VolumeStore(tmp_path, users=lambda name: users.get(name, []))
    named = store.create("named", labels={"keep": "no"})
    used = store.create(anonymous=True)
    unused = store.create(anonymous=True, labels={"keep": "yes"})
    (unused.mountpoint / "blob").write_bytes(b"x" * 1000)
    users[used.name] = ["c1"]
    assert store.prune({"label!": ["keep=yes"]}) == ([], 0)
    assert store.prune() == ([unused.name], 1000)
    assert store.prune({"all": ["true"]}) == (["named"], 0)
    assert [v.name for v in store.list()] == [used.name]
    assert not named.mountpoint.exists()


def test_copy_on_first_mount(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "var/lib/app/sub").mkdir(parents=True)
    (rootfs / "var/lib/app/sub/seed").write_text("seed\n")
    os.symlink("seed", rootfs / "var/lib/app/sub/link")
    (rootfs / "var/lib/app").chmod(0o750)
    (rootfs / "data").symlink_to("/var/lib/app")  # resolved inside the rootfs, not on the host
    store = VolumeStore(tmp_path / "volumes")
    volume = store.create("app1")
    assert copy_image_content(rootfs, "/data", volume)
    assert (volume.mountpoint / "sub/seed").read_text() == "seed\n"
    assert os.readlink(volume.mountpoint / "sub/link") == "seed"
    assert volume.mountpoint.stat().st_mode & 0o777 == 0o750
    # Not empty any more: a second mount copies nothing.
    (rootfs / "var/lib/app/other").write_text("new")
    assert not copy_image_content(rootfs, "/var/lib/app", volume)
    assert not (volume.mountpoint / "other").exists()
    # Nothing at that path in the image: nothing copied.
    assert not copy_image_content(rootfs, "/nonexistent", store.create("app2"))
