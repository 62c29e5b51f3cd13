"""Leader election (kvstore_adapters.election) on every backend: one leader, hand-over on resignation and on
the leader's death, observers, and a leader that learns it lost. (How to run: see test_contract.py.)"""

from __future__ import annotations

import asyncio

import pytest

from kvstore_adapters import LeadershipLost
from kvstore_adapters.election import Election
from tests.contract.conftest import Backend
from tests.contract.helpers import PROMPT, SLACK, TTL
from tests.contract.test_leases import kill_process, start_client_process


async def _candidates(backend: Backend, count: int, ttl: float = TTL) -> list[Election]:
    """``count`` candidates, each on its own client."""
    return [Election(await backend.open(), "leader", f"cand-{i}", ttl) for i in range(count)]


async def _first_winner(tasks: dict[asyncio.Task[None], Election], timeout: float) -> Election:
    done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    assert done, f"no candidate became leader within {timeout}s"
    assert len(done) == 1, "two candidates won at once"
    task = done.pop()
    task.result()
    return tasks.pop(task)


async def _cancel(tasks: dict[asyncio.Task[None], Election]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_one_leader_among_several_candidates(backend: Backend) -> None:
    elections = await _candidates(backend, 3)
    tasks = {asyncio.create_task(e.campaign()): e for e in elections}
    try:
        leader = await _first_winner(tasks, PROMPT)
        await asyncio.sleep(0.5)
        assert not any(t.done() for t in tasks), "a second candidate became leader"
        assert [e.is_leader for e in elections].count(True) == 1
        for e in elections:
            assert await e.leader() == leader.candidate_id
    finally:
        await _cancel(tasks)
        for e in elections:
            await e.resign()


async def test_resign_hands_over_before_the_lease_would_expire(backend: Backend) -> None:
    ttl = 30.0  # far longer than the wait below: only the resignation can explain the hand-over
    first, *others = await _candidates(backend, 3, ttl)
    await asyncio.wait_for(first.campaign(), PROMPT)
    tasks = {asyncio.create_task(e.campaign()): e for e in others}
    try:
        await asyncio.sleep(0.3)
        await first.resign()
        assert not first.is_leader
        assert not first.lost.is_set(), "resigning is not losing"
        successor = await _first_winner(tasks, PROMPT)
        assert await first.leader() == successor.candidate_id
    finally:
        await _cancel(tasks)
        for e in [first, *others]:
            await e.resign()


async def test_cancelled_campaign_withdraws(backend: Backend) -> None:
    leader, waiter = await _candidates(backend, 2, ttl=30.0)
    await asyncio.wait_for(leader.campaign(), PROMPT)
    pending = asyncio.create_task(waiter.campaign())
    await asyncio.sleep(0.3)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await leader.resign()
    await asyncio.sleep(0.5)
    assert await leader.leader() is None, "a withdrawn candidate took the leadership"


async def test_observe_follows_the_leadership(backend: Backend) -> None:
    a, b, observer = await _candidates(backend, 3, ttl=30.0)
    seen: asyncio.Queue[str | None] = asyncio.Queue()

    async def observe() -> None:
        async for leader in observer.observe():
            await seen.put(leader)

    task = asyncio.create_task(observe())
    try:
        assert await asyncio.wait_for(seen.get(), PROMPT) is None
        await a.campaign()
        assert await asyncio.wait_for(seen.get(), PROMPT) == a.candidate_id
        await a.resign()
        assert await asyncio.wait_for(seen.get(), PROMPT) is None
        await b.campaign()
        assert await asyncio.wait_for(seen.get(), PROMPT) == b.candidate_id
        await asyncio.sleep(0.3)
        assert seen.empty(), "observer repeated a leader"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await a.resign()
        await b.resign()


async def test_leader_that_loses_its_lease_learns_it(backend: Backend) -> None:
    leader, successor = await _candidates(backend, 2)
    admin = await backend.open()
    await asyncio.wait_for(leader.campaign(), PROMPT)
    lease = leader.lease
    assert lease is not None
    waiter = asyncio.create_task(leader.wait_lost())
    await admin.revoke_lease(lease)  # behind the leader's back
    with pytest.raises(LeadershipLost):
        await asyncio.wait_for(waiter, TTL + SLACK)
    assert leader.lost.is_set() and not leader.is_leader
    await asyncio.wait_for(successor.campaign(), PROMPT)
    assert await admin.get("leader") is not None
    await successor.resign()


async def test_leader_whose_key_is_deleted_learns_it(backend: Backend) -> None:
    (leader,) = await _candidates(backend, 1)
    admin = await backend.open()
    await asyncio.wait_for(leader.campaign(), PROMPT)
    await admin.delete("leader")
    await asyncio.wait_for(leader.lost.wait(), PROMPT)
    assert not leader.is_leader
    # It can campaign again and win.
    await asyncio.wait_for(leader.campaign(), PROMPT)
    assert leader.is_leader and await admin.get("leader") is not None
    await leader.resign()


async def test_leader_learns_when_the_store_stays_away(restartable_backend: Backend) -> None:
    backend = restartable_backend
    assert backend.server is not None
    (leader,) = await _candidates(backend, 1)
    await asyncio.wait_for(leader.campaign(), PROMPT)
    await asyncio.to_thread(backend.server.kill)
    await asyncio.wait_for(leader.lost.wait(), TTL + SLACK)
    assert not leader.is_leader


# A leader process: opens the store by URL, wins the election, says "ready", waits to be killed.
LEADER = """
import asyncio, sys
from kvstore_adapters import open_store
from kvstore_adapters.election import Election

async def main():
    store = await open_store(sys.argv[1])
    election = Election(store, "leader", "process", float(sys.argv[2]))
    await election.campaign()
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_killed_leader_process_is_replaced_within_a_lease(backend: Backend, backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("the memory store lives in one process: another process cannot share it")
    (local,) = await _candidates(backend, 1)
    proc = await start_client_process([backend.url, str(TTL)], LEADER)
    try:
        assert await local.leader() == "process"
        task = asyncio.create_task(local.campaign())
        await asyncio.sleep(TTL)  # longer than the lease: the live leader's keep-alives hold it
        assert not task.done(), "took over from a live leader"
        kill_process(proc)
        await asyncio.wait_for(task, TTL + SLACK)
        assert local.is_leader and await local.leader() == local.candidate_id
    finally:
        kill_process(proc)
        await local.resign()
