"""A process hosting many simulated nodes, like ``shoal-agent --executor sim --sim-count N``, that also
writes down what its executors run — the agents' own account, to hold against what the store says.

    python -m tests.e2e.resilience.simhost --manager A,B --token T --state-dir D --hostname H \\
        --count N --report FILE

Every 50 ms (only when something changed) it replaces ``FILE`` with
``{"pid", "time", "nodes": {"H-1": {"node_id", "connected", "running": [task id, …]}, …}}``, written
beside it and renamed, so a reader never sees half of it. A frozen process (SIGSTOP) leaves the last
report as it was; a killed one leaves it too, so readers look at the process as well.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path

import aiohttp

from agent.agent import Agent, AgentConfig
from agent.executor_sim import SimExecutor

INTERVAL = 0.05


def _report(agents: list[tuple[Agent, SimExecutor]]) -> dict[str, object]:
    return {
        a.config.hostname: {
            "node_id": a.credentials.node_id if a.credentials.present else "",
            "connected": a.session.connected.is_set(),
            "running": sorted(e.running()),
        }
        for a, e in agents
    }


async def _write_reports(agents: list[tuple[Agent, SimExecutor]], path: Path) -> None:
    last: dict[str, object] | None = None
    tmp = path.with_name(f".{path.name}.tmp")
    while True:
        nodes = _report(agents)
        if nodes != last:
            tmp.write_text(json.dumps({"pid": os.getpid(), "time": time.time(), "nodes": nodes}))
            tmp.replace(path)
            last = nodes
        await asyncio.sleep(INTERVAL)


async def serve(args: argparse.Namespace) -> None:
    managers = [m for m in args.manager.split(",") if m]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        agents: list[tuple[Agent, SimExecutor]] = []
        for i in range(1, args.count + 1):
            name = f"{args.hostname}-{i}"
            executor = SimExecutor(start_delay=args.start_delay, hostname=name)
            config = AgentConfig(
                managers=managers,
                token=args.token,
                state_dir=Path(args.state_dir) / name,
                hostname=name,
                backoff=(0.05, 1.0),
            )
            agents.append((Agent(config, executor, http=http), executor))
        runs = [a.start() for a, _ in agents]
        reporter = asyncio.create_task(_write_reports(agents, Path(args.report)))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({stopper, *runs}, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*(a.stop() for a, _ in agents), return_exceptions=True)
        reporter.cancel()
        stopper.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manager", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--hostname", default="sim")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--start-delay", type=float, default=0.05)
    parser.add_argument("--report", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
