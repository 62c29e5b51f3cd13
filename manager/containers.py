"""One-off containers, placed the classic Swarm way: a Docker create body in, a node out.

``swarmctl container run`` sends the manager a Docker Engine create body. As classic Swarm did, placement
expressions ride in its environment (``-e constraint:zone==eu``, ``-e affinity:container==db``); they are
taken out before the body reaches the node's engine. The scheduler then sees each candidate node as it
is: its cluster tasks (reservations), plus the containers and images its engine reports, so affinities to
containers and images, published host ports and ``--volumes-from``/``--link``/``--network container:``
dependencies are all judged against what really runs there. Pure: manager/api/engine.py does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from api import Node, Task
from manager.errors import InvalidSpec
from scheduler import (
    HostPort,
    NodeSnapshot,
    NoSuitableNode,
    Resources,
    RunningTask,
    Scheduler,
    TaskRequest,
    TaskSpec,
)
from scheduler.from_api import check_expressions, node_snapshot, split_constraints

_PLACEMENT_PREFIXES = ("constraint:", "affinity:")
#: The service id one-off containers are scheduled under (they belong to no service).
ONE_OFF = "one-off"


@dataclass(frozen=True)
class NodeEngine:
    """What one node's engine reported: its containers and images, as ``/containers/json?all=1`` and
    ``/images/json`` list them."""

    node: Node
    containers: Sequence[Mapping[str, Any]] = ()
    images: Sequence[Mapping[str, Any]] = ()


def split_placement(env: Iterable[Any]) -> tuple[list[str], list[str]]:
    """(the environment the container gets, the placement expressions taken out of it)."""
    kept: list[str] = []
    placement: list[str] = []
    for item in env:
        text = str(item)
        (placement if text.lower().startswith(_PLACEMENT_PREFIXES) else kept).append(text)
    return kept, placement


def container_name(summary: Mapping[str, Any]) -> str:
    """The name of a listed container, without Docker's leading slash."""
    names = summary.get("Names") or [""]
    return str(names[0]).lstrip("/")


def _host_ports(summary: Mapping[str, Any]) -> tuple[HostPort, ...]:
    return tuple(
        HostPort(int(p["PublicPort"]), str(p.get("Type", "tcp")))
        for p in summary.get("Ports") or ()
        if isinstance(p, dict) and p.get("PublicPort")
    )


def _image_names(images: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Every way an affinity may name a present image: tags, tags without ``:latest``, ids."""
    names: set[str] = set()
    for image in images:
        image_id = str(image.get("Id", ""))
        if image_id:
            names |= {image_id, image_id.removeprefix("sha256:")[:12]}
        for tag in image.get("RepoTags") or ():
            names.add(str(tag))
            names.add(str(tag).removesuffix(":latest"))
    return frozenset(names)


def engine_snapshot(engine: NodeEngine, tasks: Iterable[Task] = ()) -> NodeSnapshot:
    """The node as the scheduler sees it: its tasks' reservations, and its engine's containers (running
    ones hold their host ports and count for affinities, stopped ones only for names) and images."""
    base = node_snapshot(engine.node, tasks)
    containers = tuple(
        RunningTask(
            id=str(c.get("Id", "")),
            image=str(c.get("Image", "")),
            container_name=container_name(c),
            host_ports=_host_ports(c) if c.get("State") == "running" else (),
            labels={str(k): str(v) for k, v in (c.get("Labels") or {}).items()},
        )
        for c in engine.containers
    )
    known = {t.id for t in base.tasks}
    extra = tuple(c for c in containers if c.id not in known)
    return replace(base, tasks=base.tasks + extra, images=base.images | _image_names(engine.images))


def _dict(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidSpec(key, "must be an object")
    return value


def create_spec(body: Mapping[str, Any], placement: Sequence[str]) -> TaskSpec:
    """What placement depends on in a create body. Raises InvalidSpec on a bad expression or field."""
    image = body.get("Image")
    if not isinstance(image, str) or not image:
        raise InvalidSpec("Image", "an image is required")
    check_expressions(placement)
    constraints, affinities = split_constraints(placement)
    host = _dict(body, "HostConfig")
    ports: list[HostPort] = []
    for key, bindings in _dict(host, "PortBindings").items():
        proto = str(key).partition("/")[2] or "tcp"
        for binding in bindings or ():
            raw = str((binding or {}).get("HostPort") or "")
            if raw.isdigit() and int(raw):
                ports.append(HostPort(int(raw), proto))
    network = str(host.get("NetworkMode") or "")
    return TaskSpec(
        image=image,
        constraints=constraints,
        affinities=affinities,
        reservations=Resources(int(host.get("NanoCpus") or 0), int(host.get("Memory") or 0)),
        host_ports=tuple(ports),
        volumes_from=tuple(str(v).split(":")[0] for v in host.get("VolumesFrom") or ()),
        links=tuple(str(v).split(":")[0].lstrip("/") for v in host.get("Links") or ()),
        network_mode=network if network.startswith("container:") else "",
        labels=tuple(sorted((str(k), str(v)) for k, v in _dict(body, "Labels").items())),
    )


def place_container(
    engines: Sequence[NodeEngine],
    tasks_on: Mapping[str, Sequence[Task]],
    spec: TaskSpec,
    name: str = "",
    node_id: str = "",
) -> str | NoSuitableNode:
    """The node a one-off container goes to (``node_id``: only confirm that one), or why none fits."""
    snapshots = [engine_snapshot(e, tasks_on.get(e.node.meta.id, ())) for e in engines]
    request = TaskRequest(
        id=name or "container", service_id=ONE_OFF, spec=spec, container_name=name, node_id=node_id
    )
    result = Scheduler(snapshots).schedule([request])
    if request.id in result.assignments:
        return result.assignments[request.id]
    return result.unassigned.get(request.id, NoSuitableNode(ONE_OFF))
