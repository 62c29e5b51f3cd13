"""The KV store contract: every adapter (memory, etcd, zookeeper, consul) must pass this whole folder.

How to run::

    .venv/bin/pytest tests/contract                 # every adapter (etcd and ZooKeeper start once per run)
    .venv/bin/pytest tests/contract -k etcd         # one adapter: memory | etcd | zookeeper | consul
    .venv/bin/pytest tests/contract/test_watch.py -k "zookeeper and restart"
    CONSUL_HTTP_ADDR=127.0.0.1:8500 .venv/bin/pytest tests/contract -k consul

Files: test_contract.py (keys, revisions, ranges, transactions, contention, URLs, unreachable stores),
test_watch.py (order, exactly-once, history, compaction, resume across a store restart), test_leases.py
(expiry, keep-alive, revoke, a killed client process), test_election.py (leader election on top).
Servers are real processes on free loopback ports (tests/servers.py); adapters whose module does not exist
yet are skipped, and Consul is skipped unless CONSUL_HTTP_ADDR is set.
"""

from __future__ import annotations

import asyncio

import pytest

from kvstore_adapters import (
    Compare,
    Delete,
    InvalidStoreURL,
    KVStore,
    LeaseNotFound,
    Put,
    StoreUnavailable,
    open_store,
    store_from_url,
)
from tests.contract.conftest import MODULES, SCHEMES, Backend
from tests.contract.helpers import PROMPT
from tests.servers import closed_port

# --- single keys -----------------------------------------------------------------------------------------


async def test_put_then_get_returns_value_and_metadata(store: KVStore) -> None:
    rev = await store.put("nodes/n1", b"hello")
    kv = await store.get("nodes/n1")
    assert kv is not None
    assert (kv.key, kv.value) == ("nodes/n1", b"hello")
    assert kv.create_revision == kv.mod_revision == rev > 0
    assert kv.version == 1
    assert kv.lease is None
    assert await store.get("nodes/missing") is None


async def test_values_are_binary_safe(store: KVStore) -> None:
    blob = bytes(range(256)) * 4
    await store.put("bin", blob)
    await store.put("empty", b"")
    assert (kv := await store.get("bin")) is not None and kv.value == blob
    assert (kv := await store.get("empty")) is not None and kv.value == b""


async def test_revisions_grow_with_every_write(store: KVStore) -> None:
    before = await store.revision()
    r1 = await store.put("a", b"1")
    r2 = await store.put("b", b"2")
    r3 = await store.put("a", b"3")
    assert before < r1 < r2 < r3
    assert await store.revision() >= r3


async def test_version_counts_writes_and_resets_on_recreate(store: KVStore) -> None:
    first = await store.put("k", b"1")
    await store.put("k", b"2")
    last = await store.put("k", b"3")
    kv = await store.get("k")
    assert kv is not None
    assert (kv.value, kv.version, kv.create_revision, kv.mod_revision) == (b"3", 3, first, last)

    assert await store.delete("k") is True
    again = await store.put("k", b"new")
    kv = await store.get("k")
    assert kv is not None
    assert kv.version == 1
    assert kv.create_revision == kv.mod_revision == again > last


async def test_delete_says_whether_the_key_existed(store: KVStore) -> None:
    await store.put("k", b"v")
    assert await store.delete("k") is True
    assert await store.get("k") is None
    assert await store.delete("k") is False
    assert await store.delete("never") is False


async def test_delete_prefix_removes_exactly_the_keys_under_it(store: KVStore) -> None:
    for key in ("a/1", "a/2", "a/sub/3", "ab", "b/1"):
        await store.put(key, b"x")
    assert await store.delete_prefix("a/") == 3
    assert [kv.key for kv in (await store.range("")).kvs] == ["ab", "b/1"]
    assert await store.delete_prefix("a/") == 0


async def test_clients_with_different_prefixes_do_not_see_each_other(backend: Backend) -> None:
    one = await backend.open(backend.url_with_prefix(backend.prefix + "-one"))
    two = await backend.open(backend.url_with_prefix(backend.prefix + "-one-two"))
    await one.put("k", b"one")
    await two.put("k", b"two")
    assert (kv := await one.get("k")) is not None and kv.value == b"one"
    assert (kv := await two.get("k")) is not None and kv.value == b"two"
    assert [kv.key for kv in (await one.range("")).kvs] == ["k"]
    assert await one.delete_prefix("") == 1
    assert await two.get("k") is not None


