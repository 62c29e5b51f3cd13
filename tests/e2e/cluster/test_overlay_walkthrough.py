"""Overlay networks on real agents: the user guide's walkthrough and what the overlay promises across hosts.

One LocalCluster serves the module (embedded etcd, a manager, three agents running busybox containers
under runc, each host a network namespace on a private underlay). Checked as a user would see it:

* the walkthrough: an overlay with ``--subnet 10.0.9.0/24``, a web server pinned to host1, fetched and
  pinged by name from a task on host2;
* a 3-replica service spread over the three hosts answers on its virtual IP from every host, each replica
  taking connections, and ``tasks.<name>`` lists all three; scaling it down leaves no forwarding or
  neighbour entry of the removed tasks in the network's namespace of any host (``bridge fdb``, ``ip neigh``);
* an agent killed with SIGKILL while the cluster changes, and its entries wiped, is back in business once
  restarted: its containers kept running, and the full peer picture it receives reprograms them;
* two overlays cannot reach each other, not even through the gateway bridge of a shared host;
* an overlay task reaches a server on the underlay (masqueraded behind its host's address), an
  ``--internal`` overlay's does not; and removing everything removes every overlay namespace.

Commands run *inside* a task's container, through ``runc exec`` on the agent's own runc root, as
``docker exec`` would: busybox's wget, ping and nslookup then resolve names through the container's
``/etc/resolv.conf``, i.e. the embedded DNS at 127.0.0.11, exactly as the task's own processes do.
``nsenter --net`` alone is not enough for names: it keeps the caller's mount namespace, so busybox would
read this machine's ``/etc/resolv.conf`` and ask its resolvers. Time limits use busybox ``timeout``:
busybox 1.35's ``wget -T`` crashes (SIGSEGV) whether or not the limit is reached.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from swarmctl.localcluster.cluster import LocalCluster, LocalClusterConfig
from tests.e2e.cluster import support
from tests.e2e.cluster.support import until

pytestmark = [pytest.mark.root, pytest.mark.slow]

PREFIX = f"ow{os.getpid() % 10000}"
UNDERLAY = "10.213.4.0/24"
PAGE = "<h1>Welcome to web, served from host1</h1>"
#: The server the outbound test reaches, on host0's underlay address.
OUTSIDE_PORT = 7077


class Client(support.Client):
    """The manager's API, with the overlay helpers these tests use."""

    def network(self, name: str, **spec: Any) -> dict[str, Any]:
        self.ok("POST", "/networks/create", {"annotations": {"name": name}, "driver": "overlay", **spec})
        # The leader allocates the VXLAN id and subnet just after the network is written.
        net: dict[str, Any] = until(
            lambda: (n := self.ok("GET", f"/networks/{name}"))["status"]["vni"] and n,
            what=f"{name} allocated",
        )
        return net

    def scale(self, name: str, replicas: int) -> None:
        svc = self.ok("GET", f"/services/{name}")
        spec = {**svc["spec"], "replicas": replicas}
        self.ok("POST", f"/services/{name}/update?version={svc['meta']['version']}", spec)

    def vip(self, name: str, network_id: str) -> str:
        vips = self.ok("GET", f"/services/{name}")["status"]["endpoint"]["virtual_ips"]
        return str(vips[network_id]).split("/")[0]


def service(name: str, *args: str, network: str, replicas: int = 1, **task: Any) -> dict[str, Any]:
    """A busybox service on ``network``; SIGKILL stops it at once (busybox as PID 1 ignores SIGTERM)."""
    container = {"image": "busybox", "args": list(args) or ["sleep", "100000"], "stop_signal": "SIGKILL"}
    spec: dict[str, Any] = {
        "annotations": {"name": name},
        "task": {"container": container, "networks": [{"target": network}], **task},
    }
    if replicas:
        spec["replicas"] = replicas
    else:
        spec["mode"] = "global"
    return spec


def on_host(hostname: str) -> dict[str, Any]:
    return {"placement": {"constraints": [f"node.hostname=={hostname}"]}}


def ip_of(task: dict[str, Any]) -> str:
    return str(task["networks"][0]["addresses"][0]).split("/")[0]


def mac_of(ip: str) -> str:
    """An overlay endpoint's MAC: 02:42 and the bytes of its address (as libnetwork derives it)."""
    return "02:42:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


