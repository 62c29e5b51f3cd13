"""Published service ports on a local cluster of three namespace hosts (real agents, runc, nftables).

Ingress mode (the routing mesh): the port answers on every host's address, whichever hosts run the tasks,
and connections are spread over the service's tasks; scaling changes who answers. Host mode: the port
answers only on the hosts running a task. Traffic stays inside the cluster's namespaces.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from swarmctl.localcluster.cluster import LocalCluster, LocalClusterConfig
from tests.e2e.cluster.support import Client, fetch, until

pytestmark = [pytest.mark.root, pytest.mark.slow]

HTTPD = ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base = tmp_path_factory.mktemp("publish") / "c"
    prefix = f"pb{os.getpid() % 10000}"
    c = LocalCluster(LocalClusterConfig(base_dir=base, hosts=3, prefix=prefix, subnet="10.213.5.0/24"))
    try:
        asyncio.run(c.up())
        yield c
    finally:
        c.down()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(prefix)], "namespaces left behind"


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> Client:
    return Client(cluster.config.socket)


def hosts(cluster: LocalCluster) -> list[tuple[str, str]]:
    """(namespace, underlay address) of every agent host."""
    assert cluster.underlay is not None
    return [(h.netns, h.addr.split("/")[0]) for h in cluster.underlay.hosts[1:]]


def web(name: str, replicas: int, port: dict[str, Any]) -> dict[str, Any]:
    return {
        "annotations": {"name": name},
        "replicas": replicas,
        "task": {"container": {"image": "busybox", "args": HTTPD}},
        "endpoint": {"ports": [port]},
    }


def names(tasks: list[dict[str, Any]]) -> set[str]:
    """The hostnames the tasks' pages carry (a task's container is named after its id)."""
    return {t["meta"]["id"][:12] for t in tasks}


def test_ingress_port_answers_on_every_host_from_every_task(api: Client, cluster: LocalCluster) -> None:
    api.ok("POST", "/services/create", web("mesh", 2, {"target_port": 80, "published_port": 8080}))
    tasks = until(lambda: len(api.running("mesh")) == 2 and api.running("mesh"), what="2 running tasks")
    expected = names(tasks)
    for netns, addr in hosts(cluster):
        # Each host balances on its own; four connections in turn reach both tasks.
        got = until(
            lambda netns=netns, addr=addr: (
                (answers := fetch(netns, *[f"http://{addr}:8080/"] * 4))
                and not any(a.startswith("error") for a in answers)
                and answers
            ),
            timeout=30,
            what=f"the published port on {addr}",
        )
        assert set(got) == expected, f"{addr} answered {got}"
    # The host reaches its own published port on the loopback address too.
    netns, _ = hosts(cluster)[0]
    assert set(fetch(netns, *["http://127.0.0.1:8080/"] * 4)) == expected

    # An agent killed and started again builds its side of the mesh again (a host with no task of the
    # service: its ingress network's namespace went with the restart).
    busy = {api.ok("GET", f"/nodes/{t['node_id']}")["status"]["description"]["hostname"] for t in tasks}
    idle = next(h for h in cluster.underlay.hosts[1:] if h.name not in busy)  # type: ignore[union-attr]
    log = cluster.config.base_dir / "logs" / f"{idle.name}.log"
    joined = log.read_text().count("joined the routing mesh")
    cluster.stop_agent(idle.name)
    cluster.start_agent(idle.name)
    until(lambda: log.read_text().count("joined the routing mesh") > joined, what="the mesh to be rebuilt")
    idle_addr = idle.addr.split("/")[0]
    until(
        lambda: set(fetch(idle.netns, *[f"http://{idle_addr}:8080/"] * 4)) == expected,
        timeout=30,
        what=f"{idle.name} to answer again after its agent restarted",
    )

    svc = api.ok("GET", "/services/mesh")
    spec = svc["spec"]
    spec["replicas"] = 1
    api.ok("POST", f"/services/mesh/update?version={svc['meta']['version']}", spec)
    until(lambda: len(api.running("mesh")) == 1, what="scale to 1")
    (left,) = names(api.running("mesh"))
    for netns, addr in hosts(cluster):
        until(
            lambda netns=netns, addr=addr: set(fetch(netns, *[f"http://{addr}:8080/"] * 3)) == {left},
            timeout=15,
            what=f"only the remaining task to answer on {addr}",
        )
    api.ok("DELETE", "/services/mesh")
    netns, addr = hosts(cluster)[1]
    until(
        lambda: all(a.startswith("error") for a in fetch(netns, f"http://{addr}:8080/")),
        timeout=30,
        what="the port to close with its service",
    )


def test_host_port_answers_only_where_a_task_runs(api: Client, cluster: LocalCluster) -> None:
    port = {"target_port": 80, "published_port": 8081, "publish_mode": "host"}
    api.ok("POST", "/services/create", web("pinned", 1, port))
    (task,) = until(lambda: api.running("pinned"), what="the host-mode task")
    node = api.ok("GET", f"/nodes/{task['node_id']}")
    where = node["status"]["description"]["hostname"]
    assert cluster.underlay is not None
    for host in cluster.underlay.hosts[1:]:
        addr = host.addr.split("/")[0]
        (answer,) = fetch(host.netns, f"http://{addr}:8081/")
        if host.name == where:
            assert answer == task["meta"]["id"][:12]
        else:
            assert answer.startswith("error") and "refused" in answer, (host.name, answer)
    api.ok("DELETE", "/services/pinned")
