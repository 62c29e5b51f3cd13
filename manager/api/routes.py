"""The API's routes: create, list, inspect, update and remove cluster objects, and the events stream.

Handlers decode the body with the codec (strict: unknown fields are errors naming them), validate the
spec (manager.validate), write through the object store conditionally and wait until this manager's cache
shows the write, so a client reading right after writing sees its own change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

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


# --- the shape every kind shares: create, list, inspect, remove ---------------------------------------
@dataclass(frozen=True)
class Create(Generic[T]):
    """How ``POST {path}/create`` makes an object: ``spec`` decoded strictly, checked, its name unique."""

    spec: type[Any]
    #: Validates the spec (manager.validate), before the name is looked up.
    check: Callable[[Any], None]
    #: The object to write for a valid spec; may first check it against the store.
    build: Callable[[ObjectStore, Any], T]


def _by_name(obj: Any) -> str:
    return str(obj.spec.annotations.name)


def _serve(
    tp: type[T],
    path: str,
    *,
    create: Create[T] | None = None,
    select: Callable[[web.Request, ObjectStore], list[T]] | None = None,
    sort_key: Callable[[T], Any] = _by_name,
    find: Callable[[ObjectStore, str], T] | None = None,
    public: Callable[[T], T] | None = None,
    removable: bool = True,
    check_remove: Callable[[web.Request, T], None] | None = None,
    wait_removed: bool = False,
) -> None:
    """Add the routes of one kind to the table: ``POST {path}/create`` (with ``create``), ``GET {path}``,
    ``GET {path}/{ref}`` and ``DELETE {path}/{ref}`` (when ``removable``).

    The hooks are where kinds differ: ``select`` the objects a list starts from (its query filters; all of
    them by default), ``find`` the object a reference names (:func:`resolve` by default), ``public`` what
    the API shows of one, ``check_remove`` raises when one may not be removed (in use, still up), and
    ``wait_removed`` makes a remove wait until this manager's cache no longer shows it.
    """

    def lookup(store: ObjectStore, ref: str) -> T:
        return find(store, ref) if find is not None else resolve(store, tp, ref)

    def shown(obj: T) -> T:
        return public(obj) if public is not None else obj

    if create is not None:

        async def create_one(request: web.Request) -> web.Response:
            store = _store(request)
            spec = from_plain(create.spec, await read_json(request))
            create.check(spec)
            await _unique_name(store, tp, spec.annotations.name)
            return await _created(store, await store.create(create.build(store, spec)))

        table.post(f"{path}/create")(create_one)

    async def list_all(request: web.Request) -> web.Response:
        store = _store(request)
        objs = select(request, store) if select is not None else store.objects(tp)
        return json_response([shown(o) for o in sorted(objs, key=sort_key)])

    async def inspect_one(request: web.Request) -> web.Response:
        return json_response(shown(lookup(_store(request), request.match_info["ref"])))

    table.get(path)(list_all)
    table.get(f"{path}/{{ref}}")(inspect_one)
    if not removable:
        return

    async def remove_one(request: web.Request) -> web.Response:
        store = _store(request)
        obj = lookup(store, request.match_info["ref"])
        if check_remove is not None:
            check_remove(request, obj)
        await store.delete(obj)
        if wait_removed:
            await store.wait_for(await store.kv.revision())
        return web.Response(status=204)

    table.delete(f"{path}/{{ref}}")(remove_one)


# --- services ------------------------------------------------------------------------------------------
def _check_networks_exist(store: ObjectStore, spec: ServiceSpec) -> None:
    for attachment in spec.task.networks:
        resolve(store, Network, attachment.target)


def _new_service(store: ObjectStore, spec: ServiceSpec) -> Service:
    _check_networks_exist(store, spec)
    return Service(spec=spec)


def _services_named(request: web.Request, store: ObjectStore) -> list[Service]:
    services = store.objects(Service)
    name = request.query.get("name")
    if name:
        services = [s for s in services if s.spec.annotations.name == name]
    return services


_serve(
    Service,
    "/services",
    create=Create(ServiceSpec, validate.check_service, _new_service),
    select=_services_named,
    wait_removed=True,
)


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


# --- tasks ---------------------------------------------------------------------------------------------
def _tasks_queried(request: web.Request, store: ObjectStore) -> list[Task]:
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
    return tasks


_serve(
    Task,
    "/tasks",
    select=_tasks_queried,
    sort_key=lambda t: (t.service_annotations.name, t.slot, t.node_id, t.meta.created_at),
    removable=False,
)


# --- nodes ---------------------------------------------------------------------------------------------
def resolve_node(store: ObjectStore, ref: str) -> Node:
    for node in store.objects(Node):
        if node.status.description.hostname == ref:
            return node
    return resolve(store, Node, ref)


def _node_down(request: web.Request, node: Node) -> None:
    force = request.query.get("force", "") in ("1", "true")
    if node.status.state is NodeState.READY and not force:
        raise NodeNotDown(node.status.description.hostname or node.meta.id)


_serve(
    Node,
    "/nodes",
    sort_key=lambda n: n.status.description.hostname,
    find=resolve_node,
    check_remove=_node_down,
)


@table.post("/nodes/{ref}/update")
async def node_update(request: web.Request) -> web.Response:
    store = _store(request)
    node = resolve_node(store, request.match_info["ref"])
    spec = from_plain(NodeSpec, await read_json(request))
    version = int_query(request, "version")
    written = await store.update(replace(node, meta=replace(node.meta, version=version), spec=spec))
    await store.wait_for(written.meta.version)
    return json_response({"id": written.meta.id, "version": written.meta.version})


# --- networks, volumes, secrets -----------------------------------------------------------------------
def _network_unused(request: web.Request, net: Network) -> None:
    for svc in _store(request).objects(Service):
        targets = {a.target for a in svc.spec.task.networks}
        if net.meta.id in targets or net.spec.annotations.name in targets:
            raise InUse("networks", net.spec.annotations.name, f"service {svc.spec.annotations.name}")


_serve(
    Network,
    "/networks",
    create=Create(NetworkSpec, validate.check_network, lambda _, s: Network(spec=s)),
    check_remove=_network_unused,
)
_serve(Volume, "/volumes", create=Create(VolumeSpec, validate.check_volume, lambda _, s: Volume(spec=s)))


def _public_secret(secret: Secret) -> Secret:
    """A secret as the API shows it: never its data."""
    return replace(secret, spec=replace(secret.spec, data=b""))


def _new_secret(store: ObjectStore, spec: SecretSpec) -> Secret:
    return Secret(spec=spec, status=SecretStatus(digest="sha256:" + hashlib.sha256(spec.data).hexdigest()))


def _secret_unused(request: web.Request, secret: Secret) -> None:
    for svc in _store(request).objects(Service):
        if any(r.secret_id == secret.meta.id for r in svc.spec.task.container.secrets):
            raise InUse("secrets", secret.spec.annotations.name, f"service {svc.spec.annotations.name}")


_serve(
    Secret,
    "/secrets",
    create=Create(SecretSpec, validate.check_secret, _new_secret),
    public=_public_secret,
    check_remove=_secret_unused,
)


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
