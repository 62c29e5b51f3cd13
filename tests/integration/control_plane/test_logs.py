"""Task logs through the whole path: an administrator's HTTPS request to a manager, ``logs_subscribe`` on
the agents' sessions (or another manager relaying its own), the simulated executor's output coming back
as NDJSON. tail, since, streams, follow (of a task and of a service's new tasks), the end of a followed
stream, a client that leaves (the agent stops reading), and nodes whose logs cannot be read."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from agent.agent import Agent
from agent.executor_sim import SimExecutor
from api import Annotations, Service, Task, TaskState
from api.join import MANAGER_SERVER_NAME
from api.objects import ContainerSpec, Meta, ServiceSpec, TaskSpec, TaskStatus
from manager.ca import ROLE_ADMIN, new_node_key, private_key_pem
from manager.logs import LogRouter
from tests.integration.control_plane.conftest import ControlPlane, ManagerHarness, eventually


def admin_context(m: ManagerHarness, tmp: Path) -> ssl.SSLContext:
    """TLS as swarmctl uses it: the cluster CA, and an administrator's certificate from it."""
    assert m.pki is not None
    key = new_node_key()
    cert = m.pki.ca.issue("admin-logs", ROLE_ADMIN, key.public_key())
    path = tmp / f"admin-{m.name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + private_key_pem(key))
    ctx = ssl.create_default_context(cadata=m.pki.ca.cert_pem.decode())
    ctx.load_cert_chain(path)
    return ctx


class LogClient:
    """``GET …/logs`` on one manager, as an administrator."""

    def __init__(self, m: ManagerHarness, tmp: Path, http: aiohttp.ClientSession) -> None:
        self.m = m
        self.ctx = admin_context(m, tmp)
        self.http = http

    async def open(self, path: str, **query: str) -> aiohttp.ClientResponse:
        return await self.http.get(
            f"https://{self.m.addr}{path}", params=query, ssl=self.ctx, server_hostname=MANAGER_SERVER_NAME
        )

    async def read(self, path: str, **query: str) -> tuple[int, list[dict[str, Any]]]:
        """A request without ``follow``: its status and every object of the answer."""
        async with await self.open(path, **query) as resp:
            body = await asyncio.wait_for(resp.read(), 10)
        if resp.status != 200:
            return resp.status, [json.loads(body)]
        assert resp.headers["Content-Type"].startswith("application/x-ndjson")
        return 200, [json.loads(line) for line in body.splitlines()]


async def next_object(resp: aiohttp.ClientResponse, timeout: float = 5.0) -> dict[str, Any] | None:
    """The next object of a followed stream (None at its end)."""
    line = await asyncio.wait_for(resp.content.readline(), timeout)
    return json.loads(line) if line else None


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def router(m: ManagerHarness) -> LogRouter:
    assert m.dispatcher is not None
    return m.dispatcher.logs


def sim(agent: Agent) -> SimExecutor:
    assert isinstance(agent.executor, SimExecutor)
    return agent.executor


def texts(objects: list[dict[str, Any]]) -> list[str]:
    return [o["text"] for o in objects if "text" in o]


async def running(plane: ControlPlane, node_id: str, *env: str, service: Service | None = None) -> Task:
    task = Task(
        service_id=service.meta.id if service else "svc",
        service_annotations=service.spec.annotations if service else Annotations(),
        slot=1,
        node_id=node_id,
        spec=TaskSpec(container=ContainerSpec(image="busybox", env=env)),
        status=TaskStatus(state=TaskState.ASSIGNED, message="scheduled"),
    )
    task = await plane.store.create(task)
    return await plane.task_state(task.meta.id, TaskState.RUNNING)


async def test_a_tasks_lines_with_tail_since_and_streams(
    plane: ControlPlane, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    agent = plane.agent("node-1")
    (node_id,) = await plane.connected(agent)
    task = await running(plane, node_id, "SHOAL_SIM_LOG=one\ntwo\nthree", "SHOAL_SIM_LOG_STDERR=oops")
    api = LogClient(plane.managers[0], tmp_path, http)
    path = f"/tasks/{task.meta.id}/logs"

    status, objects = await api.read(path)
    assert status == 200
    assert texts(objects) == ["one", "two", "three", "oops"]
    assert {(o["task"], o["node"]) for o in objects} == {(task.meta.id, node_id)}
    assert [o["stream"] for o in objects] == ["stdout"] * 3 + ["stderr"]
    assert objects[0]["time"].endswith("Z") and objects[0]["time"] <= objects[-1]["time"]

    assert texts((await api.read(path, tail="2"))[1]) == ["three", "oops"]
    assert texts((await api.read(path, tail="0"))[1]) == []
    assert texts((await api.read(path, stdout="0", stderr="1"))[1]) == ["oops"]
    assert texts((await api.read(task.meta.id[:8].join(["/tasks/", "/logs"]), stderr="0"))[1]) == [
        "one",
        "two",
        "three",
    ]

    await asyncio.sleep(0.01)
    since = time.time()
    sim(agent).write_log(task.meta.id, "later")
    assert texts((await api.read(path, since=f"{since:.6f}"))[1]) == ["later"]
    rfc3339 = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since - 3600)) + "Z"
    assert len(texts((await api.read(path, since=rfc3339))[1])) == 5

    status, (error,) = await api.read(path, tail="lots")
    assert status == 400 and "tail" in error["message"]
    status, (error,) = await api.read(path, stdout="0", stderr="0")
    assert status == 400 and "stream" in error["message"]
    status, (error,) = await api.read("/tasks/nosuchtask/logs")
    assert status == 404


