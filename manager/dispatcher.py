"""Agent sessions on a manager: registration, liveness, task assignments out and task status back.

Every manager runs one :class:`Dispatcher` and serves ``GET /agent/session`` (a WebSocket of msgpack
frames, api/session.py; docs/ARCHITECTURE.md "Agent sessions" is the protocol). A session goes:

1. the agent connects over mutual TLS with the certificate it got when it joined (manager/join.py);
   the node id comes from that certificate, which the authorizer (manager/tls.py) has checked. It
   sends ``register``; the dispatcher updates the node's Node object (READY, description, address) —
   a node whose object is gone was removed and is refused — and puts ``sessions/<node id>`` attached
   to this manager's lease (manager/nodes.py);
2. it answers ``registered`` (node id, heartbeat period, every manager's address) and sends the node's
   whole task set (``assignments`` with ``full``), then only what changes; likewise, in ``peers`` frames,
   everything on the overlay networks its tasks use (manager/peers.py);
3. the agent sends ``heartbeat`` every period (answered with one) and ``status`` reports, which the
   :class:`~manager.task_status.StatusWriter` writes to the store forward-only and in batches;
4. the session ends when the socket closes, when nothing arrives for 3 heartbeat periods, or when the
   node is removed; the session key is then deleted — conditionally, so a key another manager put after
   the agent failed over survives.

Fan-out is per node: sessions are indexed by node id, and each store change marks only the task on the
one or two sessions it concerns. One writer task per session turns the marks into frames, reading the
latest task from the cache and skipping changes the agent does not need (status-only echoes of its own
reports), so a burst of changes becomes one frame per node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace

from aiohttp import WSMsgType, web

from api import Cluster, Network, Node, Secret, Task, TaskState, new_id
from api.engine import EngineAck, EngineData, EngineResponse
from api.errors import CodecError
from api.logs import LogsBatch, LogsEnd
from api.objects import SECOND, NodeState, NodeStatus
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
    decode_frame,
    encode_frame,
)
from kvstore_adapters import KVError
from manager.engine import ENGINES, EngineRouter
from manager.errors import Conflict, ManagerError
from manager.logs import LOGS, LogRouter
from manager.nodes import GRACE_PERIODS, heartbeat_period
from manager.peers import PeerIndex, PeerSession
from manager.session_keys import SessionKeys, SessionUnavailable
from manager.store import Change, ObjectStore
from manager.task_status import StatusWriter
from manager.tls import caller_of

log = logging.getLogger(__name__)

#: Largest frame accepted from an agent (status reports of thousands of tasks after a reconnect).
MAX_FRAME = 64 * 1024 * 1024
#: How long a new connection may take to send ``register``.
REGISTER_TIMEOUT = 10.0
#: Attempts at writing a Node whose version keeps changing.
RETRIES = 5
#: How long closing a session waits for the agent's close frame (a dead agent sends none).
CLOSE_TIMEOUT = 2.0


class RegistrationRefused(ManagerError):
    """An agent's registration was refused; ``code`` is an :class:`~api.session.ErrorCode`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def is_assigned(task: Task) -> bool:
    """Whether the task belongs on its node's agent: it has a node and the scheduler has assigned it."""
    return bool(task.node_id) and task.status.state >= TaskState.ASSIGNED


def agent_view_changed(old: Task, new: Task) -> bool:
    """Whether the agent must hear of the change: anything but the status (which it reports itself)."""
    return (
        old.desired_state is not new.desired_state
        or old.spec != new.spec
        or old.networks != new.networks
        or old.endpoint != new.endpoint
        or old.node_id != new.node_id
        or old.service_annotations != new.service_annotations
    )


@dataclass(eq=False)
class _Session:
    """One connected agent, as its manager sees it."""

    id: str
    node_id: str
    ws: web.WebSocketResponse
    #: Tasks as last sent to the agent (what it knows).
    sent: dict[str, Task] = field(default_factory=dict)
    networks_sent: dict[str, int] = field(default_factory=dict)
    secrets_sent: dict[str, int] = field(default_factory=dict)
    #: Task ids that changed since the last frame.
    dirty: set[str] = field(default_factory=set)
    #: A network or secret the agent has changed.
    dirty_deps: bool = False
    need_full: bool = True
    ack_heartbeat: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.Task[None] | None = None
    closing: bool = False
    #: How long the agent had been silent when the session ended for that (0: it ended otherwise).
    silent_for: float = 0.0
    #: The overlay networks' versions sent in ``peers`` frames (manager/peers.py).
    peers: PeerSession = field(default_factory=PeerSession)

    def mark(self, task_id: str) -> None:
        self.dirty.add(task_id)
        self.wake.set()


