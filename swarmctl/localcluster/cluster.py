"""A whole cluster on this machine: an embedded store, a manager and N agent hosts in network namespaces.

``host0`` runs the store (on its loopback), the manager (on its underlay address, port 2377) and a registry
(docker-registry, port 5000, seeded with busybox; agents may use it over plain HTTP); ``host1`` …
``hostN`` each run an agent with the real runc executor. Users and tests reach the manager through its unix
socket, which crosses namespaces, so no cluster address ever exists outside the cluster's namespaces. Each
agent's image store is seeded with the local busybox image, unpacked as ``docker load`` leaves an image, so
services run with no registry at all and their first containers do not wait for the unpacking.
Published ports answer on this machine's loopback address (``forward_addr``) through a forwarder process
(swarmctl/localcluster/forward.py) that carries each connection into ``host1``'s namespace.

The store is a single-member etcd or, with ``store="zookeeper"``, a standalone ZooKeeper
(swarmctl/localcluster/store.py). :meth:`LocalCluster.add_host` joins one more agent host to a running
cluster, as a machine added later.

:meth:`LocalCluster.down` removes everything :meth:`up` made and nothing else: the processes it started
(by PID), the containers of its agents (through each agent's private runc root), their mounts, the
namespaces (which takes the links and nftables tables inside them) and its state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from agent.network.nsutil import NETNS_RUN_DIR, arun_in_netns, remove_netns
from agent.runtime.containers import cgroups
from agent.runtime.images.baseimages import make_busybox
from agent.runtime.images.store import ImageStore
from agent.runtime.local import LocalRuntimeOptions
from agent.runtime.snapshots import open_snapshotter
from swarmctl.localcluster.hosts import HostInfo, Underlay
from swarmctl.localcluster.store import LocalStore

MANAGER_PORT = 2377
#: The cluster's registry listens on host0's underlay address at this port (docker-registry's default).
REGISTRY_PORT = 5000
#: docker-registry from Debian's package.
REGISTRY_BINARY = "/usr/bin/docker-registry"


class LocalClusterError(RuntimeError):
    """The local cluster could not be brought up; the message names the step and the log to read."""


@dataclass
class LocalClusterConfig:
    """Where and how big."""

    base_dir: Path
    hosts: int = 3
    prefix: str = "shoal"
    subnet: str = "10.213.0.0/24"
    #: Seconds to wait for the manager and the agents to come up.
    timeout: float = 60.0
    #: Where the services' published ports answer on this machine (empty: nowhere); ``cluster up`` says
    #: ``127.0.0.1``.
    forward_addr: str = ""
    #: Run a registry on host0 holding the base images (busybox), which every agent may use over HTTP.
    registry: bool = True
    #: The KV store host0 runs for the manager: "etcd" or "zookeeper".
    store: str = "etcd"

    @property
    def store_url(self) -> str:
        """The manager's ``--store`` (it answers inside host0's namespace only)."""
        return LocalStore(self.store, self.base_dir).url

    @property
    def socket(self) -> Path:
        return self.base_dir / "manager.sock"

    @property
    def state_file(self) -> Path:
        return self.base_dir / "underlay.json"


class LocalCluster:
    """``up()`` / ``down()`` / ``status()`` of one local cluster."""

    def __init__(self, config: LocalClusterConfig) -> None:
        self.config = config
        self.underlay: Underlay | None = None
        #: Each agent's command line and process, by host name (for :meth:`stop_agent` / :meth:`start_agent`).
        self._agent_argv: dict[str, list[str]] = {}
        self._agents: dict[str, subprocess.Popen[bytes]] = {}

    # --- up ------------------------------------------------------------------------------------------------
    async def up(self) -> None:
        """Bring the cluster up; a cluster that is already up is left as it is."""
        cfg = self.config
        if cfg.state_file.exists():
            if await self._manager_answers():
                return
            self.down()  # a half-dead earlier cluster: start over cleanly
        cfg.base_dir.mkdir(parents=True, exist_ok=True)
        self.underlay = Underlay(cfg.state_file, cfg.prefix, cfg.subnet)
        try:
            hosts = await self.underlay.create(cfg.hosts + 1)
            await self._start_store_and_manager(hosts[0])
            token = await self._worker_token()
            manager_addr = f"{_ip(hosts[0])}:{MANAGER_PORT}"
            registry = self._start_registry(hosts[0]) if cfg.registry else ""
            for host in hosts[1:]:
                self._start_agent(host, manager_addr, token, registry)
            await self._wait_ready(cfg.hosts)
            if registry:
                await self._seed_registry(registry, hosts[1].name)
            if cfg.forward_addr:
                self._start_forwarder(hosts[1])
        except BaseException:
            self.down(keep_logs=True)  # the error names a log to read
            raise

    async def _start_store_and_manager(self, host: HostInfo) -> None:
        assert self.underlay is not None
        base = self.config.base_dir
        store = LocalStore(self.config.store, base)
        log = base / "logs" / store.log_name
        proc = self.underlay.spawn(host, store.argv(), log, stop_last=True)  # the manager's shutdown uses it
        deadline = time.monotonic() + self.config.timeout
        while not await arun_in_netns(host.netns, store.answers):
            if proc.poll() is not None:
                raise LocalClusterError(f"{store.kind} exited while starting; see {log}")
            if time.monotonic() > deadline:
                raise LocalClusterError(f"{store.kind} did not answer; see {log}")
            await asyncio.sleep(0.1)
        self.underlay.spawn(
            host,
            [sys.executable, "-m", "manager.main", "--store", store.url,
             "--listen-addr", f"{_ip(host)}:{MANAGER_PORT}", "--socket", str(self.config.socket),
             "--state-dir", str(base / "manager")],
            base / "logs" / "manager.log",
        )  # fmt: skip
        deadline = time.monotonic() + self.config.timeout
        while not await self._manager_answers():
            if time.monotonic() > deadline:
                raise LocalClusterError(f"the manager did not come up; see {base / 'logs' / 'manager.log'}")
            await asyncio.sleep(0.2)

    def _start_registry(self, host: HostInfo) -> str:
        """docker-registry on ``host``'s underlay address; its address (HOST:PORT)."""
        assert self.underlay is not None
        base = self.config.base_dir / "registry"
        base.mkdir(parents=True, exist_ok=True)
        addr = f"{_ip(host)}:{REGISTRY_PORT}"
        config = base / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {base / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {addr}\n  secret: {os.urandom(16).hex()}\n"
        )
        self.underlay.spawn(
            host, [REGISTRY_BINARY, "serve", str(config)], self.config.base_dir / "logs" / "registry.log"
        )
        return addr

    async def _seed_registry(self, registry: str, host: str) -> None:
        """Push the base images from ``host``'s engine into the registry (through the manager's engine
        calls), so ``REGISTRY/busybox`` can be pulled anywhere."""
        connector = aiohttp.UnixConnector(path=str(self.config.socket))
        engine = f"http://manager/nodes/{host}/engine"
        deadline = time.monotonic() + self.config.timeout
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.post(f"{engine}/images/busybox/tag", params={"repo": f"{registry}/busybox"}) as r:
                if r.status >= 300:
                    raise LocalClusterError(f"tagging busybox for the registry failed: {await r.text()}")
            while True:
                async with http.post(
                    f"{engine}/images/{registry}/busybox/push", params={"tag": "latest"}
                ) as r:
                    text = await r.text()
                if r.status < 300 and '"error"' not in text:
                    return
                if time.monotonic() > deadline:
                    raise LocalClusterError(
                        f"pushing busybox to the registry at {registry} failed: {text.strip()[-300:]}; "
                        f"see {self.config.base_dir / 'logs' / 'registry.log'}"
                    )
                await asyncio.sleep(0.3)  # the registry may still be starting

    def registry_addr(self) -> str:
        """Where the cluster's registry listens (HOST:PORT), or "" when it has none."""
        if not self.config.registry or not self.config.state_file.exists():
            return ""
        hosts = Underlay.load(self.config.state_file).hosts
        return f"{_ip(hosts[0])}:{REGISTRY_PORT}" if hosts else ""

    def _start_agent(self, host: HostInfo, manager_addr: str, token: str, registry: str = "") -> None:
        assert self.underlay is not None
        state = self.config.base_dir / host.name
        images = ImageStore(state / "runtime" / "images")
        image = make_busybox(images)
        snapshots = state / "runtime" / "snapshots"  # where the agent's LocalRuntime keeps them
        open_snapshotter(snapshots, images, LocalRuntimeOptions().storage_driver).unpack_image(image.id)
        self._agent_argv[host.name] = [
            sys.executable, "-m", "agent.main", "--manager", manager_addr, "--token", token,
            "--state-dir", str(state), "--executor", "runc", "--hostname", host.name,
            "--advertise-addr", _ip(host), "--netns-prefix", f"{self.config.prefix}-{host.name}-",
        ]  # fmt: skip
        if registry:
            self._agent_argv[host.name] += ["--insecure-registry", registry]
        self.start_agent(host.name)

    def _start_forwarder(self, host: HostInfo) -> None:
        assert self.underlay is not None
        self.underlay.spawn(
            None,
            [sys.executable, "-m", "swarmctl.localcluster.forward", "--socket", str(self.config.socket),
             "--netns", host.netns, "--target", _ip(host), "--listen", self.config.forward_addr],
            self.config.base_dir / "logs" / "forward.log",
        )  # fmt: skip

    async def add_host(self) -> str:
        """One more agent host on the running cluster, joined with the worker token; its name, once its node
        is ready. :meth:`down` removes it with the others."""
        if self.underlay is None:
            self.underlay = Underlay.load(self.config.state_file)
        host = await self.underlay.add_host()
        manager_addr = f"{_ip(self.underlay.hosts[0])}:{MANAGER_PORT}"
        self._start_agent(host, manager_addr, await self._worker_token(), self.registry_addr())
        deadline = time.monotonic() + self.config.timeout
        while not await self._node_ready(host.name):
            if time.monotonic() > deadline:
                log = self.config.base_dir / "logs" / f"{host.name}.log"
                raise LocalClusterError(f"{host.name} did not become ready; see {log}")
            await asyncio.sleep(0.2)
        return host.name

    async def _node_ready(self, hostname: str) -> bool:
        nodes = await self._get("/nodes")
        assert isinstance(nodes, list)
        return any(
            n["status"]["description"]["hostname"] == hostname and n["status"]["state"] == "ready"
            for n in nodes
        )

    def _host(self, name: str) -> HostInfo:
        assert self.underlay is not None, "the cluster is not up"
        return next(h for h in self.underlay.hosts if h.name == name)

    def stop_agent(self, host: str) -> None:
        """Kill ``host``'s agent with SIGKILL, as a crash would: its containers and networks stay."""
        proc = self._agents.pop(host)
        proc.kill()
        proc.wait()

    def start_agent(self, host: str) -> None:
        """Start ``host``'s agent with the arguments it was first started with (after :meth:`stop_agent`)."""
        assert self.underlay is not None, "the cluster is not up"
        self._agents[host] = self.underlay.spawn(
            self._host(host), self._agent_argv[host], self.config.base_dir / "logs" / f"{host}.log"
        )

    async def _get(self, path: str) -> object:
        connector = aiohttp.UnixConnector(path=str(self.config.socket))
        async with aiohttp.ClientSession(connector=connector) as http, http.get(f"http://manager{path}") as r:
            r.raise_for_status()
            return await r.json()

    async def _manager_answers(self) -> bool:
        if not self.config.socket.exists():
            return False
        connector = aiohttp.UnixConnector(path=str(self.config.socket))
        try:
            async with (
                aiohttp.ClientSession(connector=connector) as http,
                http.get("http://manager/_ping") as r,
            ):
                return r.status == 200
        except (aiohttp.ClientError, OSError):
            return False

    async def _worker_token(self) -> str:
        cluster = await self._get("/swarm")
        assert isinstance(cluster, dict)
        token: str = cluster["status"]["join_tokens"]["worker"]
        return token

    async def _wait_ready(self, count: int) -> None:
        deadline = time.monotonic() + self.config.timeout
        while True:
            nodes = await self._get("/nodes")
            assert isinstance(nodes, list)
            if sum(1 for n in nodes if n["status"]["state"] == "ready") >= count:
                return
            if time.monotonic() > deadline:
                raise LocalClusterError(
                    f"only some of {count} agents became ready; see {self.config.base_dir / 'logs'}"
                )
            await asyncio.sleep(0.2)

    # --- down ----------------------------------------------------------------------------------------------
    def down(self, *, keep_logs: bool = False) -> None:
        """Remove everything ``up`` made (safe to call when nothing is up); ``keep_logs`` keeps its logs."""
        cfg = self.config
        underlay = self.underlay
        if underlay is None and cfg.state_file.exists():
            underlay = Underlay.load(cfg.state_file)
        # The prefix the cluster was made with (``swarmctl cluster down`` knows only the directory).
        prefix = underlay.state.prefix if underlay is not None else cfg.prefix
        if underlay is not None:
            underlay.destroy()
        # Namespaces the agents named (containers' sandboxes, overlay networks) carry the cluster's prefix.
        for name in sorted(os.listdir(NETNS_RUN_DIR)) if NETNS_RUN_DIR.exists() else []:
            if name.startswith(f"{prefix}-host"):
                remove_netns(name)
        for host_dir in sorted(cfg.base_dir.glob("host*")):
            _remove_containers(host_dir / "runtime")
        _unmount_below(cfg.base_dir)
        cgroups.remove_parent_if_empty(LocalRuntimeOptions().cgroup_parent)
        for entry in cfg.base_dir.iterdir() if cfg.base_dir.exists() else []:
            if keep_logs and entry.name == "logs":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if not keep_logs:
            shutil.rmtree(cfg.base_dir, ignore_errors=True)
        self.underlay = None
        self._agents.clear()

    async def status(self) -> dict[str, object]:
        """What runs: the hosts and, if the manager answers, its nodes."""
        up = self.config.state_file.exists() and await self._manager_answers()
        hosts = Underlay.load(self.config.state_file).hosts if self.config.state_file.exists() else []
        nodes = await self._get("/nodes") if up else []
        return {"up": up, "hosts": [h.name for h in hosts], "nodes": nodes, "registry": self.registry_addr()}


def _ip(host: HostInfo) -> str:
    return host.addr.split("/")[0]


def _remove_containers(runtime: Path) -> None:
    """Kill and delete the containers of one agent (its runc root is private to it)."""
    root = runtime / "runc"
    if not root.exists() or shutil.which("runc") is None:
        return
    listed = subprocess.run(
        ["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True, check=False
    )
    for cid in listed.stdout.split():
        subprocess.run(["runc", "--root", str(root), "kill", cid, "KILL"], capture_output=True, check=False)
        for _ in range(50):
            done = subprocess.run(
                ["runc", "--root", str(root), "delete", "--force", cid], capture_output=True, check=False
            )
            if done.returncode == 0:
                break
            time.sleep(0.1)


def _unmount_below(base: Path) -> None:
    """Unmount every mount under ``base`` (container root file systems, secrets), deepest first."""
    prefix = str(base.resolve()) + "/"
    with open("/proc/self/mounts", encoding="utf-8") as f:
        targets = [line.split()[1] for line in f]
    for target in sorted((t for t in targets if t.startswith(prefix)), key=len, reverse=True):
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
