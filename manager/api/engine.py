"""Nodes' engines through the manager: the engine API of any node, and classic Swarm's cluster-wide views.

- ``/nodes/{node}/engine/{path}``: any request to that node's Docker Engine API, streamed both ways with
  its status unchanged. The call goes through the node's session (manager/engine.py); when another
  manager holds the session, to that manager over mutual TLS (``X-Shoal-Forwarded`` stops it relaying
  again), as log requests do (manager/api/log_proxy.py).
- ``GET /containers/json`` and ``GET /images/json``: every connected node's list, each entry with the
  ``Node`` it is on; a node that does not answer is left out, as classic Swarm left out unhealthy engines.
- ``POST /containers/create``: a one-off container placed by the scheduler (manager/containers.py), its
  image pulled on the chosen node when missing; ``GET /containers/{ref}/json``: find a container on any
  node by id, id prefix, name or ``NODE/NAME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from api import Node, Task
from api.engine import CHUNK, carried_headers
from api.join import MANAGER_SERVER_NAME
from api.objects import NodeState
from manager.api.app import STORE, BadRequest, json_response, read_json
from manager.api.log_proxy import CONNECT_TIMEOUT, session_holder
from manager.api.routes import resolve_node
from manager.containers import NodeEngine, container_name, create_spec, place_container, split_placement
from manager.engine import ENGINES, EngineCall
from manager.errors import ManagerError, NotFound, Unavailable
from manager.join import PKI
from manager.scheduling import holds_resources

log = logging.getLogger(__name__)
table = web.RouteTableDef()

#: Set on a request one manager relays to another: answer from this manager's sessions only.
FORWARDED = "X-Shoal-Forwarded"
#: A JSON answer read whole is never larger than this.
MAX_JSON = 64 * 1024 * 1024


class EngineError(ManagerError):
    """A node's engine refused a call the manager made for the client; answered with the engine's status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = status if 400 <= status < 600 else 502


class NameConflict(ManagerError):
    """A container name is taken, or a reference names several containers (Docker's 409)."""

    http_status = 409


class ContainerNotFound(NotFound):
    """No node has the container (Docker's wording)."""

    def __init__(self, ref: str) -> None:
        ManagerError.__init__(self, f"No such container: {ref}")


@dataclass
class NodeReply:
    """A node engine's answer: status and headers, then the body by ``read`` (b"" at its end)."""

    status: int
    headers: dict[str, str]
    read: Callable[[], Awaitable[bytes]]
    close: Callable[[], Awaitable[None]]

    async def body(self, limit: int = MAX_JSON) -> bytes:
        out = bytearray()
        while piece := await self.read():
            out += piece
            if len(out) > limit:
                raise Unavailable(f"a node's engine answered with more than {limit} bytes")
        return bytes(out)


def node_ref(node: Node) -> dict[str, str]:
    """How lists and answers name a node."""
    return {"ID": node.meta.id, "Name": node.status.description.hostname, "Addr": node.status.addr}


def _name(node: Node) -> str:
    return node.status.description.hostname or node.meta.id


async def call_node(
    app: web.Application,
    node: Node,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | AsyncIterator[bytes] = b"",
    *,
    forwarded: bool = False,
) -> NodeReply:
    """One request to the node's engine, through whichever manager holds its session. Raises Unavailable
    when the node has no session anywhere (or, ``forwarded``, not here)."""
    router = app.get(ENGINES)
    if router is not None and router.session_of(node.meta.id):
        call = await router.open(
            node.meta.id,
            method,
            path,
            headers,
            body if isinstance(body, bytes) else b"",
            more=not isinstance(body, bytes),
        )
        if call is not None:
            return await _local_reply(call, body)
    if forwarded:
        raise Unavailable(f"the session of node {_name(node)} is not on this manager (any more)")
    holder = await session_holder(app[STORE].kv, node.meta.id)
    if holder is None or not holder.manager_addr:
        raise Unavailable(f"node {_name(node)} is not connected (it has no session with any manager)")
    pki = app.get(PKI)
    if router is not None and holder.manager_id == router.manager_id:
        raise Unavailable(f"the session of node {_name(node)} just ended")
    if pki is None:
        raise Unavailable(
            f"node {_name(node)} is connected to manager {holder.manager_addr}: ask that manager"
        )
    http = aiohttp.ClientSession(auto_decompress=False)
    try:
        resp = await http.request(
            method,
            f"https://{holder.manager_addr}/nodes/{node.meta.id}/engine{path}",
            headers={**(headers or {}), FORWARDED: "1"},
            data=body,
            ssl=pki.client_context(),
            server_hostname=MANAGER_SERVER_NAME,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT),
        )
    except (aiohttp.ClientError, OSError) as e:
        await http.close()
        raise Unavailable(f"cannot reach manager {holder.manager_addr} for node {_name(node)}: {e}") from None

    via = holder.manager_addr

    async def read() -> bytes:
        try:
            return await resp.content.read(CHUNK)
        except (aiohttp.ClientError, OSError) as e:
            raise Unavailable(f"manager {via} broke off the answer of node {_name(node)}: {e}") from None

    async def close() -> None:
        resp.release()
        await http.close()

    return NodeReply(resp.status, carried_headers(resp.headers), read, close)


