"""``swarmctl node|network|volume|secret|task|cluster …`` against a real manager with simulated nodes."""

from __future__ import annotations

import json
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


def test_nodes(cluster: Cluster) -> None:
    ls = cluster.ok("node", "ls")
    assert column(ls, "HOSTNAME") == ["node-1", "node-2", "node-3"]
    assert set(column(ls, "STATUS")) == {"Ready"} and set(column(ls, "AVAILABILITY")) == {"Active"}
    assert column(cluster.ok("node", "ls", "--filter", "name=node-2"), "HOSTNAME") == ["node-2"]
    assert column(cluster.ok("node", "ls", "--filter", "label=rack=r3"), "HOSTNAME") == [
        "node-3"
    ]  # engine label
    assert len(cluster.ok("node", "ls", "-q").lines()) == 3

    assert (
        cluster.ok("node", "update", "--label-add", "zone=eu", "--label-add", "ssd", "node-1").out
        == "node-1\n"
    )
    cluster.ok("node", "update", "--label-rm", "ssd", "node-1")
    labels = cluster.ok("node", "inspect", "--format", "{{json .Spec.Annotations.Labels}}", "node-1").out
    assert json.loads(labels) == {"zone": "eu"}
    assert column(cluster.ok("node", "ls", "--filter", "node.label=zone=eu"), "HOSTNAME") == ["node-1"]

    assert (
        cluster.ok("node", "promote", "node-2").out == "Node node-2 promoted to a manager in the cluster.\n"
    )
    assert cluster.ok("node", "promote", "node-2").out == "Node node-2 is already a manager in the cluster.\n"
    ls = cluster.ok("node", "ls", "--filter", "role=manager")
    assert column(ls, "HOSTNAME") == ["node-2"] and column(ls, "MANAGER STATUS") in (
        ["Reachable"],
        ["Leader"],
    )
    cluster.ok("node", "demote", "node-2")
    assert cluster.ok("node", "ls", "-q", "--filter", "role=manager").out == ""

    pretty = cluster.ok("node", "inspect", "--pretty", "node-1").out
    assert "Hostname:           node-1" in pretty and " zone=eu" in pretty
    one_error_line(
        cluster.run("node", "rm", "node-3"), "node node-3 is not down and can't be removed (use --force)"
    )
    one_error_line(cluster.run("node", "inspect", "node-9"), "node node-9 not found")
    one_error_line(cluster.run("node", "update", "--label-add", "=x", "node-1"), "invalid label '=x'")


def test_draining_a_node_moves_its_tasks(cluster: Cluster) -> None:
    cluster.ok("service", "create", "--name", "web", "--replicas", "3", "busybox")
    cluster.ok("node", "update", "--availability", "drain", "node-3")
    assert column(cluster.ok("node", "ls", "--filter", "name=node-3"), "AVAILABILITY") == ["Drain"]

    def placed() -> list[str]:
        ps = cluster.ok("service", "ps", "web", "--filter", "desired-state=running")
        return sorted(
            n
            for n, s in zip(column(ps, "NODE"), column(ps, "CURRENT STATE"), strict=True)
            if s.startswith("Running")
        )

    until(lambda: len(placed()) == 3 and "node-3" not in placed(), what="tasks to leave node-3")
    assert cluster.ok("node", "ps", "-q", "--filter", "desired-state=running", "node-3").out == ""


