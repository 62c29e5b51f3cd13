"""Control-plane latency and throughput with many simulated nodes.

    python -m bench.control_plane [--nodes 1000] [--services 200] [--big 10000]

Starts, on loopback, a real etcd, one ``shoal-manager`` process and one ``shoal-agent --executor sim`` process
hosting ``--nodes`` simulated nodes (tasks become RUNNING as soon as the agent starts them). Then:

1. creates ``--services`` one-replica services one after another through the manager's API and measures, for
   each, the time from sending ``POST /services/create`` to its task being ASSIGNED and RUNNING in the store
   (seen through a watch of this process's own, so the timing includes the store round trip);
2. creates one service of ``--big`` replicas and measures the time until all of them are RUNNING.

Goals (issue): p50 ≤ 50 ms and p99 ≤ 150 ms from create to ASSIGNED. For scale, classic Swarm's 30,000
container test reported a scheduling delay of p50 230 ms and p99 400 ms. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from api import Task, TaskState, to_plain
from api.objects import Annotations, ContainerSpec, ServiceSpec, TaskSpec
from kvstore_adapters import open_store
from manager.store import Change, ObjectStore

REPO = Path(__file__).resolve().parents[1]


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Tracker:
    """Timestamps of the first time each task is seen ASSIGNED and RUNNING, per service."""

    def __init__(self) -> None:
        self.assigned: dict[str, list[float]] = {}
        self.running: dict[str, list[float]] = {}
        self._seen_assigned: set[str] = set()
        self._seen_running: set[str] = set()
        self.changed = asyncio.Event()

    def see(self, change: Change) -> None:
        task = change.new
        if not isinstance(task, Task):
            return
        now = time.perf_counter()
        state = task.status.state
        if state >= TaskState.ASSIGNED and task.meta.id not in self._seen_assigned and not state.is_terminal:
            self._seen_assigned.add(task.meta.id)
            self.assigned.setdefault(task.service_id, []).append(now)
        if state is TaskState.RUNNING and task.meta.id not in self._seen_running:
            self._seen_running.add(task.meta.id)
            self.running.setdefault(task.service_id, []).append(now)
        self.changed.set()

    async def wait(self, check: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()


def _spec(name: str, replicas: int) -> dict[str, object]:
    spec = ServiceSpec(
        annotations=Annotations(name=name),
        replicas=replicas,
        task=TaskSpec(container=ContainerSpec(image="busybox")),
    )
    plain: dict[str, object] = to_plain(spec)
    return plain


async def _measure(url: str, sock: str, services: int, big: int) -> dict[str, object]:
    kv = await open_store(url)
    store = ObjectStore(kv)
    await store.start()
    tracker = Tracker()

    async def follow() -> None:
        async for change in store.changes():
            tracker.see(change)

    follower = asyncio.create_task(follow())
    conn = aiohttp.UnixConnector(path=sock)
    to_assigned: list[float] = []
    to_running: list[float] = []
    try:
        async with aiohttp.ClientSession(connector=conn) as http:
            for i in range(services):
                t0 = time.perf_counter()
                async with http.post("http://manager/services/create", json=_spec(f"svc{i}", 1)) as r:
                    if r.status != 201:
                        raise RuntimeError(f"service create failed: {r.status} {await r.text()}")
                    sid = (await r.json())["id"]
                await tracker.wait(lambda s=sid: len(tracker.running.get(s, [])) >= 1, 30)  # type: ignore[misc]
                to_assigned.append((tracker.assigned[sid][0] - t0) * 1000)
                to_running.append((tracker.running[sid][0] - t0) * 1000)

            t0 = time.perf_counter()
            async with http.post("http://manager/services/create", json=_spec("big", big)) as r:
                if r.status != 201:
                    raise RuntimeError(f"service create failed: {r.status} {await r.text()}")
                big_id = (await r.json())["id"]
            await tracker.wait(lambda: len(tracker.assigned.get(big_id, [])) >= big, 600)
            big_assigned = time.perf_counter() - t0
            await tracker.wait(lambda: len(tracker.running.get(big_id, [])) >= big, 600)
            big_running = time.perf_counter() - t0
    finally:
        follower.cancel()
        await store.stop()
        await kv.close()
    return {
        "assigned_p50_ms": round(statistics.median(to_assigned), 1),
        "assigned_p99_ms": round(_pct(to_assigned, 99), 1),
        "running_p50_ms": round(statistics.median(to_running), 1),
        "running_p99_ms": round(_pct(to_running, 99), 1),
        "big_replicas": big,
        "big_all_assigned_s": round(big_assigned, 2),
        "big_all_running_s": round(big_running, 2),
    }


async def _wait_nodes(sock: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as http:
        while True:
            try:
                async with http.get("http://manager/nodes") as r:
                    nodes = await r.json()
                    ready = sum(1 for n in nodes if n["status"]["state"] == "ready")
                    if ready >= count:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"only some of {count} simulated nodes became ready within {timeout}s")
            await asyncio.sleep(0.2)


async def _token(sock: str) -> str:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as http:
        for _ in range(100):
            try:
                async with http.get("http://manager/swarm") as r:
                    if r.status == 200:
                        token: str = (await r.json())["status"]["join_tokens"]["worker"]
                        return token
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the manager did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--big", type=int, default=10000)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.servers import EtcdServer, free_port  # the same real etcd the tests start

    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        etcd = EtcdServer(Path(tmp) / "etcd")
        try:
            etcd.start()
            url = f"etcd://{etcd.endpoint}/bench"
            sock = str(Path(tmp) / "manager.sock")
            port = free_port()
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            mlog = open(Path(tmp) / "manager.log", "wb")  # noqa: SIM115 - kept open for the child
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "manager.main",
                        "--store",
                        url,
                        "--listen-addr",
                        f"127.0.0.1:{port}",
                        "--socket",
                        sock,
                        "--state-dir",
                        str(Path(tmp) / "m"),
                    ],
                    stdout=mlog,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
            token = asyncio.run(_token(sock))
            alog = open(Path(tmp) / "agents.log", "wb")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "agent.main",
                        "--manager",
                        f"127.0.0.1:{port}",
                        "--token",
                        token,
                        "--state-dir",
                        str(Path(tmp) / "agents"),
                        "--executor",
                        "sim",
                        "--hostname",
                        "sim",
                        "--sim-count",
                        str(args.nodes),
                        "--sim-start-delay",
                        "0",
                    ],
                    stdout=alog,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
            t0 = time.perf_counter()
            asyncio.run(_wait_nodes(sock, args.nodes, 300))
            join_s = time.perf_counter() - t0
            figures = asyncio.run(_measure(url, sock, args.services, args.big))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            etcd.cleanup()
    result = {
        "benchmark": "control_plane",
        "store": "etcd",
        "nodes": args.nodes,
        "services": args.services,
        "nodes_ready_s": round(join_s, 2),
        **figures,
        "goal_assigned_p50_ms": 50,
        "goal_assigned_p99_ms": 150,
        "reference_classic_swarm_p50_ms": 230,
        "reference_classic_swarm_p99_ms": 400,
    }
    print(
        f"{args.nodes} simulated nodes ready in {join_s:.1f} s\n"
        f"create → ASSIGNED: p50 {figures['assigned_p50_ms']} ms, p99 {figures['assigned_p99_ms']} ms "
        f"(goal 50 / 150; classic Swarm 230 / 400)\n"
        f"create → RUNNING:  p50 {figures['running_p50_ms']} ms, p99 {figures['running_p99_ms']} ms\n"
        f"{args.big} replicas: all ASSIGNED in {figures['big_all_assigned_s']} s, "
        f"all RUNNING in {figures['big_all_running_s']} s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