async def _local_reply(call: EngineCall, body: bytes | AsyncIterator[bytes]) -> NodeReply:
    pump: asyncio.Task[None] | None = None
    if not isinstance(body, bytes):

        async def send_body(pieces: AsyncIterator[bytes]) -> None:
            async for piece in pieces:
                for start in range(0, len(piece), CHUNK):
                    await call.write(piece[start : start + CHUNK])
            await call.write(b"", end=True)

        pump = asyncio.get_running_loop().create_task(send_body(body))

    async def close() -> None:
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
        await call.close()

    try:
        response = await call.response()
    except BaseException:
        await close()
        raise
    return NodeReply(response.status, dict(response.headers), call.read, close)


async def node_json(
    app: web.Application, node: Node, method: str, path: str, payload: Any = None
) -> tuple[int, Any]:
    """A call whose answer is JSON (or nothing): (status, decoded body)."""
    headers = {"content-type": "application/json"} if payload is not None else {}
    data = json.dumps(payload).encode() if payload is not None else b""
    reply = await call_node(app, node, method, path, headers, data)
    try:
        raw = await reply.body()
    finally:
        await reply.close()
    try:
        return reply.status, json.loads(raw) if raw.strip() else None
    except ValueError:
        return reply.status, {"message": raw.decode(errors="replace").strip()}


def _message(body: Any, status: int) -> str:
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return f"HTTP {status}"


def ready_nodes(app: web.Application) -> list[Node]:
    """The nodes whose agent is up, in name order."""
    nodes = [n for n in app[STORE].objects(Node) if n.status.state is NodeState.READY]
    return sorted(nodes, key=lambda n: (_name(n), n.meta.id))


async def _gather_lists(app: web.Application, path: str) -> list[tuple[Node, list[Any]]]:
    """``path`` (a JSON list) from every ready node that answers."""

    async def one(node: Node) -> tuple[Node, list[Any]] | None:
        try:
            status, body = await node_json(app, node, "GET", path)
        except (Unavailable, OSError) as e:
            log.debug("node %s left out of %s: %s", _name(node), path, e)
            return None
        if status != 200 or not isinstance(body, list):
            log.debug("node %s left out of %s: %s", _name(node), path, _message(body, status))
            return None
        return node, body

    found = await asyncio.gather(*(one(n) for n in ready_nodes(app)))
    return [f for f in found if f is not None]


def _query(request: web.Request, **extra: str) -> str:
    query = {k: v for k, v in request.query.items() if k != "node"} | extra
    return "?" + urlencode(query) if query else ""


# --- any engine call ------------------------------------------------------------------------------------
async def engine_proxy(request: web.Request) -> web.StreamResponse:
    """The node's engine API, relayed: same method, path, query, body and answer."""
    node = resolve_node(request.app[STORE], request.match_info["ref"])
    # The engine's path as the client encoded it (image names hold ':' and '/'): everything after /engine.
    raw = request.rel_url.raw_path
    path = raw[raw.index("/engine/") + len("/engine") :] + (
        f"?{request.query_string}" if request.query_string else ""
    )
    body: bytes | AsyncIterator[bytes] = b""
    if request.body_exists:
        small = request.content_length is not None and request.content_length <= CHUNK
        body = await request.read() if small else request.content.iter_chunked(CHUNK)
    reply = await call_node(
        request.app,
        node,
        request.method,
        path,
        carried_headers(request.headers),
        body,
        forwarded=request.headers.get(FORWARDED) == "1",
    )
    try:
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        await response.prepare(request)
        try:
            while piece := await reply.read():
                await response.write(piece)
            await response.write_eof()
        except ConnectionError:
            pass  # the client left
        except Unavailable as e:
            log.info("engine call to node %s broke off: %s", _name(node), e)
            # Ending the response normally would pass a cut-off body (half an image) as complete:
            # drop the connection instead, so the client sees it broke off.
            if request.transport is not None:
                request.transport.close()
        return response
    finally:
        await reply.close()


ENGINE_PATH = "/nodes/{ref}/engine/{path:.*}"
#: The methods Docker's Engine API uses.
ENGINE_METHODS = ("GET", "POST", "PUT", "DELETE")
for _method in ENGINE_METHODS:
    table.route(_method, ENGINE_PATH)(engine_proxy)


# --- cluster-wide views ---------------------------------------------------------------------------------
@table.get("/containers/json")
async def list_containers(request: web.Request) -> web.Response:
    """Every connected node's containers (``all``, ``filters`` as Docker's), each with its ``Node``."""
    out = []
    for node, items in await _gather_lists(request.app, "/containers/json" + _query(request)):
        out += [{**item, "Node": node_ref(node)} for item in items if isinstance(item, dict)]
    return json_response(out)


