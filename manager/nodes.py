"""Node liveness: agent session keys, and the leader's decision of which nodes are READY or DOWN.

While an agent holds a session with a manager, that manager keeps the key ``sessions/<node id>`` in the
store, attached to its own lease (manager/dispatcher.py). The key vanishes when the session ends, when
the agent misses its heartbeats, or when the manager dies (its lease expires). So "is this node alive" is
one question to the store, answered the same way on every backend, without a write per heartbeat.

The leader turns that into node states:

- :class:`NodeLiveness` follows ``sessions/`` and knows, for each node, since when it has had no session;
- :func:`plan_node_states` is the pure rule: a node without a session for longer than the grace period
  (3 heartbeat periods) becomes DOWN, a node with a session becomes READY;
- :func:`run_node_states` is the loop the leader runs around it: it watches, waits until the next node
  could cross the grace, and writes the changes conditionally.

Managers also advertise themselves under ``managers/<manager id>`` (same lease), so agents learn every
address they can fail over to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from api import Cluster, Node
from api.objects import SECOND, NodeState
from kvstore_adapters import CompactedError, EventType, KVError, KVStore
from manager.errors import Conflict
from manager.store import ObjectStore, Update

log = logging.getLogger(__name__)

SESSIONS_PREFIX = "sessions/"
MANAGERS_PREFIX = "managers/"
#: Heartbeat period when the cluster object does not say (Docker's default).
DEFAULT_HEARTBEAT = 5.0
#: A node is DOWN after this many heartbeat periods without a session.
GRACE_PERIODS = 3
#: Node writes per store transaction.
BATCH = 100

Clock = Callable[[], float]


def session_key(node_id: str) -> str:
    """The key that exists while ``node_id`` has a session."""
    return SESSIONS_PREFIX + node_id


def manager_key(manager_id: str) -> str:
    """The key a manager advertises its address under."""
    return MANAGERS_PREFIX + manager_id


@dataclass(frozen=True)
class SessionRecord:
    """What a session key holds: which manager serves the node, and since when (wall-clock seconds).

    ``silent_for`` > 0 marks a session that ended because the agent fell silent: its manager writes
    this just before deleting the key, so the leader counts the node absent since it was last heard
    from (``silent_for`` seconds ago) rather than since the key vanished — a grace period earlier.
    """

    node_id: str
    manager_id: str
    session_id: str
    manager_addr: str = ""
    since: float = 0.0
    silent_for: float = 0.0

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(
            {
                "node_id": self.node_id,
                "manager_id": self.manager_id,
                "session_id": self.session_id,
                "manager_addr": self.manager_addr,
                "since": self.since,
                "silent_for": self.silent_for,
            },
            use_bin_type=True,
        )
        return packed

    @classmethod
    def decode(cls, data: bytes) -> SessionRecord | None:
        """The record, or None if the bytes are not one (never fatal: liveness only needs the key)."""
        try:
            raw = msgpack.unpackb(data, raw=False)
            return cls(
                node_id=str(raw["node_id"]),
                manager_id=str(raw["manager_id"]),
                session_id=str(raw["session_id"]),
                manager_addr=str(raw.get("manager_addr", "")),
                since=float(raw.get("since", 0.0)),
                silent_for=float(raw.get("silent_for", 0.0)),
            )
        except Exception:
            return None


def heartbeat_period(store: ObjectStore) -> float:
    """The cluster's heartbeat period in seconds (the default before the cluster exists)."""
    for cluster in store.objects(Cluster):
        ns = cluster.spec.dispatcher.heartbeat_period_ns
        if ns > 0:
            return ns / SECOND
    return DEFAULT_HEARTBEAT


