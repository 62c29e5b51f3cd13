"""Logs of tasks whose node's session another manager holds: asked of that manager, relayed as they come.

Any manager serves a log request, but only the manager holding a node's session can reach its agent. The
key ``sessions/<node id>`` names that manager and its address (manager/nodes.py); this manager then calls
the other's ``GET /tasks/{id}/logs?forwarded=1`` over mutual TLS with its own certificate (managers'
certificates are valid as clients, and the other side must present ``swarm-manager``), and relays the
NDJSON it gets. ``forwarded`` makes the other manager answer from its own sessions only, so a request is
relayed at most once even while sessions move.

Relaying keeps memory bounded like the rest: at most :data:`WINDOW` chunks wait in the request's feed;
past that this side stops reading and TCP slows the other manager, which slows its agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl

import aiohttp

from api.join import MANAGER_SERVER_NAME
from api.logs import LogOptions
from kvstore_adapters import KVError, KVStore
from manager.logs import Feed, FeedItem
from manager.nodes import SessionRecord, session_key

#: Chunks of one relayed stream waiting to be written, at most.
WINDOW = 16
#: How long connecting to another manager may take.
CONNECT_TIMEOUT = 10.0


async def session_holder(kv: KVStore, node_id: str) -> SessionRecord | None:
    """Which manager holds the node's session now (None: no manager does)."""
    try:
        found = await kv.get(session_key(node_id))
    except KVError:
        return None
    return SessionRecord.decode(found.value) if found is not None else None


def forward_query(options: LogOptions) -> dict[str, str]:
    """The query that asks another manager for the same lines."""
    seconds, ns = divmod(options.since_ns, 1_000_000_000)
    return {
        "follow": "1" if options.follow else "0",
        "tail": str(options.tail) if options.tail >= 0 else "all",
        "since": f"{seconds}.{ns:09d}" if options.since_ns else "0",
        "stdout": "1" if options.stdout else "0",
        "stderr": "1" if options.stderr else "0",
        "forwarded": "1",
    }


class RemoteStream:
    """One task's logs relayed from the manager at ``addr``; a source of a request's :class:`Feed`."""

    def __init__(
        self,
        feed: Feed,
        http: aiohttp.ClientSession,
        context: ssl.SSLContext,
        addr: str,
        node_id: str,
        task_id: str,
        options: LogOptions,
    ) -> None:
        self.feed = feed
        self.http = http
        self.context = context
        self.addr = addr
        self.node_id = node_id
        self.task_id = task_id
        self.options = options
        self._credit = asyncio.Semaphore(WINDOW)
        self._job: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.feed.add(self)
        self._job = asyncio.get_running_loop().create_task(self._run(), name=f"logs-relay-{self.task_id}")

    async def consumed(self) -> None:
        self._credit.release()

    async def close(self) -> None:
        job, self._job = self._job, None
        if job is not None and job is not asyncio.current_task():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job

    async def _run(self) -> None:
        error = ""
        url = f"https://{self.addr}/tasks/{self.task_id}/logs"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
        try:
            async with self.http.get(
                url,
                params=forward_query(self.options),
                ssl=self.context,
                server_hostname=MANAGER_SERVER_NAME,
                timeout=timeout,
            ) as resp:
                if resp.status != 200:
                    error = f"manager {self.addr}: {await _message(resp)}"
                else:
                    await self._relay(resp)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            error = f"cannot reach manager {self.addr} for the logs of task {self.task_id}: {e}"
        self.feed.finish(self, error, self.node_id, self.task_id)

    async def _relay(self, resp: aiohttp.ClientResponse) -> None:
        pending = b""
        async for chunk in resp.content.iter_any():
            pending += chunk
            cut = pending.rfind(b"\n") + 1
            if cut:
                # Whole lines only: the request interleaves them with other sources' lines.
                await self._credit.acquire()
                self.feed.put(FeedItem(self, self.node_id, self.task_id, raw=pending[:cut], credited=True))
                pending = pending[cut:]


async def _message(resp: aiohttp.ClientResponse) -> str:
    text = await resp.text()
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip() or f"HTTP {resp.status}"
    return str(body.get("message", text)) if isinstance(body, dict) else text
