"""Watch contract: every change under a prefix, in revision order, exactly once, from a revision; history
until compaction; resumption across a restart of the store process. (How to run: see test_contract.py.)"""

from __future__ import annotations

import asyncio

import pytest

from kvstore_adapters import CompactedError, Compare, Delete, Event, EventType, KVStore, Put, StoreUnavailable
from tests.contract.conftest import Backend
from tests.contract.helpers import PROMPT, assert_quiet, collect, next_event, simple, wait_until


async def _write_mix(store: KVStore) -> list[tuple[str, str, bytes]]:
    """A mix of puts, deletes, a prefix delete and a transaction; returns the events it must produce."""
    expected: list[tuple[str, str, bytes]] = []

    async def put(key: str, value: bytes) -> None:
        await store.put(key, value)
        expected.append(("put", key, value))

    for i in range(5):
        await put(f"w/k{i}", f"v{i}".encode())
    await put("w/k1", b"v1b")
    await store.delete("w/k0")
    expected.append(("delete", "w/k0", b""))
    await store.delete("w/absent")  # no event: nothing existed
    await store.txn([Compare.absent("w/t")], [Put("w/t", b"t"), Delete("w/k2")])
    expected += [("put", "w/t", b"t"), ("delete", "w/k2", b"")]
    await store.put("other/x", b"outside the prefix")
    await put("w/sub/deep", b"d")
    await store.delete_prefix("w/sub/")
    expected.append(("delete", "w/sub/deep", b""))
    return expected


def _assert_in_order(events: list[Event], expected: list[tuple[str, str, bytes]]) -> None:
    """``events`` are ``expected`` in revision order; events of one transaction share a revision and may
    come in any order among themselves."""
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions)

    def canonical(items: list[tuple[str, str, bytes]]) -> list[tuple[int, str, str, bytes]]:
        pairs = zip(revisions, items, strict=True)
        return sorted((rev, key, kind, value) for rev, (kind, key, value) in pairs)

    assert canonical(simple(events)) == canonical(expected)


async def test_watch_from_past_revision_replays_history_in_order(store: KVStore) -> None:
    start = await store.revision() + 1
    expected = await _write_mix(store)
    async with store.watch("w/", start_revision=start) as watch:
        events = await collect(watch, len(expected))
        assert events[0].revision >= start
        _assert_in_order(events, expected)
        await assert_quiet(watch)


async def test_live_watch_sees_every_change_once_in_order(store: KVStore, backend: Backend) -> None:
    writer = await backend.open()
    start = await store.revision() + 1
    async with store.watch("w/", start_revision=start) as watch:
        expected = await _write_mix(writer)
        events = await collect(watch, len(expected))
        _assert_in_order(events, expected)
        await assert_quiet(watch)


async def test_watch_events_carry_revisions_of_the_writes(store: KVStore) -> None:
    start = await store.revision() + 1
    r1 = await store.put("w/a", b"1")
    r2 = await store.put("w/a", b"2")
    await store.delete("w/a")
    r3 = await store.revision()
    async with store.watch("w/", start_revision=start) as watch:
        events = await collect(watch, 3)
    assert [(e.type, e.value, e.revision) for e in events] == [
        (EventType.PUT, b"1", r1),
        (EventType.PUT, b"2", r2),
        (EventType.DELETE, b"", r3),
    ]


async def test_many_quick_writes_arrive_exactly_once(store: KVStore, backend: Backend) -> None:
    writer = await backend.open()
    count = 200
    async with store.watch("burst/", start_revision=await store.revision() + 1) as watch:
        await asyncio.gather(*(writer.put(f"burst/{i % 20}", str(i).encode()) for i in range(count)))
        events = await collect(watch, count, timeout=30)
        await assert_quiet(watch)
    assert len({e.revision for e in events}) == count
    assert [e.revision for e in events] == sorted(e.revision for e in events)
    last = {e.key: e.value for e in events}
    for kv in (await store.range("burst/")).kvs:
        assert last[kv.key] == kv.value


async def test_watch_without_start_revision_begins_now(store: KVStore, backend: Backend) -> None:
    writer = await backend.open()
    await writer.put("n/before", b"old")
    async with store.watch("n/") as watch:
        first = asyncio.ensure_future(next_event(watch))
        await asyncio.sleep(0.3)  # let the watch establish; it must not report the older write
        await writer.put("n/after", b"new")
        event = await first
        assert (event.type, event.key, event.value) == (EventType.PUT, "n/after", b"new")
        await assert_quiet(watch)


async def test_watch_sees_only_its_prefix_and_several_watches_agree(store: KVStore) -> None:
    start = await store.revision() + 1
    for key in ("x/1", "xy/1", "y/1", "x/2/3"):
        await store.put(key, b"v")
    one = store.watch("x/", start_revision=start)
    two = store.watch("x/", start_revision=start)
    try:
        a, b = await collect(one, 2), await collect(two, 2)
        assert [e.key for e in a] == [e.key for e in b] == ["x/1", "x/2/3"]
        await assert_quiet(one)
    finally:
        await one.close()
        await two.close()


async def test_closed_watch_stops_iterating(store: KVStore) -> None:
    watch = store.watch("c/", start_revision=await store.revision() + 1)
    await store.put("c/1", b"1")
    assert (await next_event(watch)).key == "c/1"
    await watch.close()
    await watch.close()  # twice is fine
    await store.put("c/2", b"2")
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(watch), PROMPT)


async def test_compacted_history_raises_compacted_error(store: KVStore) -> None:
    r1 = await store.put("h/a", b"1")
    await store.put("h/b", b"2")
    r3 = await store.put("h/c", b"3")
    r4 = await store.put("h/d", b"4")
    await store.compact(r3)
    with pytest.raises(CompactedError) as info:
        async with store.watch("h/", start_revision=r1) as watch:
            await asyncio.wait_for(anext(watch), PROMPT)
    assert info.value.requested == r1
    # History from the compaction revision on is still there.
    async with store.watch("h/", start_revision=r3) as watch:
        events = await collect(watch, 2)
    assert [(e.key, e.revision) for e in events] == [("h/c", r3), ("h/d", r4)]


async def test_watch_resumes_across_store_restart(restartable_backend: Backend) -> None:
    """Kill -9 the store process mid-watch and restart it on the same port and data: the watch delivers
    every write before and after the crash, once each, in order."""
    backend = restartable_backend
    server = backend.server
    assert server is not None
    watcher, writer = await backend.open(), await backend.open()
    start = await writer.revision() + 1
    watch = watcher.watch("r/", start_revision=start)
    try:
        for i in range(5):
            await writer.put(f"r/{i:02d}", str(i).encode())
        got = await collect(watch, 3)

        await asyncio.to_thread(server.kill)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(server.restart)

        async def writer_back() -> bool:
            try:
                await writer.get("r/00")
            except StoreUnavailable:
                return False
            return True

        await wait_until(writer_back, 30, "writer reconnects after the restart", interval=0.2)
        for i in range(5, 10):
            # Create-only, so a write retried after an ambiguous failure cannot produce a second event.
            for _ in range(50):
                try:
                    await writer.txn([Compare.absent(f"r/{i:02d}")], [Put(f"r/{i:02d}", str(i).encode())])
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.2)
        got += await collect(watch, 7, timeout=30)
        assert [(e.key, e.value) for e in got] == [(f"r/{i:02d}", str(i).encode()) for i in range(10)]
        assert [e.revision for e in got] == sorted(e.revision for e in got)
        await assert_quiet(watch, 1.0)
    finally:
        await watch.close()