# --- following sessions ---------------------------------------------------------------------------------
class NodeLiveness:
    """Which nodes have a session, and since when the others have not. ``await start()``, ``await stop()``.

    A node this monitor has never seen with a session counts as absent from the first time someone asks
    (:meth:`absent_since`), so a leader that just took over, or a node that registered a moment ago,
    always gets a whole grace period before being declared DOWN.
    """

    def __init__(self, kv: KVStore, *, clock: Clock = time.monotonic) -> None:
        self.kv = kv
        self.clock = clock
        #: node id → its session record, for nodes that have a session now.
        self.sessions: dict[str, SessionRecord | None] = {}
        self._absent: dict[str, float] = {}
        #: Set whenever a session appears or vanishes (consumers clear it).
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Read the current sessions and follow them."""
        revision = await self._load()
        self._task = asyncio.get_running_loop().create_task(self._follow(revision), name="node-liveness")
        self._ready.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _load(self) -> int:
        revision = await self.kv.revision()
        present: dict[str, SessionRecord | None] = {}
        silent: dict[str, SessionRecord] = {}
        async for kv in self.kv.iter_prefix(SESSIONS_PREFIX):
            record = SessionRecord.decode(kv.value)
            if record is not None and record.silent_for > 0:
                silent[kv.key[len(SESSIONS_PREFIX) :]] = record
            else:
                present[kv.key[len(SESSIONS_PREFIX) :]] = record
        now = self.clock()
        for node_id in set(self.sessions) - set(present):
            self._absent[node_id] = now
        for node_id in present:
            self._absent.pop(node_id, None)
        self.sessions = present
        for node_id, record in silent.items():
            self._went_silent(node_id, record)
        self.changed.set()
        return revision

    def _went_silent(self, node_id: str, record: SessionRecord) -> None:
        """The node's session ended for silence: absent since it was last heard from."""
        self.sessions.pop(node_id, None)
        since = self.clock() - record.silent_for
        self._absent[node_id] = min(self._absent.get(node_id, since), since)

    async def _follow(self, revision: int) -> None:
        while True:
            try:
                async with self.kv.watch(SESSIONS_PREFIX, start_revision=revision + 1) as events:
                    async for ev in events:
                        revision = ev.revision
                        node_id = ev.key[len(SESSIONS_PREFIX) :]
                        record = SessionRecord.decode(ev.value) if ev.type is EventType.PUT else None
                        if record is not None and record.silent_for > 0:
                            self._went_silent(node_id, record)
                        elif ev.type is EventType.PUT:
                            self.sessions[node_id] = record
                            self._absent.pop(node_id, None)
                        elif node_id in self.sessions:
                            del self.sessions[node_id]
                            self._absent[node_id] = self.clock()
                        self.changed.set()
            except CompactedError:
                revision = await self._load()
            except KVError as e:
                log.warning("following agent sessions failed: %s; retrying", e)
                await asyncio.sleep(0.5)

    def present(self, node_id: str) -> bool:
        """Whether the node has a session now."""
        return node_id in self.sessions

    def absent_since(self, node_id: str, now: float | None = None) -> float | None:
        """Since when (``clock()`` time) the node has had no session; None while it has one."""
        if node_id in self.sessions:
            return None
        return self._absent.setdefault(node_id, self.clock() if now is None else now)

    def missing(self, node_ids: Iterable[str], grace: float, now: float | None = None) -> set[str]:
        """The nodes among ``node_ids`` that have been without a session for longer than ``grace``."""
        now = self.clock() if now is None else now
        out = set()
        for node_id in node_ids:
            since = self.absent_since(node_id, now)
            if since is not None and now - since > grace:
                out.add(node_id)
        return out

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the bookkeeping of nodes not in ``keep`` (removed from the cluster)."""
        keep = set(keep)
        for node_id in [n for n in self._absent if n not in keep]:
            del self._absent[node_id]


# --- the rule -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeStateChange:
    """Set one node's ``status.state`` (and message)."""

    node_id: str
    state: NodeState
    message: str


@dataclass(frozen=True)
class NodeStatePlan:
    """What to write now, and when (``clock()`` time) to look again if nothing else happens first."""

    changes: tuple[NodeStateChange, ...]
    recheck_at: float | None


DOWN_MESSAGE = "heartbeat failure"


