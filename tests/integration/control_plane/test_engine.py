"""Engine calls through the whole path: an administrator's HTTPS request to a manager, ``engine_request``
on the node's agent session (or another manager relaying it over mutual TLS), the agent's relay to a
real local runtime (agent/runtime/local.py) serving Docker's Engine API on a unix socket, and the answer
back frame by frame under credit. Answers equal the engine's own, big bodies both ways, nodes that cannot
answer, the cluster-wide container and image lists, one-off containers placed by the scheduler, finding a
container by reference, a followed log whose client leaves, and one whose node's session ends (the
client must see the body broke off, not a complete answer).

The agents are the control plane's simulated ones with their relay pointed at a real runtime; the tests
that run one need root, runc and conmon and are marked so."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from agent.agent import Agent
from agent.api import serve_unix
from agent.runtime.images.store import ImageStore
from agent.runtime.local import LocalRuntime
from agent.runtime.snapshots.mounts import unmount_all
from api.engine import CHUNK
from api.join import MANAGER_SERVER_NAME
from manager.engine import EngineRouter
from tests.integration.control_plane.conftest import ControlPlane, ManagerHarness, eventually
from tests.integration.control_plane.test_logs import admin_context
from tests.integration.runtime.containers_support import requires_runc
from tests.integration.runtime.images.support import busybox_store
from tests.integration.runtime.local_support import LocalEnv, remove_everything
from tests.servers import unique_prefix

__all__ = ["busybox_store"]

#: A loopback registry that is not there: pulls from it fail at once, and never leave the machine.
NO_REGISTRY_IMAGE = "127.0.0.1:1/nosuch:1"
TICKER = ["/bin/sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"]


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    """The memory store unless a test asks for another (``parametrize("store_url", [...], indirect=True)``):
    most of what is tested here does not depend on the store."""
    kind = getattr(request, "param", "memory")
    prefix = unique_prefix(request.node.name)
    if kind == "memory":
        return f"memory://{prefix}"
    server: Any = request.getfixturevalue("etcd_server" if kind == "etcd" else "zk_server")
    return str(server.url_with_prefix(prefix))


# --- clients --------------------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def message(self) -> str:
        return str(self.json()["message"])


class Admin:
    """Requests to one manager over HTTPS, as an administrator (as swarmctl makes them)."""

    def __init__(self, m: ManagerHarness, tmp: Path, http: aiohttp.ClientSession) -> None:
        self.m = m
        self.ctx = admin_context(m, tmp)
        self.http = http

    def open(self, method: str, path: str, **kwargs: Any) -> Any:
        """The request as aiohttp's context manager (for streams)."""
        return self.http.request(
            method,
            f"https://{self.m.addr}{path}",
            ssl=self.ctx,
            server_hostname=MANAGER_SERVER_NAME,
            **kwargs,
        )

    async def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        async with self.open(method, path, **kwargs) as resp:
            body = await asyncio.wait_for(resp.read(), 60)
            return Reply(resp.status, CIMultiDict(resp.headers), body)

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self.call("POST", path, **kwargs)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


# --- nodes with a real engine ---------------------------------------------------------------------------
@dataclass
class Engine:
    """A local runtime served on a unix socket, as ``shoal-agent`` serves its engine."""

    env: LocalEnv
    runtime: LocalRuntime
    socket: Path
    runner: web.AppRunner | None = None
    http: aiohttp.ClientSession | None = None

    async def direct(self, method: str, path: str, **kwargs: Any) -> Reply:
        """The engine's own answer, straight from its socket."""
        assert self.http is not None
        async with self.http.request(method, f"http://engine{path}", **kwargs) as resp:
            return Reply(resp.status, CIMultiDict(resp.headers), await resp.read())


