"""Processes of a cluster on loopback that a test (or ``bench.failover``) can kill: managers, simulated
agents, and a view of the store of the test's own.

- :class:`ManagerProcess`: one ``python -m manager.main`` with its state dir (holding the cluster's shared
  secrets key, as a deployment copies it to every manager), a TLS port for agents and a unix socket for the
  test's API calls.
- :class:`SimHost`: one ``python -m tests.e2e.resilience.simhost`` process hosting many simulated nodes,
  which writes what its executors actually run to a report file — the agents' side of every check.
- :class:`Plane`: the managers, the sim hosts and an :class:`~manager.store.ObjectStore` over the same
  store prefix (the observer), stopped together by :meth:`Plane.close` — every process by its PID, a
  stopped one continued first so that it can end.

Nothing here asserts: waiting too long raises :class:`TimeoutError` naming what was awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from api import Cluster, Service, Task, TaskState, to_plain
from api.objects import SECOND, Annotations, ContainerSpec, ServiceSpec, TaskSpec
from kvstore_adapters import KVStore, open_store
from manager.ca import write_private
from manager.daemon import LEADER_KEY
from manager.errors import Conflict
from manager.pki import CLUSTER_ID
from manager.secretbox import SecretBox
from manager.store import ObjectStore
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[3]


async def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(every)


class Process:
    """A child process with a log file, stopped by its PID."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False

    def spawn(self, argv: list[str]) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                start_new_session=True,
            )
        self.stopped = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` (SIGSTOP / SIGCONT freeze and thaw it, as a link cut and restored)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)
            if sig is signal.SIGSTOP:
                self.stopped = True
            elif sig is signal.SIGCONT:
                self.stopped = False

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing of it runs any more when this returns."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)
        self.stopped = False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (after SIGCONT if it is frozen), then SIGKILL if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if self.stopped:
                self.signal(signal.SIGCONT)
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.stopped = False

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class ManagerProcess(Process):
    """``python -m manager.main`` on a loopback TLS port and a unix socket."""

    def __init__(
        self, name: str, store_url: str, base: Path, secrets_key: bytes, election_ttl: float
    ) -> None:
        super().__init__(name, base / f"{name}.log")
        self.store_url = store_url
        self.state_dir = base / name
        self.socket = base / f"{name}.sock"
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.election_ttl = election_ttl
        write_private(self.state_dir / "secrets.key", secrets_key)

    def start(self) -> None:
        self.spawn(
            [
                sys.executable, "-m", "manager.main",
                "--store", self.store_url,
                "--listen-addr", self.addr,
                "--socket", str(self.socket),
                "--state-dir", str(self.state_dir),
                "--election-ttl", str(self.election_ttl),
                "--manager-id", self.name,
            ]
        )  # fmt: skip

    async def call(self, method: str, path: str, body: Any = None, timeout: float = 15.0) -> tuple[int, Any]:
        """One API request over the unix socket: (status, decoded JSON or text)."""
        connector = aiohttp.UnixConnector(path=str(self.socket))
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.request(method, f"http://manager{path}", json=body) as r,
        ):
            text = await r.text()
            return r.status, (json.loads(text) if text[:1] in ("{", "[") else text)

    async def answers(self) -> bool:
        try:
            status, _ = await self.call("GET", "/_ping", timeout=2)
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        return status == 200


class SimHost(Process):
    """One process hosting ``count`` simulated nodes named ``<hostname>-1`` … ``<hostname>-N``."""

    def __init__(self, hostname: str, base: Path, count: int, start_delay: float = 0.05) -> None:
        super().__init__(hostname, base / f"{hostname}.log")
        self.hostname = hostname
        self.count = count
        self.start_delay = start_delay
        self.state_dir = base / hostname
        self.report_file = base / f"{hostname}.json"

    def start(self, managers: list[str], token: str) -> None:
        """Start (or restart: the nodes keep their identities from the state dir)."""
        self.report_file.unlink(missing_ok=True)
        self.spawn(
            [
                sys.executable, "-m", "tests.e2e.resilience.simhost",
                "--manager", ",".join(managers),
                "--token", token,
                "--state-dir", str(self.state_dir),
                "--hostname", self.hostname,
                "--count", str(self.count),
                "--start-delay", str(self.start_delay),
                "--report", str(self.report_file),
            ]
        )  # fmt: skip

    def report(self) -> dict[str, Any]:
        """The last report: ``{"nodes": {hostname: {"node_id", "connected", "running": [task ids]}}}``."""
        try:
            data: dict[str, Any] = json.loads(self.report_file.read_text())
            return data
        except (OSError, ValueError):
            return {"nodes": {}}

    def tasks(self) -> dict[str, set[str]]:
        """node id → the task ids its executor runs, as last reported."""
        return {n["node_id"]: set(n["running"]) for n in self.report()["nodes"].values() if n["node_id"]}

    def connected(self) -> int:
        """How many of its nodes have a session now."""
        return sum(1 for n in self.report()["nodes"].values() if n["connected"])


def service_spec(name: str, replicas: int, **container: Any) -> dict[str, Any]:
    """A replicated service's spec in the API's JSON."""
    spec = ServiceSpec(
        annotations=Annotations(name=name),
        replicas=replicas,
        task=TaskSpec(container=ContainerSpec(image="busybox", **container)),
    )
    plain: dict[str, Any] = to_plain(spec)
    return plain


class Plane:
    """Managers, sim hosts and the observer of one test, on one store prefix. ``await close()`` at the end."""

    def __init__(self, store_url: str, base: Path, election_ttl: float = 2.0) -> None:
        self.store_url = store_url
        self.base = base
        self.election_ttl = election_ttl
        self.secrets_key = os.urandom(32)
        self.managers: list[ManagerProcess] = []
        self.hosts: list[SimHost] = []
        self.kv: KVStore | None = None
        self.store: ObjectStore | None = None

    # --- starting ------------------------------------------------------------------------------------------
    async def start_managers(self, count: int) -> None:
        """Start ``count`` managers; the first creates the cluster before the others join it."""
        for i in range(count):
            m = ManagerProcess(
                f"m{len(self.managers) + 1}", self.store_url, self.base, self.secrets_key, self.election_ttl
            )
            self.managers.append(m)
            m.start()
            if i == 0:
                await self._wait_answers(m)
        await asyncio.gather(*(self._wait_answers(m) for m in self.managers))
        if self.store is None:
            self.kv = await open_store(self.store_url)
            self.store = ObjectStore(self.kv, SecretBox(self.secrets_key))
            await self.store.start()
        await wait_until(self.leader, 30, "a leader")

    async def _wait_answers(self, m: ManagerProcess) -> None:
        async def check() -> bool:
            if not m.running:
                raise RuntimeError(f"manager {m.name} exited:\n{m.log_tail()}")
            return await m.answers()

        await wait_until(check, 30, f"manager {m.name} to answer", every=0.1)

    def restart_manager(self, m: ManagerProcess) -> None:
        """Start a killed manager again with the same id, ports and state dir."""
        m.start()

    async def set_heartbeat(self, seconds: float) -> None:
        """The cluster's heartbeat period (agents learn it when they register; grace = 3 periods)."""
        store = self.observer
        await wait_until(lambda: store.get(Cluster, CLUSTER_ID), 10, "the cluster object")
        for _ in range(5):
            cluster = await store.fetch(Cluster, CLUSTER_ID)
            assert cluster is not None
            dispatcher = replace(cluster.spec.dispatcher, heartbeat_period_ns=int(seconds * SECOND))
            try:
                await store.update(replace(cluster, spec=replace(cluster.spec, dispatcher=dispatcher)))
                return
            except Conflict:
                continue  # a manager changed the cluster object meanwhile: read it again
        raise RuntimeError("the cluster object keeps changing")

    def token(self) -> str:
        return self.observer.must_get(Cluster, CLUSTER_ID).status.join_tokens.worker

    async def start_host(self, hostname: str, count: int, start_delay: float = 0.05) -> SimHost:
        """A sim host of ``count`` nodes, joined through every manager; returns once all are connected."""
        host = SimHost(hostname, self.base, count, start_delay)
        self.hosts.append(host)
        host.start([m.addr for m in self.managers], self.token())
        await self.wait_connected(host)
        return host

    async def wait_connected(self, host: SimHost, timeout: float = 60) -> None:
        def check() -> bool:
            if not host.running:
                raise RuntimeError(f"sim host {host.name} exited:\n{host.log_tail()}")
            return host.connected() == host.count

        await wait_until(check, timeout, f"the {host.count} nodes of {host.name} to connect", every=0.1)

    # --- looking -------------------------------------------------------------------------------------------
    @property
    def observer(self) -> ObjectStore:
        """The test's own cache of the store."""
        assert self.store is not None
        return self.store

    async def leader(self) -> str:
        """The id of the manager holding the leader key ("" while there is none)."""
        assert self.kv is not None
        kv = await self.kv.get(LEADER_KEY)
        return kv.value.decode() if kv is not None else ""

    def manager(self, name: str) -> ManagerProcess:
        return next(m for m in self.managers if m.name == name)

    def live(self, service_id: str) -> dict[int, list[Task]]:
        """slot → the service's tasks in it that are wanted running."""
        slots: dict[int, list[Task]] = {}
        for t in self.observer.tasks_of_service(service_id):
            if t.desired_state <= TaskState.RUNNING:
                slots.setdefault(t.slot, []).append(t)
        return slots

    def converged(self, service_id: str) -> bool:
        """Every slot of the service has exactly one live task, RUNNING, and none is missing."""
        svc = self.observer.get(Service, service_id)
        if svc is None:
            return False
        slots = self.live(service_id)
        return len(slots) == svc.spec.replicas and all(
            len(ts) == 1 and ts[0].status.state is TaskState.RUNNING for ts in slots.values()
        )

    def agents_running(self) -> dict[str, set[str]]:
        """node id → task ids running there, from every sim host's last report."""
        out: dict[str, set[str]] = {}
        for host in self.hosts:
            out.update(host.tasks())
        return out

    # --- stopping ------------------------------------------------------------------------------------------
    async def close(self) -> None:
        for p in [*self.hosts, *self.managers]:
            p.stop()
        if self.store is not None:
            await self.store.stop()
        if self.kv is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.kv.close(), 5)

    def logs(self) -> str:
        """The tail of every process's log (for a failure message)."""
        return "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in [*self.managers, *self.hosts])


def duplicates(plane: Plane, service_ids: list[str]) -> list[str]:
    """Everything that shows a task twice or a stale one: slots with two live tasks in the store, task ids
    running on two nodes, slots running twice on the agents, tasks the agents run that the store does not
    want running."""
    problems: list[str] = []
    store = plane.observer
    for sid in service_ids:
        for slot, ts in plane.live(sid).items():
            if len(ts) > 1:
                problems.append(f"service {sid} slot {slot}: {len(ts)} live tasks in the store")
    seen: dict[str, str] = {}
    slots_running: dict[tuple[str, int], str] = {}
    for node_id, task_ids in plane.agents_running().items():
        for task_id in task_ids:
            if task_id in seen:
                problems.append(f"task {task_id} runs on {seen[task_id]} and {node_id}")
            seen[task_id] = node_id
            t = store.get(Task, task_id)
            # A task this observer has not heard of yet is news in flight (agents can learn of a task from
            # their session before this separate watch delivers it), not a stale task.
            if t is None:
                continue
            if t.desired_state > TaskState.RUNNING:
                problems.append(f"node {node_id} runs task {task_id}, which the store does not want running")
                continue
            key = (t.service_id, t.slot)
            if key in slots_running:
                problems.append(f"slot {key} runs twice: {slots_running[key]} and {task_id}")
            slots_running[key] = task_id
    return problems
