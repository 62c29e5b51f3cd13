"""``swarmctl service …`` against a real manager with simulated nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.swarmctl.conftest import Cluster, column, names, one_error_line, until


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def running_on(c: Cluster, service: str) -> list[str]:
    r = c.ok("service", "ps", service, "--filter", "desired-state=running")
    return [
        node
        for node, state in zip(column(r, "NODE"), column(r, "CURRENT STATE"), strict=True)
        if state.startswith("Running")
    ]


def test_create_waits_until_converged_and_lists(cluster: Cluster) -> None:
    r = cluster.ok(
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "-p",
        "8080:80",
        "nginx:1",
        "nginx",
        "-g",
        "daemon off;",
    )
    service_id = r.out.strip()
    assert len(service_id) == 25  # stdout is the id alone; progress goes to stderr
    assert r.err.strip().splitlines()[-1] == "web: 3/3 running, converged"

    ls = cluster.ok("service", "ls")
    assert names(ls) == ["web"]
    assert column(ls, "REPLICAS") == ["3/3"] and column(ls, "MODE") == ["replicated"]
    assert column(ls, "PORTS") == ["*:8080->80/tcp"] and column(ls, "ID") == [service_id[:12]]
    assert sorted(running_on(cluster, "web")) == ["node-1", "node-2", "node-3"]  # spread over the nodes

    (obj,) = json.loads(cluster.ok("service", "inspect", "web").out)
    assert obj["meta"]["id"] == service_id
    assert obj["spec"]["task"]["container"]["args"] == ["nginx", "-g", "daemon off;"]
    assert (
        cluster.ok("service", "inspect", "--format", "{{.Spec.Name}} {{.Spec.Replicas}}", service_id[:6]).out
        == "web 3\n"
    )
    pretty = cluster.ok("service", "inspect", "--pretty", "web").out
    assert "Service Mode:       Replicated" in pretty and "PublishedPort = 8080" in pretty


def test_update_rolls_the_tasks_and_rollback_restores(cluster: Cluster) -> None:
    cluster.ok(
        "service", "create", "--name", "api", "--replicas", "2", "--update-parallelism", "0", "busybox:1"
    )
    before = set(column(cluster.ok("service", "ps", "api"), "ID"))
    r = cluster.ok("service", "update", "--image", "busybox:2", "--env-add", "MODE=fast", "api")
    assert r.out == "api\n" and r.err.strip().endswith("api: 2/2 running, converged")
    ps = cluster.ok("service", "ps", "api")
    rows = list(zip(column(ps, "NAME"), column(ps, "IMAGE"), column(ps, "DESIRED STATE"), strict=True))
    assert sorted(r for r in rows if r[2] == "Running") == [
        ("api.1", "busybox:2", "Running"),
        ("api.2", "busybox:2", "Running"),
    ]
    history = {n for n, _, d in rows if d != "Running"}
    assert history == {"\\_ api.1", "\\_ api.2"}  # as docker shows it
    assert before <= set(column(ps, "ID"))

    cluster.ok("service", "rollback", "api")
    fmt = "{{.Spec.Task.Container.Image}} {{json .Spec.Task.Container.Env}}"
    assert cluster.ok("service", "inspect", "--format", fmt, "api").out == "busybox:1 []\n"
    assert sorted(running_on(cluster, "api")) == sorted(set(running_on(cluster, "api")))


def test_scale_up_and_down(cluster: Cluster) -> None:
    cluster.ok("service", "create", "--name", "w", "busybox")
    r = cluster.ok("service", "scale", "w=5")
    assert r.out == "w scaled to 5\n" and "w: 5/5 running, converged" in r.err
    assert column(cluster.ok("service", "ls"), "REPLICAS") == ["5/5"]
    cluster.ok("service", "scale", "w=1")
    until(lambda: len(running_on(cluster, "w")) == 1, what="scale down")
    one_error_line(cluster.run("service", "scale", "nope=2"), "service nope not found")


def test_an_unsatisfiable_constraint_fails_with_the_schedulers_reason(cluster: Cluster) -> None:
    r = cluster.run(
        "service",
        "create",
        "--name",
        "mars",
        "--constraint",
        "node.labels.zone==mars",
        "--timeout",
        "1s",
        "busybox",
    )
    assert r.code == 3
    errors = [line for line in r.err.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: service mars did not converge: mars: 0/1 tasks running after 1s; "
        "mars.1: no suitable node (constraint node.labels.zone==mars not met on 3 nodes)"
    ]
    ps = cluster.ok("service", "ps", "mars")
    assert column(ps, "ERROR") == ["no suitable node (constraint node.labels.zone==mars not met on 3 nodes)"]
    assert column(ps, "CURRENT STATE")[0].startswith("Pending")

    # The service was created; give a node the label and it converges there.
    cluster.ok("node", "update", "--label-add", "zone=mars", "node-2")
    until(lambda: running_on(cluster, "mars") == ["node-2"], what="mars to run on node-2")


def test_a_failing_update_rolls_back_and_says_why(cluster: Cluster) -> None:
    cluster.ok("service", "create", "--name", "flaky", "--replicas", "2", "busybox")
    r = cluster.run(
        "service", "update", "--env-add", "SHOAL_SIM_FAIL=start", "--update-failure-action", "rollback",
        "--update-monitor", "2s", "--timeout", "30s", "flaky",
    )  # fmt: skip
    assert r.code == 3, r.err
    (error,) = [line for line in r.err.splitlines() if line.startswith("Error:")]
    assert error.startswith("Error: service flaky did not converge: update rolled back")
    env = cluster.ok("service", "inspect", "--format", "{{json .Spec.Task.Container.Env}}", "flaky").out
    assert env == "[]\n"  # back on the previous spec


def test_global_services_run_once_per_node(cluster: Cluster) -> None:
    r = cluster.ok("service", "create", "--name", "agent", "--mode", "global", "busybox")
    assert "agent: 3/3 running, converged" in r.err
    assert sorted(running_on(cluster, "agent")) == ["node-1", "node-2", "node-3"]
    assert column(cluster.ok("service", "ls"), "MODE") == ["global"]


def test_quiet_detach_formats_and_filters(cluster: Cluster) -> None:
    r = cluster.ok("service", "create", "-q", "--name", "a", "--label", "tier=front", "busybox")
    assert r.err == "" and len(r.out.strip()) == 25
    r = cluster.ok("service", "create", "--detach", "--name", "b", "busybox")
    assert r.err == ""
    until(lambda: column(cluster.ok("service", "ls", "--filter", "name=b"), "REPLICAS") == ["1/1"], what="b")

    lines = cluster.ok("service", "ls", "--format", "json").lines()
    assert [json.loads(x)["Name"] for x in lines] == ["a", "b"]
    assert cluster.ok("service", "ls", "--format", "{{.Name}}={{.Replicas}}").lines() == ["a=1/1", "b=1/1"]
    table = cluster.ok("service", "ls", "--format", "table {{.Name}}\t{{.Image}}").lines()
    assert table[0].split() == ["NAME", "IMAGE"] and table[1].split() == ["a", "busybox"]
    assert names(cluster.ok("service", "ls", "--filter", "label=tier=front")) == ["a"]
    assert len(cluster.ok("service", "ls", "-q").lines()) == 2
    assert len(cluster.ok("service", "ps", "-q", "a", "b").lines()) == 2


def test_refusals_are_one_line(cluster: Cluster) -> None:
    cluster.ok("service", "create", "--detach", "--name", "dup", "busybox")
    one_error_line(cluster.run("service", "create", "--name", "dup", "busybox"), "service dup already exists")
    one_error_line(
        cluster.run("service", "create", "--name", "bad name", "busybox"),
        "service name 'bad name' is invalid",
    )
    one_error_line(cluster.run("service", "inspect", "nope"), "service nope not found")
    one_error_line(cluster.run("service", "rollback", "dup"), "has no previous spec")
    one_error_line(
        cluster.run("service", "create", "--network", "nonet", "busybox"), "network nonet not found"
    )
    one_error_line(
        cluster.run("service", "create", "--secret", "nosecret", "busybox"), "secret nosecret not found"
    )
    r = cluster.run("service", "rm", "dup", "nope")
    assert r.out == "dup\n"
    one_error_line(r, "service nope not found")
    assert cluster.ok("service", "ls", "-q").out == ""


def test_remove_stops_the_tasks(cluster: Cluster) -> None:
    cluster.ok("service", "create", "--name", "gone", "--replicas", "2", "busybox")
    assert cluster.ok("service", "rm", "gone").out == "gone\n"
    until(lambda: cluster.ok("task", "ls", "-q").out == "", what="the tasks to be removed")


def test_the_console_script(cluster: Cluster) -> None:
    """The installed entry point: exit codes and streams as a shell sees them."""
    exe = Path(sys.executable).with_name("swarmctl")
    env = {"SHOAL_HOST": cluster.host, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [exe, "service", "create", "--name", "cli", "busybox"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0 and "cli: 1/1 running, converged" in done.stderr
    done = subprocess.run(
        [exe, "service", "ls", "--format", "{{.Name}}"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.stdout == "cli\n"
    done = subprocess.run(
        [exe, "-H", "http://127.0.0.1:1", "service", "ls"], capture_output=True, text=True, timeout=60
    )
    assert (
        done.returncode == 2
        and done.stderr == "Error: cannot reach the manager at http://127.0.0.1:1: Connection refused\n"
    )
    done = subprocess.run(
        [exe, "service", "create", "--limit-memory", "x", "busybox"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1
