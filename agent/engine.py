"""The agent's side of engine calls: serve the node's Docker Engine API, and relay managers' calls to it.

A node running real containers serves its engine API (agent/api) on a unix socket of its own, as dockerd
does: ``shoal-agent --engine-socket`` (default ``<state dir>/engine.sock``), so ``DOCKER_HOST`` on the node
works too. Managers reach the same API through the session (api/engine.py): each ``engine_request``
becomes one HTTP request on that socket, and the response goes back as ``engine_response`` and
``engine_data`` frames, sent only while the call has credit. A node with no engine (the simulated
executor) answers every call with 501.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from agent.api.app import serve_unix
from agent.executor import Executor
from agent.executor_runc import RuncExecutor
from api.credit import Credit
from api.engine import (
    CHUNK,
    EngineAck,
    EngineCancel,
    EngineData,
    EngineRequest,
    EngineResponse,
    carried_headers,
)

log = logging.getLogger(__name__)

EngineFrame = EngineRequest | EngineData | EngineAck | EngineCancel
Reply = EngineResponse | EngineData | EngineAck
Send = Callable[[Reply], Awaitable[None]]

#: Calls one session may run at once; more are answered 429.
MAX_CALLS = 256
#: Longest unix socket path the kernel takes (sun_path is 108 bytes with its NUL).
_MAX_SOCKET_PATH = 107


def engine_socket_path(state_dir: Path, wanted: str = "") -> Path:
    """Where the engine socket goes: ``wanted``, else ``<state dir>/engine.sock``, unless that is too long
    for a unix socket; then a short path under /run/shoal named after the state dir."""
    if wanted:
        return Path(wanted)
    path = state_dir / "engine.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
    return Path("/run/shoal") / f"engine-{digest}.sock"


async def serve_engine(executor: Executor, path: Path) -> web.AppRunner | None:
    """Serve the executor's local runtime (and its networks) on ``path``; None when it has no runtime."""
    if not isinstance(executor, RuncExecutor):
        return None
    await executor.describe()  # opens the runtime and the host's networking
    return await serve_unix(executor.runtime, path, mode=0o660, network=executor.network)


@dataclass(eq=False)
class _Call:
    request: EngineRequest
    send: Send
    credit: Credit
    body: asyncio.Queue[EngineData] = field(default_factory=asyncio.Queue)
    job: asyncio.Task[None] | None = None


class EngineRelay:
    """Serves one node's engine calls: :meth:`handle` every engine frame of the session, :meth:`reset` when
    the session ends, :meth:`close` when the agent stops. ``socket`` None: the node has no engine."""

    def __init__(self, socket: Path | None, node_name: str = "") -> None:
        self.socket = socket
        self.node_name = node_name
        self._calls: dict[str, _Call] = {}
        self._http: aiohttp.ClientSession | None = None

    @property
    def active(self) -> int:
        """Calls running now."""
        return len(self._calls)

    def handle(self, frame: EngineFrame, send: Send) -> None:
        """One frame from the manager (``send`` answers on the same session)."""
        if isinstance(frame, EngineRequest):
            self._start(frame, send)
            return
        call = self._calls.get(frame.call_id)
        if call is None:
            return  # over already; the manager learns that from our last frame
        if isinstance(frame, EngineData):
            call.body.put_nowait(frame)  # bounded: the manager keeps to the window we grant
        elif isinstance(frame, EngineAck):
            call.credit.give(frame.frames)
        elif call.job is not None:
            call.job.cancel()

    def _start(self, frame: EngineRequest, send: Send) -> None:
        call = _Call(frame, send, Credit(max(frame.window, 1)))
        if frame.call_id in self._calls or len(self._calls) >= MAX_CALLS:
            call.job = asyncio.get_running_loop().create_task(self._refuse(call))
            return
        self._calls[frame.call_id] = call
        call.job = asyncio.get_running_loop().create_task(self._run(call), name=f"engine-{frame.call_id}")
        call.job.add_done_callback(lambda _job: self._forget(call))

    def _forget(self, call: _Call) -> None:
        if self._calls.get(call.request.call_id) is call:
            del self._calls[call.request.call_id]

    async def _refuse(self, call: _Call) -> None:
        await self._answer(call, 429, f"too many engine calls on node {self.node_name}")

    async def _answer(self, call: _Call, status: int, message: str) -> None:
        body = json.dumps({"message": message}).encode()
        await call.send(EngineResponse(call.request.call_id, status, {"content-type": "application/json"}))
        await call.send(EngineData(call.request.call_id, body, end=True))

    async def _run(self, call: _Call) -> None:
        req = call.request
        try:
            if self.socket is None:
                await self._answer(call, 501, f"node {self.node_name} runs no containers (simulated)")
                return
            http = self._client()
            data: bytes | AsyncIterator[bytes] = self._body(call) if req.more else req.body
            try:
                response = await http.request(
                    req.method, f"http://engine{req.path}", headers=req.headers, data=data
                )
            except (aiohttp.ClientError, OSError) as e:
                await self._answer(call, 503, f"the engine of node {self.node_name} is not answering: {e}")
                return
            async with response:
                await call.send(
                    EngineResponse(req.call_id, response.status, carried_headers(response.headers))
                )
                try:
                    while chunk := await response.content.read(CHUNK):
                        await call.credit.take()
                        await call.send(EngineData(req.call_id, chunk))
                except (aiohttp.ClientError, OSError) as e:
                    await call.send(EngineData(req.call_id, end=True, error=str(e) or type(e).__name__))
                    return
            await call.send(EngineData(req.call_id, end=True))
        except (ConnectionError, RuntimeError) as e:
            log.debug("engine call %s: the session went away: %s", req.call_id, e)

    async def _body(self, call: _Call) -> AsyncIterator[bytes]:
        """The request body: the first piece, then ``engine_data`` frames, acknowledged as they are read."""
        if call.request.body:
            yield call.request.body
        while True:
            piece = await call.body.get()
            if piece.data:
                yield piece.data
            await call.send(EngineAck(call.request.call_id, 1))
            if piece.end:
                return

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            assert self.socket is not None
            self._http = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket)),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                auto_decompress=False,
            )
        return self._http

    def reset(self) -> None:
        """The session ended: its calls end with it."""
        for call in list(self._calls.values()):
            if call.job is not None:
                call.job.cancel()
        self._calls.clear()

    async def close(self) -> None:
        """Stop every call and the client."""
        jobs = [c.job for c in self._calls.values() if c.job is not None]
        self.reset()
        for job in jobs:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job
        if self._http is not None:
            await self._http.close()
            self._http = None
