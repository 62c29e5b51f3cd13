"""``GET /services/{ref}/logs`` and ``GET /tasks/{ref}/logs``: tasks' output, streamed from their agents.

Docker's query parameters: ``follow``, ``tail`` (a count or ``all``), ``since`` (UNIX seconds or RFC 3339),
``stdout``/``stderr`` (both when neither is named), ``timestamps`` and ``details`` (accepted; every line
carries its time anyway). The answer is ``application/x-ndjson``, one object per line:
``{"task", "node", "stream", "time", "text"}`` — or ``{"task", "node", "error"}`` when some logs cannot be
read (a node without a session, say) while others can. When none can, the request fails with 503 and says
why.

Any manager serves these: it subscribes on the sessions it holds (manager/logs.py) and relays, from the
managers holding the others, their answer for each task (manager/api/log_proxy.py). ``tail`` counts per
task. With ``follow`` a task's stream lasts until its container stops; a service's lasts until the
service is removed, taking in its new tasks as they start (a rolling update), or until the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from api import Node, Service, Task, TaskState
from api.logs import LogOptions, format_time, parse_time
from manager.api.app import STORE, BadRequest
from manager.api.log_proxy import RemoteStream, session_holder
from manager.api.routes import resolve
from manager.errors import Unavailable
from manager.join import PKI
from manager.logs import LOGS, Feed, FeedItem, LogRouter
from manager.store import Change

table = web.RouteTableDef()

NDJSON = "application/x-ndjson"
#: How often an idle stream looks whether its client is still connected.
CLIENT_CHECK = 0.5
_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no", "")


def log_options(query: dict[str, str] | web.Request) -> LogOptions:
    """A request's query as :class:`LogOptions`; BadRequest names a bad value."""
    q = query.query if isinstance(query, web.Request) else query

    def flag(name: str) -> bool | None:
        raw = q.get(name)
        if raw is None:
            return None
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise BadRequest(f"query parameter {name!r} must be 1 or 0, got {raw!r}")

    # Docker's clients always send both; for others, a stream not named is on unless the other is asked
    # for alone (stdout=1: stdout only; stderr=0: stdout only; neither: both).
    out, err = flag("stdout"), flag("stderr")
    stdout = out if out is not None else err is not True
    stderr = err if err is not None else out is not True
    if not (stdout or stderr):
        raise BadRequest("choose at least one stream: stdout=1 or stderr=1")
    tail_text = q.get("tail", "all")
    tail = -1
    if tail_text not in ("", "all"):
        try:
            tail = max(int(tail_text), -1)
        except ValueError:
            raise BadRequest(f"query parameter 'tail' must be a number or 'all', got {tail_text!r}") from None
    since_text = q.get("since", "")
    since = parse_time(since_text, "since") if since_text not in ("", "0") else 0
    return LogOptions(bool(flag("follow")), tail, since, stdout, stderr)


def has_logs(task: Task) -> bool:
    """Whether a task may have written something: it is on a node and got as far as starting there."""
    state = task.status.state
    return bool(task.node_id) and state >= TaskState.STARTING and state is not TaskState.REJECTED


def encode(item: FeedItem) -> bytes:
    """What the client gets for one item of the feed."""
    if item.raw:
        return item.raw
    if item.lines:
        return b"".join(
            _json(
                {
                    "task": item.task_id,
                    "node": item.node_id,
                    "stream": line.stream,
                    "time": format_time(line.time_ns),
                    "text": line.text,
                }
            )
            for line in item.lines
        )
    if item.error:
        return _json({"task": item.task_id, "node": item.node_id, "error": item.error})
    return b""


