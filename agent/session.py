"""The agent's session with the managers: register, heartbeat, receive assignments, send statuses.

:class:`AgentSession` connects to one of the managers it knows (``wss://ADDR/agent/session``, mutual TLS
with the node's certificate: agent/identity.py), registers — the certificate says which node it is —
then runs three things until the connection ends: heartbeats every period, assignments handed to the
worker, and status reports batched into frames. When the manager goes away — the connection closes, or
no answer arrives for 3 heartbeat periods — it fails over to the next manager (the list it was given
plus every manager the last ``registered`` named), backing off while none answers. After each
registration it sends every task's current status again, so nothing reported to a manager that died
before writing it is lost.

A refusal that retrying cannot fix (a removed node, a certificate the managers refuse) raises
:class:`~agent.errors.SessionRefused` out of :meth:`AgentSession.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Callable, Iterable, Sequence

import aiohttp

from agent.engine import EngineRelay
from agent.errors import SessionRefused
from agent.identity import NODE_ID_FILE, NodeCredentials
from agent.logs import LogStreamer
from api.engine import EngineAck, EngineCancel, EngineData, EngineRequest
from api.errors import CodecError
from api.join import MANAGER_SERVER_NAME
from api.logs import LogsAck, LogsBatch, LogsCancel, LogsEnd, LogsSubscribe
from api.objects import SECOND, NodeDescription, TaskStatus
from api.peers import Peers
from api.session import (
    SESSION_PATH,
    Assignments,
    Error,
    ErrorCode,
    Frame,
    Heartbeat,
    Register,
    Registered,
    StatusReport,
    StatusUpdate,
    decode_frame,
    encode_frame,
)

log = logging.getLogger(__name__)

#: Largest frame accepted from a manager (a full task set of a busy node).
MAX_FRAME = 256 * 1024 * 1024


def session_url(addr: str) -> str:
    """The session URL of a manager given as ``host:port`` (or as a URL: only its address counts)."""
    if "://" in addr:
        addr = addr.split("://", 1)[1]
    return f"wss://{addr.rstrip('/')}{SESSION_PATH}"


class AgentSession:
    """One node's session with the managers. ``await run()`` until :meth:`stop` (or a fatal refusal)."""

    def __init__(
        self,
        managers: Sequence[str],
        credentials: NodeCredentials,
        *,
        describe: Callable[[], NodeDescription],
        on_assignments: Callable[[Assignments], None],
        statuses: Callable[[], Iterable[StatusUpdate]],
        hostname: str = "",
        addr: str = "",
        http: aiohttp.ClientSession | None = None,
        backoff: tuple[float, float] = (0.05, 5.0),
        connect_timeout: float = 10.0,
        status_interval: float = 0.01,
    ) -> None:
        if not managers:
            raise ValueError("an agent needs at least one manager address")
        self.managers: list[str] = list(dict.fromkeys(managers))
        self.credentials = credentials
        self.hostname = hostname
        self.addr = addr
        self._describe = describe
        self._on_assignments = on_assignments
        #: Where ``peers`` frames go (the overlay driver's ``apply_peers``); None: they are ignored.
        self.on_peers: Callable[[Peers], None] | None = None
        #: Serves the managers' log subscriptions (agent/logs.py); None: they are refused.
        self.logs: LogStreamer | None = None
        #: Relays the managers' engine calls (agent/engine.py); None: they are not answered.
        self.engine: EngineRelay | None = None
        self._refusals: set[asyncio.Task[None]] = set()
        self._statuses = statuses
        self._http = http
        self._own_http = http is None
        self._backoff = backoff
        self._connect_timeout = connect_timeout
        self._status_interval = status_interval
        #: The manager serving the session now ("" while disconnected).
        self.manager = ""
        self.heartbeat_period = 5.0
        #: Set while registered with a manager.
        self.connected = asyncio.Event()
        #: Registrations so far (the first join and every reconnect).
        self.sessions = 0
        self._pending: dict[str, TaskStatus] = {}
        self._pending_event = asyncio.Event()
        self._next = 0
        self._stopping = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    @property
    def node_id(self) -> str:
        """This node's id (its certificate's)."""
        return self.credentials.node_id

    # --- statuses from the worker -------------------------------------------------------------------------
    def report(self, task_id: str, status: TaskStatus) -> None:
        """Queue a task's new status; only the latest per task is kept until it is sent."""
        self._pending[task_id] = status
        self._pending_event.set()

    # --- the session loop ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep a session with some manager until stopped; raises SessionRefused when refused for good."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        failures = 0
        try:
            while not self._stopping:
                addr = self.managers[self._next % len(self.managers)]
                registered = False
                try:
                    registered = await self._session(addr)
                except SessionRefused as e:
                    if e.fatal:
                        raise
                    log.warning("manager %s refused the session: %s", addr, e.message)
                except aiohttp.WSServerHandshakeError as e:
                    if e.status in (401, 403):
                        # The manager's authorizer refused this node's certificate: retrying cannot help.
                        raise SessionRefused(
                            "certificate", f"manager {addr}: {e.message}", fatal=True
                        ) from None
                    log.warning("manager %s: %s", addr, e)
                except aiohttp.ClientSSLError as e:
                    log.warning("manager %s: TLS failed: %s", addr, e)
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    log.debug("manager %s: %s", addr, e)
                finally:
                    self.connected.clear()
                    self.manager = ""
                    self._ws = None
                if self._stopping:
                    return
                # Fail over: the next attempt goes to the next manager in the list.
                self._next += 1
                failures = 0 if registered else failures + 1
                await asyncio.sleep(self._delay(failures))
        finally:
            if self._own_http and self._http is not None:
                await self._http.close()
                self._http = None

    def _delay(self, failures: int) -> float:
        low, high = self._backoff
        # Only back off once every manager has been tried; jitter so a thousand agents do not stampede.
        rounds = failures // max(len(self.managers), 1)
        return float(min(high, low * (2**rounds)) * random.uniform(0.5, 1.0))

    async def stop(self) -> None:
        """End the session and make :meth:`run` return."""
        self._stopping = True
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _session(self, addr: str) -> bool:
        """One connection to ``addr``; returns whether it got as far as registering."""
        assert self._http is not None
        if self.credentials.expired:
            assert self.credentials.certificate is not None
            raise SessionRefused(
                "certificate",
                f"the node certificate expired at {self.credentials.certificate.not_valid_after_utc}; "
                f"join again (remove {self.credentials.cert_file} and start with a join token)",
                fatal=True,
            )
        timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)
        async with asyncio.timeout(self._connect_timeout):
            ws = await self._http.ws_connect(
                session_url(addr),
                max_msg_size=MAX_FRAME,
                timeout=timeout,
                ssl=self.credentials.context(),
                server_hostname=MANAGER_SERVER_NAME,
            )
        self._ws = ws
        try:
            if self._stopping:
                return False
            registered = await self._register(ws, addr)
            self.sessions += 1
            self.connected.set()
            await self._serve(ws, registered)
            return True
        finally:
            if not ws.closed:
                await ws.close()

    async def _register(self, ws: aiohttp.ClientWebSocketResponse, addr: str) -> Registered:
        description = self._describe()
        frame = Register(
            hostname=self.hostname or description.hostname,
            addr=self.addr,
            description=description,
        )
        await ws.send_bytes(encode_frame(frame))
        answer = await self._receive(ws, self._connect_timeout)
        if isinstance(answer, Error):
            raise self._refusal(answer)
        if not isinstance(answer, Registered):
            raise SessionRefused(ErrorCode.PROTOCOL, f"manager {addr} answered {answer!r}", fatal=False)
        if answer.node_id != self.node_id:
            raise SessionRefused(
                ErrorCode.PROTOCOL,
                f"manager {addr} registered {answer.node_id!r}, not this node",
                fatal=False,
            )
        self.manager = addr
        if answer.heartbeat_period_ns > 0:
            self.heartbeat_period = answer.heartbeat_period_ns / SECOND
        for m in answer.managers:
            if m and m not in self.managers:
                self.managers.append(m)
        log.info("node %s registered with manager %s", self.node_id, addr)
        return answer

    def _refusal(self, error: Error) -> SessionRefused:
        message = error.message
        if error.code == ErrorCode.NODE_REMOVED:
            state = self.credentials.state_dir
            message += (
                f"; to join again as a new node, delete {state / NODE_ID_FILE} and "
                f"{self.credentials.cert_file} and start with a join token"
            )
        return SessionRefused(error.code, message, fatal=error.fatal)

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse, timeout: float) -> Frame | None:
        """The next frame, or None when the connection ended."""
        msg = await ws.receive(timeout=timeout)
        if msg.type is not aiohttp.WSMsgType.BINARY:
            return None
        try:
            return decode_frame(msg.data)
        except CodecError as e:
            log.warning("bad frame from manager: %s", e)
            return None

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse, registered: Registered) -> None:
        # Everything the worker knows, again: a manager that died may not have written the last reports.
        for update in self._statuses():
            self._pending.setdefault(update.task_id, update.status)
        self._pending_event.set()
        jobs = [
            asyncio.create_task(self._heartbeats(ws), name="agent-heartbeats"),
            asyncio.create_task(self._send_statuses(ws), name="agent-statuses"),
        ]
        try:
            await self._receive_loop(ws)
        finally:
            if self.logs is not None:
                self.logs.reset()  # log subscriptions belong to this connection
            if self.engine is not None:
                self.engine.reset()  # and so do engine calls
            for job in jobs:
                job.cancel()
            for job in jobs:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job

    async def _receive_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            try:
                frame = await self._receive(ws, 3 * self.heartbeat_period)
            except TimeoutError:
                log.warning("manager %s stopped answering; failing over", self.manager)
                return
            if frame is None:
                return
            if isinstance(frame, Assignments):
                self._on_assignments(frame)
            elif isinstance(frame, Peers):
                if self.on_peers is not None:
                    self.on_peers(frame)
            elif isinstance(frame, Heartbeat):
                if frame.heartbeat_period_ns > 0:
                    self.heartbeat_period = frame.heartbeat_period_ns / SECOND
            elif isinstance(frame, LogsSubscribe | LogsAck | LogsCancel):
                self._on_logs(ws, frame)
            elif isinstance(frame, EngineRequest | EngineData | EngineAck | EngineCancel):
                if self.engine is not None:
                    self.engine.handle(frame, functools.partial(_send, ws))
            elif isinstance(frame, Error):
                raise self._refusal(frame)

    def _on_logs(
        self, ws: aiohttp.ClientWebSocketResponse, frame: LogsSubscribe | LogsAck | LogsCancel
    ) -> None:
        async def send(reply: LogsBatch | LogsEnd) -> None:
            await ws.send_bytes(encode_frame(reply))

        if self.logs is not None:
            self.logs.handle(frame, send)
        elif isinstance(frame, LogsSubscribe):
            refusal = LogsEnd(frame.subscription_id, "", "this agent serves no logs")
            job = asyncio.get_running_loop().create_task(send(refusal), name="logs-refused")
            self._refusals.add(job)
            job.add_done_callback(self._refusals.discard)

    async def _heartbeats(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_period)
            await ws.send_bytes(encode_frame(Heartbeat()))

    async def _send_statuses(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await self._pending_event.wait()
            # A short pause lets a task's quick succession of states, and many tasks', share one frame.
            await asyncio.sleep(self._status_interval)
            self._pending_event.clear()
            batch, self._pending = self._pending, {}
            if not batch:
                continue
            frame = StatusReport(tuple(StatusUpdate(tid, st) for tid, st in batch.items()))
            try:
                await ws.send_bytes(encode_frame(frame))
            except BaseException:
                # Keep them for the next session (unless newer ones came meanwhile).
                for tid, st in batch.items():
                    self._pending.setdefault(tid, st)
                raise


async def _send(ws: aiohttp.ClientWebSocketResponse, frame: Frame) -> None:
    await ws.send_bytes(encode_frame(frame))