@dataclass
class Engines:
    """Makes engines for a test; removes every container, runtime, socket and file after it."""

    tmp: Path
    store: ImageStore
    made: list[Engine] = field(default_factory=list)

    async def start(self, name: str, *, busybox: bool = True) -> Engine:
        env = LocalEnv(self.tmp / "engines" / name)
        if busybox:
            ImageStore(env.root / "images").copy_from(self.store, "busybox:latest")
        sock_dir = Path(tempfile.mkdtemp(prefix="shoal-eng-", dir="/tmp"))
        engine = Engine(env, env.runtime(), sock_dir / "engine.sock")
        self.made.append(engine)
        await engine.runtime.open()
        engine.runner = await serve_unix(engine.runtime, engine.socket)
        engine.http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(engine.socket)))
        return engine

    async def close(self) -> list[str]:
        """Stop and remove everything; what could not be removed (runc containers, mounts, cgroups)."""
        leftovers: list[str] = []
        for engine in reversed(self.made):
            with contextlib.suppress(Exception):
                if engine.http is not None:
                    await engine.http.close()
            with contextlib.suppress(Exception):
                if engine.runner is not None:
                    await engine.runner.cleanup()
            with contextlib.suppress(Exception):
                await remove_everything(engine.runtime)
            with contextlib.suppress(Exception):
                await engine.runtime.close()
            engine.env.cleanup()
            unmount_all(engine.env.root)
            env = engine.env
            leftovers += [*map(str, env.runc_list()), *env.mounts(), *map(str, env.cgroup_dirs())]
            shutil.rmtree(engine.socket.parent, ignore_errors=True)
            shutil.rmtree(engine.env.root, ignore_errors=True)
        return leftovers


@pytest.fixture
async def engines(tmp_path: Path, busybox_store: ImageStore) -> AsyncIterator[Engines]:
    made = Engines(tmp_path, busybox_store)
    try:
        yield made
    finally:
        leftovers = await made.close()
    assert leftovers == [], "runc containers, mounts or cgroups left behind"


async def engine_node(
    plane: ControlPlane, engines: Engines, name: str, managers: list[ManagerHarness], *, busybox: bool = True
) -> tuple[Agent, Engine]:
    """A simulated agent whose relay answers from a real engine; registered."""
    engine = await engines.start(name, busybox=busybox)
    agent = plane.agent(name, managers=managers, start=False)
    agent.engine.socket = engine.socket
    agent.start()
    await plane.connected(agent)
    return agent, engine


def router(m: ManagerHarness) -> EngineRouter:
    assert m.dispatcher is not None
    return m.dispatcher.engines


def relay_calls(agent: Agent) -> int:
    return agent.engine.active


