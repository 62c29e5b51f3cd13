"""One node's agent: an executor, the worker that reconciles tasks through it, and the managers' session.

``shoal-agent`` runs one :class:`Agent` per host (or, with ``--executor sim --sim-count N``, N simulated
ones in one process, sharing one HTTP client).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp

from agent.executor import Executor
from agent.session import AgentSession
from agent.worker import Worker
from api.objects import NodeDescription, TaskStatus


@dataclass
class AgentConfig:
    """How one agent joins: managers, token, where it keeps its identity, and how it describes itself."""

    managers: list[str]
    token: str
    state_dir: Path
    hostname: str = ""
    #: The node's cluster address (empty: the manager uses the address the agent connects from).
    addr: str = ""
    #: Engine labels (``--label k=v``), matched by ``engine.labels.k`` constraints.
    labels: dict[str, str] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = None
    #: Reconnect backoff (first delay, longest delay) in seconds.
    backoff: tuple[float, float] = (0.05, 5.0)


class Agent:
    """A node's agent. ``await run()`` until :meth:`stop`; a fatal refusal raises SessionRefused."""

    def __init__(self, config: AgentConfig, executor: Executor, *, http: aiohttp.ClientSession | None = None):
        self.config = config
        self.executor = executor
        self.worker = Worker(executor, self._report)
        self.description = NodeDescription(hostname=config.hostname)
        self.session = AgentSession(
            config.managers,
            config.token,
            config.state_dir,
            describe=lambda: self.description,
            on_assignments=self.worker.assign,
            statuses=self.worker.statuses,
            hostname=config.hostname,
            addr=config.addr,
            http=http,
            ssl_context=config.ssl_context,
            backoff=config.backoff,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def node_id(self) -> str:
        return self.session.node_id

    def _report(self, task_id: str, status: TaskStatus) -> None:
        self.session.report(task_id, status)

    async def run(self) -> None:
        """Describe the host, then keep the session and run what is assigned until stopped."""
        described = await self.executor.describe()
        labels = {**described.engine_labels, **self.config.labels}
        self.description = replace(
            described, hostname=self.config.hostname or described.hostname, engine_labels=labels
        )
        await self.worker.start()
        try:
            await self.session.run()
        finally:
            await self.worker.stop()
            await self.executor.close()

    def start(self) -> asyncio.Task[None]:
        """Run in the background; the returned task ends when the agent does."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name=f"agent-{self.config.hostname}"
            )
        return self._task

    async def stop(self) -> None:
        """End the session and the task loops (tasks keep running where the executor allows)."""
        await self.session.stop()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 10)