@table.get("/images/json")
async def list_images(request: web.Request) -> web.Response:
    """Every connected node's images, each with its ``Node``."""
    out = []
    for node, items in await _gather_lists(request.app, "/images/json" + _query(request)):
        out += [{**item, "Node": node_ref(node)} for item in items if isinstance(item, dict)]
    return json_response(out)


async def find_container(app: web.Application, ref: str) -> tuple[Node, dict[str, Any]]:
    """The node and list entry of a container: by id, name, ``NODE/NAME`` or a unique id prefix."""
    node_part, _, name_part = ref.rpartition("/") if "/" in ref.lstrip("/") else ("", "", ref.lstrip("/"))
    found = await _gather_lists(app, "/containers/json?all=1")
    entries = [
        (node, c)
        for node, items in found
        for c in items
        if not node_part or node_part in (node.meta.id, _name(node))
    ]
    for match in (
        lambda c: c.get("Id") == name_part,
        lambda c: container_name(c) == name_part,
        lambda c: str(c.get("Id", "")).startswith(name_part),
    ):
        hits = [(n, c) for n, c in entries if match(c)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            where = ", ".join(sorted(f"{_name(n)}/{container_name(c)}" for n, c in hits))
            raise NameConflict(f"{ref!r} names {len(hits)} containers ({where}): use NODE/NAME")
    raise ContainerNotFound(ref)


@table.get("/containers/{ref:.+}/json")
async def inspect_container(request: web.Request) -> web.Response:
    """Docker's inspect of the container, with the ``Node`` it is on."""
    node, entry = await find_container(request.app, request.match_info["ref"])
    status, body = await node_json(request.app, node, "GET", f"/containers/{entry['Id']}/json")
    if status != 200 or not isinstance(body, dict):
        raise EngineError(status, _message(body, status))
    return json_response({**body, "Node": node_ref(node)})


# --- one-off containers ---------------------------------------------------------------------------------
@table.post("/containers/create")
async def create_container(request: web.Request) -> web.Response:
    """Place a container with the scheduler, then create it there (pulling its image if needed)."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a Docker create object")
    name = request.query.get("name", "")
    env, placement = split_placement(body.get("Env") or ())
    spec = create_spec(body, placement)
    app = request.app
    store = app[STORE]
    wanted = request.query.get("node", "")
    pinned = resolve_node(store, wanted).meta.id if wanted else ""
    engines = await _engines(app)
    for e in engines:
        for c in e.containers:
            if name and container_name(c) == name:
                used_by = c.get("Id", "")
                raise NameConflict(
                    f'Conflict. The container name "/{name}" is already in use by container "{used_by}"'
                    f" on node {_name(e.node)}. You have to remove (or rename) that container to be able to"
                    " reuse that name."
                )
    tasks_on: dict[str, list[Task]] = {}
    for t in store.objects(Task):
        if holds_resources(t):
            tasks_on.setdefault(t.node_id, []).append(t)
    chosen = place_container(engines, tasks_on, spec, name, pinned)
    if not isinstance(chosen, str):
        raise Unavailable(chosen.message)
    node = next(e.node for e in engines if e.node.meta.id == chosen)
    path = "/containers/create" + (f"?{urlencode({'name': name})}" if name else "")
    payload = {**body, "Env": env}
    status, answer = await node_json(app, node, "POST", path, payload)
    if status == 404 and "image" in _message(answer, status).lower():
        await _pull(app, node, spec.image)
        status, answer = await node_json(app, node, "POST", path, payload)
    if status != 201 or not isinstance(answer, dict):
        raise EngineError(status, _message(answer, status))
    return json_response({**answer, "Node": node_ref(node)}, 201)


async def _engines(app: web.Application) -> list[NodeEngine]:
    """Every node that runs containers, with what its engine holds now."""
    containers, images = await asyncio.gather(
        _gather_lists(app, "/containers/json?all=1"), _gather_lists(app, "/images/json")
    )
    images_of = {node.meta.id: items for node, items in images}
    return [NodeEngine(node, items, images_of.get(node.meta.id, [])) for node, items in containers]


async def _pull(app: web.Application, node: Node, image: str) -> None:
    """Pull ``image`` on the node (``docker run``'s implicit pull); raises EngineError with the reason."""
    repo, tag = _split_reference(image)
    query = urlencode({"fromImage": repo, "tag": tag} if tag else {"fromImage": repo})
    reply = await call_node(app, node, "POST", f"/images/create?{query}")
    try:
        raw = await reply.body()
    finally:
        await reply.close()
    if reply.status != 200:
        try:
            reason = _message(json.loads(raw), reply.status)
        except ValueError:
            reason = raw.decode(errors="replace").strip() or f"HTTP {reply.status}"
        raise EngineError(404, f"No such image: {image} ({reason})")
    for line in raw.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("error"):
                raise EngineError(404, f"No such image: {image} ({event['error']})")


def _split_reference(image: str) -> tuple[str, str]:
    """(repository, tag or digest) of an image reference; the tag is "" when the reference has none."""
    if "@" in image:
        repo, _, digest = image.partition("@")
        return repo, digest
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, ""
