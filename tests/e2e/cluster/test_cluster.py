"""A real cluster on this machine: an embedded store, a manager and three agents in network-namespace hosts,
running busybox containers under runc (swarmctl/localcluster). One cluster serves the whole module on each
store: every test runs on etcd and again on ZooKeeper.

What a user does with services is checked end to end here: create, scale, update, roll back, remove;
overlay networking across hosts (by address, by name, through the service's VIP); draining a node; the
restart policy of a failing task; a task whose health check starts failing replaced in its slot; an update
whose new tasks fail paused, then rolled back (by hand, and by its failure action); a global service
reaching a host that joins the cluster later.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.health import UNHEALTHY_ERROR
from api.objects import SECOND
from swarmctl.localcluster.cluster import LocalCluster, LocalClusterConfig
from tests.e2e.cluster.support import Client, until

pytestmark = [pytest.mark.root, pytest.mark.slow]


#: Per store: the namespace prefix and the underlay of its cluster, apart from every other test's.
STORES = {"etcd": ("se", "10.213.3.0/24"), "zookeeper": ("sz", "10.213.13.0/24")}


@pytest.fixture(scope="module", params=list(STORES))
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    store: str = request.param
    tag, subnet = STORES[store]
    base = tmp_path_factory.mktemp(f"cluster-{store}") / "c"
    prefix = f"{tag}{os.getpid() % 10000}"
    config = LocalClusterConfig(base_dir=base, hosts=3, prefix=prefix, subnet=subnet, store=store)
    c = LocalCluster(config)
    try:
        asyncio.run(c.up())
        yield c
    finally:
        c.down()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{prefix}-")], "namespaces left behind"


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> Client:
    return Client(cluster.config.socket)


def service(name: str, replicas: int, *args: str, **extra: Any) -> dict[str, Any]:
    task: dict[str, Any] = {"container": {"image": "busybox", "args": list(args) or ["sleep", "100000"]}}
    task.update(extra.pop("task", {}))
    return {"annotations": {"name": name}, "replicas": replicas, "task": task, **extra}


def update(api: Client, name: str, **changes: Any) -> None:
    svc = api.ok("GET", f"/services/{name}")
    spec = svc["spec"]
    for key, value in changes.items():
        if key == "image_args":
            spec["task"]["container"]["args"] = value
        else:
            spec[key] = value
    api.ok("POST", f"/services/{name}/update?version={svc['meta']['version']}", spec)


def in_sandbox(cluster: LocalCluster, task: dict[str, Any], code: str) -> subprocess.CompletedProcess[str]:
    """Run Python inside the network namespace of a task's container."""
    host = next(n for n in os.listdir("/run/netns") if n.endswith(task["meta"]["id"][:12]))
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{host}", "python3", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
    )


def lookup(task: dict[str, Any], name: str) -> list[str]:
    """Addresses the embedded DNS gives for ``name`` inside the task's container namespace."""
    host = next(n for n in os.listdir("/run/netns") if n.endswith(task["meta"]["id"][:12]))
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{host}", "busybox", "nslookup", name, "127.0.0.11"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    answers = out.split(f"Name:\t{name}", 1)[1] if f"Name:\t{name}" in out else ""
    return sorted({line.split()[-1] for line in answers.splitlines() if line.startswith("Address")})


def test_three_ready_nodes(api: Client) -> None:
    nodes = api.ok("GET", "/nodes")
    assert sorted(n["status"]["description"]["hostname"] for n in nodes) == ["host1", "host2", "host3"]
    assert all(n["status"]["state"] == "ready" for n in nodes)


