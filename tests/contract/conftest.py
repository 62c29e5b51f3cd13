"""Fixtures of the KV store contract suite: one ``backend`` per adapter (memory, etcd, zookeeper, consul).

etcd and ZooKeeper run for real (session-wide servers from tests/conftest.py). Consul runs only when
``CONSUL_HTTP_ADDR`` names a server. Every test gets a fresh key prefix (and memory backends a fresh
shared store name), so tests never see each other's keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from kvstore_adapters import KVStore, open_store
from tests.servers import EtcdServer, ZooKeeperServer, unique_prefix

BACKENDS = ("memory", "etcd", "zookeeper", "consul")
MODULES = {
    "memory": "kvstore_adapters.memory",
    "etcd": "kvstore_adapters.etcd",
    "zookeeper": "kvstore_adapters.zookeeper",
    "consul": "kvstore_adapters.consul",
}
SCHEMES = {"memory": "memory", "etcd": "etcd", "zookeeper": "zk", "consul": "consul"}
NO_CONSUL = "CONSUL_HTTP_ADDR not set: no Consul server on this machine"


def consul_endpoint() -> str | None:
    """``host:port`` of the Consul server named by CONSUL_HTTP_ADDR, if any."""
    addr = os.environ.get("CONSUL_HTTP_ADDR", "").strip()
    if not addr:
        return None
    for scheme in ("http://", "https://"):
        addr = addr.removeprefix(scheme)
    return addr.rstrip("/")


@dataclass
class Backend:
    """One backend under test: how to reach it and a factory of connected clients (closed after the test)."""

    name: str
    #: ``scheme://endpoints`` without a prefix.
    base: str
    #: This test's key prefix.
    prefix: str
    #: The server process, when the test owns it (restart tests) or shares the session one.
    server: EtcdServer | ZooKeeperServer | None = None
    _opened: list[KVStore] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.url_with_prefix(self.prefix)

    def url_with_prefix(self, prefix: str) -> str:
        return f"{self.base}/{prefix}"

    async def open(self, url: str | None = None) -> KVStore:
        """A new connected client (a separate connection/session) of this backend."""
        store = await open_store(url or self.url)
        self._opened.append(store)
        return store

    async def aclose(self) -> None:
        for store in reversed(self._opened):
            # Bounded: a client of a server the test killed must not hang the teardown.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(store.close(), 10)
        self._opened.clear()


def _skip_unless_written(name: str) -> None:
    if importlib.util.find_spec(MODULES[name]) is None:
        pytest.skip(f"{MODULES[name]} does not exist yet")


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """The adapter under test; skipped while its module is not written."""
    name = str(request.param)
    _skip_unless_written(name)
    return name


def _make_backend(request: pytest.FixtureRequest, name: str, *, own_server: bool) -> Backend:
    prefix = unique_prefix(request.node.name)
    if name == "memory":
        return Backend(name, f"memory://{unique_prefix('shared')}", prefix)
    if name == "consul":
        endpoint = consul_endpoint()
        if endpoint is None:
            pytest.skip(NO_CONSUL)
        return Backend(name, f"consul://{endpoint}", prefix)
    fixture = {"etcd": "etcd_server", "zookeeper": "zk_server"}[name]
    if own_server:
        fixture = "fresh_" + fixture
    server = request.getfixturevalue(fixture)
    assert isinstance(server, EtcdServer | ZooKeeperServer)
    return Backend(name, f"{SCHEMES[name]}://{server.endpoint}", prefix, server)


@pytest.fixture
async def backend(request: pytest.FixtureRequest, backend_name: str) -> AsyncIterator[Backend]:
    """The backend under test, on the session-wide server."""
    b = _make_backend(request, backend_name, own_server=False)
    try:
        yield b
    finally:
        await b.aclose()


@pytest.fixture
async def restartable_backend(request: pytest.FixtureRequest, backend_name: str) -> AsyncIterator[Backend]:
    """The backend under test on a server of this test's own, which the test may kill and restart."""
    if backend_name == "memory":
        pytest.skip("the memory store lives in the test process: there is no store process to restart")
    if backend_name == "consul":
        pytest.skip("the Consul server is external (CONSUL_HTTP_ADDR): the suite does not restart it")
    b = _make_backend(request, backend_name, own_server=True)
    try:
        yield b
    finally:
        await b.aclose()


@pytest.fixture
async def store(backend: Backend) -> KVStore:
    """A connected client of the backend under test."""
    return await backend.open()