def _json(obj: dict[str, str]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


@table.get("/services/{ref}/logs")
async def service_logs(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    service = resolve(store, Service, request.match_info["ref"])
    stream = LogStream(request, log_options(request))
    if stream.options.follow and not stream.forwarded:
        await stream.watch(service_id=service.meta.id)
    return await stream.serve(store.tasks_of_service(service.meta.id))


@table.get("/tasks/{ref}/logs")
async def task_logs(request: web.Request) -> web.StreamResponse:
    task = resolve(request.app[STORE], Task, request.match_info["ref"])
    stream = LogStream(request, log_options(request))
    pending = not has_logs(task) and not task.status.state.is_terminal
    if stream.options.follow and not stream.forwarded and pending:
        await stream.watch(task_id=task.meta.id)  # not started yet: follow it from its start
    return await stream.serve([task])


class LogStream:
    """One log request: its sources, their feed, and the response they are written to."""

    def __init__(self, request: web.Request, options: LogOptions) -> None:
        router = request.app.get(LOGS)
        if router is None:
            raise Unavailable("this manager serves no agent sessions, so it cannot read logs")
        self.request = request
        self.store = request.app[STORE]
        self.router: LogRouter = router
        self.options = options
        #: Asked by another manager: answer from this manager's sessions only.
        self.forwarded = request.query.get("forwarded", "") in _TRUE
        self.feed = Feed()
        self.started: set[str] = set()
        #: Nodes whose logs are being (or were) read; a short read may end before the check below.
        self.subscribed = 0
        self._http: aiohttp.ClientSession | None = None
        self._watcher: _Watcher | None = None

    async def watch(self, *, service_id: str = "", task_id: str = "") -> None:
        """Take in tasks as they start (before looking at the current ones, so none slips between)."""
        self._watcher = _Watcher(self, service_id, task_id)
        await self._watcher.start()

    async def serve(self, tasks: list[Task]) -> web.StreamResponse:
        """Start the sources of ``tasks`` and write the feed to the client until it ends or leaves."""
        try:
            errors = await self.start([t for t in tasks if has_logs(t)])
            # Judge by what was subscribed, not by what is still open: a short log can be read to its
            # end before this line runs, and that is a success.
            if errors and not self.subscribed:
                raise Unavailable("; ".join(dict.fromkeys(e.error for e in errors)))
            response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-cache"})
            await response.prepare(self.request)
            try:
                for item in errors:
                    await response.write(encode(item))
                async for item in self._items():
                    data = encode(item)
                    if data:
                        await response.write(data)
                    if item.credited and item.source is not None:
                        await item.source.consumed()
                await response.write_eof()
            except ConnectionError:
                pass  # the client left
            return response
        finally:
            await self.close()

    async def close(self) -> None:
        await self.feed.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def start(self, tasks: list[Task]) -> list[FeedItem]:
        """Start reading ``tasks`` (those not started yet); errors for those whose logs cannot be read."""
        by_node: dict[str, list[str]] = {}
        for t in tasks:
            if t.meta.id not in self.started:
                self.started.add(t.meta.id)
                by_node.setdefault(t.node_id, []).append(t.meta.id)
        errors = []
        for node_id, task_ids in by_node.items():
            here = bool(self.router.session_of(node_id))
            if here and await self.router.subscribe(self.feed, node_id, tuple(task_ids), self.options):
                self.subscribed += 1
                continue
            error = await self._relay(node_id, task_ids)
            if error:
                errors += [FeedItem(node_id=node_id, task_id=task_id, error=error) for task_id in task_ids]
            else:
                self.subscribed += 1
        return errors

    async def _relay(self, node_id: str, task_ids: list[str]) -> str:
        """Relay the tasks' logs from the manager holding the node's session; or why that cannot be."""
        node = self.store.get(Node, node_id)
        name = (
            node.status.description.hostname
            if node is not None and node.status.description.hostname
            else node_id
        )
        if self.forwarded:
            return f"the session of node {name} is not on this manager (any more)"
        holder = await session_holder(self.store.kv, node_id)
        if holder is None or not holder.manager_addr:
            return f"node {name} is not available (it has no session with any manager)"
        if holder.manager_id == self.router.manager_id:
            return f"the session of node {name} just ended"
        pki = self.request.app.get(PKI)
        if pki is None:
            return f"the session of node {name} is on manager {holder.manager_addr}: ask that manager"
        if self._http is None:
            self._http = aiohttp.ClientSession()
        for task_id in task_ids:
            RemoteStream(
                self.feed,
                self._http,
                pki.client_context(),
                holder.manager_addr,
                node_id,
                task_id,
                self.options,
            ).start()
        return ""

    async def _items(self) -> AsyncIterator[FeedItem]:
        """The feed's items until it ends, or until the client has gone (checked while idle)."""
        getter: asyncio.Task[FeedItem | None] | None = None
        try:
            while True:
                if getter is None:
                    getter = asyncio.get_running_loop().create_task(self.feed.get())
                done, _ = await asyncio.wait({getter}, timeout=CLIENT_CHECK)
                if not done:
                    transport = self.request.transport
                    if transport is None or transport.is_closing():
                        return
                    continue
                item, getter = getter.result(), None
                if item is None:
                    return
                yield item
        finally:
            if getter is not None:
                getter.cancel()


class _Watcher:
    """Follows the store for a request with ``follow``: a service's tasks (or one task) as they start.
    A source of the feed, so the request lasts while it watches: until the service (task) is gone, or
    the task has been taken in (or ended without starting)."""

    def __init__(self, stream: LogStream, service_id: str, task_id: str) -> None:
        self.stream = stream
        self.service_id = service_id
        self.task_id = task_id
        self._job: asyncio.Task[None] | None = None

    async def start(self) -> None:
        changes = self.stream.store.changes()
        self.stream.feed.add(self)
        self._job = asyncio.get_running_loop().create_task(self._run(changes), name="logs-watch")
        await asyncio.sleep(0)  # let the subscription to changes begin before the current tasks are read

    async def consumed(self) -> None:
        return None

    async def close(self) -> None:
        job, self._job = self._job, None
        if job is not None and job is not asyncio.current_task():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job

    async def _run(self, changes: AsyncIterator[Change]) -> None:
        try:
            async for change in changes:
                if await self._done(change):
                    break
        finally:
            self.stream.feed.finish(self)

    async def _done(self, change: Change) -> bool:
        if change.kind == "services":
            return change.action == "delete" and change.old.meta.id == self.service_id
        if change.kind != "tasks":
            return False
        task: Task | None = change.new
        if task is None:
            return bool(self.task_id) and change.old.meta.id == self.task_id
        if task.meta.id != self.task_id and (not self.service_id or task.service_id != self.service_id):
            return False
        if has_logs(task):
            # Inline, not in the background: the task's source is in the feed before this one may end.
            for error in await self.stream.start([task]):
                self.stream.feed.put(error)
            return bool(self.task_id)
        return bool(self.task_id) and task.status.state.is_terminal