def names(listing: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(node name, container name) of a cluster-wide container list."""
    return {(c["Node"]["Name"], c["Names"][0].lstrip("/")) for c in listing}


async def all_containers(api: Admin) -> set[tuple[str, str]]:
    reply = await api.get("/containers/json", params={"all": "1"})
    assert reply.status == 200, reply.body
    return names(reply.json())


# --- (a), (b): an answer is the engine's -----------------------------------------------------------------
@pytest.mark.root
@requires_runc
@pytest.mark.parametrize("store_url", ["memory", "etcd"], indirect=True)
@pytest.mark.parametrize("via", ["holder", "forwarded"])
async def test_a_call_answers_exactly_as_the_engine_does(
    plane: ControlPlane, engines: Engines, tmp_path: Path, http: aiohttp.ClientSession, via: str
) -> None:
    m1 = plane.managers[0]
    m2 = await plane.manager()
    agent, engine = await engine_node(plane, engines, "node-1", [m1])
    api = Admin(m1 if via == "holder" else m2, tmp_path, http)
    assert bool(router(api.m).session_of(agent.node_id)) == (via == "holder")

    paths = [
        "/version",
        "/_ping",
        "/images/json",
        "/v1.43/images/busybox/json",
        "/images/busybox:latest/json",
    ]
    for path in [*paths, "/images/nosuch/json"]:
        want = await engine.direct("GET", path)
        for ref in ("node-1", agent.node_id):
            got = await api.get(f"/nodes/{ref}/engine{path}")
            assert (got.status, got.body) == (want.status, want.body), path
            assert got.headers["Content-Type"] == want.headers["Content-Type"], path
            assert got.headers["Api-Version"] == want.headers["Api-Version"] == "1.43"
    assert (await api.get("/nodes/node-1/engine/images/nosuch/json")).status == 404

    created = await api.post(
        "/nodes/node-1/engine/containers/create",
        params={"name": "probe"},
        json={"Image": "busybox", "Cmd": ["/bin/true"], "Labels": {"via": via, "a": "b&c=d"}},
    )
    assert created.status == 201, created.body
    cid = created.json()["Id"]
    inspect = await api.get(f"/nodes/node-1/engine/containers/{cid}/json")
    assert inspect.status == 200 and inspect.json()["Config"]["Labels"] == {"via": via, "a": "b&c=d"}
    # The query reaches the engine as the client encoded it.
    for label, hits in (("a=b&c=d", [cid]), ("a=b", [])):
        query = {"all": "1", "filters": json.dumps({"label": [label]})}
        filtered = await api.get("/nodes/node-1/engine/containers/json", params=query)
        assert filtered.status == 200, filtered.body
        assert [c["Id"] for c in filtered.json()] == hits
    listed = await api.get("/nodes/node-1/engine/containers/json", params={"all": "1"})
    assert listed.body == (await engine.direct("GET", "/containers/json?all=1")).body
    assert [c["Id"] for c in listed.json()] == [cid]
    removed = await api.call("DELETE", f"/nodes/node-1/engine/containers/{cid}")
    assert (removed.status, removed.body) == (204, b"")
    assert (await engine.direct("GET", f"/containers/{cid}/json")).status == 404
    await eventually(lambda: router(m1).active == 0 and relay_calls(agent) == 0, 5, "every call to end")


# --- (c): big bodies both ways ---------------------------------------------------------------------------
@pytest.mark.root
@requires_runc
async def test_an_image_saved_on_one_node_loads_on_another_through_either_manager(
    plane: ControlPlane, engines: Engines, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    m1 = plane.managers[0]
    m2 = await plane.manager()
    a1, e1 = await engine_node(plane, engines, "node-1", [m1])
    a2, e2 = await engine_node(plane, engines, "node-2", [m1], busybox=False)
    holder, forwarder = Admin(m1, tmp_path, http), Admin(m2, tmp_path, http)

    saved = await e1.direct("GET", "/images/busybox/get")
    assert saved.status == 200 and len(saved.body) > 4 * CHUNK  # several frames, beyond one window's ack
    for api in (holder, forwarder):
        got = await api.get("/nodes/node-1/engine/images/busybox/get")
        assert got.status == 200 and got.headers["Content-Type"] == "application/x-tar"
        assert len(got.body) == len(saved.body) and got.body == saved.body

    busybox_id = (await e1.direct("GET", "/images/busybox/json")).json()["Id"]
    assert (await e2.direct("GET", "/images/json")).json() == []
    for api in (forwarder, holder):
        loaded = await api.post(
            "/nodes/node-2/engine/images/load", data=saved.body, headers={"Content-Type": "application/x-tar"}
        )
        assert loaded.status == 200, loaded.body
        assert "Loaded image: busybox:latest" in loaded.body.decode()
        images = (await e2.direct("GET", "/images/json")).json()
        assert [(i["Id"], i["RepoTags"]) for i in images] == [(busybox_id, ["busybox:latest"])]
        assert (await e2.direct("DELETE", "/images/busybox")).status == 200

    # A body streamed in pieces of unknown length (chunked) goes the same way.
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(saved.body), 100_000):
            yield saved.body[start : start + 100_000]

    for api in (forwarder, holder):
        loaded = await api.post("/nodes/node-2/engine/images/load", data=pieces())
        assert loaded.status == 200 and "Loaded image: busybox:latest" in loaded.body.decode()
    listing = (await holder.get("/images/json")).json()
    assert sorted((i["Node"]["Name"], i["Id"]) for i in listing) == [
        ("node-1", busybox_id),
        ("node-2", busybox_id),
    ]
    assert {i["Node"]["ID"] for i in listing} == {a1.node_id, a2.node_id}
    await eventually(
        lambda: router(m1).active == 0 and relay_calls(a1) == 0 and relay_calls(a2) == 0,
        5,
        "the calls to end",
    )


# --- (d): nodes that cannot answer -----------------------------------------------------------------------
async def test_nodes_without_an_engine_unknown_or_gone_are_refused_with_the_reason(
    plane: ControlPlane, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    m1 = plane.managers[0]
    m2 = await plane.manager()
    plain, gone, broken = plane.agent("plain", [m1]), plane.agent("gone", [m1]), plane.agent("broken", [m1])
    broken.engine.socket = tmp_path / "no-such.sock"
    await plane.connected(plain, gone, broken)
    holder, forwarder = Admin(m1, tmp_path, http), Admin(m2, tmp_path, http)

    for api in (holder, forwarder):
        reply = await api.get("/nodes/plain/engine/version")
        assert reply.status == 501 and "plain runs no containers" in reply.message
        reply = await api.post("/nodes/plain/engine/containers/create", json={"Image": "busybox"})
        assert reply.status == 501
        reply = await api.get("/nodes/nope/engine/version")
        assert reply.status == 404 and "nope" in reply.message
        reply = await api.get("/nodes/broken/engine/version")
        assert reply.status == 503 and "engine of node broken is not answering" in reply.message
        # No node has an engine: empty lists, and nowhere to put a container.
        assert (await api.get("/containers/json")).json() == []
        assert (await api.get("/images/json")).json() == []
        reply = await api.post("/containers/create", json={"Image": "busybox"})
        assert reply.status == 503 and "no suitable node" in reply.message
        reply = await api.post("/containers/create", json={"Image": "busybox", "Env": ["constraint:node=x"]})
        assert reply.status == 400 and "constraint:node=x" in reply.message
        reply = await api.get("/containers/anything/json")
        assert reply.status == 404 and "No such container: anything" in reply.message

    await gone.stop()
    await eventually(lambda: not router(m1).session_of(gone.node_id), what="gone's session to end")
    for api in (holder, forwarder):
        reply = await api.get("/nodes/gone/engine/version")
        assert reply.status == 503 and "gone" in reply.message
    assert router(m1).active == 0 and router(m2).active == 0
    assert relay_calls(plain) == 0 and relay_calls(broken) == 0


# --- (e): containers across nodes ------------------------------------------------------------------------
@pytest.mark.root
@requires_runc
async def test_containers_are_listed_placed_and_found_across_nodes(
    plane: ControlPlane, engines: Engines, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    m1 = plane.managers[0]
    m2 = await plane.manager()
    a1, _ = await engine_node(plane, engines, "node-1", [m1])
    a2, _ = await engine_node(plane, engines, "node-2", [m2])
    api, other = Admin(m1, tmp_path, http), Admin(m2, tmp_path, http)

    async def direct_create(node: str, name: str, **body: Any) -> str:
        reply = await api.post(
            f"/nodes/{node}/engine/containers/create",
            params={"name": name},
            json={"Image": "busybox", **body},
        )
        assert reply.status == 201, reply.body
        return str(reply.json()["Id"])

    alpha = await direct_create("node-1", "alpha", Cmd=["/bin/true"])
    assert await all_containers(api) == await all_containers(other) == {("node-1", "alpha")}

    # Placed by a node constraint; the placement expressions never reach the engine.
    env = ["X=1", "constraint:node==node-2"]
    reply = await api.post(
        "/containers/create",
        params={"name": "one"},
        json={"Image": "busybox", "Env": env, "Cmd": ["sleep", "60"]},
    )
    assert reply.status == 201, reply.body
    one = reply.json()
    n2 = plane.node(a2.node_id)
    assert n2 is not None and one["Node"] == {"ID": a2.node_id, "Name": "node-2", "Addr": n2.status.addr}
    inspect = (await api.get("/containers/one/json")).json()
    assert inspect["Id"] == one["Id"] and inspect["Node"]["Name"] == "node-2"
    assert "X=1" in inspect["Config"]["Env"]
    assert not [e for e in inspect["Config"]["Env"] if e.startswith("constraint:")]
    assert await all_containers(api) == {("node-1", "alpha"), ("node-2", "one")}

    # A taken name, or nowhere to go: refused, nothing made.
    for placement in ("constraint:node==node-1", "constraint:node==node-2"):
        reply = await api.post(
            "/containers/create", params={"name": "one"}, json={"Image": "busybox", "Env": [placement]}
        )
        assert (
            reply.status == 409 and '"/one" is already in use' in reply.message and "node-2" in reply.message
        )
    reply = await other.post(
        "/containers/create",
        params={"name": "two"},
        json={"Image": "busybox", "Env": ["constraint:node==nope"]},
    )
    assert reply.status == 503 and "constraint:node==nope not met on 2 nodes" in reply.message
    reply = await api.post(
        "/containers/create",
        params={"name": "two", "node": "node-1"},
        json={"Image": "busybox", "Env": ["constraint:node==node-2"]},
    )
    assert reply.status == 503 and "constraint:node==node-2 not met on 1 node" in reply.message
    assert await all_containers(api) == {("node-1", "alpha"), ("node-2", "one")}

    # Beside a container, and where it is asked to go.
    body = {"Image": "busybox", "Env": ["affinity:container==alpha"]}
    reply = await other.post("/containers/create", params={"name": "beside"}, json=body)
    assert reply.status == 201 and reply.json()["Node"]["Name"] == "node-1", reply.body
    reply = await api.post("/containers/create", params={"name": "away", "node": "node-2"}, json=body)
    assert reply.status == 503 and "affinity:container==alpha not met on 1 node" in reply.message
    reply = await api.post("/containers/create", params={"node": "node-2"}, json={"Image": "busybox"})
    assert reply.status == 201 and reply.json()["Node"]["Name"] == "node-2"
    unnamed = reply.json()["Id"]

    # Running ones only without all=1.
    started = await api.post("/nodes/node-2/engine/containers/one/start")
    assert started.status == 204, started.body
    reply = await api.get("/containers/json")
    assert names(reply.json()) == {("node-2", "one")}
    assert reply.json()[0]["State"] == "running"

    # Found by id, id prefix, name, NODE/NAME (by the node's name or id).
    for ref in (alpha, alpha[:12], "alpha", "node-1/alpha", f"{a1.node_id}/alpha"):
        for client in (api, other):
            reply = await client.get(f"/containers/{ref}/json")
            assert reply.status == 200, (ref, reply.body)
            assert reply.json()["Id"] == alpha and reply.json()["Node"]["ID"] == a1.node_id
    assert (await api.get("/containers/node-2/alpha/json")).status == 404
    assert (await api.get(f"/containers/{unnamed[:10]}/json")).json()["Id"] == unnamed

    # The same name on two nodes, made there directly: the plain name is ambiguous.
    twin1 = await direct_create("node-1", "twin")
    twin2 = await direct_create("node-2", "twin")
    reply = await api.get("/containers/twin/json")
    assert reply.status == 409 and "node-1/twin" in reply.message and "node-2/twin" in reply.message
    assert (await api.get("/containers/node-1/twin/json")).json()["Id"] == twin1
    assert (await other.get("/containers/node-2/twin/json")).json()["Id"] == twin2
    reply = await api.post("/containers/create", params={"name": "twin"}, json={"Image": "busybox"})
    assert reply.status == 409

    # An image no node has and none can pull (a registry on loopback that is not there).
    before = await all_containers(api)
    reply = await api.post("/containers/create", params={"name": "ghost"}, json={"Image": NO_REGISTRY_IMAGE})
    assert reply.status == 404 and f"No such image: {NO_REGISTRY_IMAGE}" in reply.message
    assert await all_containers(api) == before
    assert not [
        i for i in (await api.get("/images/json")).json() if NO_REGISTRY_IMAGE in (i.get("RepoTags") or [])
    ]
    await eventually(lambda: router(m1).active == router(m2).active == 0, 5, "the calls to end")
    assert relay_calls(a1) == relay_calls(a2) == 0


# --- (f): a client that leaves a followed log ------------------------------------------------------------
@pytest.mark.root
@requires_runc
@pytest.mark.parametrize("via", ["holder", "forwarded"])
async def test_a_followed_log_ends_on_both_sides_when_its_client_leaves(
    plane: ControlPlane, engines: Engines, tmp_path: Path, http: aiohttp.ClientSession, via: str
) -> None:
    m1 = plane.managers[0]
    m2 = await plane.manager()
    agent, engine = await engine_node(plane, engines, "node-1", [m1])
    api = Admin(m1 if via == "holder" else m2, tmp_path, http)
    created = await api.post(
        "/nodes/node-1/engine/containers/create", json={"Image": "busybox", "Cmd": TICKER}
    )
    assert created.status == 201, created.body
    cid = created.json()["Id"]
    assert (await api.post(f"/nodes/node-1/engine/containers/{cid}/start")).status == 204

    resp = await api.open(
        "GET", f"/nodes/node-1/engine/containers/{cid}/logs", params={"follow": "1", "stdout": "1"}
    ).__aenter__()
    try:
        assert resp.status == 200
        seen = b""
        while b"tick 3\n" not in seen:
            seen += await asyncio.wait_for(resp.content.read(4096), 5)
        assert router(m1).active == 1 and relay_calls(agent) == 1
    finally:
        resp.close()  # the connection goes with it
    await eventually(
        lambda: router(m1).active == 0 and router(m2).active == 0 and relay_calls(agent) == 0,
        5,
        "the call to end on the manager and at the relay",
    )
    # The container ran on; only the call ended.
    state = (await engine.direct("GET", f"/containers/{cid}/json")).json()["State"]
    assert state["Running"] is True


@pytest.mark.root
@requires_runc
@pytest.mark.parametrize("via", ["holder", "forwarded"])
async def test_a_body_cut_off_by_the_nodes_session_ending_is_not_a_complete_answer(
    plane: ControlPlane, engines: Engines, tmp_path: Path, http: aiohttp.ClientSession, via: str
) -> None:
    m1 = plane.managers[0]
    m2 = await plane.manager()
    agent, _ = await engine_node(plane, engines, "node-1", [m1])
    api = Admin(m1 if via == "holder" else m2, tmp_path, http)
    created = await api.post(
        "/nodes/node-1/engine/containers/create", json={"Image": "busybox", "Cmd": TICKER}
    )
    assert created.status == 201, created.body
    cid = created.json()["Id"]
    assert (await api.post(f"/nodes/node-1/engine/containers/{cid}/start")).status == 204

    async with api.open(
        "GET", f"/nodes/node-1/engine/containers/{cid}/logs", params={"follow": "1", "stdout": "1"}
    ) as resp:
        assert resp.status == 200
        seen = b""
        while b"tick 1\n" not in seen:
            seen += await asyncio.wait_for(resp.content.read(4096), 5)
        await agent.stop()
        with pytest.raises(aiohttp.ClientPayloadError):
            while await asyncio.wait_for(resp.content.read(4096), 5):
                pass
    await eventually(lambda: router(m1).active == 0, 5, "the call to end with the session")
