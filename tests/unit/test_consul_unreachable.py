"""ConsulStore against loopback ports where nothing listens: connect() fails fast, naming every endpoint."""

from __future__ import annotations

import time

import pytest

from kvstore_adapters.base import StoreURL
from kvstore_adapters.consul import ConsulStore
from kvstore_adapters.errors import StoreUnavailable
from tests.servers import closed_port


def store_for(*ports: int) -> ConsulStore:
    endpoints = tuple(("127.0.0.1", p) for p in ports)
    raw = "consul://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/shoal"
    return ConsulStore.from_url(StoreURL("consul", endpoints, "shoal", {"timeout": "5"}, raw))


async def test_connect_to_closed_ports_raises_store_unavailable_naming_each_endpoint() -> None:
    first, second = closed_port(), closed_port()
    store = store_for(first, second)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await store.connect()
    assert time.monotonic() - started < 5  # refused connections fail at once, not after the timeout
    error = info.value
    assert error.backend == "consul"
    assert error.endpoints == f"127.0.0.1:{first},127.0.0.1:{second}"
    assert f"http://127.0.0.1:{first}" in error.reason and f"http://127.0.0.1:{second}" in error.reason
    assert str(error).startswith(f"cannot reach consul at 127.0.0.1:{first},127.0.0.1:{second}: ")
    assert not store.connected


async def test_async_with_surfaces_the_same_error_and_calls_before_connect_are_refused() -> None:
    store = store_for(closed_port())
    with pytest.raises(StoreUnavailable, match="not connected"):
        await store.get("nodes/n1")
    with pytest.raises(StoreUnavailable, match="cannot reach consul"):
        async with store:
            pass


def test_info_names_backend_endpoints_and_prefix() -> None:
    info = store_for(8500).info()
    assert (info.backend, info.endpoints, info.prefix) == ("consul", "127.0.0.1:8500", "shoal")
    assert info.extra == {"scheme": "http"}
