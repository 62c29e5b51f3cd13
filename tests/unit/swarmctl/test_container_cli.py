"""``swarmctl container …`` against canned manager answers: what it asks for, what it prints, how it exits.

The fake manager (fake_manager.py) only replays Docker-shaped JSON and streams; the real manager and
agents are exercised by tests/integration/swarmctl/test_containers.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.swarmctl.fake_manager import (
    FakeManager,
    Recorded,
    Reply,
    error,
    fake_manager,
    multiplexed,
    node_ref,
)

N1 = node_ref("n1aaaaaaaaaaaaaaaaaaaaaa", "node-1", "10.0.0.1")
N2 = node_ref("n2bbbbbbbbbbbbbbbbbbbbbb", "node-2", "10.0.0.2:2377")
CID = "c0ffee" + "0" * 58


def summary(cid: str, name: str, node: dict[str, str], created: int, **extra: Any) -> dict[str, Any]:
    return {
        "Id": cid,
        "Names": [f"/{name}"],
        "Image": "busybox",
        "Command": "sleep 100000",
        "Created": created,
        "State": "running",
        "Status": "Up 5 minutes",
        "Ports": [],
        "Labels": {},
        "Node": node,
        **extra,
    }


def listing() -> list[dict[str, Any]]:
    """Two containers, created an hour and two minutes before now (the time the test runs, not the time it
    was collected: a whole suite takes minutes)."""
    now = int(time.time())
    return [
        summary("a" * 64, "old", N1, now - 3600, State="exited", Status="Exited (0) 1 hour ago"),
        summary(
            "b" * 64,
            "web",
            N2,
            now - 120,
            Command="/docker-entrypoint.sh nginx -g 'daemon off;'",
            Ports=[
                {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                {"IP": "::", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
                {"PrivatePort": 443, "Type": "tcp"},
            ],
            Labels={"tier": "front"},
        ),
    ]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeManager]:
    with fake_manager(tmp_path) as f:
        f.route("GET", "/containers/json", Reply(body=listing()))
        inspect = {"Id": CID, "Name": "/job", "State": {"Status": "running"}, "Node": N1}
        f.route("GET", "/containers/[^/]+(/[^/]+)?/json", Reply(body=inspect))
        yield f


def engine(node: dict[str, str], path: str) -> str:
    return f"/nodes/{node['ID']}/engine{path}"


# --- ls ----------------------------------------------------------------------------------------------------
def test_ls_prints_docker_columns_with_the_node(fake: FakeManager) -> None:
    code, out, err = fake.run("container", "ls", "-a")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "CONTAINER",
        "ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NODE",
        "NAMES",
    ]
    assert lines[1].startswith("b" * 12 + "   busybox   ")  # newest first
    assert '"/docker-entrypoint.…"' in lines[1] and "2 minutes ago" in lines[1]
    # A port published on every address shows the node's, once; names are NODE/NAME as in classic Swarm.
    assert "10.0.0.2:8080->80/tcp, 443/tcp" in lines[1]
    assert lines[1].endswith("node-2   node-2/web")
    assert lines[2].endswith("node-1   node-1/old") and "Exited (0) 1 hour ago" in lines[2]
    (req,) = fake.find("GET", "/containers/json")
    assert req.q("all") == "1" and req.q("filters") is None


def test_ls_quiet_format_and_no_trunc(fake: FakeManager) -> None:
    assert fake.run("container", "ls", "-q")[1].split() == ["b" * 12, "a" * 12]
    assert fake.run("container", "ls", "-q", "--no-trunc")[1].split() == ["b" * 64, "a" * 64]
    out = fake.run("container", "ls", "--format", "{{.Names}} {{.Node}} {{.State}} {{.Labels}}")[1]
    assert out.splitlines() == ["node-2/web node-2 running tier=front", "node-1/old node-1 exited "]
    rows = [json.loads(line) for line in fake.run("container", "ls", "--format", "json")[1].splitlines()]
    assert (
        rows[0]["ID"] == "b" * 12 and rows[0]["Node"] == "node-2" and rows[0]["RunningFor"] == "2 minutes ago"
    )
    out = fake.run("container", "ls", "--no-trunc", "--format", "{{.Command}}")[1]
    assert out.splitlines()[0] == json.dumps("/docker-entrypoint.sh nginx -g 'daemon off;'")
    table = fake.run("container", "ls", "--format", "table {{.ID}}\t{{.Node}}")[1].splitlines()
    assert table[0].split() == ["ID", "NODE"] and table[1].split() == ["b" * 12, "node-2"]


def test_ls_filters_go_to_the_engines_except_node(fake: FakeManager) -> None:
    code, out, _ = fake.run(
        "container", "ls", "--filter", "status=exited", "-f", "label=a=b", "-f", "node=node-1"
    )
    assert code == 0
    assert [line.split()[-1] for line in out.splitlines()[1:]] == ["node-1/old"]
    (req,) = fake.find("GET", "/containers/json")
    assert json.loads(req.q("filters") or "") == {"status": {"exited": True}, "label": {"a=b": True}}
    assert req.q("all") == "0"
    out = fake.run("container", "ls", "-q", "-f", f"node={N2['ID'][:6]}")[1]
    assert out.split() == ["b" * 12]


# --- run ---------------------------------------------------------------------------------------------------
def created(node: dict[str, str] = N1, warnings: list[str] | None = None) -> Reply:
    return Reply(201, {"Id": CID, "Warnings": warnings or [], "Node": node})


def test_run_detached_creates_where_placed_starts_and_prints_the_id(fake: FakeManager) -> None:
    fake.route("POST", "/containers/create", created(N2, ["published ports are not available yet"]))
    fake.route("POST", engine(N2, f"/containers/{CID}/start"), Reply(204))
    code, out, err = fake.run(
        "container", "run", "-d", "--name", "job", "--node", "node-2", "-e", "A=1",
        "-e", "constraint:rack==r2", "--constraint", "node.labels.zone!=eu", "busybox", "sleep", "60",
    )  # fmt: skip
    assert code == 0, err
    assert out == CID + "\n"
    assert err == "WARNING: published ports are not available yet\n"
    (req,) = fake.find("POST", "/containers/create")
    assert req.q("name") == "job" and req.q("node") == "node-2"
    body = req.json()
    assert body["Image"] == "busybox" and body["Cmd"] == ["sleep", "60"]
    assert body["Env"] == ["A=1", "constraint:rack==r2", "constraint:zone!=eu"]
    assert fake.find("POST", engine(N2, f"/containers/{CID}/start"))


def run_attached(fake: FakeManager, exit_code: int) -> None:
    fake.route("POST", "/containers/create", created())
    fake.route("POST", engine(N1, f"/containers/{CID}/start"), Reply(204))
    fake.route(
        "GET",
        engine(N1, f"/containers/{CID}/logs"),
        multiplexed((1, b"hello\n"), (2, b"warning\n"), (1, b"bye\n")),
    )
    fake.route(
        "POST", engine(N1, f"/containers/{CID}/wait"), Reply(body={"StatusCode": exit_code, "Error": None})
    )
    fake.route("DELETE", engine(N1, f"/containers/{CID}"), Reply(204))


def test_run_attached_prints_the_output_and_exits_with_the_containers_code(fake: FakeManager) -> None:
    run_attached(fake, 3)
    code, out, err = fake.run("container", "run", "busybox", "sh", "-c", "exit 3")
    assert (code, out, err) == (3, "hello\nbye\n", "warning\n")
    (logs,) = fake.find("GET", engine(N1, f"/containers/{CID}/logs"))
    assert (logs.q("follow"), logs.q("stdout"), logs.q("stderr")) == ("1", "1", "1")
    assert fake.find("POST", engine(N1, f"/containers/{CID}/wait"))
    assert not fake.find("DELETE", engine(N1, f"/containers/{CID}"))  # no --rm: it stays


def test_run_rm_removes_the_container_after_it_exits(fake: FakeManager) -> None:
    run_attached(fake, 0)
    code, out, _ = fake.run("container", "run", "--rm", "busybox", "echo", "hello")
    assert code == 0 and out == "hello\nbye\n"
    (rm,) = fake.find("DELETE", engine(N1, f"/containers/{CID}"))
    assert rm.q("force") == "1" and rm.q("v") == "1"
    order = [r.path.rsplit("/", 1)[-1] for r in fake.requests if r.path.startswith("/nodes/")]
    assert order == ["start", "logs", "wait", CID]


def test_a_container_that_does_not_start_is_removed_and_one_line_explains(fake: FakeManager) -> None:
    fake.route("POST", "/containers/create", created())
    fake.route("POST", engine(N1, f"/containers/{CID}/start"), error(500, "exec: nosuchcmd: not found"))
    fake.route("DELETE", engine(N1, f"/containers/{CID}"), Reply(204))
    code, out, err = fake.run("container", "run", "-d", "busybox", "nosuchcmd")
    assert code == 1 and out == ""
    assert err == f"Error: cannot start container {CID[:12]} on node-1: exec: nosuchcmd: not found\n"
    (rm,) = fake.find("DELETE", engine(N1, f"/containers/{CID}"))
    assert rm.q("force") == "1"


def test_a_failed_removal_after_a_failed_start_is_said_too(fake: FakeManager) -> None:
    fake.route("POST", "/containers/create", created())
    fake.route("POST", engine(N1, f"/containers/{CID}/start"), error(500, "boom"))
    fake.route("DELETE", engine(N1, f"/containers/{CID}"), error(503, "node node-1 is not connected"))
    code, _, err = fake.run("container", "run", "busybox")
    assert code == 1 and err.count("\n") == 1
    assert "boom (removing it failed too: node node-1 is not connected)" in err


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (503, "no suitable node: constraint zone==mars not met on 3 nodes"),
        (400, "invalid expression 'constraint:zone': expected one of the operators ==, !="),
        (404, "No such image: nosuch:latest (manifest unknown)"),
        (409, 'Conflict. The container name "/job" is already in use'),
    ],
)
def test_the_managers_refusals_are_one_line_exit_1(fake: FakeManager, status: int, message: str) -> None:
    fake.route("POST", "/containers/create", error(status, message))
    code, out, err = fake.run("container", "run", "-d", "busybox")
    assert (code, out, err) == (1, "", f"Error: {message}\n")


# --- logs / exec -------------------------------------------------------------------------------------------
def test_logs_passes_docker_options_and_splits_the_streams(fake: FakeManager) -> None:
    fake.route("GET", engine(N1, f"/containers/{CID}/logs"), multiplexed((1, b"out\n"), (2, b"err\n")))
    code, out, err = fake.run("container", "logs", "-n", "5", "-t", "--since", "1700000000", "job")
    assert (code, out, err) == (0, "out\n", "err\n")
    (req,) = fake.find("GET", engine(N1, f"/containers/{CID}/logs"))
    assert (req.q("tail"), req.q("timestamps"), req.q("follow")) == ("5", "1", None)
    assert req.q("since") == "1700000000.000000000"
    assert fake.find("GET", "/containers/job/json")


def test_logs_of_a_container_known_by_node_and_name(fake: FakeManager) -> None:
    fake.route("GET", engine(N1, f"/containers/{CID}/logs"), multiplexed())
    assert fake.run("container", "logs", "node-1/job")[0] == 0
    (req,) = fake.find("GET", "/containers/node-1/job/json")
    assert req.raw_path == "/containers/node-1%2Fjob/json"


def test_exec_prints_the_output_and_exits_with_the_commands_code(fake: FakeManager) -> None:
    fake.route("POST", engine(N1, f"/containers/{CID}/exec"), Reply(201, {"Id": "e1"}))
    fake.route("POST", engine(N1, "/exec/e1/start"), multiplexed((1, b"root\n"), (2, b"no such file\n")))
    fake.route("GET", engine(N1, "/exec/e1/json"), Reply(body={"Running": False, "ExitCode": 2}))
    code, out, err = fake.run(
        "container", "exec", "-e", "X=1", "-u", "nobody", "-w", "/tmp", "job", "ls", "-l"
    )
    assert (code, out, err) == (2, "root\n", "no such file\n")
    (create,) = fake.find("POST", engine(N1, f"/containers/{CID}/exec"))
    assert create.json() == {
        "Cmd": ["ls", "-l"],
        "AttachStdin": False,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": False,
        "Env": ["X=1"],
        "User": "nobody",
        "WorkingDir": "/tmp",
    }
    (start,) = fake.find("POST", engine(N1, "/exec/e1/start"))
    assert start.json() == {"Detach": False, "Tty": False}


def test_exec_detached_returns_at_once(fake: FakeManager) -> None:
    fake.route("POST", engine(N1, f"/containers/{CID}/exec"), Reply(201, {"Id": "e2"}))
    fake.route("POST", engine(N1, "/exec/e2/start"), Reply(200))
    assert fake.run("container", "exec", "-d", "job", "sleep", "5") == (0, "", "")
    (start,) = fake.find("POST", engine(N1, "/exec/e2/start"))
    assert start.json()["Detach"] is True


def test_exec_in_a_stopped_container_is_the_engines_error(fake: FakeManager) -> None:
    fake.route("POST", engine(N1, f"/containers/{CID}/exec"), error(409, f"Container {CID} is not running"))
    code, _, err = fake.run("container", "exec", "job", "true")
    assert code == 1 and err == f"Error: Container {CID} is not running\n"


# --- stop / start / restart / rm / inspect / top / port --------------------------------------------------
def test_lifecycle_commands_print_each_reference_and_report_failures_at_the_end(fake: FakeManager) -> None:
    for action in ("stop", "start", "restart"):
        fake.route("POST", engine(N1, f"/containers/{CID}/{action}"), Reply(204))
    fake.route("DELETE", engine(N1, f"/containers/{CID}"), Reply(204))
    fake.route("GET", "/containers/ghost/json", error(404, "No such container: ghost"))
    assert fake.run("container", "stop", "-t", "5", "job", "node-1/job") == (0, "job\nnode-1/job\n", "")
    assert [r.q("t") for r in fake.find("POST", engine(N1, f"/containers/{CID}/stop"))] == ["5", "5"]
    assert fake.run("container", "start", "job")[1] == "job\n"
    assert fake.run("container", "restart", "job")[1] == "job\n"
    code, out, err = fake.run("container", "rm", "-f", "-v", "ghost", "job")
    assert (code, out, err) == (1, "job\n", "Error: No such container: ghost\n")
    (rm,) = fake.find("DELETE", engine(N1, f"/containers/{CID}"))
    assert (rm.q("force"), rm.q("v")) == ("1", "1")


def test_inspect_prints_docker_json_with_the_node(fake: FakeManager) -> None:
    code, out, _ = fake.run("container", "inspect", "job")
    assert code == 0 and json.loads(out)[0]["Node"]["Name"] == "node-1"
    assert fake.run("container", "inspect", "--format", "{{.Node.Name}} {{.State.Status}}", "job")[1] == (
        "node-1 running\n"
    )


def test_top_prints_the_engines_table(fake: FakeManager) -> None:
    top = {"Titles": ["PID", "USER", "CMD"], "Processes": [["1", "root", "sleep 100000"]]}
    fake.route("GET", engine(N1, f"/containers/{CID}/top"), Reply(body=top))
    code, out, _ = fake.run("container", "top", "job", "-o", "pid,user,args")
    assert code == 0 and out.splitlines() == ["PID   USER   CMD", "1     root   sleep 100000"]
    (req,) = fake.find("GET", engine(N1, f"/containers/{CID}/top"))
    assert req.q("ps_args") == "-o pid,user,args"


def test_port_shows_where_published_ports_answer(fake: FakeManager) -> None:
    inspect: dict[str, Any] = {
        "Id": CID,
        "Name": "/web",
        "Node": N2,
        "NetworkSettings": {
            "Ports": {
                "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}],
                "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
                "443/tcp": None,
            }
        },
    }
    fake.route("GET", "/containers/web/json", Reply(body=inspect))
    assert fake.run("container", "port", "web")[1].splitlines() == [
        "53/udp -> 127.0.0.1:5353",
        "80/tcp -> 10.0.0.2:8080",
    ]
    assert fake.run("container", "port", "web", "80")[1] == "10.0.0.2:8080\n"
    code, _, err = fake.run("container", "port", "web", "443")
    assert code == 1 and err == "Error: no public port '443' published for web\n"


def test_an_ambiguous_name_is_the_managers_one_line(fake: FakeManager) -> None:
    message = "'job' names 2 containers (node-1/job, node-2/job): use NODE/NAME"
    fake.route("GET", "/containers/job/json", error(409, message))
    assert fake.run("container", "stop", "job") == (1, "", f"Error: {message}\n")


def test_a_node_that_went_away_is_the_managers_one_line(fake: FakeManager) -> None:
    def unavailable(req: Recorded) -> Reply:
        return error(503, "node node-1 is not connected (it has no session with any manager)")

    fake.route("GET", engine(N1, f"/containers/{CID}/logs"), unavailable)
    code, _, err = fake.run("container", "logs", "job")
    assert code == 1 and err == "Error: node node-1 is not connected (it has no session with any manager)\n"
