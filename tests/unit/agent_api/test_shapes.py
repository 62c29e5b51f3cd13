"""The local API's pure parts: Docker's status texts, create bodies, filters, frames, error mapping."""

from __future__ import annotations

import struct

import pytest
from aiohttp.test_utils import make_mocked_request

from agent.api.common import frame
from agent.api.create import parse_create
from agent.api.errors import BadParameter, NotSupported, docker_error
from agent.api.params import filters, flag, registry_auth
from agent.api.shapes import container_summary, human_duration, mount_point, status_text
from agent.runtime.containers.config import ContainerConfig, ImageConfig, Mount, RestartPolicy
from agent.runtime.containers.state import ContainerRecord, ContainerState
from agent.runtime.errors import (
    ContainerNotFound,
    ContainerStateConflict,
    ImageInUse,
    ImageNotFound,
    InvalidVolume,
    NameConflict,
    OCIRuntimeError,
    VolumeInUse,
)
from agent.runtime.volumes.spec import MountRequest

S = 1_000_000_000


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "Less than a second"),
        (1, "1 second"),
        (3.9, "3 seconds"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (150, "2 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (3 * 86400, "3 days"),
        (20 * 86400, "2 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def record(**state: object) -> ContainerRecord:
    return ContainerRecord(
        id="a" * 64,
        name="web",
        created=1000 * S,
        config=ContainerConfig(image="busybox", image_id="sha256:" + "b" * 64, labels={"tier": "front"}),
        image_config=ImageConfig(cmd=("sh",), labels={"from": "image"}),
        rootfs="/x",
        path="sh",
        args=("-c", "echo hi"),
        cgroups_path="/shoal/a",
        state=ContainerState(**state),  # type: ignore[arg-type]
    )


def test_status_texts_are_dockers() -> None:
    now = 2000 * S
    assert status_text(record(), now) == "Created"
    assert status_text(record(status="running", started_at=now - 3 * S), now) == "Up 3 seconds"
    assert status_text(record(status="paused", started_at=now - 120 * S), now) == "Up 2 minutes (Paused)"
    exited = record(status="exited", exit_code=137, started_at=now - 9 * S, finished_at=now - 2 * S)
    assert status_text(exited, now) == "Exited (137) 2 seconds ago"
    restarting = record(status="restarting", exit_code=1, started_at=1, finished_at=now - S // 2)
    assert status_text(restarting, now) == "Restarting (1) Less than a second ago"
    assert status_text(record(status="removing"), now) == "Removal In Progress"
    # A container whose start failed never ran: Docker still calls it Created.
    assert status_text(record(status="created", exit_code=127, finished_at=now), now) == "Created"


def test_container_summary_shape() -> None:
    summary = container_summary(record(status="running", started_at=1990 * S), 2000 * S)
    assert summary["Id"] == "a" * 64 and summary["Names"] == ["/web"]
    assert summary["Image"] == "busybox" and summary["ImageID"] == "sha256:" + "b" * 64
    assert summary["Command"] == "sh -c echo hi" and summary["Created"] == 1000
    assert summary["State"] == "running" and summary["Status"] == "Up 10 seconds"
    assert summary["Labels"] == {"from": "image", "tier": "front"}


def test_mount_points() -> None:
    volume = mount_point(Mount("volume", "db", "/data", "/v/db/_data"))
    assert volume == {
        "Type": "volume",
        "Name": "db",
        "Source": "/v/db/_data",
        "Destination": "/data",
        "Mode": "",
        "RW": True,
        "Propagation": "",
        "Driver": "local",
    }
    bind = mount_point(Mount("bind", "/srv", "/www", "/srv", read_only=True))
    assert bind["Mode"] == "ro" and bind["RW"] is False and bind["Propagation"] == "rprivate"


def test_frames() -> None:
    data = frame(2, b"oops\n")
    assert data[:8] == struct.pack(">BxxxI", 2, 5) and data[8:] == b"oops\n"


def test_parse_create_maps_dockers_fields() -> None:
    parsed = parse_create(
        {
            "Image": "busybox",
            "Cmd": ["sh", "-c", "true"],
            "Entrypoint": [""],
            "Env": ["A=1"],
            "WorkingDir": "",
            "User": "",
            "Labels": {"k": "v"},
            "StopSignal": "SIGINT",
            "StopTimeout": 3,
            "Volumes": {"/cache": {}},
            "HostConfig": {
                "Binds": ["/srv:/srv:ro", "db:/db"],
                "Mounts": [
                    {"Type": "volume", "Source": "", "Target": "/anon", "VolumeOptions": {"NoCopy": True}},
                    {"Type": "tmpfs", "Target": "/run", "TmpfsOptions": {"SizeBytes": 1024, "Mode": 0o1777}},
                ],
                "VolumesFrom": ["dbstore:ro"],
                "NetworkMode": "default",
                "PortBindings": {"80/tcp": [{"HostPort": "8080"}]},
                "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3},
                "Memory": 64 << 20,
                "CpuQuota": 50000,
                "CpuPeriod": 100000,
                "PidsLimit": -1,
                "SecurityOpt": ["no-new-privileges:false", "seccomp=unconfined"],
                "AutoRemove": False,
                "Init": True,
            },
        }
    )
    cfg = parsed.config
    assert cfg.cmd == ("sh", "-c", "true") and cfg.entrypoint == ()
    assert cfg.working_dir is None and cfg.user is None and cfg.labels == {"k": "v"}
    assert cfg.stop_signal == "SIGINT" and cfg.stop_timeout == 3 and cfg.init
    assert cfg.network_mode == "none" and cfg.tmpfs == {"/run": "size=1024,mode=1777"}
    assert cfg.restart_policy == RestartPolicy("on-failure", 3)
    assert cfg.resources.memory == 64 << 20 and cfg.resources.nano_cpus == 500_000_000
    assert cfg.resources.pids_limit == 0
    assert not cfg.no_new_privileges and cfg.seccomp_profile == "unconfined"
    assert parsed.mounts == (
        MountRequest("bind", "/srv", "/srv", True),
        MountRequest("volume", "/db", "db"),
        MountRequest("volume", "/anon", "", no_copy=True),
    )
    assert parsed.volumes == ("/cache",) and parsed.volumes_from == ("dbstore:ro",)
    assert len(parsed.warnings) == 2  # bridge networking and published ports are not there yet


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, BadParameter),
        ({"Image": "busybox", "Tty": True}, NotSupported),
        ({"Image": "busybox", "Cmd": 3}, BadParameter),
        ({"Image": "busybox", "HostConfig": {"NetworkMode": "container:x"}}, BadParameter),
        ({"Image": "busybox", "HostConfig": {"Binds": ["x:/y"]}}, InvalidVolume),
    ],
)
def test_parse_create_refuses(body: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_create(body)


def test_query_parameters() -> None:
    req = make_mocked_request(
        "GET", '/containers/json?all=1&filters={"label":{"a=b":true},"status":["exited"]}'
    )
    assert flag(req, "all") and not flag(req, "size")
    assert filters(req) == {"label": ["a=b"], "status": ["exited"]}
    with pytest.raises(BadParameter):
        flag(make_mocked_request("GET", "/x?all=maybe"), "all")
    with pytest.raises(BadParameter):
        filters(make_mocked_request("GET", "/x?filters=[1]"))
    auth = make_mocked_request(
        "GET", "/x", headers={"X-Registry-Auth": "eyJ1c2VybmFtZSI6ImEiLCJwYXNzd29yZCI6ImIifQ"}
    )
    credentials = registry_auth(auth)
    assert credentials is not None and (credentials.username, credentials.password) == ("a", "b")


@pytest.mark.parametrize(
    ("error", "status", "text"),
    [
        (ContainerNotFound("web"), 404, "No such container: web"),
        (ImageNotFound("nosuch:latest"), 404, "No such image: nosuch:latest"),
        (NameConflict("web", "abc"), 409, 'The container name "/web" is already in use by container "abc"'),
        (ContainerStateConflict("abc", "running", "remove (stop first)"), 409, "You cannot remove a running"),
        (ContainerStateConflict("abc", "exited", "pause"), 409, "cannot pause"),
        (ImageInUse("busybox", "sha256:x", "in use"), 409, "must force"),
        (VolumeInUse("db", ["abc"]), 409, "volume is in use - [abc]"),
        (OCIRuntimeError("abc", "exec: not found", 127), 400, "not found"),
        (OCIRuntimeError("abc", "cgroup failure", 125), 500, "cgroup failure"),
        (BadParameter("t", "expected an integer"), 400, "expected an integer"),
        (RuntimeError("boom"), 500, "boom"),
    ],
)
def test_errors_map_to_dockers_statuses(error: Exception, status: int, text: str) -> None:
    got_status, message = docker_error(error)
    assert got_status == status and text in message
