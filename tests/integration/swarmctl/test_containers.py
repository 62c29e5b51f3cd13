"""``swarmctl container …`` and ``image …`` through the real entry point against a real manager and agents.

Most tests use a local cluster (swarmctl/localcluster): etcd, a manager and two agents in network-namespace
hosts running busybox containers under runc, and a registry on host0 seeded with busybox. The manager
places each one-off container with the scheduler and reaches the node's Docker Engine API through the
agent's session; these tests check what a user sees of that: output, exit codes, placement, the one-line
errors. The last tests use the module's simulated cluster (conftest.py), whose nodes run no containers.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from swarmctl.cli import cli
from swarmctl.localcluster.cluster import LocalCluster, LocalClusterConfig
from tests.e2e.cluster.support import until
from tests.integration.swarmctl.conftest import Cluster, Run, column, one_error_line

SUBNET = "10.213.12.0/24"


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base = tmp_path_factory.mktemp("containers") / "c"
    prefix = f"ct{os.getpid() % 10000}"
    c = LocalCluster(LocalClusterConfig(base_dir=base, hosts=2, prefix=prefix, subnet=SUBNET))
    try:
        asyncio.run(c.up())
        yield c
    finally:
        c.down()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(prefix)], "namespaces left behind"


def sw(c: LocalCluster, *args: str, input: bytes | None = None) -> Run:
    """``swarmctl ARGS`` against the local cluster, through click's runner (as the console script runs)."""
    result = CliRunner().invoke(
        cli, list(args), input=input, env={"SHOAL_HOST": f"unix://{c.config.socket}"}, catch_exceptions=False
    )
    return Run(result.exit_code, result.stdout, result.stderr)


def ok(c: LocalCluster, *args: str) -> Run:
    r = sw(c, *args)
    assert r.code == 0, f"swarmctl {' '.join(args)} exited {r.code}\nstdout: {r.out}\nstderr: {r.err}"
    return r


def names(c: LocalCluster) -> list[str]:
    return ok(c, "container", "ls", "-a", "--format", "{{.Names}}").lines()


