"""The agent's Docker-API socket on real runc: the user guide's runs, lifecycle, logs, exec, errors."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.integration.runtime import local_support as support
from tests.integration.runtime.containers_support import requires_runc
from tests.integration.runtime.images.support import busybox_store
from tests.integration.runtime.local_support import ApiEnv, demux, http_get_in_netns
from tests.servers import LOOPBACK, free_port

pytestmark = [pytest.mark.root, requires_runc]

__all__ = ["busybox_store"]
local_env = support.local_env
docker_api = support.docker_api

LOOP = ["/bin/sh", "-c", "while true; do echo hello world; sleep 1; done"]


async def test_ping_version_info_with_and_without_version_prefix(docker_api: ApiEnv) -> None:
    api = docker_api.api
    for client_prefix in ("", "/v1.43", "/v1.24"):
        api.prefix = client_prefix
        ping = await api.get("/_ping")
        assert ping.status == 200 and ping.body == b"OK"
        assert ping.headers["Api-Version"] == "1.43" and ping.headers["Ostype"] == "linux"
    assert (await api.call("HEAD", "/_ping")).status == 200
    version = (await api.get("/version")).json()
    assert version["ApiVersion"] == "1.43" and version["Os"] == "linux"
    info = (await api.get("/info")).json()
    assert info["Containers"] == 0 and info["Images"] == 1 and info["Driver"] == "overlay"
    missing = await api.get("/no/such/path")
    assert missing.status == 404 and missing.message == "page not found"


async def test_hello_world(docker_api: ApiEnv) -> None:
    """``docker run busybox /bin/echo 'Hello world'``."""
    api = docker_api.api
    cid, code = await api.run(Cmd=["/bin/echo", "Hello world"])
    assert code == 0
    assert await api.logs(cid) == [(1, b"Hello world\n")]
    inspect = (await api.get(f"/containers/{cid}/json")).json()
    assert inspect["Id"] == cid and inspect["Path"] == "/bin/echo" and inspect["Args"] == ["Hello world"]
    assert inspect["State"]["Status"] == "exited" and inspect["State"]["ExitCode"] == 0
    assert inspect["Config"]["Image"] == "busybox" and inspect["Image"].startswith("sha256:")
    assert inspect["Config"]["Cmd"] == ["/bin/echo", "Hello world"] and inspect["Config"]["Tty"] is False
    assert inspect["Name"].startswith("/") and inspect["Driver"] == "overlay"
    listed = (await api.get("/containers/json", params={"all": "1"})).json()
    assert [c["Id"] for c in listed] == [cid]
    assert listed[0]["Names"] == [inspect["Name"]] and listed[0]["State"] == "exited"
    assert re.fullmatch(r"Exited \(0\) (Less than a second|\d+ seconds?) ago", listed[0]["Status"])
    assert listed[0]["Command"] == "/bin/echo Hello world" and listed[0]["Image"] == "busybox"
    assert (await api.get("/containers/json")).json() == []  # not running: only with all=1


async def test_daemonised_hello_world(docker_api: ApiEnv) -> None:
    """``docker run -d … while true; do echo hello world; sleep 1; done``, then ps, logs, top, stop, rm."""
    api, env = docker_api.api, docker_api.env
    cid = await api.create("insane_babbage", Cmd=LOOP, StopTimeout=1)
    assert (await api.post(f"/containers/{cid}/start")).status == 204
    assert (await api.post("/containers/insane_babbage/start")).status == 304  # already running
    await asyncio.sleep(1.2)
    listed = (await api.get("/containers/json")).json()
    assert [c["Names"] for c in listed] == [["/insane_babbage"]]
    assert listed[0]["State"] == "running" and re.fullmatch(
        r"Up (Less than a second|\d+ seconds?)", listed[0]["Status"]
    )
    frames = await api.logs("insane_babbage", stderr="0")
    assert frames and all(f == (1, b"hello world\n") for f in frames)
    stamped = await api.logs(cid, timestamps="1", tail="1")
    assert len(stamped) == 1 and re.fullmatch(rb"\d{4}-\d\d-\d\dT[\d:.]+Z hello world\n", stamped[0][1])

    # --follow: the lines already there, then new ones, until the container stops.
    async with api.session.get(
        f"http://localhost/containers/{cid}/logs", params={"stdout": "1", "follow": "1", "tail": "0"}
    ) as resp:
        assert resp.headers["Content-Type"] == "application/vnd.docker.multiplexed-stream"
        header = await asyncio.wait_for(resp.content.readexactly(8), 5)
        assert header[0] == 1 and await resp.content.readexactly(int.from_bytes(header[4:], "big")) == (
            b"hello world\n"
        )

    top = (await api.get(f"/containers/{cid}/top")).json()
    assert "PID" in top["Titles"] and any("while true" in row[-1] for row in top["Processes"])
    stats = (await api.get(f"/containers/{cid}/stats", params={"stream": "false", "one-shot": "true"})).json()
    assert stats["id"] == cid and stats["name"] == "/insane_babbage"
    assert stats["memory_stats"]["usage"] > 0 and stats["pids_stats"]["current"] >= 1
    assert stats["cpu_stats"]["cpu_usage"]["total_usage"] > 0 and stats["cpu_stats"]["system_cpu_usage"] > 0

    removal = await api.delete(f"/containers/{cid}")
    assert removal.status == 409 and "You cannot remove a running container" in removal.message
    started = time.monotonic()
    assert (await api.post(f"/containers/{cid}/stop", params={"t": "1"})).status == 204
    assert time.monotonic() - started < 5
    assert (await api.post(f"/containers/{cid}/stop")).status == 304  # already stopped
    state = (await api.get(f"/containers/{cid}/json")).json()["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 137  # sh ignores SIGTERM as PID 1
    assert (await api.delete(f"/containers/{cid}")).status == 204
    assert (await api.get(f"/containers/{cid}/json")).status == 404
    assert env.container_leftovers(cid) == [] and env.cgroup_dirs() == [] and env.runc_list() == []


async def test_rm_force_leaves_no_mount_cgroup_or_state(docker_api: ApiEnv) -> None:
    api, env = docker_api.api, docker_api.env
    cid = await api.create(Cmd=["sleep", "60"], HostConfig={"Memory": 64 << 20, "PidsLimit": 20})
    assert (await api.post(f"/containers/{cid}/start")).status == 204
    assert env.container_leftovers(cid) and env.cgroup_dirs()  # the checks below can see them
    assert (await api.delete(f"/containers/{cid}", params={"force": "1"})).status == 204
    assert env.container_leftovers(cid) == []
    assert env.cgroup_dirs() == [] and env.runc_list() == [] and env.conmon_pids() == []
    assert env.mounts() == []


@pytest.mark.parametrize(
    ("cmd", "status", "code"),
    [
        (["sh", "-c", "exit 0"], 204, 0),
        (["sh", "-c", "exit 1"], 204, 1),
        (["no-such-command"], 400, 127),
        (["/etc/passwd"], 400, 126),
    ],
)
async def test_exit_codes(docker_api: ApiEnv, cmd: list[str], status: int, code: int) -> None:
    api = docker_api.api
    cid = await api.create(Cmd=cmd)
    started = await api.post(f"/containers/{cid}/start")
    assert started.status == status
    if status != 204:
        assert "exec" in started.message
    waited = await api.post(f"/containers/{cid}/wait")
    assert waited.json() == {"StatusCode": code, "Error": None}
    assert (await api.get(f"/containers/{cid}/json")).json()["State"]["ExitCode"] == code


async def test_runtime_failure_is_125_and_500(docker_api: ApiEnv) -> None:
    api = docker_api.api
    cid = await api.create(Cmd=["true"], User="nosuchuser")
    started = await api.post(f"/containers/{cid}/start")
    assert started.status == 500 and "nosuchuser" in started.message
    assert (await api.get(f"/containers/{cid}/json")).json()["State"]["ExitCode"] == 125


async def test_errors_have_dockers_statuses_and_messages(docker_api: ApiEnv) -> None:
    api = docker_api.api
    missing = await api.get("/containers/nosuch/json")
    assert (missing.status, missing.message) == (404, "No such container: nosuch")
    assert missing.headers["Content-Type"] == "application/json"
    for method, path in (("POST", "/containers/nosuch/start"), ("DELETE", "/containers/nosuch")):
        assert (await api.call(method, path)).status == 404
    no_image = await api.post("/containers/create", json={"Image": "nosuch:1.0"})
    assert (no_image.status, no_image.message) == (404, "No such image: nosuch:1.0")
    await api.create("taken", Cmd=["true"])
    clash = await api.post("/containers/create", params={"name": "taken"}, json={"Image": "busybox"})
    assert clash.status == 409 and 'The container name "/taken" is already in use' in clash.message
    bad_json = await api.post(
        "/containers/create", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status == 400
    bad_filter = await api.get("/containers/json", params={"filters": '{"colour": ["red"]}'})
    assert bad_filter.status == 400 and "colour" in bad_filter.message
    assert (await api.post("/containers/taken/pause")).status == 409
    assert (await api.post("/containers/taken/kill")).status == 409
    assert (await api.post("/containers/taken/rename")).status == 400
    bad_t = await api.post("/containers/taken/stop", params={"t": "soon"})
    assert bad_t.status == 400


async def test_list_filters_rename_pause_kill_restart(docker_api: ApiEnv) -> None:
    api = docker_api.api
    web = await api.create("web", Cmd=["sleep", "60"], Labels={"tier": "front", "env": "prod"})
    db = await api.create("db", Cmd=["sleep", "60"], Labels={"tier": "back"})
    await api.run("once", Cmd=["true"])
    for cid in (web, db):
        assert (await api.post(f"/containers/{cid}/start")).status == 204

    async def names(**params: str) -> list[str]:
        reply = await api.get("/containers/json", params=params)
        assert reply.status == 200, reply.body
        return sorted(c["Names"][0] for c in reply.json())

    assert await names() == ["/db", "/web"]
    assert await names(all="1") == ["/db", "/once", "/web"]
    assert await names(filters='{"label": ["tier=front"]}') == ["/web"]
    assert await names(filters='{"label": ["tier"]}') == ["/db", "/web"]
    assert await names(filters='{"status": ["exited"]}') == ["/once"]
    assert await names(filters='{"name": ["we"]}') == ["/web"]
    assert await names(filters='{"ancestor": ["busybox:latest"]}', all="1") == ["/db", "/once", "/web"]
    assert await names(limit="1", all="1") in (["/db"], ["/once"], ["/web"])

    assert (await api.post(f"/containers/{db}/rename", params={"name": "database"})).status == 204
    assert (await api.post(f"/containers/{web}/rename", params={"name": "database"})).status == 409
    assert await names() == ["/database", "/web"]

    assert (await api.post("/containers/web/pause")).status == 204
    assert (
        (await api.get("/containers/json", params={"filters": '{"status": ["paused"]}'}))
        .json()[0]["Status"]
        .endswith("(Paused)")
    )
    assert (await api.post("/containers/web/unpause")).status == 204
    pid_before = (await api.get("/containers/web/json")).json()["State"]["Pid"]
    assert (await api.post("/containers/web/restart", params={"t": "0"})).status == 204
    state = (await api.get("/containers/web/json")).json()["State"]
    assert state["Running"] and state["Pid"] != pid_before
    assert (await api.post("/containers/web/kill", params={"signal": "SIGKILL"})).status == 204
    assert (await api.post("/containers/web/wait")).json()["StatusCode"] == 137


async def test_exec_non_interactive(docker_api: ApiEnv) -> None:
    api = docker_api.api
    cid = await api.create(Cmd=["sleep", "60"])
    assert (await api.post(f"/containers/{cid}/start")).status == 204
    made = await api.post(
        f"/containers/{cid}/exec",
        json={
            "Cmd": ["sh", "-c", "echo out; echo err >&2; echo $X; exit 3"],
            "Env": ["X=y"],
            "AttachStdout": True,
            "AttachStderr": True,
        },
    )
    assert made.status == 201
    exec_id = made.json()["Id"]
    before = (await api.get(f"/exec/{exec_id}/json")).json()
    assert before["Running"] is False and before["ExitCode"] is None and before["ContainerID"] == cid
    started = await api.post(f"/exec/{exec_id}/start", json={"Detach": False, "Tty": False})
    assert started.status == 200
    assert demux(started.body) == [(1, b"out\ny\n"), (2, b"err\n")]
    assert (await api.get(f"/exec/{exec_id}/json")).json()["ExitCode"] == 3
    assert (await api.post(f"/exec/{exec_id}/start", json={})).status == 409  # only once

    missing = (await api.post(f"/containers/{cid}/exec", json={"Cmd": ["nosuchcmd"]})).json()["Id"]
    reply = await api.post(f"/exec/{missing}/start", json={})
    assert b"executable file not found" in reply.body
    assert (await api.get(f"/exec/{missing}/json")).json()["ExitCode"] == 127
    detached = (await api.post(f"/containers/{cid}/exec", json={"Cmd": ["sh", "-c", "exit 5"]})).json()["Id"]
    assert (await api.post(f"/exec/{detached}/start", json={"Detach": True})).status == 200
    for _ in range(100):
        if (await api.get(f"/exec/{detached}/json")).json()["ExitCode"] == 5:
            break
        await asyncio.sleep(0.02)
    assert (await api.get(f"/exec/{detached}/json")).json()["ExitCode"] == 5
    assert (await api.get("/exec/nosuch/json")).status == 404
    stopped = await api.create(Cmd=["true"])
    assert (await api.post(f"/containers/{stopped}/exec", json={"Cmd": ["true"]})).status == 409


async def test_web_server_answers_in_its_network_namespace(docker_api: ApiEnv) -> None:
    """busybox httpd in the container's own network namespace; the test connects from inside that
    namespace (setns in a worker thread), since containers have no bridge to the host yet."""
    api = docker_api.api
    site = docker_api.env.root.parent / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>hello from a container</h1>\n")
    cid = await api.create(
        "web",
        Cmd=["httpd", "-f", "-p", "80", "-h", "/www"],
        HostConfig={"Binds": [f"{site}:/www:ro"]},
    )
    assert (await api.post(f"/containers/{cid}/start")).status == 204
    pid = (await api.get(f"/containers/{cid}/json")).json()["State"]["Pid"]
    answer = await http_get_in_netns(pid, 80, "/index.html")
    assert answer.startswith(b"HTTP/1.") and b" 200 " in answer.split(b"\r\n")[0]
    assert answer.endswith(b"<h1>hello from a container</h1>\n")
    assert (await api.delete(f"/containers/{cid}", params={"force": "1"})).status == 204


async def test_web_server_with_host_network_answers_on_loopback(docker_api: ApiEnv) -> None:
    """The same server sharing the host's network namespace, bound to a free loopback port."""
    api = docker_api.api
    port = free_port()
    cid = await api.create(
        Cmd=[
            "sh",
            "-c",
            f"mkdir -p /www && echo hi > /www/index.html && exec httpd -f -p {LOOPBACK}:{port} -h /www",
        ],
        HostConfig={"NetworkMode": "host"},
    )
    assert (await api.post(f"/containers/{cid}/start")).status == 204
    deadline = time.monotonic() + 10
    while True:
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    writer.write(b"GET /index.html HTTP/1.0\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert b" 200 " in answer.split(b"\r\n")[0] and answer.endswith(b"hi\n")
    assert (await api.delete(f"/containers/{cid}", params={"force": "1"})).status == 204


@pytest.mark.parametrize("auto_remove", [False, True])
async def test_attach_streams_a_run_and_wait_answers_at_once(docker_api: ApiEnv, auto_remove: bool) -> None:
    """What ``docker run [--rm]`` without ``-d`` does: attach, wait (headers first), then start.

    With ``--rm`` the container and its log file may be gone before the attach has read the output:
    the output must still arrive.
    """
    api = docker_api.api
    script = "echo out; sleep 0.1; echo err >&2; exit 4" if not auto_remove else "echo bye; exit 4"
    cid = await api.create(Cmd=["sh", "-c", script], HostConfig={"AutoRemove": auto_remove})
    session = api.session
    condition = "removed" if auto_remove else "next-exit"
    async with (
        session.post(
            f"http://localhost/containers/{cid}/attach", params={"stream": "1", "stdout": "1", "stderr": "1"}
        ) as attached,
        session.post(f"http://localhost/containers/{cid}/wait", params={"condition": condition}) as waiting,
    ):
        assert waiting.status == 200  # headers arrive before the container even started
        assert (await api.post(f"/containers/{cid}/start")).status == 204
        expected = [(1, b"bye\n")] if auto_remove else [(1, b"out\n"), (2, b"err\n")]
        assert demux(await asyncio.wait_for(attached.read(), 10)) == expected
        assert (await waiting.json(content_type=None)) == {"StatusCode": 4, "Error": None}
    if auto_remove:
        assert (await api.get(f"/containers/{cid}/json")).status == 404