async def test_two_clients_see_each_others_writes(backend: Backend) -> None:
    one, two = await backend.open(), await backend.open()
    rev = await one.put("shared", b"from-one")
    kv = await two.get("shared")
    assert kv is not None and kv.value == b"from-one" and kv.mod_revision == rev


async def test_info_names_backend_and_prefix(backend: Backend, store: KVStore) -> None:
    info = store.info()
    assert info.backend == backend.name
    assert info.prefix == backend.prefix
    assert store.backend == backend.name


# --- ranges ----------------------------------------------------------------------------------------------


async def test_range_is_in_key_order_and_includes_nested_keys(store: KVStore) -> None:
    keys = ["t/b", "t/a", "t/a/x", "t/10", "t/2", "u/1", "s"]
    for i, key in enumerate(keys):
        await store.put(key, str(i).encode())
    page = await store.range("t/")
    assert [kv.key for kv in page.kvs] == ["t/10", "t/2", "t/a", "t/a/x", "t/b"]
    assert page.more is False
    assert page.revision >= max(kv.mod_revision for kv in page.kvs)
    assert {kv.key: kv.value for kv in page.kvs}["t/a/x"] == b"2"


async def test_range_prefix_need_not_end_with_a_slash(store: KVStore) -> None:
    for key in ("app", "app/x", "apple", "ap", "b"):
        await store.put(key, b"v")
    assert [kv.key for kv in (await store.range("app")).kvs] == ["app", "app/x", "apple"]


async def test_range_of_an_empty_prefix_is_empty(store: KVStore) -> None:
    page = await store.range("nothing/")
    assert page.kvs == () and page.more is False and page.revision >= 0


async def test_range_pages_with_start_after_and_limit(store: KVStore) -> None:
    keys = [f"p/{i:03d}" for i in range(25)]
    for key in reversed(keys):
        await store.put(key, key.encode())
    seen: list[str] = []
    mores: list[bool] = []
    after: str | None = None
    while True:
        page = await store.range("p/", start_after=after, limit=10)
        seen += [kv.key for kv in page.kvs]
        mores.append(page.more)
        if not page.more:
            break
        after = page.kvs[-1].key
    assert seen == keys
    assert mores == [True, True, False]

    # A page that ends exactly at the last key says there is no more.
    last = await store.range("p/", start_after="p/014", limit=10)
    assert [kv.key for kv in last.kvs] == keys[15:] and last.more is False
    # start_after between keys, and after the last key.
    mid = await store.range("p/", start_after="p/0105", limit=2)
    assert [kv.key for kv in mid.kvs] == ["p/011", "p/012"] and mid.more is True
    assert (await store.range("p/", start_after="p/999")).kvs == ()
    # iter_prefix walks every page.
    assert [kv.key async for kv in store.iter_prefix("p/", page_size=7)] == keys


# --- transactions ----------------------------------------------------------------------------------------


async def test_txn_create_only_succeeds_once(store: KVStore) -> None:
    first = await store.txn([Compare.absent("lock")], [Put("lock", b"a")])
    second = await store.txn([Compare.absent("lock")], [Put("lock", b"b")])
    assert first.succeeded is True and second.succeeded is False
    kv = await store.get("lock")
    assert kv is not None and kv.value == b"a" and kv.mod_revision == first.revision
    assert second.revision >= first.revision


async def test_txn_compare_and_swap_on_mod_revision(store: KVStore) -> None:
    rev = await store.put("k", b"v1")
    ok = await store.txn([Compare.at("k", rev)], [Put("k", b"v2")])
    stale = await store.txn([Compare.at("k", rev)], [Put("k", b"lost-update")])
    assert ok.succeeded and not stale.succeeded
    kv = await store.get("k")
    assert kv is not None and kv.value == b"v2" and kv.mod_revision == ok.revision
    # A compare on a key that does not exist fails; "absent" on one that exists fails.
    assert not (await store.txn([Compare.at("missing", rev)], [Put("x", b"1")])).succeeded
    assert not (await store.txn([Compare.absent("k")], [Put("x", b"1")])).succeeded
    assert await store.get("x") is None


