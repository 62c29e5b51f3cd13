"""Agent sessions end to end: managers (API + dispatcher) on loopback, simulated agents, three stores.

Tasks are written into the store as the scheduler would leave them (a node, ASSIGNED), so these tests
exercise the dispatcher and the agent without the leader's loops.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import WSMsgType

from agent.errors import SessionRefused
from agent.executor_sim import SimExecutor
from agent.identity import JoinRefused, NodeCredentials
from agent.session import session_url
from api import Node, Task, TaskState
from api.join import MANAGER_SERVER_NAME, JoinToken
from api.objects import NodeRole, NodeState
from api.session import Register, Registered, decode_frame, encode_frame
from manager.nodes import NodeLiveness, SessionRecord, run_node_states, session_key
from tests.integration.control_plane.conftest import GRACE, ControlPlane, eventually


def executor(agent: object) -> SimExecutor:
    ex = agent.executor  # type: ignore[attr-defined]
    assert isinstance(ex, SimExecutor)
    return ex


async def test_assigned_tasks_reach_their_agents_and_come_back_running(plane: ControlPlane) -> None:
    agents = [plane.agent(f"host-{i}") for i in range(1, 4)]
    node_ids = await plane.connected(*agents)

    for a, node_id in zip(agents, node_ids, strict=True):
        node = await eventually(functools.partial(plane.node, node_id), what="the node in the cache")
        assert node.status.state is NodeState.READY
        assert node.status.description.hostname == a.config.hostname
        assert node.spec.role is NodeRole.WORKER
        assert node.status.addr == "127.0.0.1"  # no --advertise-addr: the address it connected from
        assert (a.config.state_dir / "node_id").read_text().strip() == node_id

    tasks = [await plane.assign(node_id) for node_id in node_ids for _ in range(2)]
    for t in tasks:
        running = await plane.task_state(t.meta.id, TaskState.RUNNING)
        assert running.node_id == t.node_id
    for a, node_id in zip(agents, node_ids, strict=True):
        mine = {t.meta.id for t in tasks if t.node_id == node_id}
        assert executor(a).running() == mine, "each agent runs exactly its own tasks"


async def test_a_wrong_token_is_refused_and_no_node_is_created(plane: ControlPlane) -> None:
    # The right CA digest (so it gets as far as the manager), the wrong secret.
    digest = JoinToken.parse(plane.worker_token).digest
    intruder = plane.agent("intruder", token=str(JoinToken(digest, "x" * 25)), start=False)
    with pytest.raises(JoinRefused) as refused:
        await asyncio.wait_for(intruder.run(), 10)
    assert refused.value.fatal
    assert "invalid join token" in str(refused.value)
    await plane.store.wait_for(await plane.store.kv.revision())
    assert plane.store.objects(Node) == []
    assert not (intruder.config.state_dir / "node_id").exists()
    assert not (intruder.config.state_dir / "node.pem").exists()


async def test_the_manager_token_makes_a_manager_node(plane: ControlPlane) -> None:
    (node_id,) = await plane.connected(plane.agent("boss", token=plane.manager_token))
    node = await eventually(lambda: plane.node(node_id), what="the node")
    assert node.spec.role is NodeRole.MANAGER


async def test_an_agent_that_stops_heartbeating_loses_its_session_and_goes_down(plane: ControlPlane) -> None:
    store = plane.store
    liveness = NodeLiveness(store.kv)
    await liveness.start()
    states = asyncio.create_task(run_node_states(store, liveness, grace=GRACE))
    try:
        # A client that registers like an agent and then falls silent (a frozen or cut-off host).
        state_dir = plane.tmp / "quiet"
        creds = NodeCredentials(state_dir)
        addr = plane.managers[0].addr
        async with aiohttp.ClientSession() as http:
            await creds.join(http, addr, plane.worker_token, hostname="quiet")
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                session_url(addr), ssl=creds.context(), server_hostname=MANAGER_SERVER_NAME
            ) as ws,
        ):
            await ws.send_bytes(encode_frame(Register(hostname="quiet")))
            registered = decode_frame((await ws.receive(timeout=5)).data)
            assert isinstance(registered, Registered)
            node_id = registered.node_id
            await eventually(lambda: liveness.present(node_id), timeout=5, what="the session key")
            assert liveness.missing([node_id], GRACE) == set()

            # The manager ends the silent session after the grace and deletes the key …
            closed = asyncio.get_running_loop().time()
            while (await ws.receive(timeout=5)).type is WSMsgType.BINARY:
                pass  # the full assignment set, then the close
            assert asyncio.get_running_loop().time() - closed < GRACE + 1.0
        await eventually(lambda: not liveness.present(node_id), timeout=5, what="the session key to vanish")
        assert await store.kv.get(session_key(node_id)) is None
        # … and once it has been gone for another grace, the node is reported, and marked DOWN.
        await eventually(lambda: liveness.missing([node_id], GRACE) == {node_id}, timeout=5, what="missing")
        down = await eventually(
            lambda: (n := plane.node(node_id)) is not None and n.status.state is NodeState.DOWN and n,
            timeout=5,
            what="the node to be DOWN",
        )
        assert down.status.message == "heartbeat failure"

        # A real agent with that node's certificate comes back: the key is back, the node is READY again.
        assert await plane.connected(plane.agent("quiet", state_dir=state_dir, token="")) == [node_id]
        await eventually(lambda: liveness.present(node_id), timeout=5, what="the session to come back")
        await eventually(
            lambda: (n := plane.node(node_id)) is not None and n.status.state is NodeState.READY,
            timeout=5,
            what="the node to be READY again",
        )
    finally:
        states.cancel()
        await asyncio.gather(states, return_exceptions=True)
        await liveness.stop()


async def test_an_agent_fails_over_to_another_manager(plane: ControlPlane) -> None:
    first = plane.managers[0]
    second = await plane.manager()
    # The agent is told only of the first manager; it learns the second from the registration.
    agent = plane.agent("roamer", managers=[first])
    (node_id,) = await plane.connected(agent)
    assert agent.session.manager == first.addr
    assert second.addr in agent.session.managers
    before = await plane.assign(node_id)
    await plane.task_state(before.meta.id, TaskState.RUNNING)

    await first.stop()

    assert second.store is not None and second.kv is not None
    await eventually(lambda: agent.session.manager == second.addr, timeout=10, what="failover")

    async def served_by_second() -> bool:
        kv = await second.kv.get(session_key(node_id))  # type: ignore[union-attr]
        record = SessionRecord.decode(kv.value) if kv is not None else None
        return record is not None and record.manager_id == second.name

    await eventually(served_by_second, timeout=5, what="the session key to name the second manager")
    plane.managers.remove(first)  # the fixture's store helper reads through a live manager
    plane.managers.insert(0, second)
    after = await plane.assign(node_id)
    await plane.task_state(after.meta.id, TaskState.RUNNING)
    assert executor(agent).running() == {before.meta.id, after.meta.id}, "the first task kept running"
    plane.managers.append(first)  # stopped again (harmlessly) at the end


async def test_a_task_removed_from_the_store_is_shut_down_on_the_agent(plane: ControlPlane) -> None:
    agent = plane.agent("host")
    (node_id,) = await plane.connected(agent)
    keep, drop = await plane.assign(node_id), await plane.assign(node_id)
    await plane.task_state(keep.meta.id, TaskState.RUNNING)
    running = await plane.task_state(drop.meta.id, TaskState.RUNNING)

    await plane.store.delete(running)

    await eventually(lambda: drop.meta.id in executor(agent).removed, timeout=5, what="the task removed")
    assert executor(agent).running() == {keep.meta.id}


async def test_desired_shutdown_stops_the_task_and_is_reported(plane: ControlPlane) -> None:
    agent = plane.agent("host")
    (node_id,) = await plane.connected(agent)
    task = await plane.assign(node_id)
    running = await plane.task_state(task.meta.id, TaskState.RUNNING)

    await plane.store.update(replace(running, desired_state=TaskState.SHUTDOWN))

    stopped = await plane.task_state(task.meta.id, TaskState.SHUTDOWN)
    assert stopped.status.message == "shutdown"
    assert executor(agent).running() == set()


async def test_failures_are_reported_with_their_reason(plane: ControlPlane) -> None:
    agent = plane.agent("host")
    (node_id,) = await plane.connected(agent)
    bad_image = await plane.assign(node_id, env=("SHOAL_SIM_FAIL=prepare",))
    crashes = await plane.assign(node_id, env=("SHOAL_SIM_EXIT_AFTER=0.05", "SHOAL_SIM_EXIT_CODE=3"))

    rejected = await plane.task_state(bad_image.meta.id, TaskState.REJECTED)
    assert "simulated failure preparing" in rejected.status.err
    failed = await plane.task_state(crashes.meta.id, TaskState.FAILED)
    assert failed.status.exit_code == 3
    assert failed.status.err == "task: non-zero exit (3)"


async def test_a_restarted_agent_keeps_its_node_id(plane: ControlPlane) -> None:
    agent = plane.agent("host")
    (node_id,) = await plane.connected(agent)
    await agent.stop()

    again = plane.agent("host", state_dir=agent.config.state_dir)
    assert await plane.connected(again) == [node_id]
    await plane.store.wait_for(await plane.store.kv.revision())
    assert [n.meta.id for n in plane.store.objects(Node)] == [node_id]


async def test_a_removed_node_is_told_and_its_agent_stops(plane: ControlPlane) -> None:
    agent = plane.agent("host")
    (node_id,) = await plane.connected(agent)
    node = await eventually(lambda: plane.node(node_id), what="the node")

    await plane.store.delete(node)

    run = agent.start()
    await asyncio.wait({run}, timeout=10)
    assert run.done()
    error = run.exception()
    assert isinstance(error, SessionRefused) and error.fatal
    assert "removed" in str(error) and "node_id" in str(error)


async def test_a_late_or_backwards_report_never_undoes_a_terminal_state(plane: ControlPlane) -> None:
    agent = plane.agent("host")
    (node_id,) = await plane.connected(agent)
    task = await plane.assign(node_id)
    running = await plane.task_state(task.meta.id, TaskState.RUNNING)
    ended = await plane.store.update(running.with_state(TaskState.ORPHANED, "node lost"))

    # The agent, unaware, reports the task as RUNNING again and then as COMPLETE.
    agent.session.report(task.meta.id, running.status)
    agent.session.report(task.meta.id, replace(running.status, state=TaskState.COMPLETE))
    dispatcher = plane.managers[0].dispatcher
    assert dispatcher is not None
    await asyncio.sleep(0.2)
    await dispatcher.status.drained()
    now = await plane.store.fetch(Task, task.meta.id)
    assert now is not None and now.status.state is TaskState.ORPHANED
    assert now.meta.version == ended.meta.version


async def test_one_agent_process_hosts_several_simulated_nodes(plane: ControlPlane) -> None:
    manager = plane.managers[0]
    state = plane.tmp / "sims"
    cmd = [sys.executable, "-m", "agent.main", "--manager", manager.addr, "--token", plane.worker_token]
    cmd += ["--state-dir", str(state), "--executor", "sim", "--hostname", "sim", "--sim-count", "3"]
    cmd += ["--label", "zone=eu", "--sim-start-delay", "0"]
    log = (plane.tmp / "agent.log").open("wb")
    proc = await asyncio.create_subprocess_exec(*cmd, stderr=log)
    try:

        def nodes() -> dict[str, Node]:
            # Each node exists from its join on; it is READY once its session is up.
            found = {n.status.description.hostname: n for n in plane.store.objects(Node)}
            ready = all(n.status.state is NodeState.READY for n in found.values())
            return found if len(found) == 3 and ready else {}

        by_name = await eventually(nodes, timeout=15, what="three simulated nodes, ready")
        assert set(by_name) == {"sim-1", "sim-2", "sim-3"}
        for name, node in by_name.items():
            assert node.status.state is NodeState.READY
            assert node.status.description.engine_labels == {"zone": "eu"}
            node_id_file = state / name / "node_id"
            await eventually(node_id_file.exists, what=f"{node_id_file}")
            assert node_id_file.read_text().strip() == node.meta.id
        task = await plane.assign(by_name["sim-2"].meta.id)
        await plane.task_state(task.meta.id, TaskState.RUNNING)

        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0, "SIGTERM stops the agents cleanly"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
