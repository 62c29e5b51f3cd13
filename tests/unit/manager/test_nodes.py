"""Node liveness: the pure READY/DOWN rule, and NodeLiveness following session keys (memory store)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from api import Node
from api.objects import Meta, NodeState, NodeStatus
from kvstore_adapters.memory import MemoryStore
from manager.nodes import (
    DOWN_MESSAGE,
    NodeLiveness,
    NodeStateChange,
    SessionRecord,
    plan_node_states,
    session_key,
)
from manager.session_keys import SessionKeys

GRACE = 15.0


def node(node_id: str, state: NodeState) -> Node:
    return Node(meta=Meta(id=node_id, version=1), status=NodeStatus(state=state))


def test_a_node_with_a_session_is_ready() -> None:
    plan = plan_node_states([node("a", NodeState.DOWN), node("b", NodeState.READY)], {}, now=100, grace=GRACE)
    assert plan.changes == (NodeStateChange("a", NodeState.READY, ""),)
    assert plan.recheck_at is None


def test_a_node_is_down_only_after_the_grace_without_a_session() -> None:
    nodes = [node("a", NodeState.READY)]
    early = plan_node_states(nodes, {"a": 90.0}, now=100, grace=GRACE)
    assert early.changes == ()
    assert early.recheck_at == 105.0, "look again exactly when the grace runs out"
    late = plan_node_states(nodes, {"a": 90.0}, now=105.5, grace=GRACE)
    assert late.changes == (NodeStateChange("a", NodeState.DOWN, DOWN_MESSAGE),)


def test_nodes_already_down_are_left_alone_and_the_earliest_deadline_wins() -> None:
    nodes = [node("down", NodeState.DOWN), node("a", NodeState.READY), node("b", NodeState.UNKNOWN)]
    plan = plan_node_states(nodes, {"down": 0.0, "a": 95.0, "b": 91.0}, now=100, grace=GRACE)
    assert plan.changes == ()
    assert plan.recheck_at == 106.0


def test_session_records_round_trip_and_garbage_is_not_fatal() -> None:
    record = SessionRecord("n1", "m1", "s1", "127.0.0.1:2377", 12.5)
    assert SessionRecord.decode(record.encode()) == record
    assert SessionRecord.decode(b"\xc1 not msgpack") is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def kv() -> AsyncIterator[MemoryStore]:
    store = MemoryStore()
    await store.connect()
    yield store
    await store.close()


async def settle(liveness: NodeLiveness) -> None:
    """Wait until the watch delivered what was written so far."""
    liveness.changed.clear()
    await liveness.changed.wait()


async def test_liveness_follows_session_keys_and_counts_absence_from_the_first_question(
    kv: MemoryStore,
) -> None:
    await kv.put(session_key("early"), SessionRecord("early", "m1", "s1").encode())
    clock = Clock()
    liveness = NodeLiveness(kv, clock=clock)
    await liveness.start()
    try:
        assert liveness.present("early")
        assert liveness.sessions["early"] == SessionRecord("early", "m1", "s1")
        # A node never seen with a session: absent since it was first asked about, not since forever.
        assert liveness.missing(["early", "new"], GRACE) == set()
        clock.now += GRACE + 1
        assert liveness.missing(["early", "new"], GRACE) == {"new"}

        await kv.delete(session_key("early"))
        await settle(liveness)
        assert not liveness.present("early")
        assert liveness.absent_since("early") == clock.now
        clock.now += GRACE + 1
        assert liveness.missing(["early"], GRACE) == {"early"}

        await kv.put(session_key("early"), SessionRecord("early", "m2", "s2").encode())
        await settle(liveness)
        assert liveness.missing(["early"], GRACE) == set()
        assert liveness.sessions["early"] is not None and liveness.sessions["early"].manager_id == "m2"
    finally:
        await liveness.stop()


async def test_session_keys_on_a_lease_vanish_with_it(kv: MemoryStore) -> None:
    liveness = NodeLiveness(kv)
    await liveness.start()
    try:
        lease = await kv.grant_lease(10)
        await kv.put(session_key("a"), SessionRecord("a", "m1", "s1").encode(), lease=lease.id)
        await settle(liveness)
        assert liveness.present("a")
        await kv.revoke_lease(lease)  # the manager died
        await settle(liveness)
        assert not liveness.present("a")
    finally:
        await liveness.stop()


async def test_a_session_ended_for_silence_counts_the_absence_from_when_the_agent_fell_silent(
    kv: MemoryStore,
) -> None:
    clock = Clock()
    liveness = NodeLiveness(kv, clock=clock)
    await liveness.start()
    keys = SessionKeys(kv, "m1", ttl=lambda: 30.0, on_stale=lambda node, session: None)
    keys.start()
    try:
        await keys.put("quiet", "s1", timeout=5)
        await keys.put("leaving", "s2", timeout=5)
        await settle(liveness)
        assert liveness.present("quiet") and liveness.present("leaving")

        # Ended after a grace without a word: DOWN at once, not a second grace later.
        await keys.release("quiet", "s1", silent_for=GRACE)
        # Ended otherwise (the agent closed it, to fail over or restart): a whole grace to come back.
        await keys.release("leaving", "s2")
        async with asyncio.timeout(5):
            while (
                await kv.get(session_key("quiet")) or liveness.present("quiet") or liveness.present("leaving")
            ):
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the key's deletion reached the watch too: it must not reset the time
        assert liveness.absent_since("quiet") == clock.now - GRACE
        assert liveness.absent_since("leaving") == clock.now
        clock.now += 0.1
        assert liveness.missing(["quiet", "leaving"], GRACE) == {"quiet"}

        await keys.put("quiet", "s3", timeout=5)  # it comes back
        await settle(liveness)
        assert liveness.missing(["quiet"], GRACE) == set()
    finally:
        await keys.stop()
        await liveness.stop()


async def test_a_silent_session_is_not_marked_over_another_managers_newer_one(kv: MemoryStore) -> None:
    keys = SessionKeys(kv, "m1", ttl=lambda: 30.0, on_stale=lambda node, session: None)
    keys.start()
    try:
        await keys.put("moved", "s1", timeout=5)
        # The agent failed over: another manager's session key replaced this one.
        await kv.put(session_key("moved"), SessionRecord("moved", "m2", "s9").encode())
        await keys.release("moved", "s1", silent_for=GRACE)
        held = await kv.get(session_key("moved"))
        assert held is not None and SessionRecord.decode(held.value) == SessionRecord("moved", "m2", "s9")
    finally:
        await keys.stop()
