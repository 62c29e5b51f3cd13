"""What the local API's route modules share: the API version, typed app keys, exec instances, streams."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agent.api.errors import NoSuchExec
from agent.runtime.local import LocalRuntime

API_VERSION = "1.43"
MIN_API_VERSION = "1.24"
MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
STDOUT, STDERR = 1, 2


@dataclass(eq=False)
class ExecInstance:
    """One ``POST /containers/{id}/exec``: what to run, and once run, how it ended."""

    id: str
    container_id: str
    cmd: tuple[str, ...]
    env: tuple[str, ...] = ()
    user: str | None = None
    workdir: str | None = None
    privileged: bool = False
    attach_stdout: bool = True
    attach_stderr: bool = True
    running: bool = False
    started: bool = False
    exit_code: int | None = None
    task: asyncio.Task[Any] | None = field(default=None, repr=False)

    def docker(self) -> dict[str, Any]:
        """``GET /exec/{id}/json``."""
        return {
            "ID": self.id,
            "ContainerID": self.container_id,
            "Running": self.running,
            "ExitCode": self.exit_code,
            "ProcessConfig": {
                "entrypoint": self.cmd[0] if self.cmd else "",
                "arguments": list(self.cmd[1:]),
                "privileged": self.privileged,
                "tty": False,
                "user": self.user or "",
            },
            "OpenStdin": False,
            "OpenStderr": self.attach_stderr,
            "OpenStdout": self.attach_stdout,
            "CanRemove": False,
            "DetachKeys": "",
            "Pid": 0,
        }


class ExecRegistry:
    """Exec instances by id; those of removed containers are forgotten when next looked at."""

    def __init__(self) -> None:
        self._items: dict[str, ExecInstance] = {}

    def add(self, instance: ExecInstance) -> ExecInstance:
        self._items[instance.id] = instance
        return instance

    def new_id(self) -> str:
        return os.urandom(32).hex()

    def get(self, exec_id: str) -> ExecInstance:
        try:
            return self._items[exec_id]
        except KeyError:
            raise NoSuchExec(exec_id) from None

    def prune(self, live_containers: set[str]) -> None:
        """Drop instances whose container is gone."""
        for key in [k for k, v in self._items.items() if v.container_id not in live_containers]:
            del self._items[key]


RUNTIME = web.AppKey("runtime", LocalRuntime)
EXECS = web.AppKey("execs", ExecRegistry)


def runtime_of(request: web.Request) -> LocalRuntime:
    """The runtime this app serves."""
    return request.app[RUNTIME]


def json_response(value: Any, status: int = 200) -> web.Response:
    """A JSON answer, newline-terminated like Docker's."""
    # Docker's Go client decodes an error body only when the type is exactly "application/json".
    return web.Response(
        status=status, body=json.dumps(value).encode() + b"\n", headers={"Content-Type": "application/json"}
    )


def frame(stream: int, data: bytes) -> bytes:
    """One frame of Docker's multiplexed stream: stream type, three zero bytes, big-endian size, data."""
    return struct.pack(">BxxxI", stream, len(data)) + data


STREAM = web.RequestKey("stream", web.StreamResponse)
"""Request key of a response already streaming: the error middleware can only end it, not replace it."""


async def start_stream(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Send the response's headers and remember that this request is now streaming."""
    await response.prepare(request)
    request[STREAM] = response
    return response


class _HalfOpen(asyncio.Protocol):
    """Forwards to the HTTP protocol, except that the client's end of input does not close the connection."""

    def __init__(self, inner: asyncio.BaseProtocol) -> None:
        self.inner = inner

    def data_received(self, data: bytes) -> None:
        if isinstance(self.inner, asyncio.Protocol):
            self.inner.data_received(data)

    def eof_received(self) -> bool:
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def output_stream(request: web.Request) -> tuple[web.StreamResponse, asyncio.BaseTransport | None]:
    """A prepared response for multiplexed output, hijacking the connection when the client asks.

    Docker's clients ask to upgrade (``Connection: Upgrade``, ``Upgrade: tcp``) for attach and exec:
    they get ``101`` and the frames on the raw connection. With no stdin to send they then half-close
    their side, so the connection must stay open for writing after the end of input. Returns the
    response and the connection's transport (the request lets go of it once upgraded), so a handler can
    tell when the client has gone.
    """
    transport = request.transport
    upgrade = "upgrade" in request.headers.get("Connection", "").lower()
    response = web.StreamResponse(status=101 if upgrade else 200, headers={"Content-Type": MULTIPLEXED})
    if upgrade:
        response.headers.update({"Connection": "Upgrade", "Upgrade": "tcp"})
        response.force_close()
        if transport is not None:
            transport.set_protocol(_HalfOpen(transport.get_protocol()))
    await start_stream(request, response)
    return response, transport


async def json_lines(request: web.Request) -> web.StreamResponse:
    """A prepared response for a stream of JSON objects (pull, push, load progress)."""
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    await start_stream(request, response)
    return response


async def write_json_line(response: web.StreamResponse, value: Any) -> None:
    """Write one JSON object and a newline to a stream prepared by :func:`json_lines`."""
    await response.write(json.dumps(value).encode() + b"\n")
