"""The API's routes: create, list, inspect, update and remove cluster objects, and the events stream.

Handlers decode the body with the codec (strict: unknown fields are errors naming them), validate the
spec (manager.validate), write through the object store conditionally and wait until this manager's cache
shows the write, so a client reading right after writing sees its own change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, TypeVar

from aiohttp import web

from api import Cluster, Network, Node, Secret, Service, Task, TaskState, from_plain, to_plain, utcnow
from api.objects import (
    NetworkSpec,
    NodeSpec,
    NodeState,
    SecretSpec,
    SecretStatus,
    ServiceSpec,
    ServiceStatus,
    UpdateState,
    Volume,
    VolumeSpec,
)
from manager import validate
from manager.api.app import STORE, BadRequest, int_query, json_response, read_json
from manager.errors import AlreadyExists, InUse, InvalidSpec, NodeNotDown, NotFound
from manager.store import KIND_OF, ObjectStore

T = TypeVar("T")
table = web.RouteTableDef()


def _store(request: web.Request) -> ObjectStore:
    return request.app[STORE]


def resolve(store: ObjectStore, tp: type[T], ref: str) -> T:
    """Find an object as Docker does: by full id, then by name, then by a unique id prefix."""
    found = store.get(tp, ref) or store.find_by_name(tp, ref)
    if found is not None:
        return found
    matches = [o for o in store.objects(tp) if o.meta.id.startswith(ref)]  # type: ignore[attr-defined]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidSpec("reference", f"{ref!r} is ambiguous: {len(matches)} {KIND_OF[tp]} match")
    raise NotFound(KIND_OF[tp], ref)


async def _created(store: ObjectStore, obj: Any) -> web.Response:
    await store.wait_for(obj.meta.version)
    return json_response({"id": obj.meta.id}, 201)


async def _unique_name(store: ObjectStore, tp: type[Any], name: str) -> None:
    if store.find_by_name(tp, name) is not None:
        raise AlreadyExists(KIND_OF[tp], name)


# --- misc ----------------------------------------------------------------------------------------------
@table.get("/_ping")
async def ping(request: web.Request) -> web.Response:
    return web.Response(text="OK")


@table.get("/version")
async def version(request: web.Request) -> web.Response:
    from swarmctl import __version__

    return json_response({"version": __version__, "api": "1"})


# --- services ------------------------------------------------------------------------------------------
@table.post("/services/create")
async def service_create(request: web.Request) -> web.Response:
    store = _store(request)
    spec = from_plain(ServiceSpec, await read_json(request))
    validate.check_service(spec)
    await _unique_name(store, Service, spec.annotations.name)
    _check_networks_exist(store, spec)
    return await _created(store, await store.create(Service(spec=spec)))


def _check_networks_exist(store: ObjectStore, spec: ServiceSpec) -> None:
    for attachment in spec.task.networks:
        resolve(store, Network, attachment.target)


@table.get("/services")
async def service_list(request: web.Request) -> web.Response:
    store = _store(request)
    services = store.objects(Service)
    name = request.query.get("name")
    if name:
        services = [s for s in services if s.spec.annotations.name == name]
    services.sort(key=lambda s: s.spec.annotations.name)
    return json_response(services)


@table.get("/services/{ref}")
async def service_inspect(request: web.Request) -> web.Response:
    return json_response(resolve(_store(request), Service, request.match_info["ref"]))


@table.post("/services/{ref}/update")
async def service_update(request: web.Request) -> web.Response:
    store = _store(request)
    current = resolve(store, Service, request.match_info["ref"])
    version = int_query(request, "version")
    spec = from_plain(ServiceSpec, await read_json(request))
    validate.check_service(spec)
    if spec.annotations.name != current.spec.annotations.name:
        raise InvalidSpec("name", "renaming services is not supported")
    if spec.mode is not current.spec.mode:
        raise InvalidSpec("mode", "a service's mode cannot be changed")
    _check_networks_exist(store, spec)
    updated = replace(current, meta=replace(current.meta, version=version), spec=spec)
    if spec.task != current.spec.task:
        # A new task template: start a rolling update (the previous spec is kept for rollback).
        updated = replace(
            updated,
            previous_spec=current.spec,
            status=replace(
                current.status,
                update_state=UpdateState.UPDATING,
                update_message="update in progress",
                update_started_at=utcnow(),
                update_completed_at=None,
            ),
        )
    written = await store.update(updated)
    await store.wait_for(written.meta.version)
    return json_response({"id": written.meta.id, "version": written.meta.version})


@table.post("/services/{ref}/rollback")
async def service_rollback(request: web.Request) -> web.Response:
    store = _store(request)
    current = resolve(store, Service, request.match_info["ref"])
    if current.previous_spec is None:
        raise InvalidSpec("rollback", f"service {current.spec.annotations.name} has no previous spec")
    status = ServiceStatus(
        update_state=UpdateState.ROLLBACK_STARTED,
        update_message="manually requested rollback",
        update_started_at=utcnow(),
        endpoint=current.status.endpoint,
    )
    rolled = replace(current, spec=current.previous_spec, previous_spec=current.spec, status=status)
    written = await store.update(rolled)
    await store.wait_for(written.meta.version)
    return json_response({"id": written.meta.id, "version": written.meta.version})


@table.delete("/services/{ref}")
async def service_remove(request: web.Request) -> web.Response:
    store = _store(request)
    svc = resolve(store, Service, request.match_info["ref"])
    await store.delete(svc)
    await store.wait_for(await store.kv.revision())
    return web.Response(status=204)


# --- tasks ---------------------------------------------------------------------------------------------
@table.get("/tasks")
async def task_list(request: web.Request) -> web.Response:
    store = _store(request)
    q = request.query
    if "service" in q:
        tasks = store.tasks_of_service(resolve(store, Service, q["service"]).meta.id)
    elif "node" in q:
        tasks = store.tasks_on_node(resolve(store, Node, q["node"]).meta.id)
    else:
        tasks = store.objects(Task)
    if "desired-state" in q:
        try:
            wanted = TaskState(q["desired-state"])
        except ValueError:
            raise BadRequest(f"unknown desired-state {q['desired-state']!r}") from None
        tasks = [t for t in tasks if t.desired_state is wanted]
    tasks.sort(key=lambda t: (t.service_annotations.name, t.slot, t.node_id, t.meta.created_at))
    return json_response(tasks)


@table.get("/tasks/{ref}")
async def task_inspect(request: web.Request) -> web.Response:
    return json_response(resolve(_store(request), Task, request.match_info["ref"]))


# --- nodes ---------------------------------------------------------------------------------------------
@table.get("/nodes")
async def node_list(request: web.Request) -> web.Response:
    nodes = _store(request).objects(Node)
    nodes.sort(key=lambda n: n.status.description.hostname)
    return json_response(nodes)


@table.get("/nodes/{ref}")
async def node_inspect(request: web.Request) -> web.Response:
    store = _store(request)
    return json_response(resolve_node(store, request.match_info["ref"]))


def resolve_node(store: ObjectStore, ref: str) -> Node:
    for node in store.objects(Node):
        if node.status.description.hostname == ref:
            return node
    return resolve(store, Node, ref)


@table.post("/nodes/{ref}/update")
async def node_update(request: web.Request) -> web.Response:
    store = _store(request)
    node = resolve_node(store, request.match_info["ref"])
    spec = from_plain(NodeSpec, await read_json(request))
    version = int_query(request, "version")
    written = await store.update(replace(node, meta=replace(node.meta, version=version), spec=spec))
    await store.wait_for(written.meta.version)
    return json_response({"id": written.meta.id, "version": written.meta.version})


@table.delete("/nodes/{ref}")
async def node_remove(request: web.Request) -> web.Response:
    store = _store(request)
    node = resolve_node(store, request.match_info["ref"])
    force = request.query.get("force", "") in ("1", "true")
    if node.status.state is NodeState.READY and not force:
        raise NodeNotDown(node.status.description.hostname or node.meta.id)
    await store.delete(node)
    return web.Response(status=204)


# --- networks, volumes, secrets -----------------------------------------------------------------------
@table.post("/networks/create")
async def network_create(request: web.Request) -> web.Response:
    store = _store(request)
    spec = from_plain(NetworkSpec, await read_json(request))
    validate.check_network(spec)
    await _unique_name(store, Network, spec.annotations.name)
    return await _created(store, await store.create(Network(spec=spec)))


@table.get("/networks")
async def network_list(request: web.Request) -> web.Response:
    return json_response(sorted(_store(request).objects(Network), key=lambda n: n.spec.annotations.name))


@table.get("/networks/{ref}")
async def network_inspect(request: web.Request) -> web.Response:
    return json_response(resolve(_store(request), Network, request.match_info["ref"]))


@table.delete("/networks/{ref}")
async def network_remove(request: web.Request) -> web.Response:
    store = _store(request)
    net = resolve(store, Network, request.match_info["ref"])
    for svc in store.objects(Service):
        targets = {a.target for a in svc.spec.task.networks}
        if net.meta.id in targets or net.spec.annotations.name in targets:
            raise InUse("networks", net.spec.annotations.name, f"service {svc.spec.annotations.name}")
    await store.delete(net)
    return web.Response(status=204)


@table.post("/volumes/create")
async def volume_create(request: web.Request) -> web.Response:
    store = _store(request)
    spec = from_plain(VolumeSpec, await read_json(request))
    validate.check_volume(spec)
    await _unique_name(store, Volume, spec.annotations.name)
    return await _created(store, await store.create(Volume(spec=spec)))


@table.get("/volumes")
async def volume_list(request: web.Request) -> web.Response:
    return json_response(sorted(_store(request).objects(Volume), key=lambda v: v.spec.annotations.name))


@table.get("/volumes/{ref}")
async def volume_inspect(request: web.Request) -> web.Response:
    return json_response(resolve(_store(request), Volume, request.match_info["ref"]))


@table.delete("/volumes/{ref}")
async def volume_remove(request: web.Request) -> web.Response:
    store = _store(request)
    await store.delete(resolve(store, Volume, request.match_info["ref"]))
    return web.Response(status=204)


def _public_secret(secret: Secret) -> Secret:
    """A secret as the API shows it: never its data."""
    return replace(secret, spec=replace(secret.spec, data=b""))


@table.post("/secrets/create")
async def secret_create(request: web.Request) -> web.Response:
    store = _store(request)
    spec = from_plain(SecretSpec, await read_json(request))
    validate.check_secret(spec)
    await _unique_name(store, Secret, spec.annotations.name)
    status = SecretStatus(digest="sha256:" + hashlib.sha256(spec.data).hexdigest())
    return await _created(store, await store.create(Secret(spec=spec, status=status)))


@table.get("/secrets")
async def secret_list(request: web.Request) -> web.Response:
    secrets = sorted(_store(request).objects(Secret), key=lambda s: s.spec.annotations.name)
    return json_response([_public_secret(s) for s in secrets])


@table.get("/secrets/{ref}")
async def secret_inspect(request: web.Request) -> web.Response:
    return json_response(_public_secret(resolve(_store(request), Secret, request.match_info["ref"])))


@table.delete("/secrets/{ref}")
async def secret_remove(request: web.Request) -> web.Response:
    store = _store(request)
    secret = resolve(store, Secret, request.match_info["ref"])
    for svc in store.objects(Service):
        if any(r.secret_id == secret.meta.id for r in svc.spec.task.container.secrets):
            raise InUse("secrets", secret.spec.annotations.name, f"service {svc.spec.annotations.name}")
    await store.delete(secret)
    return web.Response(status=204)


# --- the cluster --------------------------------------------------------------------------------------
@table.get("/swarm")
async def cluster_inspect(request: web.Request) -> web.Response:
    clusters = _store(request).objects(Cluster)
    if not clusters:
        raise NotFound("clusters", "default (not initialised)")
    return json_response(clusters[0])


# --- events -------------------------------------------------------------------------------------------
@table.get("/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events, one per object change: ``{"kind", "action", "id", "revision", "object"}``."""
    store = _store(request)
    kinds = set(request.query.getall("kind", []))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    async for change in store.changes():
        if kinds and change.kind not in kinds:
            continue
        obj = change.obj
        if isinstance(obj, Secret):
            obj = _public_secret(obj)
        payload = {
            "kind": change.kind,
            "action": change.action,
            "id": obj.meta.id,
            "revision": change.revision,
            "object": to_plain(obj),
        }
        await resp.write(f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode())
    return resp
