"""Log streams on a manager: subscriptions on its agents' sessions, and the feed one request reads.

A log request (manager/api/logs.py) gathers its lines from several *sources* into one :class:`Feed`:
a :class:`NodeSubscription` per node whose session this manager holds (``logs_subscribe`` on that
session; frames come back through :meth:`LogRouter.on_frame`), and a stream from another manager for a
node whose session is there (manager/api/log_proxy.py). The feed is a queue in arrival order; each source
ends with one final item.

Memory stays bounded by credit, never by the client's speed: an agent may have only ``window`` frames of
a subscription unacknowledged, and the request acknowledges a frame only once it has written it to its
client (whose socket applies back-pressure). A slow client thus slows the agent's reading of the log
file; nothing piles up in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from api import new_id
from api.logs import (
    DEFAULT_WINDOW,
    LogLine,
    LogOptions,
    LogsAck,
    LogsBatch,
    LogsCancel,
    LogsEnd,
    LogsSubscribe,
)

log = logging.getLogger(__name__)

#: Credit is returned once this many frames of a subscription are written (fewer, smaller ack frames).
ACK_EVERY = max(DEFAULT_WINDOW // 2, 1)

Send = Callable[[str, LogsSubscribe | LogsAck | LogsCancel], Awaitable[bool]]


class Source(Protocol):
    """Where some of a request's lines come from."""

    async def consumed(self) -> None:
        """One item of this source was written to the client (give credit back)."""
        ...

    async def close(self) -> None:
        """Stop (the request is over); idempotent."""
        ...


@dataclass(frozen=True)
class FeedItem:
    """What a request writes next: lines of a task, NDJSON already formatted by another manager, an error,
    or the end of a source (``final``)."""

    source: Source | None = None
    node_id: str = ""
    task_id: str = ""
    lines: tuple[LogLine, ...] = ()
    raw: bytes = b""
    error: str = ""
    final: bool = False
    #: Credit goes back to ``source`` once this item is written.
    credited: bool = False


class Feed:
    """One request's sources, merged in arrival order; :meth:`get` returns None once every source ended."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[FeedItem] = asyncio.Queue()
        self.sources: set[Source] = set()

    def add(self, source: Source) -> None:
        """A source that will put items and then :meth:`finish`."""
        self.sources.add(source)

    def put(self, item: FeedItem) -> None:
        self._queue.put_nowait(item)

    def finish(self, source: Source, error: str = "", node_id: str = "", task_id: str = "") -> None:
        """The source is done (``error``: it failed); only the first call counts."""
        if source in self.sources:
            self.sources.discard(source)
            self.put(FeedItem(source, node_id, task_id, error=error, final=True))

    async def get(self) -> FeedItem | None:
        """The next item, or None when every source has ended and everything was read."""
        if not self.sources and self._queue.empty():
            return None
        return await self._queue.get()

    async def close(self) -> None:
        """Stop every source still running."""
        for source in list(self.sources):
            with contextlib.suppress(Exception):
                await source.close()
        self.sources.clear()


@dataclass(eq=False)
class NodeSubscription:
    """One ``logs_subscribe`` on the session of one node held by this manager."""

    router: LogRouter
    feed: Feed
    node_id: str
    task_ids: tuple[str, ...]
    window: int = DEFAULT_WINDOW
    id: str = field(default_factory=new_id)
    #: The session it was made on: it ends with that session, even if the node has a newer one.
    session_id: str = ""
    #: Frames handed to the feed and not yet written to the client.
    queued: int = 0
    #: Frames written and not yet acknowledged to the agent.
    unacked: int = 0
    ended: bool = False

    async def consumed(self) -> None:
        self.queued -= 1
        self.unacked += 1
        if not self.ended and self.unacked >= min(ACK_EVERY, self.window):
            frames, self.unacked = self.unacked, 0
            await self.router.send(self.node_id, LogsAck(self.id, frames))

    async def close(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.router.forget(self)
        await self.router.send(self.node_id, LogsCancel(self.id))


class LogRouter:
    """The log subscriptions on this manager's agent sessions (one per manager, owned by the dispatcher).

    ``send(node_id, frame)`` sends on the node's session here (False: there is none);
    ``session_of(node_id)`` is the id of that session ("" when this manager holds none).
    """

    def __init__(self, send: Send, session_of: Callable[[str], str], manager_id: str = "") -> None:
        self.send = send
        self.session_of = session_of
        #: This manager's id (as session keys name it).
        self.manager_id = manager_id
        self._subs: dict[str, NodeSubscription] = {}

    @property
    def active(self) -> int:
        """Subscriptions open now."""
        return len(self._subs)

    async def subscribe(
        self, feed: Feed, node_id: str, task_ids: tuple[str, ...], options: LogOptions
    ) -> NodeSubscription | None:
        """Ask the node's agent for the tasks' logs, into ``feed``; None if the node has no session here."""
        sub = NodeSubscription(self, feed, node_id, task_ids, session_id=self.session_of(node_id))
        self._subs[sub.id] = sub
        feed.add(sub)
        if not await self.send(node_id, LogsSubscribe(sub.id, task_ids, options, sub.window)):
            self.forget(sub)
            feed.sources.discard(sub)
            return None
        return sub

    def forget(self, sub: NodeSubscription) -> None:
        if self._subs.get(sub.id) is sub:
            del self._subs[sub.id]

    def on_frame(self, node_id: str, frame: LogsBatch | LogsEnd) -> None:
        """A log frame from the node's agent."""
        sub = self._subs.get(frame.subscription_id)
        if sub is None or sub.node_id != node_id:
            return  # cancelled meanwhile: the agent stops on our logs_cancel
        if isinstance(frame, LogsBatch):
            if sub.queued >= sub.window:
                # The agent ignored its credit; dropping keeps this manager's memory bounded.
                log.warning("node %s sent log frames beyond its window; dropped", node_id)
                return
            sub.queued += 1
            sub.feed.put(FeedItem(sub, node_id, frame.task_id, frame.lines, credited=True))
        elif frame.task_id:
            sub.feed.put(FeedItem(sub, node_id, frame.task_id, error=frame.error))
        else:
            sub.ended = True
            self.forget(sub)
            sub.feed.finish(sub, frame.error, node_id)

    def session_ended(self, node_id: str, session_id: str) -> None:
        """A session of the node here is over, and with it the subscriptions made on it."""
        for sub in [s for s in self._subs.values() if s.node_id == node_id and s.session_id == session_id]:
            sub.ended = True
            self.forget(sub)
            sub.feed.finish(sub, f"the session of node {node_id} ended; its logs stop here", node_id)

    def close(self) -> None:
        """End every subscription (the manager stops)."""
        for sub in list(self._subs.values()):
            sub.ended = True
            self.forget(sub)
            sub.feed.finish(sub, "the manager is shutting down", sub.node_id)


#: Where the dispatcher leaves its router on the API application.
LOGS = web.AppKey("logs", LogRouter)
