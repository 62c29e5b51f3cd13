"""What the local-cluster tests share: the manager's API over its unix socket, waiting, and reaching into
the cluster's host namespaces (the only place its addresses exist)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.network.nsutil import netns_path


class UnixHTTP(http.client.HTTPConnection):
    """HTTP to the manager's unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__("manager", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class Client:
    """The manager's JSON API."""

    def __init__(self, sock: Path) -> None:
        self.sock = str(sock)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = UnixHTTP(self.sock)
        try:
            data = json.dumps(body) if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw and raw[:1] in b"[{" else raw.decode())
        finally:
            conn.close()

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.call(method, path, body)
        assert status < 300, (status, data)
        return data

    def tasks(self, service: str) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = self.ok("GET", f"/tasks?service={service}")
        return tasks

    def running(self, service: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self.tasks(service)
            if t["desired_state"] == "running" and t["status"]["state"] == "running"
        ]


def until(check: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


_FETCH = """
import json, sys, urllib.request
out = []
for url in sys.argv[1:]:
    try:
        out.append(urllib.request.urlopen(url, timeout=5).read().decode().strip())
    except Exception as e:
        out.append("error: " + type(e).__name__ + ": " + str(e))
print(json.dumps(out))
"""


def fetch(netns: str, *urls: str) -> list[str]:
    """GET each URL from inside a namespace (one process for all); a failure is ``error: …``."""
    done = subprocess.run(
        ["nsenter", f"--net={netns_path(netns)}", "python3", "-c", _FETCH, *urls],
        capture_output=True,
        text=True,
        timeout=30 + 6 * len(urls),
    )
    assert done.returncode == 0, done.stderr
    answers: list[str] = json.loads(done.stdout)
    return answers
