"""What is particular to the ZooKeeper adapter, on a real ZooKeeper: key encoding, compare-and-swap that a
delete-and-recreate cannot fool, the change log's trimming under a live watch, lease keys reaped by a client
that connects after the lease expired, directory znodes pruned. (The behaviour every adapter shares is in
tests/contract.)

Run: ``.venv/bin/pytest tests/integration/test_zookeeper_adapter.py`` (starts one ZooKeeper, ~20 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from kazoo.protocol.serialization import Exists

from kvstore_adapters import (
    CompactedError,
    Compare,
    EventType,
    InvalidStoreURL,
    KVError,
    KVStore,
    Put,
    open_store,
)
from kvstore_adapters.zookeeper import ZooKeeperStore
from tests.contract.helpers import PROMPT, assert_quiet, collect, key_gone, wait_until
from tests.servers import ZooKeeperServer, unique_prefix

Opener = Callable[..., Awaitable[ZooKeeperStore]]


@pytest.fixture
async def open_zk(zk_server: ZooKeeperServer) -> AsyncIterator[Opener]:
    """Opens clients of one fresh prefix (``query`` adds URL parameters); closes them after the test."""
    prefix = unique_prefix("zk")
    opened: list[KVStore] = []

    async def open_client(query: str = "") -> ZooKeeperStore:
        store = await open_store(zk_server.url_with_prefix(prefix) + query)
        opened.append(store)
        assert isinstance(store, ZooKeeperStore)
        return store

    yield open_client
    for store in opened:
        await asyncio.wait_for(store.close(), 10)


async def znode_stat(store: ZooKeeperStore, path: str) -> object:
    stat, _ = await store.read(Exists(path, None))
    return stat


async def test_odd_keys_round_trip_and_range_in_key_order(open_zk: Opener) -> None:
    store = await open_zk()
    odd = [
        "a",
        "a/b",
        "a-b",
        "a/",
        "",
        "%",
        "+",
        "50%/x+y",
        "é/ü",
        "\x01ctl",
        ".",
        "..",
        "a//b",
        "/lead",
        "😀",
    ]
    for i, key in enumerate(odd):
        await store.put(key, str(i).encode())
    for i, key in enumerate(odd):
        kv = await store.get(key)
        assert kv is not None and kv.key == key and kv.value == str(i).encode(), key
    assert [kv.key for kv in (await store.range("")).kvs] == sorted(odd)
    assert [kv.key for kv in (await store.range("a")).kvs] == sorted(k for k in odd if k.startswith("a"))
    assert [kv.key for kv in (await store.range("a/")).kvs] == ["a/", "a//b", "a/b"]


async def test_range_pages_through_many_keys_and_directories(open_zk: Opener) -> None:
    store = await open_zk()
    keys = [f"r/{d}/{i:03d}" for d in ("b", "a", "c/deep") for i in range(120)] + ["r/a", "r/b0"]
    await asyncio.gather(*(store.put(k, k.encode()) for k in keys))
    everything = await store.range("r/")
    assert [kv.key for kv in everything.kvs] == sorted(keys)  # more than one multiRead batch
    seen = [kv.key async for kv in store.iter_prefix("r/", page_size=37)]
    assert seen == sorted(keys)


async def test_compare_and_swap_is_not_fooled_by_delete_and_recreate(open_zk: Opener) -> None:
    """A key deleted and re-created (by another client) is at the same znode version as when it was read;
    a compare on the old revision must fail all the same."""
    one, two = await open_zk(), await open_zk()
    first = await one.put("k", b"v1")
    assert (await one.get("k")) is not None  # one now remembers the key's version
    assert await two.delete("k")
    await two.put("k", b"again")  # same znode version as before, another revision
    stale = await one.txn([Compare.at("k", first)], [Put("k", b"lost-update")])
    assert not stale.succeeded
    kv = await one.get("k")
    assert kv is not None and kv.value == b"again"
    # And once re-read, the compare holds again.
    assert (await one.txn([Compare.at("k", kv.mod_revision)], [Put("k", b"v3")])).succeeded


async def test_compare_and_swap_succeeds_after_an_unrelated_delete(open_zk: Opener) -> None:
    """Any delete bumps the epoch that guards cached versions: the next compare re-reads and still holds."""
    one, two = await open_zk(), await open_zk()
    rev = await one.put("k", b"v1")
    await one.put("unrelated", b"x")
    assert await two.delete("unrelated")
    assert (await one.txn([Compare.at("k", rev)], [Put("k", b"v2")])).succeeded
    assert (kv := await two.get("k")) is not None and kv.value == b"v2"


async def test_absence_is_asserted_even_where_no_directory_exists(open_zk: Opener) -> None:
    store = await open_zk()
    ok = await store.txn([Compare.absent("new/dir/k")], [Put("other", b"1")])
    assert ok.succeeded and await store.get("new/dir/k") is None
    failed = await store.txn([Compare.at("none/such", 5)], [Put("x", b"1")], [Put("y", b"2")])
    assert not failed.succeeded
    assert await store.get("x") is None and (kv := await store.get("y")) is not None
    assert kv.mod_revision == failed.revision


async def test_a_key_moved_to_another_lease_outlives_the_first(open_zk: Opener) -> None:
    store = await open_zk()
    first, second = await store.grant_lease(30), await store.grant_lease(30)
    start = await store.revision() + 1
    await store.put("m/k", b"1", lease=first.id)
    await store.put("m/k", b"2", lease=first.id)  # already registered with that lease
    await store.put("m/k", b"3", lease=second.id)
    await store.revoke_lease(first)
    kv = await store.get("m/k")
    assert kv is not None and kv.value == b"3" and kv.lease == second.id and kv.version == 3
    await store.revoke_lease(second)
    assert await store.get("m/k") is None
    async with store.watch("m/", start_revision=start) as watch:
        events = await collect(watch, 4)
        await assert_quiet(watch)
    assert [(e.type, e.value) for e in events][-1] == (EventType.DELETE, b"")


async def test_live_watch_sees_every_write_while_the_log_is_trimmed(open_zk: Opener) -> None:
    writer = await open_zk("?log_size=16")
    watcher = await open_zk("?log_size=16")
    count = 300
    async with watcher.watch("t/", start_revision=await watcher.revision() + 1) as watch:
        await writer.put("t/begin", b"")
        await collect(watch, 1)  # the watch is established: from here on it reads the log as it grows
        for i in range(count):
            await writer.put(f"t/{i % 7}", str(i).encode())
        events = await collect(watch, count, timeout=60)
        await assert_quiet(watch)
    assert [e.value for e in events] == [str(i).encode() for i in range(count)]
    assert [e.revision for e in events] == sorted(e.revision for e in events)

    async def log_trimmed() -> bool:
        stat = await znode_stat(writer, writer.layout.log)
        return stat is not None and stat.numChildren <= 16 + 16 // 4 + 16  # size + slack + one trim period

    await wait_until(log_trimmed, PROMPT, "the change log is trimmed to about log_size")


async def test_history_trimmed_away_raises_compacted_error(open_zk: Opener) -> None:
    store = await open_zk("?log_size=16")
    start = await store.revision() + 1
    for i in range(120):
        await store.put(f"h/{i}", b"v")

    async def trimmed() -> bool:
        stat = await znode_stat(store, store.layout.log)
        return stat is not None and stat.numChildren < 100

    await wait_until(trimmed, PROMPT, "the change log is trimmed")
    with pytest.raises(CompactedError) as info:
        async with store.watch("h/", start_revision=start) as watch:
            await asyncio.wait_for(anext(watch), PROMPT)
    assert info.value.requested == start and info.value.compact_revision >= start


async def test_expired_lease_keys_are_reaped_by_a_client_connecting_later(open_zk: Opener) -> None:
    """Nobody is connected when the lease's session expires; the next client to connect deletes its keys,
    and a watch from before sees the deletion."""
    owner = await open_zk()
    lease = await owner.grant_lease(1.0)
    start = await owner.revision() + 1
    await owner.put("e/leased", b"v", lease=lease.id)
    await owner.put("e/plain", b"v")
    await owner.close()  # leaves the lease to expire on the server; no client of this prefix remains
    await asyncio.sleep(2.5)  # past the session timeout

    later = await open_zk()
    await wait_until(lambda: key_gone(later, "e/leased"), PROMPT, "the expired lease's key is reaped")
    assert await later.get("e/plain") is not None
    async with later.watch("e/", start_revision=start) as watch:
        events = await collect(watch, 3)
    assert [(e.type, e.key) for e in events] == [
        (EventType.PUT, "e/leased"),
        (EventType.PUT, "e/plain"),
        (EventType.DELETE, "e/leased"),
    ]


async def test_a_lease_from_another_client_attaches_keys_until_revoked(open_zk: Opener) -> None:
    owner, other = await open_zk(), await open_zk()
    lease = await owner.grant_lease(30)
    await other.put("f/k", b"v", lease=lease.id)
    kv = await other.get("f/k")
    assert kv is not None and kv.lease == lease.id
    await owner.revoke_lease(lease)
    assert await other.get("f/k") is None


async def test_delete_prefix_removes_directory_znodes(open_zk: Opener) -> None:
    store = await open_zk()
    await store.put("d/x/y/z", b"1")
    await store.put("d/x/w", b"2")
    await store.put("dd", b"3")
    assert await store.delete_prefix("d/") == 2
    assert await znode_stat(store, store.layout.key_dirs("d/x")[0]) is None
    assert (await store.get("dd")) is not None
    await store.put("d/x/y/z", b"back")  # directories come back on demand
    assert (kv := await store.get("d/x/y/z")) is not None and kv.value == b"back"


async def test_a_value_too_large_for_one_request_is_refused_cleanly(open_zk: Opener) -> None:
    store = await open_zk()
    with pytest.raises(KVError, match=r"jute\.maxbuffer"):
        await store.put("big", b"x" * 600_000)  # sent twice (value and log entry): over 1 MB
    await store.put("big", b"x" * 400_000)
    assert (kv := await store.get("big")) is not None and len(kv.value) == 400_000


async def test_url_parameters(zk_server: ZooKeeperServer) -> None:
    with pytest.raises(InvalidStoreURL, match="unknown parameter"):
        await open_store(zk_server.url_with_prefix("p") + "?log_sise=10")
    with pytest.raises(InvalidStoreURL, match="log_size"):
        await open_store(zk_server.url_with_prefix("p") + "?log_size=3")
    store = await open_store(zk_server.url_with_prefix(unique_prefix("u")) + "?log_size=64&timeout=3")
    try:
        assert store.info().extra["log_size"] == "64"
    finally:
        await store.close()