# --- run ---------------------------------------------------------------------------------------------------
@pytest.mark.root
@pytest.mark.slow
def test_run_prints_the_output_and_exits_with_the_containers_code(local: LocalCluster) -> None:
    before = names(local)
    r = sw(local, "container", "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert r.code == 7, r
    assert r.out == "out\n"
    assert [line for line in r.err.splitlines() if not line.startswith("WARNING")] == ["err"]
    assert names(local) == before  # --rm: nothing left

    r = sw(local, "container", "run", "--name", "kept", "busybox", "true")
    assert (r.code, r.out) == (0, "")
    (row,) = [n for n in names(local) if n.endswith("/kept")]
    ok(local, "container", "rm", row)


@pytest.mark.root
@pytest.mark.slow
def test_a_container_that_cannot_start_is_removed_and_explained(local: LocalCluster) -> None:
    before = names(local)
    r = sw(local, "container", "run", "-d", "busybox", "/no/such/binary")
    one_error_line(r, "cannot start container", "/no/such/binary")
    assert r.code == 1 and r.out == ""
    assert names(local) == before


@pytest.mark.root
@pytest.mark.slow
def test_a_detached_container_through_its_life(local: LocalCluster) -> None:
    cid = ok(
        local, "container", "run", "-d", "--name", "ticker", "--node", "host2", "-l", "role=test",
        "busybox", "sh", "-c", "echo started; while true; do sleep 1; done",
    ).out.strip()  # fmt: skip
    assert len(cid) == 64
    r = ok(local, "container", "ls")
    (line,) = [x for x in r.lines() if x.startswith(cid[:12])]
    assert line.endswith("host2   host2/ticker") and '"sh -c echo started;…"' in line
    assert ok(local, "container", "ls", "-q", "--filter", "label=role=test").out.split() == [cid[:12]]
    assert ok(local, "container", "ls", "-q", "--filter", "node=host1", "-f", "name=ticker").out == ""

    until(lambda: ok(local, "container", "logs", "ticker").out == "started\n", 10, "the first log line")
    r = sw(local, "container", "exec", "-e", "WHO=me", "ticker", "sh", "-c", "echo $WHO; echo no >&2; exit 5")
    assert (r.code, r.out, r.err) == (5, "me\n", "no\n")
    top = ok(local, "container", "top", "ticker").lines()
    assert "PID" in top[0] and any("sleep" in x or "sh -c" in x for x in top[1:])

    fmt = "{{.Node.Name}} {{.State.Status}} {{.Config.Labels.role}}"
    assert ok(local, "container", "inspect", "--format", fmt, "host2/ticker").out == "host2 running test\n"
    assert ok(local, "container", "stop", "-t", "1", "ticker").out == "ticker\n"
    assert ok(local, "container", "inspect", "--format", "{{.State.Status}}", cid[:10]).out == "exited\n"
    assert ok(local, "container", "ls", "-q").out.split().count(cid[:12]) == 0
    assert cid[:12] in ok(local, "container", "ls", "-aq", "--filter", "status=exited").out.split()
    ok(local, "container", "start", "ticker")
    ok(local, "container", "restart", "-t", "1", "ticker")
    assert ok(local, "container", "inspect", "--format", "{{.State.Status}}", "ticker").out == "running\n"
    one_error_line(sw(local, "container", "rm", "ticker"), "running container")
    assert ok(local, "container", "rm", "-f", "ticker").out == "ticker\n"
    one_error_line(sw(local, "container", "logs", "ticker"), "No such container: ticker")


# --- placement ---------------------------------------------------------------------------------------------
def node_of(c: LocalCluster, name: str) -> str:
    return ok(c, "container", "inspect", "--format", "{{.Node.Name}}", name).out.strip()


@pytest.mark.root
@pytest.mark.slow
def test_placement_follows_constraints_affinities_and_node(local: LocalCluster) -> None:
    ok(
        local,
        "container",
        "run",
        "-d",
        "--name",
        "p1",
        "-e",
        "constraint:node==host1",
        "busybox",
        "sleep",
        "600",
    )
    ok(
        local,
        "container",
        "run",
        "-d",
        "--name",
        "p2",
        "--constraint",
        "node.hostname==host2",
        "busybox",
        "sleep",
        "600",
    )
    ok(
        local,
        "container",
        "run",
        "-d",
        "--name",
        "p3",
        "-e",
        "affinity:container==p2",
        "busybox",
        "sleep",
        "600",
    )
    ok(local, "container", "run", "-d", "--name", "p4", "--node", "host1", "busybox", "sleep", "600")
    try:
        assert [node_of(local, n) for n in ("p1", "p2", "p3", "p4")] == ["host1", "host2", "host2", "host1"]

        r = sw(local, "container", "run", "-d", "--constraint", "zone==mars", "busybox", "true")
        one_error_line(r, "no suitable node", "zone==mars")
        r = sw(
            local, "container", "run", "-d", "-e", "affinity:container==nothing-like-it", "busybox", "true"
        )
        one_error_line(r, "no suitable node")
        r = sw(local, "container", "run", "-d", "--name", "p1", "busybox", "true")
        one_error_line(r, "already in use")
        one_error_line(sw(local, "container", "run", "-d", "--node", "host9", "busybox", "true"), "host9")
    finally:
        ok(local, "container", "rm", "-f", "p1", "p2", "p3", "p4")


# --- images ------------------------------------------------------------------------------------------------
@pytest.mark.root
@pytest.mark.slow
def test_images_pull_tag_push_remove_and_load(local: LocalCluster, tmp_path: Path) -> None:
    registry = local.registry_addr()
    r = ok(local, "image", "ls")
    busybox = [line.split() for line in r.lines()[1:] if line.startswith("busybox ")]
    assert sorted(row[-1] for row in busybox) == ["host1", "host2"]

    r = ok(local, "image", "pull", f"{registry}/busybox")
    assert [line.split(": ")[0] for line in sorted(r.lines())] == ["host1", "host2"]
    assert all(line.endswith(f"for {registry}/busybox:latest") for line in r.lines()), r.out
    assert "host1: latest: Pulling from" in r.err and "host2: latest: Pulling from" in r.err  # progress

    # Tag on one node, push from the node that has it, remove it everywhere, pull it back on the other.
    ok(local, "image", "tag", "--node", "host1", "busybox", f"{registry}/ct-test:v1")
    r = ok(local, "image", "push", f"{registry}/ct-test:v1")
    assert r.out.startswith("host1: v1: digest: sha256:") and "host1: The push refers to" in r.err
    assert ok(local, "image", "push", "-q", f"{registry}/ct-test:v1").out == f"{registry}/ct-test:v1\n"
    assert "Untagged" in ok(local, "image", "rm", f"{registry}/ct-test:v1").out
    assert ok(local, "image", "ls", "-q", f"{registry}/ct-test:v1").out == ""
    assert ok(local, "image", "pull", "-q", "--node", "host2", f"{registry}/ct-test:v1").out == (
        f"{registry}/ct-test:v1\n"
    )
    nodes = ok(local, "image", "ls", "--format", "{{.Node}}", f"{registry}/ct-test:v1").out.split()
    assert nodes == ["host2"]
    ok(local, "image", "rm", "-f", f"{registry}/ct-test:v1")

    # Each node's failure is in the one error line, not repeated in the progress.
    r = sw(local, "image", "pull", f"{registry}/no-such-image:v1")
    one_error_line(r, f"pull of {registry}/no-such-image:v1 failed on host1, host2", "manifest unknown")
    one_error_line(sw(local, "image", "push", f"{registry}/never-tagged:v1"), "no node has an image")

    # A docker-save archive of one node's image, loaded on every node.
    archive = tmp_path / "busybox.tar"
    assert ok(local, "image", "save", "--node", "host1", "-o", str(archive), "busybox").out == ""
    assert archive.stat().st_size > 100_000
    r = ok(local, "image", "load", "-i", str(archive))
    assert sorted(r.lines()) == ["host1: Loaded image: busybox:latest", "host2: Loaded image: busybox:latest"]
    r = sw(local, "image", "load", "--node", "host2", input=b"not an archive")
    one_error_line(r, "load failed on host2", "not a tar archive")


@pytest.mark.root
@pytest.mark.slow
def test_run_pulls_a_missing_image_on_the_chosen_node(local: LocalCluster) -> None:
    registry = local.registry_addr()
    ok(local, "image", "rm", "-f", "--node", "host2", f"{registry}/busybox")
    r = sw(local, "container", "run", "--rm", "--node", "host2", f"{registry}/busybox", "echo", "pulled")
    assert (r.code, r.out) == (0, "pulled\n"), r
    assert ok(local, "image", "ls", "--node", "host2", "-q", f"{registry}/busybox").out != ""
    r = sw(local, "container", "run", "--rm", f"{registry}/missing:v1", "true")
    one_error_line(r, "No such image")


# --- nodes without containers (the simulated cluster) -------------------------------------------------------
def test_nodes_that_run_no_containers(cluster: Cluster) -> None:
    assert cluster.ok("container", "ls", "-a").lines()[0].startswith("CONTAINER ID")
    assert column(cluster.ok("container", "ls", "-a"), "NAMES") == []
    assert cluster.ok("image", "ls", "--format", "json").out == ""
    one_error_line(cluster.run("container", "run", "-d", "busybox"), "no suitable node")
    r = cluster.run("image", "pull", "-q", "busybox")
    one_error_line(r, "pull of busybox: no ready node runs containers", "runs no containers")
    r = cluster.run("image", "pull", "busybox")  # the progress says so node by node, then the error
    assert r.out == "" and "node-1: skipped: node node-1 runs no containers" in r.err
    assert r.err.splitlines()[-1].startswith("Error: pull of busybox: no ready node runs containers")
    one_error_line(cluster.run("container", "inspect", "nothing"), "No such container: nothing")
    one_error_line(cluster.run("image", "pull", "--node", "node-1", "busybox"), "node-1")
    r = cluster.run("image", "load", "--node", "nowhere", input=b"x")
    one_error_line(r, "no such node: nowhere")
    assert json.loads(cluster.ok("node", "ls", "--format", "json").lines()[0])["Hostname"].startswith("node-")
