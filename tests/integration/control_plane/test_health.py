"""Health checks through the whole loop: a manager that leads (orchestrators, scheduler, dispatcher) and a
simulated agent. A task that turns unhealthy is stopped by its agent and reported FAILED with "unhealthy
container"; the restart supervisor replaces it with a new task in the same slot. Runs on the memory
store, etcd and ZooKeeper, like the rest of this folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.agent import Agent, AgentConfig
from agent.executor_sim import SimExecutor
from agent.health import UNHEALTHY_ERROR
from api import Annotations, Node, Service, Task, TaskState
from api.objects import (
    SECOND,
    ContainerSpec,
    HealthConfig,
    NodeState,
    RestartPolicy,
    ServiceSpec,
    TaskSpec,
)
from manager.daemon import Manager, ManagerConfig
from manager.store import ObjectStore
from tests.integration.control_plane.conftest import eventually
from tests.servers import free_port

MS = 1_000_000
CHECK = HealthConfig(test=("CMD-SHELL", "curl -f localhost"), interval_ns=50 * MS, retries=2)


@dataclass
class Cluster:
    manager: Manager
    agent: Agent
    executor: SimExecutor

    @property
    def store(self) -> ObjectStore:
        assert self.manager.store is not None
        return self.manager.store

    def tasks(self, service: Service) -> list[Task]:
        return sorted(self.store.tasks_of_service(service.meta.id), key=lambda t: t.meta.created_at)


@pytest.fixture
async def cluster(store_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    """One leading manager and one simulated agent; both stopped at the end."""
    manager = Manager(
        ManagerConfig(
            store_url=store_url,
            listen=f"127.0.0.1:{free_port()}",
            socket="",
            state_dir=str(tmp_path / "manager"),
            election_ttl=2.0,
        )
    )
    executor = SimExecutor(start_delay=0.01, hostname="node-1")
    agent: Agent | None = None
    try:
        await manager.start()
        await eventually(manager.leading.is_set, what="the manager to lead")
        agent = Agent(
            AgentConfig(
                managers=[manager.config.listen],
                token=manager.cluster().status.join_tokens.worker,
                state_dir=tmp_path / "node-1",
                hostname="node-1",
                backoff=(0.02, 0.2),
            ),
            executor,
        )
        agent.start()
        c = Cluster(manager, agent, executor)
        await eventually(
            lambda: any(n.status.state is NodeState.READY for n in c.store.objects(Node)),
            what="the node to be ready",
        )
        yield c
    finally:
        if agent is not None:
            await agent.stop()
        await manager.stop()


def service(name: str, env: tuple[str, ...] = ()) -> Service:
    return Service(
        spec=ServiceSpec(
            annotations=Annotations(name=name),
            replicas=1,
            task=TaskSpec(
                container=ContainerSpec(image="busybox", env=env, healthcheck=CHECK),
                restart_policy=RestartPolicy(delay_ns=SECOND // 10),
            ),
        )
    )


async def test_a_task_that_turns_unhealthy_is_replaced_in_its_slot(cluster: Cluster) -> None:
    svc = await cluster.store.create(service("web"))

    def running() -> list[Task]:
        return [t for t in cluster.tasks(svc) if t.status.state is TaskState.RUNNING]

    (first,) = await eventually(running, what="the first task to be running (healthy)")
    assert cluster.executor.tasks[first.meta.id].probes >= 1, "RUNNING only after a healthy probe"

    cluster.executor.set_health(first.meta.id, "unhealthy")

    def replaced() -> tuple[Task, Task] | None:
        tasks = {t.meta.id: t for t in cluster.tasks(svc)}
        old = tasks[first.meta.id]
        new = [
            t for t in tasks.values() if t.meta.id != first.meta.id and t.status.state is TaskState.RUNNING
        ]
        return (old, new[0]) if old.status.state is TaskState.FAILED and new else None

    old, new = await eventually(replaced, what="the unhealthy task to be replaced")
    assert old.status.err == UNHEALTHY_ERROR
    assert old.desired_state is TaskState.SHUTDOWN, "the supervisor retired it"
    assert new.slot == old.slot == 1
    assert cluster.executor.running() == {new.meta.id}, "the agent stopped the unhealthy one"


async def test_a_task_that_never_becomes_healthy_is_replaced_again_and_again(cluster: Cluster) -> None:
    # Asked for through the API like any setting: every probe of every task fails.
    svc = await cluster.store.create(service("sick", env=("SHOAL_SIM_HEALTH=unhealthy",)))

    def failures() -> list[Task]:
        failed = [t for t in cluster.tasks(svc) if t.status.state is TaskState.FAILED]
        return failed if len(failed) >= 2 else []

    failed = await eventually(failures, what="two unhealthy tasks in a row")
    assert {t.status.err for t in failed} == {UNHEALTHY_ERROR}
    assert {t.slot for t in failed} == {1} and len({t.meta.id for t in failed}) == len(failed)
    assert all(t.status.state is not TaskState.RUNNING for t in cluster.tasks(svc)), (
        "never healthy, never RUNNING"
    )
