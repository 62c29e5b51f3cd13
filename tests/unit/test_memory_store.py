"""What is particular to the in-process store: shared names, connection state, loop-driven lease expiry.
Everything it has in common with the real backends is in tests/contract."""

from __future__ import annotations

import asyncio
import time

import pytest

from kvstore_adapters import Compare, EventType, Put, StoreUnavailable, open_store, store_from_url
from kvstore_adapters.memory import MemoryStore
from tests.servers import unique_prefix


async def test_same_name_shares_one_store_and_other_names_do_not() -> None:
    name = unique_prefix("mem")
    a = await open_store(f"memory://{name}/p")
    b = await open_store(f"memory://{name}/p")
    other = await open_store(f"memory://{name}-other/p")
    private = await open_store("memory:///p")
    rev = await a.put("k", b"v")
    assert (kv := await b.get("k")) is not None and kv.mod_revision == rev
    assert await other.get("k") is None
    assert await private.get("k") is None
    assert await (await open_store("memory:///p")).get("k") is None, "memory:// must be private"


async def test_shared_store_outlives_its_clients() -> None:
    name = unique_prefix("mem")
    first = await open_store(f"memory://{name}")
    await first.put("k", b"v")
    await first.close()
    second = await open_store(f"memory://{name}")
    assert await second.get("k") is not None
    MemoryStore.drop_shared(name)
    assert await (await open_store(f"memory://{name}")).get("k") is None


async def test_unconnected_or_closed_client_refuses_work() -> None:
    store = store_from_url("memory://")
    with pytest.raises(StoreUnavailable, match="not connected"):
        await store.get("k")
    await store.connect()
    await store.put("k", b"v")
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get("k")


async def test_closing_the_client_ends_its_watches() -> None:
    store = await open_store("memory://")
    watch = store.watch("")
    pending = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0)
    await store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 1)


async def test_lease_expiry_is_driven_by_the_loop_without_other_calls() -> None:
    store = await open_store("memory://")
    lease = await store.grant_lease(0.2)
    await store.put("k", b"v", lease=lease.id)
    async with store.watch("", start_revision=await store.revision()) as watch:
        assert (await anext(watch)).type is EventType.PUT
        # No store call from here on: only the loop's timer can produce the deletion.
        event = await asyncio.wait_for(anext(watch), 2)
    assert (event.type, event.key) == (EventType.DELETE, "k")


async def test_keep_alive_pushes_the_expiry_back() -> None:
    store = await open_store("memory://")
    lease = await store.grant_lease(0.3)
    await store.put("k", b"v", lease=lease.id)
    for _ in range(4):
        await asyncio.sleep(0.15)
        await store.keep_alive(lease)
    assert await store.get("k") is not None
    await asyncio.sleep(0.4)
    assert await store.get("k") is None


def test_leases_expire_even_when_their_loop_is_gone() -> None:
    name = unique_prefix("mem")

    async def grant() -> None:
        store = await open_store(f"memory://{name}")
        lease = await store.grant_lease(0.1)
        await store.put("k", b"v", lease=lease.id)

    async def check() -> bool:
        store = await open_store(f"memory://{name}")
        return await store.get("k") is None

    asyncio.run(grant())
    time.sleep(0.2)
    assert asyncio.run(check())


async def test_duplicate_keys_in_one_txn_are_refused_like_etcd() -> None:
    store = await open_store("memory://")
    with pytest.raises(ValueError, match="twice"):
        await store.txn([Compare.absent("a")], [Put("a", b"1"), Put("a", b"2")])
    assert await store.get("a") is None


async def test_compacting_the_future_is_refused() -> None:
    store = await open_store("memory://")
    rev = await store.put("a", b"1")
    with pytest.raises(ValueError, match="cannot compact"):
        await store.compact(rev + 5)


async def test_range_stops_at_the_prefix_end_and_limit_counts_only_matches() -> None:
    store = await open_store("memory://")
    for key in ("a", "b/1", "b/2", "c"):
        await store.put(key, b"")
    page = await store.range("b/", start_after="a", limit=5)
    assert [kv.key for kv in page.kvs] == ["b/1", "b/2"] and not page.more
