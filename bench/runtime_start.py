"""Container start latency: the agent's Docker-API socket against plain ``runc run``, in one run.

    python -m bench.runtime_start [--runs 30] [--keep]

Starts a local agent runtime (``python -m agent.api``) on a temporary state directory holding the busybox
image, then times, ``--runs`` times each and interleaved so both see the same machine:

* **agent**: ``POST /containers/create`` (busybox, ``true``) + ``/start`` + ``/wait`` over the unix socket,
  as ``docker run`` would (the container is removed afterwards, outside the timing);
* **runc**: ``runc run`` of the same command on the same root file system (an overlay snapshot of the
  same image) with the OCI spec the agent itself would write, so both pay for the same seccomp filter,
  namespaces and cgroups.

Also reported: the resident memory of the idle agent process. Needs root, runc, conmon and busybox. The
last line is one JSON object; ``goal_met`` says whether the agent's median is within 1.5 times runc's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from agent.runtime.containers import cgroups
from agent.runtime.containers.config import ContainerConfig, ImageConfig
from agent.runtime.containers.spec import SpecPaths, build_spec
from agent.runtime.images.baseimages import make_busybox
from agent.runtime.images.store import ImageStore
from agent.runtime.snapshots.mounts import unmount_all

GOAL_RATIO = 1.5


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    """Median and p90 in milliseconds."""
    return {
        "median_ms": round(statistics.median(values) * 1000, 1),
        "p90_ms": round(percentile(values, 0.9) * 1000, 1),
        "min_ms": round(min(values) * 1000, 1),
    }


def rss_mib(pid: int) -> float:
    """Resident set size of a process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class Agent:
    """The agent's runtime and API socket as a child process (stopped by its PID)."""

    def __init__(self, root: Path, socket_path: Path, cgroup_parent: str) -> None:
        self.root = root
        self.socket = socket_path
        self.cgroup_parent = cgroup_parent
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.api",
                "--root",
                str(self.root),
                "--socket",
                str(self.socket),
                "--cgroup-parent",
                self.cgroup_parent,
            ],
            stdout=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent,
        )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the agent did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def call(session: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> Any:
    async with session.request(method, "http://localhost" + path, **kwargs) as resp:
        body = await resp.read()
        if resp.status >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status} {body!r}")
        return json.loads(body) if body.strip() else None


async def agent_run(session: aiohttp.ClientSession) -> tuple[float, str]:
    """One create + start + wait of ``true``; returns the time and the container id."""
    started = time.perf_counter()
    created = await call(
        session, "POST", "/v1.43/containers/create", json={"Image": "busybox", "Cmd": ["true"]}
    )
    cid = created["Id"]
    await call(session, "POST", f"/v1.43/containers/{cid}/start")
    waited = await call(session, "POST", f"/v1.43/containers/{cid}/wait")
    elapsed = time.perf_counter() - started
    if waited["StatusCode"] != 0:
        raise RuntimeError(f"container exited with {waited['StatusCode']}")
    return elapsed, cid


def runc_bundle(directory: Path, rootfs: Path, cgroups_path: str) -> Path:
    """A bundle running ``true`` on ``rootfs`` with the spec the agent writes for busybox."""
    config = ContainerConfig(image="busybox", cmd=("true",))
    image = ImageConfig(
        cmd=("sh",), env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    )
    spec = build_spec("b" * 64, config, image, SpecPaths(rootfs=rootfs), cgroups_path, cgroups.is_v2())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(spec))
    return directory


async def runc_run(runc_root: Path, bundle: Path, name: str) -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "runc",
        "--root",
        str(runc_root),
        "run",
        "--bundle",
        str(bundle),
        name,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"runc run failed ({proc.returncode}): {err.decode().strip()}")
    return elapsed


async def measure(runs: int, work: Path, agent: Agent) -> dict[str, Any]:
    connector = aiohttp.UnixConnector(path=str(agent.socket))
    async with aiohttp.ClientSession(connector=connector) as session:
        # The runc side uses the root file system of an agent container that is never started.
        holder = await call(
            session, "POST", "/v1.43/containers/create", json={"Image": "busybox", "Cmd": ["true"]}
        )
        inspect = await call(session, "GET", f"/v1.43/containers/{holder['Id']}/json")
        rootfs = Path(inspect["GraphDriver"]["Data"]["MergedDir"])
        runc_root = work / "runc-bench"
        bundle = runc_bundle(work / "bundle", rootfs, f"{agent.cgroup_parent}-runc/bench")
        for _ in range(3):  # warm caches (page cache, Python imports, the agent's first requests)
            _, cid = await agent_run(session)
            await call(session, "DELETE", f"/v1.43/containers/{cid}")
            await runc_run(runc_root, bundle, f"warm-{uuid.uuid4().hex[:8]}")
        agent_times: list[float] = []
        runc_times: list[float] = []
        for i in range(runs):
            elapsed, cid = await agent_run(session)
            agent_times.append(elapsed)
            await call(session, "DELETE", f"/v1.43/containers/{cid}")
            runc_times.append(await runc_run(runc_root, bundle, f"bench-{i}"))
        await call(session, "DELETE", f"/v1.43/containers/{holder['Id']}")
    await asyncio.sleep(1.0)
    assert agent.proc is not None
    return {
        "agent": summary(agent_times),
        "runc": summary(runc_times),
        "agent_idle_rss_mib": rss_mib(agent.proc.pid),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.runtime_start", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not shutil.which("runc") or not shutil.which("conmon"):
        print("needs root, runc and conmon", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    parent = f"/shoal-bench-{uuid.uuid4().hex[:8]}"
    agent = Agent(work / "root", work / "agent.sock", parent)
    try:
        make_busybox(ImageStore(work / "root" / "images"))
        agent.start()
        result = asyncio.run(measure(args.runs, work, agent))
    finally:
        agent.stop()
        unmount_all(work)
        for leftover in (parent, parent + "-runc/bench", parent + "-runc"):
            cgroups.remove(leftover)
            cgroups.remove_parent_if_empty(leftover)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    ratio_median = result["agent"]["median_ms"] / result["runc"]["median_ms"]
    ratio_p90 = result["agent"]["p90_ms"] / result["runc"]["p90_ms"]
    print(f"{'':8}{'median':>10}{'p90':>10}{'min':>10}   (ms, create+start+wait of `true`, {args.runs} runs)")
    for name in ("agent", "runc"):
        row = result[name]
        print(f"{name:8}{row['median_ms']:>10}{row['p90_ms']:>10}{row['min_ms']:>10}")
    print(f"agent/runc: median {ratio_median:.2f}x, p90 {ratio_p90:.2f}x (goal <= {GOAL_RATIO}x)")
    print(f"idle agent RSS: {result['agent_idle_rss_mib']} MiB")
    result.update(
        {
            "benchmark": "runtime_start",
            "runs": args.runs,
            "ratio_median": round(ratio_median, 2),
            "ratio_p90": round(ratio_p90, 2),
            "goal_ratio": GOAL_RATIO,
            "goal_met": ratio_median <= GOAL_RATIO,
        }
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
