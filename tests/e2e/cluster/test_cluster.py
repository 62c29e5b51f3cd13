"""A real cluster on this machine: embedded etcd, a manager and three agents in network-namespace hosts,
running busybox containers under runc (swarmctl/localcluster). One cluster serves the whole module.

What a user does with services is checked end to end here: create, scale, update, roll back, remove;
overlay networking across hosts (by address, by name, through the service's VIP); draining a node; the
restart policy of a failing task.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from swarmctl.localcluster.cluster import LocalCluster, LocalClusterConfig
from tests.e2e.cluster.support import Client, until

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base = tmp_path_factory.mktemp("cluster") / "c"
    prefix = f"se{os.getpid() % 10000}"
    c = LocalCluster(LocalClusterConfig(base_dir=base, hosts=3, prefix=prefix, subnet="10.213.3.0/24"))
    try:
        asyncio.run(c.up())
        yield c
    finally:
        c.down()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(prefix)], "namespaces left behind"


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