class Dispatcher:
    """Serves agent sessions for one manager. ``mount(app)`` adds the route and ties start/stop to the app."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        manager_id: str = "",
        advertise_addr: str = "",
        heartbeat_period: float | None = None,
        lease_ttl: float | None = None,
        status_interval: float = 0.025,
    ) -> None:
        self.store = store
        self.manager_id = manager_id or new_id()
        self._heartbeat_override = heartbeat_period
        self._lease_ttl = lease_ttl
        self.status = StatusWriter(store, interval=status_interval)
        self.peers = PeerIndex(store)
        #: Log subscriptions on these sessions (manager/logs.py; the API's log requests use them).
        self.logs = LogRouter(
            self.send, lambda node_id: getattr(self._sessions.get(node_id), "id", ""), self.manager_id
        )
        #: Engine calls on these sessions (manager/engine.py; the API's container and image routes use them).
        self.engines = EngineRouter(
            self.send, lambda node_id: getattr(self._sessions.get(node_id), "id", ""), self.manager_id
        )
        #: This manager's lease and the session keys on it; ``keys.addr`` is the address agents reach it
        #: at, learnt from the first session's Host header when not given.
        self.keys = SessionKeys(
            store.kv, self.manager_id, ttl=self._ttl, on_stale=self._stale, addr=advertise_addr
        )
        self._sessions: dict[str, _Session] = {}
        self._handlers: set[asyncio.Task[object]] = set()
        self._closers: set[asyncio.Task[None]] = set()
        self._follower: asyncio.Task[None] | None = None
        self._started = False

    # --- settings ------------------------------------------------------------------------------------
    @property
    def heartbeat_period(self) -> float:
        """Seconds between an agent's heartbeats (the cluster's setting unless overridden)."""
        if self._heartbeat_override is not None:
            return self._heartbeat_override
        return heartbeat_period(self.store)

    @property
    def grace(self) -> float:
        """How long a session may stay silent before it is ended."""
        return GRACE_PERIODS * self.heartbeat_period

    def _ttl(self) -> float:
        return self._lease_ttl or max(self.grace, 1.0)

    def sessions(self) -> dict[str, str]:
        """node id → session id of every agent connected to this manager."""
        return {node_id: s.id for node_id, s in self._sessions.items()}

    # --- lifecycle -------------------------------------------------------------------------------------
    def mount(self, app: web.Application) -> None:
        """Serve sessions on ``app``; the dispatcher starts and stops with it."""
        app.router.add_get(SESSION_PATH, self.handle)
        app[LOGS] = self.logs
        app[ENGINES] = self.engines
        app.cleanup_ctx.append(self._app_context)
        app.on_shutdown.append(self._on_shutdown)

    async def _app_context(self, app: web.Application) -> AsyncIterator[None]:
        await self.start()
        yield
        await self.stop()

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.close_sessions()

    async def start(self) -> None:
        """Follow the store's changes, write statuses, and hold this manager's lease."""
        if self._started:
            return
        self._started = True
        self.status.start()
        self.keys.start()
        self._follower = asyncio.get_running_loop().create_task(self._follow_changes(), name="dispatcher")
        await asyncio.sleep(0)  # let the change subscription begin before any session snapshots the cache

    async def stop(self, *, revoke: bool = True) -> None:
        """End every session, write pending statuses, and give up the lease (``revoke``: at once)."""
        if not self._started:
            return
        self._started = False
        self.logs.close()
        self.engines.close()
        await self.close_sessions()
        await self.status.stop()
        await _cancel(self._follower)
        self._follower = None
        await self.keys.stop(revoke=revoke)

    async def close_sessions(self) -> None:
        """Close every session (agents fail over to another manager) and wait for their cleanup."""
        # Together: closing waits for each agent's close frame, and a dead agent sends none.
        await asyncio.gather(*(self._end(s, None) for s in list(self._sessions.values())))
        if self._closers:
            await asyncio.wait(list(self._closers), timeout=5)
        handlers = [h for h in self._handlers if h is not asyncio.current_task()]
        if handlers:
            await asyncio.wait(handlers, timeout=5)

    # --- one session ----------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The ``GET /agent/session`` handler: one agent's whole session."""
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, timeout=CLOSE_TIMEOUT, compress=False)
        await ws.prepare(request)
        me = asyncio.current_task()
        if me is not None:
            self._handlers.add(me)
        session: _Session | None = None
        try:
            frame = await self._first_frame(ws)
            if frame is None:
                return ws
            try:
                node = await self._register(frame, request)
                session = await self._open(node, ws, request)
            except (RegistrationRefused, SessionUnavailable) as e:
                who = caller_of(request)
                log.warning("refused the session of %s [%s] (%s): %s", frame.hostname or "?", who, e.code, e)
                await _send_error(ws, e.code, str(e))
                return ws
            await self._serve(session)
        except ConnectionError:
            pass
        except Exception:
            log.exception("agent session failed")
        finally:
            if session is not None:
                await self._close(session)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
            if me is not None:
                self._handlers.discard(me)
        return ws

    async def _first_frame(self, ws: web.WebSocketResponse) -> Register | None:
        try:
            msg = await ws.receive(timeout=REGISTER_TIMEOUT)
        except TimeoutError:
            await _send_error(ws, ErrorCode.PROTOCOL, "no register frame received")
            return None
        if msg.type is not WSMsgType.BINARY:
            if msg.type in (WSMsgType.TEXT,):
                await _send_error(ws, ErrorCode.PROTOCOL, "session frames are binary msgpack")
            return None
        try:
            frame = decode_frame(msg.data)
        except CodecError as e:
            await _send_error(ws, ErrorCode.PROTOCOL, f"bad frame: {e}")
            return None
        if not isinstance(frame, Register):
            await _send_error(ws, ErrorCode.PROTOCOL, "the first frame of a session must be register")
            return None
        return frame

    async def _register(self, frame: Register, request: web.Request) -> Node:
        """Update the Node of the certificate's node id. Raises RegistrationRefused."""
        identity = caller_of(request).node
        if identity is None:
            raise RegistrationRefused(
                ErrorCode.UNAUTHENTICATED, "an agent session needs the node's certificate (join first)"
            )
        if next(iter(self.store.objects(Cluster)), None) is None:
            raise RegistrationRefused(ErrorCode.UNAVAILABLE, "the cluster is not initialised yet")
        description = frame.description
        if not description.hostname:
            description = replace(description, hostname=frame.hostname)
        addr = frame.addr or request.remote or ""
        status = NodeStatus(state=NodeState.READY, addr=addr, description=description)
        try:
            return await self._update_node(identity.node_id, status)
        except KVError as e:
            raise RegistrationRefused(ErrorCode.UNAVAILABLE, f"store unavailable: {e}") from None

    async def _update_node(self, node_id: str, status: NodeStatus) -> Node:
        node = self.store.get(Node, node_id) or await self.store.fetch(Node, node_id)
        for _ in range(RETRIES):
            if node is None:
                raise RegistrationRefused(
                    ErrorCode.NODE_REMOVED, f"node {node_id} is not part of this cluster (it was removed)"
                )
            if node.status == status:
                return node  # a reconnect with nothing new: no write, no churn for the orchestrators
            try:
                return await self.store.update(replace(node, status=status))
            except Conflict:
                node = await self.store.fetch(Node, node_id)
        raise RegistrationRefused(ErrorCode.UNAVAILABLE, f"node {node_id} keeps changing; try again")

    async def _open(self, node: Node, ws: web.WebSocketResponse, request: web.Request) -> _Session:
        old = self._sessions.get(node.meta.id)
        if old is not None:
            self._end_soon(old, None)  # the agent reconnected; its old connection is dead
        s = _Session(new_id(), node.meta.id, ws)
        self._sessions[s.node_id] = s
        try:
            if not self.keys.addr and request.host:
                self.keys.addr = request.host
                with contextlib.suppress(KVError):
                    await self.keys.advertise()
            revision = await self.keys.put(s.node_id, s.id, timeout=self.grace)
            # The full task set must come from a cache that has seen everything written before this
            # session began: from a lagging cache, an agent failing over would drop tasks still running.
            try:
                await self.store.wait_for(revision, timeout=self.grace)
            except TimeoutError:
                raise SessionUnavailable("the manager's view of the store is lagging") from None
            period_ns = int(self.heartbeat_period * SECOND)
            registered = Registered(s.node_id, period_ns, await self.keys.manager_addrs())
            await ws.send_bytes(encode_frame(registered))
        except BaseException:
            await self._close(s)
            raise
        s.writer = asyncio.get_running_loop().create_task(self._writer(s), name=f"session-{s.node_id}")
        s.wake.set()  # the first frame: the full task set
        return s

    async def _serve(self, s: _Session) -> None:
        ws = s.ws
        while not s.closing:
            try:
                msg = await ws.receive(timeout=self.grace)
            except TimeoutError:
                log.info("node %s missed its heartbeats; ending its session", s.node_id)
                s.silent_for = self.grace
                return
            if msg.type is not WSMsgType.BINARY:
                return  # closed, closing or broken
            try:
                frame = decode_frame(msg.data)
            except CodecError as e:
                await self._end(s, Error(f"bad frame: {e}", ErrorCode.PROTOCOL))
                return
            if isinstance(frame, Heartbeat):
                s.ack_heartbeat = True
                s.wake.set()
            elif isinstance(frame, StatusReport):
                for u in frame.updates:
                    self.status.submit(s.node_id, u.task_id, u.status)
            elif isinstance(frame, LogsBatch | LogsEnd):
                self.logs.on_frame(s.node_id, frame)
            elif isinstance(frame, EngineResponse | EngineData | EngineAck):
                self.engines.on_frame(s.node_id, frame)
            else:
                await self._end(s, Error(f"unexpected {type(frame).__name__} frame", ErrorCode.PROTOCOL))
                return

    async def send(self, node_id: str, frame: Frame) -> bool:
        """Send a frame on the node's session here, beside its writer (log requests); False if none."""
        s = self._sessions.get(node_id)
        if s is None or s.closing:
            return False
        try:
            await s.ws.send_bytes(encode_frame(frame))
        except (ConnectionError, RuntimeError):
            return False
        return True

    def _stale(self, node_id: str, session_id: str) -> None:
        s = self._sessions.get(node_id)
        if s is not None and s.id == session_id:
            self._end_soon(s, None)

    def _end_soon(self, s: _Session, error: Error | None) -> None:
        """Take the session out of the index now and close it in the background."""
        if self._sessions.get(s.node_id) is s:
            del self._sessions[s.node_id]
        closer = asyncio.get_running_loop().create_task(self._end(s, error))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)

    async def _end(self, s: _Session, error: Error | None) -> None:
        """End a session from outside its receive loop (replaced, node removed, shutdown)."""
        if self._sessions.get(s.node_id) is s:
            del self._sessions[s.node_id]
        if s.closing:
            return
        s.closing = True
        await _cancel(s.writer)
        if error is not None:
            with contextlib.suppress(Exception):
                await s.ws.send_bytes(encode_frame(error))
        with contextlib.suppress(Exception):
            await s.ws.close()

    async def _close(self, s: _Session) -> None:
        s.closing = True
        if self._sessions.get(s.node_id) is s:
            del self._sessions[s.node_id]
        await _cancel(s.writer)
        self.logs.session_ended(s.node_id, s.id)
        self.engines.session_ended(s.node_id, s.id)
        if s.node_id not in self._sessions:
            self.peers.unwatch(s.node_id)
        await self.keys.release(s.node_id, s.id, silent_for=s.silent_for)
        log.debug("session %s of node %s ended", s.id, s.node_id)

    # --- assignments out --------------------------------------------------------------------------------
    async def _writer(self, s: _Session) -> None:
        try:
            while True:
                await s.wake.wait()
                s.wake.clear()
                if s.ack_heartbeat:
                    s.ack_heartbeat = False
                    period_ns = int(self.heartbeat_period * SECOND)
                    await s.ws.send_bytes(encode_frame(Heartbeat(period_ns)))
                frame = self._assignments(s)
                if frame is not None:
                    await s.ws.send_bytes(encode_frame(frame))
                    s.peers.pending = True  # its tasks changed: maybe the networks it uses too
                peers = self._peers_frame(s) if s.peers.pending else None
                if peers is not None:
                    await s.ws.send_bytes(encode_frame(peers))
        except (ConnectionError, RuntimeError) as e:
            log.debug("sending to node %s failed: %s", s.node_id, e)
            s.closing = True
            with contextlib.suppress(Exception):
                await s.ws.close()

    def _assignments(self, s: _Session) -> Assignments | None:
        store = self.store
        if s.need_full:
            s.need_full = False
            s.dirty.clear()
            s.dirty_deps = False
            tasks = [t for t in store.tasks_on_node(s.node_id) if is_assigned(t)]
            s.sent = {t.meta.id: t for t in tasks}
            s.networks_sent.clear()
            s.secrets_sent.clear()
            networks, secrets = self._dependencies(s, tasks)
            return Assignments(True, tuple(tasks), (), networks, secrets)
        changed: list[Task] = []
        removed: list[str] = []
        for task_id in s.dirty:
            t = store.get(Task, task_id)
            if t is not None and t.node_id == s.node_id and is_assigned(t):
                before = s.sent.get(task_id)
                if before is None or agent_view_changed(before, t):
                    changed.append(t)
                    s.sent[task_id] = t
            elif s.sent.pop(task_id, None) is not None:
                removed.append(task_id)
        s.dirty.clear()
        if removed or changed:
            # The agent drops secrets none of its tasks use any more (agent/worker.py); forget them too,
            # so they are sent again should a task need them later.
            used = self._secret_ids(s.sent.values())
            s.secrets_sent = {k: v for k, v in s.secrets_sent.items() if k in used}
        networks, secrets = self._dependencies(s, changed, recheck=s.dirty_deps)
        s.dirty_deps = False
        if not (changed or removed or networks or secrets):
            return None
        return Assignments(False, tuple(changed), tuple(removed), networks, secrets)

    def _dependencies(
        self, s: _Session, tasks: Iterable[Task], *, recheck: bool = False
    ) -> tuple[tuple[Network, ...], tuple[Secret, ...]]:
        """The networks and secrets of ``tasks`` the agent does not have in their current version."""
        store = self.store
        net_ids: set[str] = set(s.networks_sent) if recheck else set()
        secret_ids: set[str] = set(s.secrets_sent) if recheck else set()
        tasks = list(tasks)
        for t in tasks:
            net_ids.update(a.network_id for a in t.networks)
            for attachment in t.spec.networks:
                net = store.get(Network, attachment.target) or store.find_by_name(Network, attachment.target)
                if net is not None:
                    net_ids.add(net.meta.id)
        secret_ids |= self._secret_ids(tasks)
        networks = []
        for net_id in net_ids:
            net = store.get(Network, net_id)
            if net is not None and s.networks_sent.get(net_id) != net.meta.version:
                s.networks_sent[net_id] = net.meta.version
                networks.append(net)
        secrets = []
        for secret_id in secret_ids:
            secret = store.get(Secret, secret_id)
            if secret is not None and s.secrets_sent.get(secret_id) != secret.meta.version:
                s.secrets_sent[secret_id] = secret.meta.version
                secrets.append(secret)
        return tuple(networks), tuple(secrets)

    def _secret_ids(self, tasks: Iterable[Task]) -> set[str]:
        """Ids of the secrets ``tasks`` use (only those go to an agent)."""
        store = self.store
        ids: set[str] = set()
        for t in tasks:
            for ref in t.spec.container.secrets:
                secret = store.get(Secret, ref.secret_id) or store.find_by_name(Secret, ref.secret_name)
                if secret is not None:
                    ids.add(secret.meta.id)
        return ids

    async def _follow_changes(self) -> None:
        async for change in self.store.changes():
            try:
                self._on_change(change)
            except Exception:
                log.exception("dispatching a change of %s failed", change.kind)

    def _on_change(self, change: Change) -> None:
        self._wake_peer_watchers(change)
        if change.kind == "tasks":
            self._on_task(change.old, change.new)
        elif change.kind in ("networks", "secrets") and change.new is not None:
            obj_id = change.new.meta.id
            for s in self._sessions.values():
                held = s.networks_sent if change.kind == "networks" else s.secrets_sent
                if obj_id in held:
                    s.dirty_deps = True
                    s.wake.set()
        elif change.kind == "nodes" and change.action == "delete":
            gone = self._sessions.get(change.old.meta.id)
            if gone is not None:
                self._end_soon(gone, Error("this node was removed from the cluster", ErrorCode.NODE_REMOVED))

    # --- peers of overlay networks (manager/peers.py) -----------------------------------------------------
    def _peers_frame(self, s: _Session) -> Peers | None:
        """The overlay networks the node's tasks use that changed since the session's last ``peers``."""
        current = (self.store.get(Task, task_id) for task_id in s.sent)
        return self.peers.frame(s.node_id, s.peers, self.peers.wanted(t for t in current if t is not None))

    def _wake_peer_watchers(self, change: Change) -> None:
        for network_id in self.peers.on_change(change):
            for node_id in self.peers.watchers.get(network_id, ()):
                session = self._sessions.get(node_id)
                if session is not None:
                    session.peers.pending = True
                    session.wake.set()

    def _on_task(self, old: Task | None, new: Task | None) -> None:
        was = old.node_id if old is not None and is_assigned(old) else ""
        now = new.node_id if new is not None and is_assigned(new) else ""
        if was == now and (
            not now or (old is not None and new is not None and not agent_view_changed(old, new))
        ):
            return  # nobody's business, or a status change the agent itself reported
        task_id = (new or old).meta.id  # type: ignore[union-attr]
        for node_id in (was, now):
            session = self._sessions.get(node_id) if node_id else None
            if session is not None:
                session.mark(task_id)


async def _send_error(ws: web.WebSocketResponse, code: str, message: str) -> None:
    with contextlib.suppress(Exception):
        await ws.send_bytes(encode_frame(Error(message, code)))
        await ws.close()


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is None or task is asyncio.current_task():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
