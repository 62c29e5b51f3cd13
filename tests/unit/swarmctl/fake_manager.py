"""A canned HTTP server on a unix socket, standing in for the manager in swarmctl's unit tests.

Only for checking what swarmctl sends and how it prints canned answers (tables, formats, streams, exit
codes); the real manager and agents are exercised by tests/integration/swarmctl. Routes are (method, path
regex) → a :class:`Reply` or a function of the :class:`Recorded` request giving one; every request is
recorded. A reply given as ``chunks`` is sent with chunked transfer encoding, one chunk at a time, so
clients see a stream arrive in pieces.
"""

from __future__ import annotations

import json
import re
import socketserver
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from click.testing import CliRunner

from api import Node, to_plain
from api.objects import Meta, NodeDescription, NodeState, NodeStatus
from swarmctl.cli import cli

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"


@dataclass
class Recorded:
    """One request as the server got it (``path`` decoded, ``raw_path`` as sent)."""

    method: str
    path: str
    raw_path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def q(self, key: str) -> str | None:
        values = self.query.get(key)
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    chunks: Sequence[bytes] | None = None

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return b"" if self.body is None else json.dumps(self.body).encode()


def error(status: int, message: str) -> Reply:
    return Reply(status, {"message": message})


def json_lines(*objs: Any) -> Reply:
    """A JSON-lines stream, one object per chunk."""
    return Reply(chunks=[json.dumps(o).encode() + b"\n" for o in objs])


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def multiplexed(*frames: tuple[int, bytes]) -> Reply:
    """Docker's multiplexed stream, each frame split over two chunks."""
    chunks = []
    for stream, data in frames:
        raw = frame(stream, data)
        chunks += [raw[:5], raw[5:]]
    return Reply(content_type=MULTIPLEXED, chunks=chunks)


Handler = Reply | Callable[[Recorded], Reply]


@dataclass
class FakeManager:
    socket: Path
    routes: list[tuple[str, re.Pattern[str], Handler]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)

    def route(self, method: str, pattern: str, reply: Handler) -> None:
        """Answer ``method`` on paths matching ``pattern`` (whole path, decoded); later routes win."""
        self.routes.insert(0, (method, re.compile(pattern + r"$"), reply))

    def find(self, method: str, pattern: str) -> list[Recorded]:
        rx = re.compile(pattern + r"$")
        return [r for r in self.requests if r.method == method and rx.match(r.path)]

    def answer(self, req: Recorded) -> Reply:
        for method, rx, handler in self.routes:
            if method == req.method and rx.match(req.path):
                return handler(req) if callable(handler) else handler
        return error(404, f"page not found: {req.method} {req.path}")

    def run(self, *args: str, input: str | bytes | None = None) -> tuple[int, str, str]:
        """``swarmctl ARGS`` against this server: (exit code, stdout, stderr)."""
        result = CliRunner().invoke(
            cli, list(args), input=input, env={"SHOAL_HOST": f"unix://{self.socket}"}, catch_exceptions=False
        )
        return result.exit_code, result.stdout, result.stderr


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    fake: FakeManager

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up early is not the test's business; and the command under test owns stderr.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return "unix"

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Recorded(
            self.command,
            unquote(parts.path),
            parts.path,
            parse_qs(parts.query, keep_blank_values=True),
            {k.lower(): v for k, v in self.headers.items()},
            body,
        )
        fake = self.server.fake
        fake.requests.append(req)
        reply = fake.answer(req)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        if reply.chunks is None:
            payload = reply.payload()
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload:
                self.wfile.write(payload)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in reply.chunks:
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_DELETE = do_PUT = _handle


@contextmanager
def fake_manager(tmp: Path) -> Iterator[FakeManager]:
    """A fake manager listening on ``tmp/manager.sock`` until the block ends."""
    fake = FakeManager(tmp / "manager.sock")
    server = _Server(str(fake.socket), _Handler)
    server.fake = fake
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-manager", daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def node(node_id: str, hostname: str, addr: str = "", state: NodeState = NodeState.READY) -> dict[str, Any]:
    """A node as ``GET /nodes`` lists it."""
    status = NodeStatus(state=state, addr=addr, description=NodeDescription(hostname=hostname))
    plain: dict[str, Any] = to_plain(Node(meta=Meta(id=node_id), status=status))
    return plain


def node_ref(node_id: str, name: str, addr: str = "") -> dict[str, str]:
    """The ``Node`` object the manager adds to containers and images."""
    return {"ID": node_id, "Name": name, "Addr": addr}
