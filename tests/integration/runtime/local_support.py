"""Fixtures for the local runtime and its Docker-API socket (root, real runc, conmon, overlayfs).

``local_runtime`` is a :class:`LocalRuntime` on a per-test state directory holding ``busybox:latest``;
``docker_api`` serves it on a unix socket and talks to it with aiohttp's ``UnixConnector``. Both remove
every container (through the runtime, then by force for anything left), mount, cgroup, volume and
process they made, even when the test fails, and then check that nothing is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import socket
import struct
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agent.api import serve_unix
from agent.runtime.images.store import ImageStore
from agent.runtime.local import LocalRuntime, LocalRuntimeOptions
from agent.runtime.snapshots.mounts import mounts_under, unmount_all
from tests.integration.runtime.containers_support import RuntimeEnv

_CLONE_NEWNET = 0x40000000


class LocalEnv(RuntimeEnv):
    """The leak checks of :class:`RuntimeEnv`, pointed at a local runtime's state directory."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, tmp)
        self.root = tmp / "rt"
        self.state_dir = self.root
        self.runc_root = self.root / "runc"
        self.cgroup_parent = f"/shoal-test-{uuid.uuid4().hex[:10]}"

    def runtime(self) -> LocalRuntime:  # type: ignore[override]
        """A new local runtime on this environment's state directory."""
        return LocalRuntime(self.root, LocalRuntimeOptions(cgroup_parent=self.cgroup_parent))

    def mounts(self) -> list[str]:
        """Mount points left under the state directory."""
        return mounts_under(self.root)

    def container_leftovers(self, cid: str) -> list[str]:
        """Everything of one container still on the host: state, snapshot, mounts, runc state."""
        found = [str(p) for p in (self.root / "containers" / cid, self.root / "runc" / cid) if p.exists()]
        found += [str(p) for p in (self.root / "snapshots").glob(f"*/containers/{cid}")]
        with open("/proc/self/mountinfo") as f:
            found += [line.split()[4] for line in f if cid in line]
        return found


@pytest.fixture
def local_env(tmp_path: Path, busybox_store: ImageStore) -> Iterator[LocalEnv]:
    """A state directory with busybox:latest, cleaned even on failure; nothing may be left after."""
    env = LocalEnv(tmp_path)
    ImageStore(env.root / "images").copy_from(busybox_store, "busybox:latest")
    try:
        yield env
    finally:
        env.cleanup()
        unmount_all(env.root)
        leftovers = env.runc_list(), env.mounts(), env.cgroup_dirs()
        shutil.rmtree(env.root, ignore_errors=True)
    assert leftovers == ([], [], []), "runc containers, mounts or cgroups left behind"


@pytest.fixture
async def local_runtime(local_env: LocalEnv) -> AsyncIterator[LocalRuntime]:
    """An opened local runtime; its containers are removed (with their volumes) after the test."""
    rt = local_env.runtime()
    await rt.open()
    try:
        yield rt
    finally:
        await remove_everything(rt)
        await rt.close()


async def remove_everything(rt: LocalRuntime) -> None:
    """Force-remove every container and volume of ``rt`` (what a test left behind)."""
    for record in rt.containers.list(all=True):
        with contextlib.suppress(Exception):
            await rt.remove(record.id, force=True, volumes=True)
    for volume in rt.volumes.list():
        with contextlib.suppress(Exception):
            rt.volumes.remove(volume.name, force=True)


@dataclass
class Reply:
    """One HTTP answer: status, headers and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        """A JSON-lines body (pull, push, load progress)."""
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    @property
    def message(self) -> str:
        return str(self.json()["message"])


class DockerAPI:
    """A small Docker Engine API client over the agent's unix socket."""

    def __init__(self, session: aiohttp.ClientSession, prefix: str = "/v1.43") -> None:
        self.session = session
        self.prefix = prefix

    async def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        async with self.session.request(method, "http://localhost" + self.prefix + path, **kwargs) as resp:
            return Reply(resp.status, dict(resp.headers), await resp.read())

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self.call("POST", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Reply:
        return await self.call("DELETE", path, **kwargs)

    async def create(self, name: str | None = None, **body: Any) -> str:
        """``docker create``; returns the id (fails the test on an error)."""
        body.setdefault("Image", "busybox")
        reply = await self.post("/containers/create", params={"name": name} if name else {}, json=body)
        assert reply.status == 201, reply.body
        return str(reply.json()["Id"])

    async def run(self, name: str | None = None, **body: Any) -> tuple[str, int]:
        """``docker run`` (not detached): create, start, wait; returns the id and the exit code."""
        cid = await self.create(name, **body)
        reply = await self.post(f"/containers/{cid}/start")
        assert reply.status == 204, reply.body
        waited = await self.post(f"/containers/{cid}/wait", timeout=aiohttp.ClientTimeout(total=30))
        return cid, int(waited.json()["StatusCode"])

    async def logs(self, cid: str, **params: str) -> list[tuple[int, bytes]]:
        """The container's output as (stream, bytes) frames."""
        query = {"stdout": "1", "stderr": "1", **params}
        reply = await self.get(f"/containers/{cid}/logs", params=query)
        assert reply.status == 200, reply.body
        return demux(reply.body)


def demux(data: bytes) -> list[tuple[int, bytes]]:
    """Split Docker's multiplexed stream into (stream type, payload) frames."""
    frames = []
    while data:
        stream, size = struct.unpack(">BxxxI", data[:8])
        frames.append((stream, data[8 : 8 + size]))
        data = data[8 + size :]
    return frames


@dataclass
class ApiEnv:
    """The API client, the runtime behind it and the environment's leak checks."""

    api: DockerAPI
    runtime: LocalRuntime
    env: LocalEnv
    socket: Path


@pytest.fixture
async def docker_api(local_env: LocalEnv) -> AsyncIterator[ApiEnv]:
    """The local runtime served on a unix socket (short path under /tmp), with a client for it."""
    sock_dir = Path(tempfile.mkdtemp(prefix="shoal-api-", dir="/tmp"))
    sock = sock_dir / "api.sock"
    rt = local_env.runtime()
    await rt.open()
    runner: web.AppRunner | None = None
    try:
        runner = await serve_unix(rt, sock)
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as session:
            yield ApiEnv(DockerAPI(session), rt, local_env, sock)
    finally:
        if runner is not None:
            await runner.cleanup()
        await remove_everything(rt)
        await rt.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


# --- talking to a server inside a container's network namespace -------------------------------------------
def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _http_get_in_netns(pid: int, port: int, path: str) -> bytes:
    # setns changes the namespace of the calling thread only; the socket keeps the namespace it was made in.
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        _setns(target)
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def http_get_in_netns(pid: int, port: int, path: str = "/", timeout: float = 10) -> bytes:
    """GET ``path`` from 127.0.0.1:``port`` inside the network namespace of process ``pid``.

    Retries until the server accepts connections (it may still be starting).
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await asyncio.to_thread(_http_get_in_netns, pid, port, path)
        except ConnectionRefusedError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)
