"""Engine calls on a manager: HTTP requests to a node's Docker Engine API through the node's session here.

:class:`EngineRouter` (one per manager, owned by the dispatcher) opens :class:`EngineCall` objects on the
sessions this manager holds and routes the agent's answers to them (api/engine.py has the frames). A call
is read like an HTTP response: :meth:`EngineCall.response` for the status and headers, then
:meth:`EngineCall.read` piece by piece; each piece read returns credit to the agent, so the agent sends
no faster than the caller consumes. A request body longer than one frame goes with
:meth:`EngineCall.write`, under the credit the agent returns.

Calls to a node whose session another manager holds are relayed by manager/api/engine.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from api import new_id
from api.credit import Credit
from api.engine import (
    DEFAULT_WINDOW,
    EngineAck,
    EngineCancel,
    EngineData,
    EngineRequest,
    EngineResponse,
)
from manager.errors import Unavailable

log = logging.getLogger(__name__)

#: Credit goes back to the agent once this many pieces of a response are read.
ACK_EVERY = max(DEFAULT_WINDOW // 2, 1)

Send = Callable[[str, EngineRequest | EngineData | EngineAck | EngineCancel], Awaitable[bool]]


class EngineCallError(Unavailable):
    """The call broke off: its session ended, or the agent's engine failed mid-response."""


def _future() -> asyncio.Future[EngineResponse]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False)
class EngineCall:
    """One request to a node's engine and its response; see the module docstring."""

    router: EngineRouter
    node_id: str
    session_id: str
    id: str = field(default_factory=new_id)
    window: int = DEFAULT_WINDOW
    _response: asyncio.Future[EngineResponse] = field(default_factory=_future)
    _pieces: asyncio.Queue[EngineData] = field(default_factory=asyncio.Queue)
    #: Request body pieces the agent may still take before it acknowledges some.
    _credit: Credit = field(default_factory=lambda: Credit(DEFAULT_WINDOW))
    _unacked: int = 0
    #: The agent sent its last frame (or the session ended): nothing more comes.
    ended: bool = False
    _read_all: bool = False

    async def write(self, data: bytes, *, end: bool = False) -> None:
        """Send more of the request body (``end``: the last piece), waiting for credit."""
        if self.ended or not await self._credit.take():
            raise EngineCallError(f"the engine call to node {self.node_id} ended")
        if not await self.router.send(self.node_id, EngineData(self.id, data, end=end)):
            raise EngineCallError(f"the session of node {self.node_id} ended")

    async def response(self) -> EngineResponse:
        """The engine's status and headers; raises EngineCallError if the call ended before them."""
        return await self._response

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end. Raises EngineCallError if it broke off."""
        while not self._read_all:
            piece = await self._pieces.get()
            if piece.error:
                self._read_all = True
                raise EngineCallError(f"node {self.node_id}: {piece.error}")
            if piece.end:
                self._read_all = True
                return piece.data
            self._unacked += 1
            if self._unacked >= ACK_EVERY:
                frames, self._unacked = self._unacked, 0
                await self.router.send(self.node_id, EngineAck(self.id, frames))
            if piece.data:
                return piece.data
        return b""

    async def close(self) -> None:
        """The caller is done: cancel the call at the agent if it is still running."""
        self.router.forget(self)
        if not self.ended:
            self.ended = True
            await self.router.send(self.node_id, EngineCancel(self.id))

    # --- fed by the router ------------------------------------------------------------------------------
    def _on_frame(self, frame: EngineResponse | EngineData | EngineAck) -> None:
        if isinstance(frame, EngineResponse):
            if not self._response.done():
                self._response.set_result(frame)
        elif isinstance(frame, EngineAck):
            self._credit.give(frame.frames)
        else:
            if frame.end:
                self.ended = True
                self._credit.close()  # a body still being written is not wanted any more
                self.router.forget(self)
                if not self._response.done():
                    self._response.set_exception(EngineCallError(f"node {self.node_id}: {frame.error}"))
            self._pieces.put_nowait(frame)  # bounded: the agent keeps to our window

    def _fail(self, reason: str) -> None:
        self.ended = True
        self._credit.close()
        if not self._response.done():
            self._response.set_exception(EngineCallError(reason))
        self._pieces.put_nowait(EngineData(self.id, end=True, error=reason))


class EngineRouter:
    """The engine calls on this manager's agent sessions; ``send`` and ``session_of`` as LogRouter's."""

    def __init__(self, send: Send, session_of: Callable[[str], str], manager_id: str = "") -> None:
        self.send = send
        self.session_of = session_of
        #: This manager's id (as session keys name it).
        self.manager_id = manager_id
        self._calls: dict[str, EngineCall] = {}

    @property
    def active(self) -> int:
        """Calls open now."""
        return len(self._calls)

    async def open(
        self,
        node_id: str,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        more: bool = False,
    ) -> EngineCall | None:
        """Start a call on the node's session here; None when this manager holds no session of the node.
        ``more``: the body goes on with :meth:`EngineCall.write`."""
        session_id = self.session_of(node_id)
        if not session_id:
            return None
        call = EngineCall(self, node_id, session_id)
        self._calls[call.id] = call
        frame = EngineRequest(call.id, method, path, dict(headers or {}), body, more, call.window)
        if not await self.send(node_id, frame):
            self.forget(call)
            return None
        return call

    def forget(self, call: EngineCall) -> None:
        if self._calls.get(call.id) is call:
            del self._calls[call.id]

    def on_frame(self, node_id: str, frame: EngineResponse | EngineData | EngineAck) -> None:
        """An engine frame from the node's agent."""
        call = self._calls.get(frame.call_id)
        if call is None or call.node_id != node_id:
            return  # cancelled meanwhile
        call._on_frame(frame)

    def session_ended(self, node_id: str, session_id: str) -> None:
        """A session of the node here is over, and the calls made on it with it."""
        for call in [c for c in self._calls.values() if c.node_id == node_id and c.session_id == session_id]:
            self.forget(call)
            call._fail(f"the session of node {node_id} ended during the call")

    def close(self) -> None:
        """End every call (the manager stops)."""
        for call in list(self._calls.values()):
            self.forget(call)
            call._fail("the manager is shutting down")


#: Where the dispatcher leaves its router on the API application.
ENGINES = web.AppKey("engines", EngineRouter)