def test_service_lifecycle_with_real_containers(api: Client, cluster: LocalCluster) -> None:
    api.ok("POST", "/services/create", service("life", 3))
    until(lambda: len(api.running("life")) == 3, what="3 running tasks")
    assert len({t["node_id"] for t in api.running("life")}) == 3  # spread over the three hosts

    update(api, "life", replicas=5)
    until(lambda: len(api.running("life")) == 5, what="scale to 5")
    update(api, "life", replicas=2)
    until(lambda: len(api.running("life")) == 2 and len(api.tasks("life")) >= 2, what="scale to 2")

    update(api, "life", image_args=["sleep", "200000"])
    until(
        lambda: (
            len(api.running("life")) == 2
            and all(t["spec"]["container"]["args"] == ["sleep", "200000"] for t in api.running("life"))
        ),
        what="rolling update",
    )
    until(
        lambda: api.ok("GET", "/services/life")["status"]["update_state"] == "completed", what="update done"
    )
    api.ok("POST", "/services/life/rollback")
    until(
        lambda: (
            len(api.running("life")) == 2
            and all(t["spec"]["container"]["args"] == ["sleep", "100000"] for t in api.running("life"))
        ),
        what="rollback",
    )

    api.ok("DELETE", "/services/life")
    until(lambda: api.tasks("life") == [] if api.call("GET", "/services/life")[0] == 200 else True, what="rm")
    runtime_roots = [cluster.config.base_dir / f"host{i}" / "runtime" / "runc" for i in (1, 2, 3)]

    def no_containers() -> bool:
        for root in runtime_roots:
            out = subprocess.run(["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True)
            if out.stdout.strip():
                return False
        return True

    until(no_containers, what="every container of the removed service to be gone")


def test_overlay_across_hosts_by_address_name_and_vip(api: Client, cluster: LocalCluster) -> None:
    api.ok("POST", "/networks/create", {"annotations": {"name": "front"}, "driver": "overlay"})
    spec = service(
        "web", 3, "httpd", "-f", "-p", "80", "-h", "/etc", task={"networks": [{"target": "front"}]}
    )
    api.ok("POST", "/services/create", spec)
    tasks = until(lambda: len(api.running("web")) == 3 and api.running("web"), what="web running")
    assert len({t["node_id"] for t in tasks}) == 3
    ips = [t["networks"][0]["addresses"][0].split("/")[0] for t in tasks]
    me = tasks[0]
    for ip, other in zip(ips, tasks, strict=True):
        got = in_sandbox(
            cluster,
            me,
            f"import urllib.request as u;print(u.urlopen('http://{ip}/hostname',timeout=5).read().decode())",
        )
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == other["meta"]["id"][:12]
    # Names are answered by the embedded DNS at 127.0.0.11 inside the container's namespace.
    assert lookup(me, "tasks.web") == sorted(ips)
    vip = api.ok("GET", "/services/web")["status"]["endpoint"]["virtual_ips"]
    (vip_addr,) = [v.split("/")[0] for v in vip.values()]
    assert lookup(me, "web") == [vip_addr]
    seen = set()
    for _ in range(6):
        got = in_sandbox(
            cluster,
            me,
            f"import urllib.request as u;print(u.urlopen('http://{vip_addr}/hostname',timeout=5).read().decode())",
        )
        seen.add(got.stdout.strip())
    assert len(seen) >= 2, f"the VIP sent every connection to {seen}"
    api.ok("DELETE", "/services/web")


def test_drain_moves_tasks_and_restart_policy_limits_attempts(api: Client) -> None:
    api.ok("POST", "/services/create", service("mover", 3))
    tasks = until(lambda: len(api.running("mover")) == 3 and api.running("mover"), what="mover running")
    node = api.ok("GET", f"/nodes/{tasks[0]['node_id']}")
    spec = node["spec"]
    spec["availability"] = "drain"
    api.ok("POST", f"/nodes/{node['meta']['id']}/update?version={node['meta']['version']}", spec)
    until(
        lambda: (
            len(api.running("mover")) == 3
            and all(t["node_id"] != node["meta"]["id"] for t in api.running("mover"))
        ),
        what="tasks off the drained node",
    )
    node = api.ok("GET", f"/nodes/{node['meta']['id']}")
    node["spec"]["availability"] = "active"
    api.ok("POST", f"/nodes/{node['meta']['id']}/update?version={node['meta']['version']}", node["spec"])
    api.ok("DELETE", "/services/mover")

    policy = {"condition": "on-failure", "delay_ns": 100_000_000, "max_attempts": 2}
    api.ok(
        "POST", "/services/create", service("crash", 1, "sh", "-c", "exit 3", task={"restart_policy": policy})
    )
    until(
        lambda: len([t for t in api.tasks("crash") if t["status"]["state"] == "failed"]) == 3,
        what="3 attempts",
    )
    time.sleep(1.5)  # no fourth attempt comes
    tasks = api.tasks("crash")
    assert len(tasks) == 3
    assert all(t["status"]["exit_code"] == 3 for t in tasks)
    api.ok("DELETE", "/services/crash")


def running_containers(cluster: LocalCluster) -> dict[str, int]:
    """Host name → how many containers run in its agent's runc root."""
    counts: dict[str, int] = {}
    for root in sorted(cluster.config.base_dir.glob("host*/runtime/runc")):
        out = subprocess.run(
            ["runc", "--root", str(root), "list", "-f", "json"], capture_output=True, text=True
        )
        listed = json.loads(out.stdout or "null") or []
        counts[root.parents[1].name] = sum(1 for c in listed if c["status"] == "running")
    return counts


def test_a_task_whose_health_check_fails_is_replaced_in_its_slot(
    api: Client, cluster: LocalCluster, tmp_path: Path
) -> None:
    # The check looks for a file the test puts in a directory bound into every task's container, so the
    # test decides when tasks are healthy.
    flag = tmp_path / "flag"
    flag.mkdir()
    (flag / "ok").touch()
    check = {"test": ["CMD-SHELL", "test -f /flag/ok"], "interval_ns": 300_000_000, "timeout_ns": 2 * SECOND}
    spec = service(
        "checked",
        1,
        task={"restart_policy": {"condition": "any", "delay_ns": 100_000_000}},
    )
    spec["task"]["container"]["healthcheck"] = {**check, "retries": 2}
    spec["task"]["container"]["stop_grace_period_ns"] = SECOND  # sleep, as PID 1, ignores SIGTERM
    spec["task"]["container"]["mounts"] = [{"type": "bind", "source": str(flag), "target": "/flag"}]
    api.ok("POST", "/services/create", spec)
    (first,) = until(lambda: api.running("checked"), what="the first task to be healthy and running")

    (flag / "ok").unlink()

    def failed_unhealthy() -> dict[str, Any] | None:
        old = next(t for t in api.tasks("checked") if t["meta"]["id"] == first["meta"]["id"])
        return old if old["status"]["state"] == "failed" else None

    until(failed_unhealthy, what="the task to fail its health check")
    (flag / "ok").touch()
    (new,) = until(lambda: api.running("checked"), what="a healthy replacement")
    old = failed_unhealthy()
    assert old is not None and old["status"]["err"] == UNHEALTHY_ERROR
    assert old["desired_state"] == "shutdown"
    assert new["meta"]["id"] != first["meta"]["id"] and new["slot"] == first["slot"]
    until(lambda: sum(running_containers(cluster).values()) == 1, what="only the replacement's container")
    api.ok("DELETE", "/services/checked")
    until(lambda: sum(running_containers(cluster).values()) == 0, what="checked's container to go")


def args_of(api: Client, name: str) -> list[list[str]]:
    return sorted(t["spec"]["container"]["args"] for t in api.running(name))


def test_a_failing_update_pauses_and_is_rolled_back(api: Client) -> None:
    good = ["sleep", "100000"]
    bad = ["sh", "-c", "sleep 1; exit 1"]  # RUNNING first, then FAILED within the monitor period
    # The delay keeps the second slot waiting until the first one's new task has failed.
    monitor = {"parallelism": 1, "delay_ns": 4 * SECOND, "monitor_ns": 3 * SECOND, "failure_action": "pause"}
    spec = service("upd", 2, update_config=monitor)
    spec["task"]["container"]["stop_grace_period_ns"] = SECOND  # sleep, as PID 1, ignores SIGTERM
    api.ok("POST", "/services/create", spec)
    until(lambda: len(api.running("upd")) == 2, what="upd running")

    update(api, "upd", image_args=bad)
    svc = until(
        lambda: (s := api.ok("GET", "/services/upd"))["status"]["update_state"] == "paused" and s,
        what="the update to pause",
    )
    assert svc["status"]["update_message"].startswith("update paused due to failure"), svc["status"]
    time.sleep(1.0)  # paused: the other slot is left on the previous spec
    assert args_of(api, "upd").count(good) == 1
    api.ok("POST", "/services/upd/rollback")
    until(
        lambda: api.ok("GET", "/services/upd")["status"]["update_state"] == "rollback_completed",
        what="the rollback to complete",
    )
    until(lambda: args_of(api, "upd") == [good, good], what="both slots back on the previous spec")

    update(api, "upd", image_args=bad, update_config={**monitor, "failure_action": "rollback"})
    svc = until(
        lambda: (s := api.ok("GET", "/services/upd"))["status"]["update_state"] == "rollback_completed" and s,
        what="the failed update to roll itself back",
    )
    assert svc["spec"]["task"]["container"]["args"] == good
    until(lambda: args_of(api, "upd") == [good, good], what="both slots on the previous spec again")
    api.ok("DELETE", "/services/upd")


def test_a_global_service_runs_on_a_host_that_joins_later(api: Client, cluster: LocalCluster) -> None:
    # Last in the module: it leaves the cluster a host bigger.
    spec = {**service("everywhere", 0), "mode": "global"}
    spec["task"]["container"]["stop_grace_period_ns"] = SECOND  # sleep, as PID 1, ignores SIGTERM
    api.ok("POST", "/services/create", spec)
    until(lambda: len(api.running("everywhere")) == 3, what="one task on each of the three hosts")

    name = asyncio.run(cluster.add_host())
    nodes = api.ok("GET", "/nodes")
    (joined,) = [n for n in nodes if n["status"]["description"]["hostname"] == name]
    assert joined["spec"]["role"] == "worker"
    tasks = until(lambda: len(r := api.running("everywhere")) == 4 and r, what="a task on the new host")
    assert len({t["node_id"] for t in tasks}) == 4
    assert any(t["node_id"] == joined["meta"]["id"] for t in tasks)
    assert running_containers(cluster)[name] == 1  # a real container on the new host

    api.ok("DELETE", "/services/everywhere")
    until(lambda: not any(running_containers(cluster).values()), what="its containers to go everywhere")
