"""One node's agent: an executor, the worker that reconciles tasks through it, and the managers' session.

``shoal-agent`` runs one :class:`Agent` per host (or, with ``--executor sim --sim-count N``, N simulated
ones in one process, sharing one HTTP client). An agent without a certificate first joins with its token
(agent/identity.py); then it keeps its session, and renews its certificate before it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography import x509

from agent.engine import EngineRelay, engine_socket_path, serve_engine
from agent.errors import AgentError
from agent.executor import Executor
from agent.identity import JoinRefused, NodeCredentials, default_renewal_time
from agent.logs import LogStreamer
from agent.session import AgentSession
from agent.worker import Worker
from api.objects import NodeDescription, TaskStatus

log = logging.getLogger(__name__)


@dataclass
class AgentConfig:
    """How one agent joins: managers, token, where it keeps its identity, and how it describes itself."""

    managers: list[str]
    #: The join token; needed only until the node has its certificate (the first start).
    token: str
    state_dir: Path
    hostname: str = ""
    #: The node's cluster address (empty: the manager uses the address the agent connects from).
    addr: str = ""
    #: Engine labels (``--label k=v``), matched by ``engine.labels.k`` constraints.
    labels: dict[str, str] = field(default_factory=dict)
    #: Reconnect backoff (first delay, longest delay) in seconds.
    backoff: tuple[float, float] = (0.05, 5.0)
    #: When to renew a certificate (default: half its lifetime, or 30 minutes, before it expires).
    renew_at: Callable[[x509.Certificate], dt.datetime] = default_renewal_time
    #: Where the node's Docker Engine API listens (empty: ``<state dir>/engine.sock``; agent/engine.py).
    engine_socket: str = ""


class Agent:
    """A node's agent. ``await run()`` until :meth:`stop`; a fatal refusal raises SessionRefused (or
    JoinRefused, when joining fails)."""

    def __init__(self, config: AgentConfig, executor: Executor, *, http: aiohttp.ClientSession | None = None):
        self.config = config
        self.executor = executor
        self.worker = Worker(executor, self._report)
        self.description = NodeDescription(hostname=config.hostname)
        self.credentials = NodeCredentials(config.state_dir)
        self._http = http
        self.session = AgentSession(
            config.managers,
            self.credentials,
            describe=lambda: self.description,
            on_assignments=self.worker.assign,
            statuses=self.worker.statuses,
            hostname=config.hostname,
            addr=config.addr,
            http=http,
            backoff=config.backoff,
        )
        # Executors with cluster networking (runc) take the manager's peer tables for their overlays.
        self.session.on_peers = getattr(executor, "apply_peers", None)
        self.logs = LogStreamer(executor, self.worker.task)
        self.session.logs = self.logs
        self.engine_socket = engine_socket_path(config.state_dir, config.engine_socket)
        self.engine = EngineRelay(None, config.hostname)
        self.session.engine = self.engine
        self._engine_runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def node_id(self) -> str:
        return self.session.node_id

    def _report(self, task_id: str, status: TaskStatus) -> None:
        self.session.report(task_id, status)

    async def run(self) -> None:
        """Describe the host, join if needed, then keep the session and run what is assigned."""
        described = await self.executor.describe()
        labels = {**described.engine_labels, **self.config.labels}
        self.description = replace(
            described, hostname=self.config.hostname or described.hostname, engine_labels=labels
        )
        self._engine_runner = await serve_engine(self.executor, self.engine_socket)
        if self._engine_runner is not None:
            self.engine.socket = self.engine_socket
        http = self._http or aiohttp.ClientSession()
        renewals: asyncio.Task[None] | None = None
        try:
            if not self.credentials.present:
                await self._join(http)
                if self._stopping:
                    return
            await self.worker.start()
            renewals = asyncio.get_running_loop().create_task(self._renewals(http), name="agent-renewals")
            await self.session.run()
        finally:
            if renewals is not None:
                renewals.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewals
            await self.logs.close()
            await self.engine.close()
            if self._engine_runner is not None:
                await self._engine_runner.cleanup()
                self._engine_runner = None
            await self.worker.stop()
            await self.executor.close()
            if self._http is None:
                await http.close()

    async def _join(self, http: aiohttp.ClientSession) -> None:
        if not self.config.token:
            raise AgentError(
                f"this node has not joined a cluster ({self.credentials.cert_file} is missing): "
                "give a join token (--token)"
            )
        failures = 0
        while not self._stopping:
            for addr in self.config.managers:
                try:
                    await self.credentials.join(
                        http,
                        addr,
                        self.config.token,
                        hostname=self.description.hostname,
                        addr=self.config.addr,
                    )
                    return
                except JoinRefused as e:
                    if e.fatal:
                        raise
                    log.warning("joining through %s failed: %s", addr, e)
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    log.debug("manager %s: %s", addr, e)
            failures += 1
            await asyncio.sleep(self._delay(failures))

    def _delay(self, failures: int) -> float:
        low, high = self.config.backoff
        return float(min(high, low * 2 ** min(failures, 16)) * random.uniform(0.5, 1.0))

    async def _renewals(self, http: aiohttp.ClientSession) -> None:
        """Renew the certificate when it is due, through the manager of the session (or any other)."""
        failures = 0
        while True:
            cert = self.credentials.certificate
            assert cert is not None
            wait = (self.config.renew_at(cert) - dt.datetime.now(dt.UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, 300.0))  # look again now and then: clocks jump
                continue
            managers = list(dict.fromkeys(m for m in (self.session.manager, *self.session.managers) if m))
            for addr in managers:
                try:
                    await self.credentials.renew(http, addr)
                    failures = 0
                    break
                except JoinRefused as e:
                    if e.fatal:
                        log.error("certificate renewal refused: %s", e)
                        return
                    log.warning("certificate renewal through %s failed: %s", addr, e)
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    log.warning("certificate renewal through %s failed: %s", addr, e)
            else:
                failures += 1
                await asyncio.sleep(min(60.0, 0.5 * 2 ** min(failures, 8)))

    def start(self) -> asyncio.Task[None]:
        """Run in the background; the returned task ends when the agent does."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name=f"agent-{self.config.hostname}"
            )
        return self._task

    async def stop(self) -> None:
        """End the session and the task loops (tasks keep running where the executor allows)."""
        self._stopping = True
        await self.session.stop()
        if self._task is not None:
            if not self.credentials.present:
                self._task.cancel()  # still trying to join
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10)
