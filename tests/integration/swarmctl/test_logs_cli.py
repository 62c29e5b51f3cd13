"""``swarmctl service logs`` and ``task logs`` against a real manager with simulated nodes, whose tasks
write what ``SHOAL_SIM_LOG`` (stdout) and ``SHOAL_SIM_LOG_STDERR`` (stderr) say."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from agent.executor_sim import SimExecutor
from api import Task
from manager.logs import LOGS, LogRouter
from tests.integration.swarmctl.conftest import Cluster, one_error_line, until

PREFIX = re.compile(r"^(?P<name>[\w.-]+)@(?P<node>node-\d)\s+\| (?P<text>.*)$")


def router(cluster: Cluster) -> LogRouter:
    assert cluster.manager is not None and cluster.manager.app is not None
    return cluster.manager.app[LOGS]


def tasks_of(cluster: Cluster, name: str) -> list[Task]:
    assert cluster.manager is not None and cluster.manager.store is not None
    return [t for t in cluster.manager.store.objects(Task) if t.service_annotations.name == name]


def web(cluster: Cluster, name: str, replicas: int = 2) -> list[Task]:
    cluster.ok(
        "service",
        "create",
        "--name",
        name,
        "--replicas",
        str(replicas),
        "--env",
        "SHOAL_SIM_LOG=hello\nworld",
        "--env",
        "SHOAL_SIM_LOG_STDERR=careful",
        "busybox",
    )
    return tasks_of(cluster, name)


def write(cluster: Cluster, task: Task, text: str) -> None:
    """Make a running task write a line (on the node that runs it)."""
    (agent,) = [a for a in cluster.agents if a.node_id == task.node_id]
    executor = agent.executor
    assert isinstance(executor, SimExecutor)
    cluster.loop.call_soon_threadsafe(executor.write_log, task.meta.id, text)


def test_service_logs_print_each_line_with_its_task_as_docker_does(cluster: Cluster) -> None:
    tasks = web(cluster, "chatty")
    r = cluster.ok("service", "logs", "chatty")
    by_task = {f"chatty.{t.slot}.{t.meta.id[:12]}": t for t in tasks}
    seen: dict[str, list[str]] = {}
    for line in r.lines():
        m = PREFIX.match(line)
        assert m, line
        seen.setdefault(m["name"], []).append(m["text"])
    assert seen == {name: ["hello", "world"] for name in by_task}
    # stderr lines go to stderr, with the same prefix.
    assert sorted(line.split("    | ")[1] for line in r.err.splitlines()) == ["careful", "careful"]
    assert all(PREFIX.match(line) for line in r.err.splitlines())

    assert sorted(cluster.ok("service", "logs", "--raw", "chatty").lines()) == [
        "hello",
        "hello",
        "world",
        "world",
    ]
    assert (
        cluster.ok("service", "logs", "--tail", "1", "chatty").out == ""
    )  # the last line of each is stderr's
    for line in cluster.ok("service", "logs", "--no-task-ids", "chatty").lines():
        assert re.match(r"^chatty\.[12]@node-\d    \| (hello|world)$", line), line
    stamped = cluster.ok("service", "logs", "-t", "chatty").lines()[0]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z chatty\.\d\.\w{12}@node-\d    \| ", stamped)
    assert cluster.ok("service", "logs", "--since", "10m", "chatty").out.count("hello") == 2
    assert cluster.ok("service", "logs", "--since", str(int(time.time()) + 3600), "chatty").out == ""


def test_task_logs_and_service_logs_of_a_task(cluster: Cluster) -> None:
    (task,) = web(cluster, "single", replicas=1)
    name = f"single.1.{task.meta.id[:12]}"
    for args in (("task", "logs", task.meta.id), ("service", "logs", task.meta.id[:10])):
        lines = cluster.ok(*args).lines()
        assert [PREFIX.match(line)["name"] for line in lines] == [name, name]  # type: ignore[index]
    one_error_line(cluster.run("service", "logs", "nosuchthing"), "no such task or service: nosuchthing")
    one_error_line(cluster.run("service", "logs", "--since", "someday", "single"), "since")


def test_follow_prints_new_lines_until_the_service_is_removed(cluster: Cluster, tmp_path: Path) -> None:
    (task,) = web(cluster, "followed", replicas=1)
    exe = Path(sys.executable).with_name("swarmctl")
    env = {"SHOAL_HOST": cluster.host, "PATH": "/usr/bin:/bin"}
    with subprocess.Popen(
        [exe, "service", "logs", "-f", "--raw", "--tail", "0", "followed"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            until(lambda: router(cluster).active == 1, what="the subscription")
            write(cluster, task, "as it happens")
            assert proc.stdout.readline() == "as it happens\n"
            cluster.ok("service", "rm", "followed")
            assert proc.wait(20) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
