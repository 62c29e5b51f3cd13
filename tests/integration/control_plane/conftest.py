"""A control plane on loopback: managers (API + dispatcher over one store) and simulated agents.

Every test runs three times: on the in-process memory store, and on the real etcd and ZooKeeper of the
session (tests/conftest.py), each time under a fresh key prefix. Managers are real aiohttp servers on free
loopback ports; agents are real sessions over WebSockets with the simulated executor. Heartbeats are
200 ms, so the grace period (3 heartbeats) is 0.6 s and every test stays within a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.agent import Agent, AgentConfig
from agent.executor_sim import SimExecutor
from api import Cluster, Node, Task, TaskState
from api.objects import (
    SECOND,
    ClusterSpec,
    ClusterStatus,
    ContainerSpec,
    DispatcherConfig,
    JoinTokens,
    Meta,
    TaskSpec,
    TaskStatus,
)
from kvstore_adapters import KVStore, open_store
from manager.api.app import make_app
from manager.dispatcher import Dispatcher
from manager.errors import AlreadyExists
from manager.store import ObjectStore
from tests.servers import free_port, unique_prefix

HEARTBEAT = 0.2
GRACE = 3 * HEARTBEAT
WORKER_TOKEN = "SWMTKN-1-" + "w" * 50 + "-" + "1" * 25
MANAGER_TOKEN = "SWMTKN-1-" + "m" * 50 + "-" + "2" * 25


async def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``check`` (plain or async) until it returns something truthy, and return that; fail with ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.02)


class ManagerHarness:
    """One manager: its own store client and cache, the API app with the dispatcher, on a loopback port."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.kv: KVStore | None = None
        self.store: ObjectStore | None = None
        self.dispatcher: Dispatcher | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.kv = await open_store(self.url)
        self.store = ObjectStore(self.kv)
        await self.store.start()
        await _ensure_cluster(self.store)
        app = make_app(self.store)
        self.dispatcher = Dispatcher(self.store, manager_id=self.name, advertise_addr=self.addr)
        self.dispatcher.mount(app)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Stop serving (sessions end, the lease is revoked), then the cache and the store client."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self.store is not None:
            await self.store.stop()
        if self.kv is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.kv.close(), 5)
            self.kv = None


async def _ensure_cluster(store: ObjectStore) -> None:
    if store.objects(Cluster):
        return
    cluster = Cluster(
        meta=Meta(id="default"),
        spec=ClusterSpec(dispatcher=DispatcherConfig(heartbeat_period_ns=int(HEARTBEAT * SECOND))),
        status=ClusterStatus(join_tokens=JoinTokens(worker=WORKER_TOKEN, manager=MANAGER_TOKEN)),
    )
    with contextlib.suppress(AlreadyExists):
        created = await store.create(cluster)
        await store.wait_for(created.meta.version)
    await store.wait_for(await store.kv.revision())


@dataclass
class ControlPlane:
    """Managers and agents of one test, all stopped at the end."""

    url: str
    tmp: Path
    managers: list[ManagerHarness] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)

    async def manager(self) -> ManagerHarness:
        m = ManagerHarness(self.url, f"manager-{len(self.managers) + 1}")
        self.managers.append(m)
        await m.start()
        return m

    @property
    def store(self) -> ObjectStore:
        """The first manager's cache (reads) and writer."""
        assert self.managers and self.managers[0].store is not None
        return self.managers[0].store

    def agent(
        self,
        hostname: str,
        managers: list[ManagerHarness] | None = None,
        *,
        token: str = WORKER_TOKEN,
        start: bool = True,
        state_dir: Path | None = None,
    ) -> Agent:
        config = AgentConfig(
            managers=[m.addr for m in (managers or self.managers)],
            token=token,
            state_dir=state_dir or self.tmp / hostname,
            hostname=hostname,
            backoff=(0.02, 0.2),
        )
        agent = Agent(config, SimExecutor(start_delay=0.01, hostname=hostname))
        self.agents.append(agent)
        if start:
            agent.start()
        return agent

    async def connected(self, *agents: Agent) -> list[str]:
        """Wait until every agent is registered; their node ids."""
        for a in agents:
            await eventually(a.session.connected.is_set, what=f"{a.config.hostname} to register")
        return [a.node_id for a in agents]

    async def assign(
        self, node_id: str, *, env: tuple[str, ...] = (), store: ObjectStore | None = None
    ) -> Task:
        """A task written straight into the store as the scheduler would leave it: on a node, ASSIGNED."""
        task = Task(
            service_id="svc",
            slot=1,
            node_id=node_id,
            spec=TaskSpec(container=ContainerSpec(image="busybox", env=env)),
            status=TaskStatus(state=TaskState.ASSIGNED, message="scheduled"),
        )
        return await (store or self.store).create(task)

    async def task_state(self, task_id: str, state: TaskState, timeout: float = 10.0) -> Task:
        """Wait until the store shows the task in ``state``."""

        async def check() -> Task | None:
            t = await self.store.fetch(Task, task_id)
            return t if t is not None and t.status.state is state else None

        task: Task = await eventually(check, timeout, f"task {task_id} to be {state.value}")
        return task

    def node(self, node_id: str) -> Node | None:
        return self.store.get(Node, node_id)

    async def close(self) -> None:
        await asyncio.gather(*(a.stop() for a in self.agents), return_exceptions=True)
        for m in reversed(self.managers):
            await m.stop()


@pytest.fixture(params=["memory", "etcd", "zk"])
def store_url(request: pytest.FixtureRequest) -> str:
    """A fresh store: a named memory store, or a fresh prefix on the session's etcd or ZooKeeper."""
    prefix = unique_prefix(request.node.name)
    if request.param == "memory":
        return f"memory://{prefix}"
    if request.param == "zk":
        zk: Any = request.getfixturevalue("zk_server")
        return str(zk.url_with_prefix(prefix))
    etcd: Any = request.getfixturevalue("etcd_server")
    return str(etcd.url_with_prefix(prefix))


@pytest.fixture
async def plane(store_url: str, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """A control plane with one manager started; add managers and agents in the test."""
    cp = ControlPlane(store_url, tmp_path)
    try:
        await cp.manager()
        yield cp
    finally:
        await cp.close()