def plan_node_states(
    nodes: Iterable[Node], absent_since: Mapping[str, float], *, now: float, grace: float
) -> NodeStatePlan:
    """Node state changes: DOWN after ``grace`` without a session, READY with one.

    ``absent_since`` holds, for every node without a session, since when; nodes missing from it have one.
    """
    changes: list[NodeStateChange] = []
    recheck: float | None = None
    for node in nodes:
        since = absent_since.get(node.meta.id)
        state = node.status.state
        if since is None:
            if state is not NodeState.READY:
                changes.append(NodeStateChange(node.meta.id, NodeState.READY, ""))
        elif now - since > grace:
            if state is not NodeState.DOWN:
                changes.append(NodeStateChange(node.meta.id, NodeState.DOWN, DOWN_MESSAGE))
        elif state is not NodeState.DOWN:
            deadline = since + grace
            recheck = deadline if recheck is None else min(recheck, deadline)
    return NodeStatePlan(tuple(changes), recheck)


# --- the leader's loop ------------------------------------------------------------------------------------
async def run_node_states(
    store: ObjectStore,
    liveness: NodeLiveness | None = None,
    *,
    grace: float | None = None,
    poll: float = 5.0,
) -> None:
    """Keep every node's state READY or DOWN from its sessions, until cancelled (the leader runs this).

    ``grace`` defaults to 3 heartbeat periods of the cluster. Without ``liveness`` a monitor is started
    (and stopped) here. Node objects changing (a node joining) also wake the loop; ``poll`` bounds the
    sleep in case a wake-up is missed.
    """
    own = liveness is None
    if liveness is None:
        liveness = NodeLiveness(store.kv)
        await liveness.start()
    nodes_changed = asyncio.Event()

    async def follow_nodes() -> None:
        async for change in store.changes():
            if change.kind in ("nodes", "clusters"):
                nodes_changed.set()

    follower = asyncio.create_task(follow_nodes(), name="node-states-follow")
    try:
        while True:
            liveness.changed.clear()
            nodes_changed.clear()
            now = liveness.clock()
            nodes = store.objects(Node)
            liveness.forget(n.meta.id for n in nodes)
            absent: dict[str, float] = {}
            for n in nodes:
                since = liveness.absent_since(n.meta.id, now)
                if since is not None:
                    absent[n.meta.id] = since
            g = grace if grace is not None else GRACE_PERIODS * heartbeat_period(store)
            plan = plan_node_states(nodes, absent, now=now, grace=g)
            if plan.changes:
                await apply_node_states(store, plan.changes)
            timeout = poll if plan.recheck_at is None else min(poll, max(plan.recheck_at - now, 0) + 0.001)
            await _wait_any((liveness.changed, nodes_changed), timeout)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        if own:
            await liveness.stop()


async def apply_node_states(store: ObjectStore, changes: Iterable[NodeStateChange]) -> None:
    """Write node state changes: in batches, each conditional; a node that changed meanwhile is re-read."""
    todo: list[tuple[Node, NodeStateChange]] = []
    for change in changes:
        node = store.get(Node, change.node_id)
        if node is not None:
            todo.append((node, change))
    for i in range(0, len(todo), BATCH):
        chunk = todo[i : i + BATCH]
        try:
            await store.batch([Update(_with_state(n, c)) for n, c in chunk])
            for n, c in chunk:
                log.info("node %s (%s) is %s", n.meta.id, n.status.description.hostname, c.state.value)
        except Conflict:
            for n, c in chunk:
                await _write_one(store, n, c)
        except KVError as e:
            log.warning("could not write node states: %s", e)


def _with_state(node: Node, change: NodeStateChange) -> Node:
    return replace(node, status=replace(node.status, state=change.state, message=change.message))


async def _write_one(store: ObjectStore, node: Node | None, change: NodeStateChange) -> None:
    for _ in range(5):
        if node is None:
            return
        try:
            await store.update(_with_state(node, change))
            return
        except Conflict:
            node = await store.fetch(Node, change.node_id)


async def _wait_any(events: Iterable[asyncio.Event], timeout: float) -> None:
    waiters: list[asyncio.Task[Any]] = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
