"""Several managers on one real store (etcd, and the same tests on ZooKeeper): exactly one leads, and when
it dies another takes over and scheduling goes on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from api import Annotations, Node, Service, TaskState
from api.objects import ContainerSpec, Meta, NodeState, NodeStatus, ServiceSpec, TaskSpec
from manager.ca import write_private
from manager.daemon import Manager, ManagerConfig
from tests.servers import EtcdServer, ZooKeeperServer, unique_prefix

TTL = 2.0


@pytest.fixture(params=["etcd", "zookeeper"])
def store_server(request: pytest.FixtureRequest) -> EtcdServer | ZooKeeperServer:
    """The session's etcd, then its ZooKeeper."""
    server = request.getfixturevalue("etcd_server" if request.param == "etcd" else "zk_server")
    assert isinstance(server, EtcdServer | ZooKeeperServer)
    return server


async def until(check: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)
    return time.monotonic() - start


#: Managers of one cluster share the secrets key (it also seals the CA key in the store).
SECRETS_KEY = os.urandom(32)


def state_dir(tmp: Path, name: str) -> Path:
    """A manager's state dir, holding the cluster's shared secrets key (as deployments copy it)."""
    path = tmp / name
    write_private(path / "secrets.key", SECRETS_KEY)
    return path


def config(url: str, tmp: Path, name: str) -> ManagerConfig:
    return ManagerConfig(
        store_url=url,
        listen="",
        socket=str(tmp / f"{name}.sock"),
        state_dir=str(state_dir(tmp, name)),
        election_ttl=TTL,
    )


def web(name: str, replicas: int) -> Service:
    return Service(
        spec=ServiceSpec(
            annotations=Annotations(name=name),
            replicas=replicas,
            task=TaskSpec(container=ContainerSpec(image="busybox")),
        )
    )


async def test_leader_stops_and_the_other_manager_takes_over(
    store_server: EtcdServer | ZooKeeperServer, tmp_path: Path
) -> None:
    url = store_server.url_with_prefix(unique_prefix("failover"))
    a, b = Manager(config(url, tmp_path, "a")), Manager(config(url, tmp_path, "b"))
    await a.start()
    await b.start()
    try:
        await until(lambda: a.leading.is_set() or b.leading.is_set(), 10)
        leader, follower = (a, b) if a.leading.is_set() else (b, a)
        assert not follower.leading.is_set()
        assert follower.store is not None and leader.store is not None
        # Both managers share the cluster (same tokens), created once.
        assert follower.cluster().status.join_tokens == leader.cluster().status.join_tokens
        await leader.store.create(Node(meta=Meta(id="n1"), status=NodeStatus(state=NodeState.READY)))
        svc = await leader.store.create(web("before", 2))
        store = follower.store
        await until(lambda: len([t for t in store.tasks_of_service(svc.meta.id) if t.node_id]) == 2, 10)

        await leader.stop()
        took = await until(lambda: follower.leading.is_set(), TTL * 3)
        assert took < TTL * 3
        after = await store.create(web("after", 3))
        await until(
            lambda: (
                len(
                    [t for t in store.tasks_of_service(after.meta.id) if t.status.state is TaskState.ASSIGNED]
                )
                == 3
            ),
            10,
        )
        # Nothing was duplicated by the handover.
        assert (
            len([t for t in store.tasks_of_service(svc.meta.id) if t.desired_state is TaskState.RUNNING]) == 2
        )
    finally:
        await a.stop()
        await b.stop()


async def test_leader_process_killed_with_sigkill(
    store_server: EtcdServer | ZooKeeperServer, tmp_path: Path
) -> None:
    url = store_server.url_with_prefix(unique_prefix("sigkill"))
    log = (tmp_path / "leader.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "manager.main",
            "--store",
            url,
            "--listen-addr",
            "",
            "--socket",
            str(tmp_path / "p.sock"),
            "--state-dir",
            str(state_dir(tmp_path, "p")),
            "--election-ttl",
            str(TTL),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).parents[3],
        env={**os.environ},
    )
    follower = Manager(config(url, tmp_path, "f"))
    try:
        deadline = time.monotonic() + 15
        while "is the leader" not in (tmp_path / "leader.log").read_text():
            assert proc.poll() is None, (tmp_path / "leader.log").read_text()
            assert time.monotonic() < deadline, "the subprocess manager never became leader"
            await asyncio.sleep(0.05)
        await follower.start()
        await asyncio.sleep(0.3)
        assert not follower.leading.is_set()
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        took = await until(lambda: follower.leading.is_set(), TTL * 3)
        assert took <= TTL * 3
        assert follower.store is not None
        await follower.store.create(Node(meta=Meta(id="n1"), status=NodeStatus(state=NodeState.READY)))
        svc = await follower.store.create(web("after-kill", 2))
        store = follower.store
        await until(lambda: len([t for t in store.tasks_of_service(svc.meta.id) if t.node_id]) == 2, 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)
        log.close()
        await follower.stop()