def test_networks(cluster: Cluster) -> None:
    net_id = cluster.ok(
        "network", "create", "--subnet", "10.20.0.0/24", "--gateway", "10.20.0.1", "--label", "a=b", "front"
    ).out.strip()
    ls = cluster.ok("network", "ls")
    assert names(ls) == ["front"] and column(ls, "DRIVER") == ["overlay"] and column(ls, "SCOPE") == ["swarm"]
    (net,) = json.loads(cluster.ok("network", "inspect", "front").out)
    assert net["meta"]["id"] == net_id and net["spec"]["ipam"][0]["subnet"] == "10.20.0.0/24"
    assert net["spec"]["annotations"]["labels"] == {"a": "b"}

    cluster.ok("service", "create", "--name", "web", "--network", "name=front,alias=www", "busybox")
    att = cluster.ok("service", "inspect", "--format", "{{json .Spec.Task.Networks}}", "web").out
    assert json.loads(att) == [{"target": "front", "aliases": ["www"]}]
    one_error_line(cluster.run("network", "rm", "front"), "network front is in use by service web")
    cluster.ok("service", "update", "--network-rm", "front", "web")
    assert cluster.ok("network", "rm", "front").out == "front\n"
    assert cluster.ok("network", "ls", "-q").out == ""
    one_error_line(cluster.run("network", "create", "--subnet", "10.0.0.0/33", "bad"), "10.0.0.0/33")
    one_error_line(cluster.run("network", "create", "--gateway", "10.0.0.1", "bad"), "needs its --subnet")


def test_volumes(cluster: Cluster) -> None:
    assert cluster.ok("volume", "create", "--label", "keep=yes", "-o", "size=1G", "data").out == "data\n"
    ls = cluster.ok("volume", "ls")
    assert column(ls, "VOLUME NAME") == ["data"] and column(ls, "DRIVER") == ["local"]
    assert cluster.ok("volume", "ls", "-q").out == "data\n"
    assert cluster.ok("volume", "inspect", "--format", "{{.Spec.DriverOpts.size}}", "data").out == "1G\n"
    assert len(cluster.ok("volume", "create").out.strip()) == 25  # a generated name
    assert cluster.ok("volume", "rm", "data").out == "data\n"
    one_error_line(cluster.run("volume", "rm", "data"), "volume data not found")


def test_secrets(cluster: Cluster, tmp_path: Path) -> None:
    key = tmp_path / "key.txt"
    key.write_bytes(b"s3cret")
    secret_id = cluster.ok("secret", "create", "--label", "env=prod", "api-key", str(key)).out.strip()
    cluster.ok("secret", "create", "db-pass", "-", input=b"from stdin")
    assert names(cluster.ok("secret", "ls")) == ["api-key", "db-pass"]
    (obj,) = json.loads(cluster.ok("secret", "inspect", "api-key").out)
    assert obj["meta"]["id"] == secret_id and obj["spec"]["data"] == ""  # never returned
    assert obj["status"]["digest"].startswith("sha256:")

    cluster.ok("service", "create", "--name", "app", "--secret", "source=api-key,target=key", "busybox")
    refs = json.loads(
        cluster.ok("service", "inspect", "--format", "{{json .Spec.Task.Container.Secrets}}", "app").out
    )
    assert refs == [{"secret_id": secret_id, "secret_name": "api-key", "target": "key"}]
    one_error_line(cluster.run("secret", "rm", "api-key"), "secret api-key is in use by service app")
    one_error_line(cluster.run("secret", "create", "empty", "-", input=b""), "a secret needs data")
    one_error_line(cluster.run("secret", "create", "x", str(tmp_path / "none")), "No such file or directory")
    assert cluster.ok("secret", "rm", "db-pass").out == "db-pass\n"


def test_tasks_and_cluster(cluster: Cluster) -> None:
    cluster.ok("service", "create", "--name", "web", "--replicas", "2", "busybox")
    ls = cluster.ok("task", "ls")
    assert sorted(column(ls, "NAME")) == ["web.1", "web.2"]
    task_id = cluster.ok("task", "ls", "-q").lines()[0]
    (task,) = json.loads(cluster.ok("task", "inspect", task_id).out)
    assert task["status"]["state"] == "running" and task["service_annotations"]["name"] == "web"
    assert len(cluster.ok("task", "ls", "-q", "--filter", "node=node-1").lines()) <= 1

    token = cluster.ok("cluster", "join-token", "-q", "worker").out.strip()
    assert token.startswith("SWMTKN-1-")
    assert cluster.ok("cluster", "inspect", "--format", "{{.Status.JoinTokens.Worker}}").out.strip() == token
    text = cluster.ok("cluster", "join-token", "manager").out
    assert "To add a manager to this cluster" in text and "shoal-agent --token SWMTKN-1-" in text
    assert token not in text  # the manager token differs
