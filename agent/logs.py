"""The agent's side of log streaming: serve the managers' ``logs_subscribe`` from the executor's logs.

Each subscription names tasks of this node; each task's lines come from the executor's optional
:class:`~agent.executor.LogReader` (a producer per task feeding a small bounded queue), are batched into
``logs`` frames of up to :data:`MAX_LINES` lines or :data:`MAX_BYTES` of text, and sent only while the
subscription has credit: the manager grants a window of frames and returns credit (``logs_ack``) as its
client consumes them. Without credit the producer stops at its queue and the reader stops reading — the
log file is the buffer, never the agent's memory. One ``logs_end`` closes a subscription (preceded by one
per task whose logs could not be read); ``logs_cancel``, or the end of the session, stops it silently.

api/logs.py defines the frames; docs/ARCHITECTURE.md ("Agent sessions") describes the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from agent.errors import AgentError
from agent.executor import Executor, LogReader
from api import Task
from api.credit import Credit
from api.logs import LogLine, LogsAck, LogsBatch, LogsCancel, LogsEnd, LogsSubscribe

log = logging.getLogger(__name__)

#: Lines of one frame at most.
MAX_LINES = 500
#: Text in one frame at most (a frame may pass it by one line).
MAX_BYTES = 64 * 1024
#: A longer line is sent in pieces of this many characters (as Docker splits lines at 16 KiB).
MAX_LINE = 16 * 1024
#: Lines read ahead per task while the previous frame is being sent or waits for credit.
READ_AHEAD = 1000
#: Subscriptions one session may hold at once; more are refused with a ``logs_end`` error.
MAX_SUBSCRIPTIONS = 256

Send = Callable[[LogsBatch | LogsEnd], Awaitable[None]]
TaskLookup = Callable[[str], Task | None]


@dataclass(eq=False)
class _Subscription:
    frame: LogsSubscribe
    send: Send
    credit: Credit
    job: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class _Done:
    """The end of one task's lines (``error``: why reading them failed)."""

    error: str = ""


class LogStreamer:
    """Serves log subscriptions for one node: ``handle`` each log frame the manager sends, ``reset`` when
    the session ends."""

    def __init__(self, executor: Executor, lookup: TaskLookup) -> None:
        self.executor = executor
        self._lookup = lookup
        self._subs: dict[str, _Subscription] = {}
        self._refusals: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        """Subscriptions being served now."""
        return len(self._subs)

    def handle(self, frame: LogsSubscribe | LogsAck | LogsCancel, send: Send) -> None:
        """Act on one frame from the manager; ``send`` sends on the session it came through."""
        if isinstance(frame, LogsSubscribe):
            self._subscribe(frame, send)
            return
        sub = self._subs.get(frame.subscription_id)
        if sub is None:
            return  # already over: a late ack, or a cancel that crossed the end
        if isinstance(frame, LogsAck):
            sub.credit.give(frame.frames)
        else:
            self._drop(sub)

    def reset(self) -> None:
        """The session ended: its subscriptions end too (the manager has forgotten them)."""
        for sub in list(self._subs.values()):
            self._drop(sub)

    async def close(self) -> None:
        """Stop every subscription and wait until they have."""
        jobs = [s.job for s in self._subs.values() if s.job is not None]
        self.reset()
        for job in jobs:
            with contextlib.suppress(asyncio.CancelledError):
                await job

    def _subscribe(self, frame: LogsSubscribe, send: Send) -> None:
        sid = frame.subscription_id
        if sid in self._subs or len(self._subs) >= MAX_SUBSCRIPTIONS:
            reason = "duplicate subscription" if sid in self._subs else "too many log streams on this node"
            self._spawn_end(send, LogsEnd(sid, "", reason))
            return
        sub = _Subscription(frame, send, Credit(max(frame.window, 1)))
        self._subs[sid] = sub
        sub.job = asyncio.get_running_loop().create_task(self._serve(sub), name=f"logs-{sid}")

    def _drop(self, sub: _Subscription) -> None:
        if self._subs.get(sub.frame.subscription_id) is sub:
            del self._subs[sub.frame.subscription_id]
        if sub.job is not None and sub.job is not asyncio.current_task():
            sub.job.cancel()

    def _spawn_end(self, send: Send, end: LogsEnd) -> None:
        async def go() -> None:
            with contextlib.suppress(Exception):
                await send(end)

        job = asyncio.get_running_loop().create_task(go(), name="logs-refused")
        self._refusals.add(job)
        job.add_done_callback(self._refusals.discard)

    async def _serve(self, sub: _Subscription) -> None:
        sid = sub.frame.subscription_id
        error = ""
        gone = False
        try:
            # A task group: when one task's stream fails, the others stop too.
            async with asyncio.TaskGroup() as group:
                for task_id in sub.frame.task_ids:
                    group.create_task(self._task_logs(sub, task_id))
        except* (ConnectionError, RuntimeError) as e:
            log.debug("log stream %s: the session went away: %s", sid, e.exceptions[0])
            gone = True
        except* Exception as e:
            log.error("log stream %s failed: %r", sid, e.exceptions[0])
            error = f"reading logs failed: {e.exceptions[0]}"
        finally:
            if self._subs.get(sid) is sub:
                del self._subs[sid]
        if not gone:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await sub.send(LogsEnd(sid, "", error))

    async def _task_logs(self, sub: _Subscription, task_id: str) -> None:
        sid = sub.frame.subscription_id
        task = self._lookup(task_id)
        if task is None:
            await sub.send(LogsEnd(sid, task_id, f"task {task_id} is not on this node"))
            return
        if not isinstance(self.executor, LogReader):
            await sub.send(LogsEnd(sid, task_id, f"the {self.executor.name} executor keeps no logs"))
            return
        queue: asyncio.Queue[LogLine | _Done] = asyncio.Queue(READ_AHEAD)
        producer = asyncio.get_running_loop().create_task(
            _produce(self.executor.logs(task, sub.frame.options), queue), name=f"logs-{sid}-{task_id}"
        )
        try:
            done: _Done | None = None
            while done is None:
                item = await queue.get()
                batch: list[LogLine] = []
                size = 0
                while True:
                    if isinstance(item, _Done):
                        done = item
                        break
                    for piece in _pieces(item):
                        batch.append(piece)
                        size += len(piece.text)
                    if len(batch) >= MAX_LINES or size >= MAX_BYTES:
                        break
                    try:
                        item = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                if batch:
                    await sub.credit.take()
                    await sub.send(LogsBatch(sid, task_id, tuple(batch)))
            if done.error:
                await sub.send(LogsEnd(sid, task_id, done.error))
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer


async def _produce(lines: AsyncIterator[LogLine], queue: asyncio.Queue[LogLine | _Done]) -> None:
    """Move an executor's lines into ``queue`` (waiting while it is full), then the end marker."""
    error = ""
    try:
        async for line in lines:
            await queue.put(line)
    except AgentError as e:
        error = str(e)
    except OSError as e:
        error = f"reading logs failed: {e}"
    finally:
        aclose = getattr(lines, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    await queue.put(_Done(error))


def _pieces(line: LogLine) -> list[LogLine]:
    if len(line.text) <= MAX_LINE:
        return [line]
    return [
        LogLine(line.stream, line.time_ns, line.text[i : i + MAX_LINE])
        for i in range(0, len(line.text), MAX_LINE)
    ]
