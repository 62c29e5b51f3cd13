"""Scheduler benchmark: placements per second, the time for a million tasks, and peak memory.

    python -m bench.scheduler            # both scenarios, each in its own process pinned to one core
    python -m bench.scheduler --quick    # a tenth of the size, for a smoke run

Scenarios (built from a fixed seed, so every run places the same tasks):

- ``100k``: 100 services x 1,000 replicas onto 5,000 nodes; every service has 3 constraints (SwarmKit and
  classic syntax, one a regular expression), the ``spread`` strategy and one placement preference
  (``spread=node.labels.zone``), and reserves CPU and memory. Every placement is then checked against
  its constraints and the nodes' capacity. Goal: >= 20,000 placements/s.
- ``1m``: 1,000 services x 1,000 replicas onto the same 5,000 nodes (bigger ones).

Each scenario runs in a child process so that its peak memory (``ru_maxrss``) is its own; the time counts
building the scheduler from the snapshot plus the ``schedule`` call, not building the inputs. The last
line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from typing import Any

from scheduler import NodeRole, NodeSnapshot, Resources, Scheduler, TaskRequest, TaskSpec
from scheduler.expr import parse_constraint

GIB = 1 << 30
CORE = 1_000_000_000
ZONES = 6
RACKS = 100

SCENARIOS: dict[str, dict[str, int]] = {
    "100k": {"nodes": 5000, "services": 100, "replicas": 1000, "cores": 16, "mem_gib": 64},
    "1m": {"nodes": 5000, "services": 1000, "replicas": 1000, "cores": 64, "mem_gib": 256},
}


def make_nodes(count: int, cores: int, mem_gib: int, rng: random.Random) -> list[NodeSnapshot]:
    """A cluster with zones, racks, disk types, a few managers and some capacity already reserved."""
    nodes: list[NodeSnapshot] = []
    for i in range(count):
        nodes.append(
            NodeSnapshot(
                id=f"node-{i:05d}",
                hostname=f"host-{i:05d}",
                role=NodeRole.MANAGER if i < 5 else NodeRole.WORKER,
                labels={
                    "zone": f"zone-{rng.randrange(ZONES)}",
                    "rack": f"rack-{rng.randrange(RACKS):02d}",
                    "disk": "ssd" if rng.random() < 0.6 else "hdd",
                },
                engine_labels={"storage": "overlay2"},
                storage_driver="overlay2",
                resources=Resources(cores * CORE, mem_gib * GIB),
                reserved=Resources(rng.randrange(0, 2) * CORE, rng.randrange(0, 4) * GIB),
            )
        )
    return nodes


def make_spec(s: int) -> TaskSpec:
    """Service ``s``: three constraints (both syntaxes), one preference, CPU and memory reservations."""
    third = "node.labels.disk==ssd" if s % 2 == 0 else "constraint:rack==/rack-[0-7][0-9]/"
    return TaskSpec(
        image=f"registry.example/app-{s}:1.0",
        constraints=("node.role==worker", f"node.labels.zone!=zone-{s % ZONES}", third),
        preferences=("spread=node.labels.zone",),
        reservations=Resources(CORE // 20, 64 << 20),
    )


def make_tasks(services: int, replicas: int) -> list[TaskRequest]:
    """``services`` x ``replicas`` tasks; the tasks of a service share one spec object."""
    tasks: list[TaskRequest] = []
    for s in range(services):
        spec = make_spec(s)
        sid = f"svc-{s:04d}"
        tasks.extend(TaskRequest(f"{sid}.{r}", sid, spec) for r in range(replicas))
    return tasks


def verify(nodes: list[NodeSnapshot], tasks: list[TaskRequest], assignments: dict[str, str]) -> int:
    """Count placements that break a hard constraint, and nodes reserved beyond capacity."""
    by_id = {n.id: n for n in nodes}
    violations = 0
    cpu: dict[str, int] = {n.id: n.reserved.nano_cpus for n in nodes}
    mem: dict[str, int] = {n.id: n.reserved.memory_bytes for n in nodes}
    for task in tasks:
        node_id = assignments.get(task.id)
        if node_id is None:
            continue
        node = by_id[node_id]
        if not all(parse_constraint(c).check(node) for c in task.spec.constraints):
            violations += 1
        cpu[node_id] += task.spec.reservations.nano_cpus
        mem[node_id] += task.spec.reservations.memory_bytes
    for n in nodes:
        if cpu[n.id] > n.resources.nano_cpus or mem[n.id] > n.resources.memory_bytes:
            violations += 1
    return violations


def run_scenario(name: str, scale: float, check: bool) -> dict[str, Any]:
    """Build the scenario, time it, and return its figures."""
    params = SCENARIOS[name]
    rng = random.Random(42)
    nodes = make_nodes(params["nodes"], params["cores"], params["mem_gib"], rng)
    services = max(1, int(params["services"] * scale))
    tasks = make_tasks(services, params["replicas"])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    sched = Scheduler(nodes)
    built = time.perf_counter()
    result = sched.schedule(tasks)
    end = time.perf_counter()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    placed = len(result.assignments)
    figures: dict[str, Any] = {
        "scenario": name,
        "nodes": len(nodes),
        "services": services,
        "tasks": len(tasks),
        "placed": placed,
        "unplaced": len(result.unassigned),
        "seconds": round(end - start, 3),
        "build_seconds": round(built - start, 3),
        "placements_per_s": round(placed / (end - start)),
        "peak_rss_mib": round(rss_after / 1024, 1),
        "scheduler_rss_mib": round((rss_after - rss_before) / 1024, 1),
    }
    if check:
        figures["violations"] = verify(nodes, tasks, dict(result.assignments))
    return figures


def _child(name: str, scale: float, check: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.scheduler", "--scenario", name, "--scale", str(scale)]
    if check:
        cmd.append("--check")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return figures


def main() -> None:
    """Run the benchmark; see the module documentation."""
    parser = argparse.ArgumentParser(prog="python -m bench.scheduler", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the size")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help="run one scenario in this process")
    parser.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help="verify every placement afterwards")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the goal is stated
    if args.scenario:
        print(json.dumps(run_scenario(args.scenario, args.scale, args.check)))
        return
    scale = 0.1 if args.quick else 1.0
    small = _child("100k", scale, check=True)
    print(
        f"100k: {small['placed']} tasks in {small['seconds']} s = {small['placements_per_s']} placements/s, "
        f"violations {small['violations']}, peak RSS {small['peak_rss_mib']} MiB"
    )
    large = _child("1m", scale, check=False)
    print(
        f"1m: {large['placed']} tasks in {large['seconds']} s = {large['placements_per_s']} placements/s, "
        f"peak RSS {large['peak_rss_mib']} MiB"
    )
    summary = {
        "benchmark": "scheduler",
        "placements_per_s": small["placements_per_s"],
        "goal_placements_per_s": 20000,
        "meets_goal": small["placements_per_s"] >= 20000 and small["violations"] == 0,
        "tasks_1m_seconds": large["seconds"],
        "peak_rss_mib_100k": small["peak_rss_mib"],
        "peak_rss_mib_1m": large["peak_rss_mib"],
        "scenarios": [small, large],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
