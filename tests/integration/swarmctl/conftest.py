"""A real manager (API, leader, dispatcher) and simulated agents, driven by swarmctl's real commands.

The manager runs in a thread of its own with its own event loop, over an in-process memory store (or the
session's etcd, for the tests that say so), serving
on a temporary unix socket and a free loopback port; agents are real sessions (WebSockets) with the
simulated executor, so tasks go ASSIGNED → … → RUNNING the way they do on hosts, without containers.
Commands run through click's test runner, in the test's thread, exactly as the console script runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result

from agent.agent import Agent, AgentConfig
from agent.executor_sim import SimExecutor
from api import Node
from api.objects import NodeState
from manager.daemon import Manager, ManagerConfig
from swarmctl.cli import cli
from tests.servers import free_port, unique_prefix

T = TypeVar("T")


@dataclass
class Run:
    """What one command did: exit code, stdout and stderr."""

    code: int
    out: str
    err: str

    def lines(self) -> list[str]:
        return self.out.splitlines()


class Cluster:
    """A manager and ``agents`` simulated nodes, in a background event loop; stopped by :meth:`stop`."""

    def __init__(self, tmp: Path, agents: int = 3, store_url: str = "") -> None:
        self.tmp = tmp
        self.store_url = store_url or f"memory://{unique_prefix('swarmctl')}"
        self.socket = str(tmp / "manager.sock")
        self.state_dir = str(tmp / "manager-state")
        self.port = free_port()
        self.host = f"unix://{self.socket}"
        self.n_agents = agents
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-manager", daemon=True)
        self.manager: Manager | None = None
        self.agents: list[Agent] = []
        self.runner = CliRunner()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        """Run a coroutine in the cluster's loop and wait for its result."""
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def start(self) -> None:
        self.thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        config = ManagerConfig(
            store_url=self.store_url,
            listen=f"127.0.0.1:{self.port}",
            socket=self.socket,
            state_dir=self.state_dir,
            election_ttl=2.0,
        )
        self.manager = Manager(config)
        await self.manager.start()
        await asyncio.wait_for(self.manager.leading.wait(), 10)
        token = self.manager.cluster().status.join_tokens.worker
        for i in range(1, self.n_agents + 1):
            hostname = f"node-{i}"
            agent = Agent(
                AgentConfig(
                    managers=[f"127.0.0.1:{self.port}"],
                    token=token,
                    state_dir=self.tmp / hostname,
                    hostname=hostname,
                    labels={"rack": f"r{i}"},
                    backoff=(0.02, 0.2),
                ),
                SimExecutor(start_delay=0.01, hostname=hostname),
            )
            agent.start()
            self.agents.append(agent)
        deadline = time.monotonic() + 10
        while len(self.ready_nodes()) < self.n_agents:
            if time.monotonic() > deadline:
                raise RuntimeError("simulated agents did not register")
            await asyncio.sleep(0.02)

    def ready_nodes(self) -> list[Node]:
        assert self.manager is not None and self.manager.store is not None
        return [n for n in self.manager.store.objects(Node) if n.status.state is NodeState.READY]

    def stop(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.call(self._stop(), timeout=30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()

    async def _stop(self) -> None:
        await asyncio.gather(*(a.stop() for a in self.agents), return_exceptions=True)
        if self.manager is not None:
            await self.manager.stop()
        # Whatever the daemon left running (its leader loop) ends before the loop is closed.
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in leftovers:
            t.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def run(self, *args: str, input: str | bytes | None = None, env: dict[str, str] | None = None) -> Run:
        """``swarmctl ARGS`` against this cluster."""
        result: Result = self.runner.invoke(
            cli, list(args), input=input, env={"SHOAL_HOST": self.host, **(env or {})}, catch_exceptions=False
        )
        return Run(result.exit_code, result.stdout, result.stderr)

    def ok(self, *args: str, input: str | bytes | None = None) -> Run:
        """``swarmctl ARGS``, which must succeed."""
        r = self.run(*args, input=input)
        assert r.code == 0, f"swarmctl {' '.join(args)} exited {r.code}\nstdout: {r.out}\nstderr: {r.err}"
        return r


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One manager with three simulated nodes for the module (tests use their own object names)."""
    c = Cluster(tmp_path_factory.mktemp("swarmctl"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def until(check: Callable[[], T], timeout: float = 10.0, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or check}")
        time.sleep(0.05)


def one_error_line(r: Run, *words: str) -> None:
    """The command failed with exactly one ``Error:`` line on stderr containing every word."""
    assert r.code != 0, r.out
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1, r.err
    assert lines[0].startswith("Error: "), lines[0]
    for w in words:
        assert w in lines[0], lines[0]


def column(r: Run, header: str) -> list[str]:
    """The values of one column of a table printed by ``ls``/``ps``, cut at the header's position."""
    lines = r.lines()
    starts = [m.start() for m in re.finditer(r"\S+(?: \S+)*", lines[0])]
    begin = lines[0].index(header)
    later = [s for s in starts if s > begin]
    end = later[0] if later else None
    return [line[begin:end].strip() for line in lines[1:]]


def names(r: Run) -> Sequence[str]:
    return column(r, "NAME")
