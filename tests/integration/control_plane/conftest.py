"""A control plane on loopback: managers (API + dispatcher over one store) and simulated agents.

Every test runs three times: on the in-process memory store, and on the real etcd and ZooKeeper of the
session (tests/conftest.py), each time under a fresh key prefix. Managers are real aiohttp servers on free
loopback ports, serving TLS with the cluster's CA exactly as shoal-manager does (manager/pki.py,
manager/tls.py, manager/join.py); agents join with the cluster's token and keep real sessions over mutual
TLS with the simulated executor. Heartbeats are 200 ms, so the grace period (3 heartbeats) is 0.6 s and
every test stays within a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
    ContainerSpec,
    DispatcherConfig,
    TaskSpec,
    TaskStatus,
)
from kvstore_adapters import KVStore, open_store
from manager import join
from manager.api.app import make_app
from manager.dispatcher import Dispatcher
from manager.pki import CLUSTER_ID, ClusterPKI
from manager.secretbox import SecretBox
from manager.store import ObjectStore
from manager.tls import TLSSite, authorizer
from tests.servers import free_port, unique_prefix

HEARTBEAT = 0.2
GRACE = 3 * HEARTBEAT
#: The cluster settings the first manager of a plane creates the cluster with.
SPEC = ClusterSpec(dispatcher=DispatcherConfig(heartbeat_period_ns=int(HEARTBEAT * SECOND)))


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

    def __init__(self, url: str, name: str, state_dir: Path, secrets_key: bytes, spec: ClusterSpec) -> None:
        self.url = url
        self.name = name
        self.state_dir = state_dir
        self.secrets_key = secrets_key
        self.spec = spec
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.kv: KVStore | None = None
        self.store: ObjectStore | None = None
        self.pki: ClusterPKI | None = None
        self.dispatcher: Dispatcher | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.kv = await open_store(self.url)
        self.store = ObjectStore(self.kv, SecretBox(self.secrets_key))
        await self.store.start()
        self.pki = await ClusterPKI.setup(self.store, self.state_dir, self.name, ["127.0.0.1"], self.spec)
        app = make_app(self.store)
        app.middlewares.append(authorizer(self.pki))
        join.mount(app, self.pki)
        self.dispatcher = Dispatcher(self.store, manager_id=self.name, advertise_addr=self.addr)
        self.dispatcher.mount(app)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5)
        await self._runner.setup()
        assert self.pki.server_context is not None
        await TLSSite(self._runner, "127.0.0.1", self.port, self.pki.server_context).start()

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


@dataclass
class ControlPlane:
    """Managers and agents of one test, all stopped at the end."""

    url: str
    tmp: Path
    managers: list[ManagerHarness] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)
    #: The managers' shared secrets key (it also seals the CA key in the store).
    secrets_key: bytes = field(default_factory=lambda: os.urandom(32))
    spec: ClusterSpec = SPEC

    async def manager(self) -> ManagerHarness:
        name = f"manager-{len(self.managers) + 1}"
        m = ManagerHarness(self.url, name, self.tmp / name, self.secrets_key, self.spec)
        self.managers.append(m)
        await m.start()
        return m

    @property
    def cluster(self) -> Cluster:
        return self.store.must_get(Cluster, CLUSTER_ID)

    @property
    def worker_token(self) -> str:
        return self.cluster.status.join_tokens.worker

    @property
    def manager_token(self) -> str:
        return self.cluster.status.join_tokens.manager

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
        token: str | None = None,
        start: bool = True,
        state_dir: Path | None = None,
    ) -> Agent:
        config = AgentConfig(
            managers=[m.addr for m in (managers or self.managers)],
            token=self.worker_token if token is None else token,
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