class Lab:
    """The cluster as the tests look at it: hosts, containers, namespaces."""

    def __init__(self, cluster: LocalCluster, api: Client) -> None:
        self.cluster = cluster
        self.api = api
        self.base = cluster.config.base_dir
        assert cluster.underlay is not None
        self.addr = {h.name: h.addr.split("/")[0] for h in cluster.underlay.hosts}

    def hostname(self, task: dict[str, Any]) -> str:
        node = self.api.ok("GET", f"/nodes/{task['node_id']}")
        return str(node["status"]["description"]["hostname"])

    def by_host(self, tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {self.hostname(t): t for t in tasks}

    def runc_root(self, hostname: str) -> str:
        return str(self.base / hostname / "runtime" / "runc")

    def container(self, task: dict[str, Any]) -> tuple[str, str]:
        """The runc root and container id of a task's container (named ``<service>.<slot>.<task id>``)."""
        root = self.runc_root(self.hostname(task))
        listed = subprocess.run(
            ["runc", "--root", root, "list", "--format", "json"], capture_output=True, text=True, check=True
        )
        for c in json.loads(listed.stdout or "[]") or []:
            name = (c.get("annotations") or {}).get("org.shoal.container.name", "")
            if name.endswith("." + task["meta"]["id"]):
                return root, str(c["id"])
        raise AssertionError(f"no container for task {task['meta']['id']} in {root}")

    def exec(self, task: dict[str, Any], *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the task's container (see the module docstring for why not nsenter)."""
        root, cid = self.container(task)
        return subprocess.run(
            ["runc", "--root", root, "exec", cid, *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def fetch(self, task: dict[str, Any], url: str, limit: int = 5) -> str | None:
        """``wget -O- url`` from inside the task's container; the body, or None if it failed."""
        got = self.exec(task, "timeout", str(limit), "wget", "-q", "-O-", url)
        return got.stdout if got.returncode == 0 else None

    def lookup(self, task: dict[str, Any], name: str) -> list[str]:
        """The addresses the container's resolver (the embedded DNS) gives for ``name``."""
        out = self.exec(task, "nslookup", "-type=a", name).stdout
        answers = out.split(f"Name:\t{name}", 1)[1] if f"Name:\t{name}" in out else ""
        return sorted({line.split()[-1] for line in answers.splitlines() if line.startswith("Address")})

    def overlay_ns(self, hostname: str, network_id: str) -> str:
        return f"{PREFIX}-{hostname}-ov-{network_id[:12]}"

    def entries(self, hostname: str, network_id: str) -> tuple[dict[str, str], dict[str, str], set[str]]:
        """In the network's namespace on a host: the VXLAN device's forwarding entries (MAC → host) and
        neighbours (IP → MAC), and every MAC and IP any ``bridge fdb`` / ``ip neigh`` entry there names."""
        ns = self.overlay_ns(hostname, network_id)
        if not os.path.exists(f"/run/netns/{ns}"):
            return {}, {}, set()
        fdb = json.loads(_run("bridge", "-n", ns, "-j", "fdb", "show") or "[]")
        neigh = json.loads(_run("ip", "-n", ns, "-j", "neigh", "show") or "[]")
        forwarding = {e["mac"]: e["dst"] for e in fdb if e.get("dst") and "self" in e.get("flags", [])}
        neighbours = {e["dst"]: e.get("lladdr", "") for e in neigh if "PERMANENT" in e.get("state", [])}
        named = {e["mac"] for e in fdb} | {e["dst"] for e in neigh} | {e.get("lladdr", "") for e in neigh}
        return forwarding, neighbours, named


def _run(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    base = tmp_path_factory.mktemp("overlay") / "c"
    c = LocalCluster(LocalClusterConfig(base_dir=base, hosts=3, prefix=PREFIX, subnet=UNDERLAY))
    try:
        asyncio.run(c.up())
        yield c
    finally:
        c.down()
    # Nothing of the cluster is left: namespaces (hosts, sandboxes, overlays), mounts, processes.
    assert not [n for n in os.listdir("/run/netns") if n.startswith(PREFIX)], "namespaces left behind"
    with open("/proc/self/mounts", encoding="utf-8") as f:
        assert not [line for line in f if str(base) in line], "mounts left behind"
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(base).encode() in cmdline:
            left.append(pid)
    assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> Client:
    return Client(cluster.config.socket)


@pytest.fixture(scope="module")
def lab(cluster: LocalCluster, api: Client) -> Lab:
    return Lab(cluster, api)


@pytest.fixture(scope="module")
def net_a(api: Client) -> dict[str, Any]:
    """An overlay with an automatic subnet and a global ``probe`` service on it (one task per host)."""
    net = api.network("net-a")
    api.ok("POST", "/services/create", service("probe", network="net-a", replicas=0))
    until(lambda: len(api.running("probe")) == 3, what="a probe on every host")
    return net


def test_walkthrough_web_on_host1_fetched_and_pinged_by_name_from_host2(api: Client, lab: Lab) -> None:
    net = api.network("my-net", ipam=[{"subnet": "10.0.9.0/24"}])
    (ipam,) = net["status"]["ipam"]
    assert (ipam["subnet"], ipam["gateway"]) == ("10.0.9.0/24", "10.0.9.1")
    serve = f"mkdir -p /www && echo '{PAGE}' > /www/index.html && exec httpd -f -p 80 -h /www"
    api.ok(
        "POST", "/services/create", service("web", "sh", "-c", serve, network="my-net", **on_host("host1"))
    )
    api.ok("POST", "/services/create", service("client", network="my-net", **on_host("host2")))
    (web,) = until(lambda: api.running("web"), what="web running")
    (client,) = until(lambda: api.running("client"), what="client running")
    assert (lab.hostname(web), lab.hostname(client)) == ("host1", "host2")
    assert ip_of(web).startswith("10.0.9.") and ip_of(client).startswith("10.0.9.")

    page = until(lambda: lab.fetch(client, "http://web/"), timeout=10, what="http://web from host2")
    assert page.strip() == PAGE

    vip = api.vip("web", net["meta"]["id"])
    assert vip.startswith("10.0.9.")
    assert lab.lookup(client, "web") == [vip]
    assert lab.lookup(client, "tasks.web") == [ip_of(web)]
    for name, address in (("web", vip), ("tasks.web", ip_of(web))):
        ping = lab.exec(client, "ping", "-c", "2", "-W", "2", name)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert f"PING {name} ({address})" in ping.stdout
        assert "2 packets received" in ping.stdout

    for name in ("web", "client"):
        api.ok("DELETE", f"/services/{name}")


def test_replicas_on_three_hosts_answer_on_the_vip_and_scale_down_leaves_no_entries(
    api: Client, lab: Lab, net_a: dict[str, Any]
) -> None:
    net_id = net_a["meta"]["id"]
    spec = service("echo", "httpd", "-f", "-p", "80", "-h", "/etc", network="net-a", replicas=3)
    api.ok("POST", "/services/create", spec)
    echoes = until(lambda: len(api.running("echo")) == 3 and api.running("echo"), what="3 echo replicas")
    where = {t["meta"]["id"]: lab.hostname(t) for t in echoes}
    assert sorted(where.values()) == ["host1", "host2", "host3"]
    names = {t["meta"]["id"][:12] for t in echoes}  # what each replica serves as /hostname
    probes = lab.by_host(api.running("probe"))

    for hostname, probe in sorted(probes.items()):
        until(partial(lab.fetch, probe, "http://echo/hostname"), timeout=10, what=f"the VIP from {hostname}")
        # The VIP takes the replicas in turn: a few connections from one container reach all three.
        seen = {(lab.fetch(probe, "http://echo/hostname") or "").strip() for _ in range(6)}
        assert seen == names, f"from {hostname}, the VIP reached {seen}, not every replica"
    probe = probes["host1"]
    assert lab.lookup(probe, "tasks.echo") == sorted(ip_of(t) for t in echoes)
    assert lab.lookup(probe, "echo") == [api.vip("echo", net_id)]

    # Every host holds an entry for each replica elsewhere: its address → MAC, its MAC → its host.
    for hostname in ("host1", "host2", "host3"):
        forwarding, neighbours, _ = lab.entries(hostname, net_id)
        for t in echoes:
            if where[t["meta"]["id"]] != hostname:
                ip = ip_of(t)
                assert neighbours.get(ip) == mac_of(ip), (hostname, ip, neighbours)
                assert forwarding.get(mac_of(ip)) == lab.addr[where[t["meta"]["id"]]], (hostname, forwarding)

    api.scale("echo", 1)
    started = time.monotonic()
    (kept,) = until(lambda: len(api.running("echo")) == 1 and api.running("echo"), what="scaled to 1")
    gone = [t for t in echoes if t["meta"]["id"] != kept["meta"]["id"]]
    stale = {ip_of(t) for t in gone} | {mac_of(ip_of(t)) for t in gone}

    def clean_everywhere() -> bool:
        return all(not stale & lab.entries(h, net_id)[2] for h in ("host1", "host2", "host3"))

    until(clean_everywhere, timeout=10, what="the removed replicas' entries to go from every host")
    print(f"entries of the removed replicas gone everywhere {time.monotonic() - started:.2f}s after scale")
    for hostname in ("host1", "host2", "host3"):
        forwarding, neighbours, _ = lab.entries(hostname, net_id)
        if where[kept["meta"]["id"]] != hostname:
            assert neighbours.get(ip_of(kept)) == mac_of(ip_of(kept)), (hostname, neighbours)
        assert lab.fetch(probes[hostname], "http://echo/hostname") == kept["meta"]["id"][:12] + "\n"
    assert lab.lookup(probe, "tasks.echo") == [ip_of(kept)]
    api.ok("DELETE", "/services/echo")


def test_killed_agent_restarted_restores_reachability(
    api: Client, lab: Lab, cluster: LocalCluster, net_a: dict[str, Any]
) -> None:
    net_id = net_a["meta"]["id"]
    probes = lab.by_host(api.running("probe"))
    mine, other = probes["host1"], probes["host2"]
    assert lab.exec(mine, "ping", "-c", "1", "-W", "2", ip_of(other)).returncode == 0

    cluster.stop_agent("host1")
    try:
        # The embedded DNS lived in the agent: names no longer resolve in host1's containers.
        assert lab.lookup(mine, "tasks.probe") == []
        # While it is down, host1's entries are lost, and a new service starts on host2.
        ns = lab.overlay_ns("host1", net_id)
        forwarding, neighbours, _ = lab.entries("host1", net_id)
        vx = next(
            e["ifname"] for e in json.loads(_run("ip", "-n", ns, "-j", "link")) if e["ifname"][:3] == "vx-"
        )
        for mac in forwarding:
            _run("bridge", "-n", ns, "fdb", "del", mac, "dev", vx, "self")
        for ip in neighbours:
            _run("ip", "-n", ns, "neigh", "del", ip, "dev", vx)
        assert lab.exec(mine, "ping", "-c", "1", "-W", "1", ip_of(other)).returncode != 0
        spec = service("late", "httpd", "-f", "-p", "80", "-h", "/etc", network="net-a", **on_host("host2"))
        api.ok("POST", "/services/create", spec)
        (late,) = until(lambda: api.running("late"), what="late running on host2")
    finally:
        cluster.start_agent("host1")

    page = until(
        lambda: lab.fetch(mine, "http://late/hostname"), timeout=30, what="host1 to reach late by name"
    )
    assert page.strip() == late["meta"]["id"][:12]
    assert lab.exec(mine, "ping", "-c", "1", "-W", "2", ip_of(other)).returncode == 0
    forwarding, neighbours, _ = lab.entries("host1", net_id)
    assert forwarding.get(mac_of(ip_of(late))) == lab.addr["host2"]
    assert neighbours.get(ip_of(other)) == mac_of(ip_of(other))
    # The restarted agent adopted its running task rather than replacing it.
    assert lab.by_host(api.running("probe"))["host1"]["meta"]["id"] == mine["meta"]["id"]
    api.ok("DELETE", "/services/late")


def test_two_overlays_are_isolated(api: Client, lab: Lab, net_a: dict[str, Any]) -> None:
    net_b = api.network("net-b")
    assert net_b["status"]["vni"] != net_a["status"]["vni"]
    api.ok(
        "POST",
        "/services/create",
        service("bside", "httpd", "-f", "-p", "80", "-h", "/etc", network="net-b", replicas=0),
    )
    bsides = lab.by_host(until(lambda: len(api.running("bside")) == 3 and api.running("bside"), what="bside"))
    probe = lab.by_host(api.running("probe"))["host1"]
    # On its own overlay, across hosts, bside answers (so what follows fails for the right reason).
    page = until(lambda: lab.fetch(bsides["host1"], f"http://{ip_of(bsides['host2'])}/hostname"), timeout=10)
    assert page.strip() == bsides["host2"]["meta"]["id"][:12]

    # From net-a: neither bside's overlay addresses (same host, other host) nor its gateway-bridge address
    # on the shared host answer, and its name is unknown.
    gateway_ip = next(
        line.split()[3].split("/")[0]
        for line in lab.exec(bsides["host1"], "ip", "-4", "-o", "addr").stdout.splitlines()
        if line.split()[1] not in ("lo", "eth0")
    )
    targets = [ip_of(bsides["host1"]), ip_of(bsides["host2"]), gateway_ip]
    # In parallel: a dropped connection takes the whole limit.
    script = " ".join(
        f"(timeout 2 wget -q -O- http://{ip}/ >/dev/null 2>&1; echo {ip} $?) &" for ip in targets
    )
    results = dict(line.split() for line in lab.exec(probe, "sh", "-c", script + " wait").stdout.splitlines())
    assert sorted(results) == sorted(targets)
    assert all(code != "0" for code in results.values()), f"net-a reached net-b: {results}"
    assert lab.lookup(probe, "bside") == []
    assert lab.lookup(bsides["host2"], "tasks.bside") == sorted(ip_of(t) for t in bsides.values())
    api.ok("DELETE", "/services/bside")


def test_outbound_traffic_reaches_the_underlay_but_not_from_an_internal_overlay(
    api: Client, lab: Lab, cluster: LocalCluster, net_a: dict[str, Any]
) -> None:
    assert cluster.underlay is not None
    host0 = cluster.underlay.hosts[0]
    server = (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(({lab.addr['host0']!r}, {OUTSIDE_PORT})); s.listen()\n"
        "while True:\n"
        "    c, peer = s.accept(); c.sendall(peer[0].encode() + b'\\n'); c.close()\n"
    )
    proc = cluster.underlay.spawn(
        host0, ["python3", "-c", server], cluster.config.base_dir / "logs" / "outside.log"
    )
    try:
        probe = lab.by_host(api.running("probe"))["host2"]

        def ask(task: dict[str, Any]) -> subprocess.CompletedProcess[str]:
            return lab.exec(task, "timeout", "3", "nc", lab.addr["host0"], str(OUTSIDE_PORT))

        listening = ["nsenter", f"--net=/run/netns/{host0.netns}", "ss", "-Htln", "src", lab.addr["host0"]]
        until(
            lambda: f":{OUTSIDE_PORT}" in _run(*listening), timeout=10, what="the underlay server to listen"
        )
        answers = [ask(probe) for _ in range(3)]
        seen = answers[-1].stdout.strip()
        # It came from host2's own address: the task's traffic is masqueraded at its host.
        assert seen == lab.addr["host2"], answers
        assert all(a.stdout.strip() == seen for a in answers), answers

        api.network("vault", internal=True)
        api.ok("POST", "/services/create", service("inside", network="vault", **on_host("host2")))
        (inside,) = until(lambda: api.running("inside"), what="a task on the internal overlay")
        assert "default" not in lab.exec(inside, "ip", "route").stdout
        refused = ask(inside)
        assert refused.returncode != 0 and not refused.stdout.strip(), refused
        api.ok("DELETE", "/services/inside")
    finally:
        proc.kill()
        proc.wait()


def test_removing_everything_removes_every_overlay_namespace(api: Client, lab: Lab) -> None:
    for svc in api.ok("GET", "/services"):
        api.ok("DELETE", f"/services/{svc['meta']['id']}")

    def overlays() -> list[str]:
        return [n for n in os.listdir("/run/netns") if n.startswith(f"{PREFIX}-host") and "-ov-" in n]

    def containers() -> list[str]:
        out = []
        for hostname in ("host1", "host2", "host3"):
            listed = subprocess.run(
                ["runc", "--root", lab.runc_root(hostname), "list", "-q"], capture_output=True, text=True
            )
            out += listed.stdout.split()
        return out

    until(lambda: not containers(), what="every container to go")
    until(lambda: not overlays(), timeout=10, what="every overlay namespace to go")
    for net in api.ok("GET", "/networks"):
        api.ok("DELETE", f"/networks/{net['meta']['id']}")