async def test_txn_failure_branch_runs_when_a_compare_fails(store: KVStore) -> None:
    rev = await store.put("k", b"v1")
    await store.put("k", b"v2")
    result = await store.txn(
        [Compare.at("k", rev)],
        [Put("k", b"should-not"), Put("success-ran", b"1")],
        [Put("failure-ran", b"1"), Delete("k")],
    )
    assert result.succeeded is False
    assert await store.get("success-ran") is None
    assert (kv := await store.get("failure-ran")) is not None and kv.mod_revision == result.revision
    assert await store.get("k") is None


async def test_txn_multi_key_is_all_or_nothing(store: KVStore) -> None:
    ra = await store.put("a", b"a1")
    rb = await store.put("b", b"b1")
    await store.put("c", b"c1")
    # One compare holds, the other does not: nothing of the success branch happens.
    failed = await store.txn(
        [Compare.at("a", ra), Compare.at("b", rb + 1000)],
        [Put("a", b"a2"), Put("b", b"b2"), Delete("c")],
    )
    assert not failed.succeeded
    unchanged = [(kv.key, kv.value) for kv in (await store.range("")).kvs]
    assert unchanged == [("a", b"a1"), ("b", b"b1"), ("c", b"c1")]

    done = await store.txn(
        [Compare.at("a", ra), Compare.at("b", rb), Compare.absent("d")],
        [Put("a", b"a2"), Put("b", b"b2"), Delete("c"), Put("d", b"d1")],
    )
    assert done.succeeded
    kvs = (await store.range("")).kvs
    assert [(kv.key, kv.value) for kv in kvs] == [("a", b"a2"), ("b", b"b2"), ("d", b"d1")]
    # Every write of one transaction carries the transaction's revision.
    assert {kv.mod_revision for kv in kvs} == {done.revision}


async def test_txn_with_a_dead_lease_fails_whole(store: KVStore) -> None:
    lease = await store.grant_lease(5)
    await store.revoke_lease(lease)
    with pytest.raises(LeaseNotFound):
        await store.txn([], [Put("plain", b"1"), Put("leased", b"2", lease=lease.id)])
    assert await store.get("plain") is None
    assert await store.get("leased") is None


async def test_concurrent_compare_and_swap_loses_no_increment(backend: Backend) -> None:
    """8 separate clients each add 1 to one counter 50 times with read-compare-write: the end is 400."""
    clients, rounds = 8, 50
    stores = [await backend.open() for _ in range(clients)]
    await stores[0].put("counter", b"0")
    conflicts = 0

    async def worker(store: KVStore) -> None:
        nonlocal conflicts
        for _ in range(rounds):
            while True:
                kv = await store.get("counter")
                assert kv is not None
                nxt = str(int(kv.value) + 1).encode()
                result = await store.txn([Compare.at("counter", kv.mod_revision)], [Put("counter", nxt)])
                if result.succeeded:
                    break
                conflicts += 1

    await asyncio.wait_for(asyncio.gather(*(worker(s) for s in stores)), 120)
    kv = await stores[0].get("counter")
    assert kv is not None and kv.value == b"400"
    assert kv.version == 1 + clients * rounds


# --- URLs and reachability -------------------------------------------------------------------------------


async def test_url_selects_this_adapter(backend: Backend) -> None:
    store = store_from_url(backend.url)
    assert type(store).__module__ == MODULES[backend.name]
    assert store.info().prefix == backend.prefix


async def test_unreachable_store_raises_store_unavailable_naming_endpoints(backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("the memory store is in-process: it cannot be unreachable")
    port = closed_port()
    url = f"{SCHEMES[backend_name]}://127.0.0.1:{port}/unreachable"
    with pytest.raises(StoreUnavailable) as info:
        await asyncio.wait_for(open_store(url), PROMPT)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert f"127.0.0.1:{port}" in info.value.endpoints


async def test_bad_url_for_this_scheme_is_rejected(backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("memory URLs have no host")
    scheme = SCHEMES[backend_name]
    with pytest.raises(InvalidStoreURL, match="port"):
        store_from_url(f"{scheme}://127.0.0.1:99999/x")
    with pytest.raises(InvalidStoreURL, match="no host"):
        store_from_url(f"{scheme}:///x")