async def test_following_a_service_takes_in_its_new_tasks_and_ends_with_them(
    plane: ControlPlane, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    a1, a2 = plane.agent("node-1"), plane.agent("node-2")
    n1, n2 = await plane.connected(a1, a2)
    service = await plane.store.create(Service(spec=ServiceSpec(annotations=Annotations(name="web"))))
    first = await running(plane, n1, "SHOAL_SIM_LOG=first up", service=service)
    api = LogClient(plane.managers[0], tmp_path, http)

    async with await api.open(f"/services/{service.meta.id}/logs", follow="1") as resp:
        assert resp.status == 200
        assert (await next_object(resp) or {})["text"] == "first up"
        sim(a1).write_log(first.meta.id, "live line", "stderr")
        line = await next_object(resp)
        assert line is not None and (line["text"], line["stream"]) == ("live line", "stderr")

        second = await running(plane, n2, "SHOAL_SIM_LOG=second up", service=service)
        line = await next_object(resp)
        assert line is not None and (line["task"], line["node"], line["text"]) == (
            second.meta.id,
            n2,
            "second up",
        )

        # The service goes, then its tasks stop: the stream ends by itself.
        await plane.store.delete(service)
        for t in (first, second):
            current = plane.store.must_get(Task, t.meta.id)
            await plane.store.update(replace(current, desired_state=TaskState.SHUTDOWN))
        assert await next_object(resp) is None
    await eventually(lambda: router(plane.managers[0]).active == 0, what="the subscriptions to end")


async def test_a_client_that_leaves_stops_the_agents_reading(
    plane: ControlPlane, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    agent = plane.agent("node-1")
    (node_id,) = await plane.connected(agent)
    task = await running(plane, node_id)
    api = LogClient(plane.managers[0], tmp_path, http)
    resp = await api.open(f"/tasks/{task.meta.id}/logs", follow="1")
    assert (await next_object(resp) or {})["text"] == f"task {task.meta.id} running"
    assert agent.logs.active == 1
    resp.close()  # the connection goes with it
    m = plane.managers[0]
    await eventually(lambda: router(m).active == 0 and agent.logs.active == 0, what="the cancel")


async def test_any_manager_serves_logs_of_nodes_whose_sessions_another_holds(
    plane: ControlPlane, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    m1 = plane.managers[0]
    m2 = await plane.manager()
    agent = plane.agent("node-1", managers=[m1])
    (node_id,) = await plane.connected(agent)
    task = await running(plane, node_id, "SHOAL_SIM_LOG=relayed")
    assert not router(m2).session_of(node_id)
    api = LogClient(m2, tmp_path, http)
    status, objects = await api.read(f"/tasks/{task.meta.id}/logs")
    assert status == 200 and texts(objects) == ["relayed"]
    assert objects[0]["node"] == node_id

    async with await api.open(f"/tasks/{task.meta.id}/logs", follow="1", tail="0") as resp:
        await eventually(lambda: router(m1).active == 1, what="m2 to relay m1's stream")
        sim(agent).write_log(task.meta.id, "followed through m1")
        assert (await next_object(resp) or {})["text"] == "followed through m1"


async def test_logs_of_nodes_without_a_session_are_reported(
    plane: ControlPlane, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    a1, a2 = plane.agent("node-1"), plane.agent("node-2")
    n1, n2 = await plane.connected(a1, a2)
    service = await plane.store.create(Service(spec=ServiceSpec(annotations=Annotations(name="api"))))
    await running(plane, n1, "SHOAL_SIM_LOG=alive", service=service)
    gone = await running(plane, n2, "SHOAL_SIM_LOG=unreachable", service=service)
    await a2.stop()
    await eventually(lambda: not router(plane.managers[0]).session_of(n2), what="node-2 to go")
    api = LogClient(plane.managers[0], tmp_path, http)

    status, objects = await api.read(f"/services/{service.meta.id}/logs")
    assert status == 200, objects
    assert texts(objects) == ["alive"]
    (error,) = [o for o in objects if "error" in o]
    assert error["task"] == gone.meta.id and "node-2 is not available" in error["error"]

    status, (body,) = await api.read(f"/tasks/{gone.meta.id}/logs")
    assert status == 503 and "node-2" in body["message"]


async def test_a_task_that_never_ran_has_no_lines(
    plane: ControlPlane, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    agent = plane.agent("node-1")
    (node_id,) = await plane.connected(agent)
    task = await plane.store.create(
        Task(
            meta=Meta(),
            node_id=node_id,
            spec=TaskSpec(container=ContainerSpec(image="busybox", env=("SHOAL_SIM_FAIL=prepare",))),
            status=TaskStatus(state=TaskState.ASSIGNED),
        )
    )
    await plane.task_state(task.meta.id, TaskState.REJECTED)
    api = LogClient(plane.managers[0], tmp_path, http)
    assert await api.read(f"/tasks/{task.meta.id}/logs", follow="1") == (200, [])
