"""``GET /containers/{id}/logs`` and ``POST /containers/{id}/attach``: Docker's multiplexed stream.

Containers never have a TTY here, so output always comes multiplexed (8-byte frame headers): stdout
frames carry stream type 1, stderr frames 2. ``since``/``until`` are UNIX timestamps (fractions allowed),
``tail`` a count or ``all``. Attach is output only (no stdin): it follows what the container writes from
the moment of the attach until the container has run and stopped, which is what ``docker run`` without
``-d`` needs; a client asking to upgrade the connection gets ``101`` and the frames on the raw connection.
"""

from __future__ import annotations

import time

from aiohttp import web

from agent.api.common import MULTIPLEXED, STDERR, STDOUT, frame, output_stream, runtime_of, start_stream
from agent.api.errors import BadParameter, NotSupported
from agent.api.params import flag, number
from agent.runtime.containers.logs import LogEntry, LogFilter, follow_logs
from agent.runtime.errors import ContainerNotFound


def log_filter(request: web.Request) -> LogFilter:
    """The query's streams, time window and tail as a :class:`LogFilter`."""
    stdout, stderr = flag(request, "stdout"), flag(request, "stderr")
    if not (stdout or stderr):
        raise BadParameter("", "Bad parameters: you must choose at least one stream")
    tail_text = request.query.get("tail", "all")
    tail: int | None = None
    if tail_text not in ("", "all"):
        try:
            tail = int(tail_text)
        except ValueError:
            raise BadParameter("tail", f"expected a number or 'all', got {tail_text!r}") from None
        if tail < 0:
            tail = None
    return LogFilter(
        stdout=stdout,
        stderr=stderr,
        since_ns=int(number(request, "since") * 1e9),
        until_ns=int(number(request, "until") * 1e9),
        tail=tail,
    )


def _frame(entry: LogEntry, timestamps: bool) -> bytes:
    return frame(STDERR if entry.stream == "stderr" else STDOUT, entry.render(timestamps))


async def container_logs(request: web.Request) -> web.StreamResponse:
    """Existing lines (and with ``follow`` new ones until the container stops) as multiplexed frames."""
    containers = runtime_of(request).containers
    record = containers.inspect(request.match_info["id"])
    wanted = log_filter(request)
    timestamps = flag(request, "timestamps")
    response = web.StreamResponse(headers={"Content-Type": MULTIPLEXED})
    await start_stream(request, response)
    if flag(request, "follow"):
        async for entry in containers.follow(record.id, wanted):
            await response.write(_frame(entry, timestamps))
    else:
        batch = containers.logs(record.id, wanted)
        if batch:
            await response.write(b"".join(_frame(e, timestamps) for e in batch))
    await response.write_eof()
    return response


async def attach_container(request: web.Request) -> web.StreamResponse:
    """``POST /containers/{id}/attach?stream=&logs=&stdout=&stderr=`` (output only)."""
    containers = runtime_of(request).containers
    record = containers.inspect(request.match_info["id"])
    if flag(request, "stdin"):
        raise NotSupported("attaching stdin")
    attached_at = time.time_ns()
    stdout, stderr = flag(request, "stdout"), flag(request, "stderr")
    response, transport = await output_stream(request)
    if flag(request, "logs"):
        past = containers.logs(record.id, LogFilter(stdout, stderr, until_ns=attached_at))
        if past:
            await response.write(b"".join(_frame(e, False) for e in past))
    if flag(request, "stream"):

        def done() -> bool:
            if transport is None or transport.is_closing():
                return True
            try:
                state = containers.inspect(record.id).state
            except ContainerNotFound:
                return True
            if state.status in ("running", "paused", "restarting"):
                return False
            return state.status != "created" or state.finished_at >= attached_at

        live = LogFilter(stdout, stderr, since_ns=attached_at)
        log_path = containers.log_path(record.id)
        # Exists before the container starts, so the follower holds it open even if an auto-remove
        # deletes it right after a short run (conmon appends to it).
        log_path.touch(mode=0o600, exist_ok=True)
        async for entry in follow_logs(log_path, live, done):
            await response.write(_frame(entry, False))
    await response.write_eof()
    return response


ROUTES = [
    ("GET", "/containers/{id}/logs", container_logs),
    ("POST", "/containers/{id}/attach", attach_container),
]
