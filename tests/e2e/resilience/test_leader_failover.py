"""Three managers on a real etcd; the leader is killed with SIGKILL in the middle of a 1,000-task deploy
onto 50 simulated nodes. A new leader must take over within one election TTL (plus the store's lease
check), and the deploy must end with all 1,000 tasks RUNNING and none twice — neither in the store (a
slot with two live tasks) nor on the agents (a task or a slot running on two nodes), at any moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api import Task, TaskState
from tests.e2e.resilience.harness import Plane, duplicates, service_spec, wait_until
from tests.servers import EtcdServer, unique_prefix

pytestmark = pytest.mark.slow

TTL = 2.0
#: etcd expires leases in a loop every 500 ms; the candidates then need one round trip each.
ELECTION_SLACK = 1.5
SERVICES = 10
REPLICAS = 100
NODES = 50


@pytest.fixture
async def plane(etcd_server: EtcdServer, tmp_path: Path) -> AsyncIterator[Plane]:
    p = Plane(etcd_server.url_with_prefix(unique_prefix("leader-kill")), tmp_path, election_ttl=TTL)
    try:
        yield p
    finally:
        await p.close()


async def _watch_for_duplicates(plane: Plane, service_ids: list[str], seen: list[str]) -> None:
    """Check, all along, that nothing runs twice (in the store or on the agents)."""
    while True:
        for problem in duplicates(plane, list(service_ids)):
            if problem not in seen:
                seen.append(problem)
        await asyncio.sleep(0.05)


def _running(plane: Plane) -> int:
    return sum(1 for t in plane.observer.objects(Task) if t.status.state is TaskState.RUNNING)


async def test_leader_killed_during_a_1000_task_deploy(plane: Plane) -> None:
    await plane.start_managers(3)
    await plane.start_host("sim", NODES, start_delay=0.05)
    old = await plane.leader()
    leader = plane.manager(old)
    api = next(m for m in plane.managers if m is not leader)

    service_ids: list[str] = []
    problems: list[str] = []
    watcher = asyncio.create_task(_watch_for_duplicates(plane, service_ids, problems))
    new_leader_after: float | None = None
    running_at_kill = 0
    try:
        for i in range(SERVICES):
            status, body = await api.call("POST", "/services/create", service_spec(f"deploy{i}", REPLICAS))
            assert status == 201, body
            service_ids.append(body["id"])
            if i == SERVICES // 2 - 1:
                # Half the services are in: kill the leader while their tasks are being created,
                # scheduled and started (some RUNNING already, most not yet).
                await wait_until(
                    lambda: _running(plane) >= 100, 30, "the deploy to be under way", every=0.005
                )
                running_at_kill = _running(plane)
                killed_at = time.monotonic()
                leader.kill()

                async def new_leader() -> bool:
                    return (await plane.leader()) not in ("", old)

                await wait_until(new_leader, 3 * TTL + 5, "a new leader", every=0.01)
                new_leader_after = time.monotonic() - killed_at

        await wait_until(lambda: all(plane.converged(s) for s in service_ids), 90, "all 1,000 tasks to run")
        on_agents = await wait_until(
            lambda: (lambda r: r if sum(map(len, r.values())) == SERVICES * REPLICAS else None)(
                plane.agents_running()
            ),
            30,
            "the agents to report 1,000 running tasks",
        )
        await asyncio.sleep(0.5)  # the watcher's last look, after everything settled
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    print(
        f"\nleader {old} killed with {running_at_kill} of {SERVICES * REPLICAS} tasks running; new leader "
        f"{await plane.leader()} after {new_leader_after:.2f}s (TTL {TTL}s)"
    )
    assert new_leader_after is not None and new_leader_after <= TTL + ELECTION_SLACK
    assert not problems, "\n".join(problems[:20])
    running = {
        t.meta.id
        for s in service_ids
        for t in plane.observer.tasks_of_service(s)
        if t.status.state is TaskState.RUNNING
    }
    assert len(running) == SERVICES * REPLICAS
    assert set().union(*on_agents.values()) == running
    assert len({n for n, ids in on_agents.items() if ids}) == NODES  # spread over every node
