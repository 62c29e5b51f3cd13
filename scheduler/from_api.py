"""Converting the cluster object model (``api``) into the scheduler's inputs.

The caller decides which tasks count on a node (see ``manager.scheduling``); everything passed to
:func:`node_snapshot` is taken to hold its reservations and ports there.

The object model keeps classic affinities where users write them, among the placement constraints
(``affinity:container!=web*``); they are separated here. Containers are named as Docker names swarm
tasks: ``<service>.<slot>.<task id>``, or ``<service>.<node id>.<task id>`` for a global service's task.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from api.objects import MountType, Node, PortConfig, PublishMode, Task
from api.objects import Platform as ApiPlatform
from api.objects import TaskSpec as ApiTaskSpec
from scheduler.expr import parse_affinity, parse_constraint
from scheduler.types import (
    Availability,
    HostPort,
    NodeRole,
    NodeSnapshot,
    NodeState,
    Platform,
    Resources,
    RunningTask,
    TaskRequest,
    TaskSpec,
)

_AFFINITY_PREFIX = "affinity:"


def _is_affinity(expression: str) -> bool:
    return expression.strip()[: len(_AFFINITY_PREFIX)].lower() == _AFFINITY_PREFIX


def split_constraints(expressions: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(constraints, affinities) from a service's placement constraints."""
    constraints: list[str] = []
    affinities: list[str] = []
    for e in expressions:
        (affinities if _is_affinity(e) else constraints).append(e)
    return tuple(constraints), tuple(affinities)


def check_expressions(expressions: Iterable[str]) -> None:
    """Parse every constraint and affinity; raises InvalidExpression naming the first bad one."""
    constraints, affinities = split_constraints(expressions)
    for c in constraints:
        parse_constraint(c)
    for a in affinities:
        parse_affinity(a)


def task_container_name(task: Task) -> str:
    """The container name of ``task``, as Docker names swarm tasks."""
    service = task.service_annotations.name or task.service_id
    middle = str(task.slot) if task.slot else task.node_id
    return f"{service}.{middle}.{task.meta.id}"


def _host_ports(ports: Iterable[PortConfig]) -> tuple[HostPort, ...]:
    found = {
        HostPort(p.published_port, p.protocol.value)
        for p in ports
        if p.publish_mode is PublishMode.HOST and p.published_port > 0
    }
    return tuple(sorted(found, key=lambda hp: (hp.port, hp.protocol)))


def _volumes(spec: ApiTaskSpec) -> tuple[str, ...]:
    return tuple(m.source for m in spec.container.mounts if m.type is MountType.VOLUME and m.source)


def _platform(p: ApiPlatform) -> Platform:
    return Platform(p.os, p.architecture)


def running_task(task: Task) -> RunningTask:
    """A task that holds a place on its node."""
    container = task.spec.container
    return RunningTask(
        id=task.meta.id,
        service_id=task.service_id,
        image=container.image,
        container_name=task_container_name(task),
        host_ports=_host_ports((*task.status.ports, *task.endpoint.ports)),
        volumes=_volumes(task.spec),
        labels=dict(container.labels),
    )


def node_snapshot(node: Node, tasks: Iterable[Task] = ()) -> NodeSnapshot:
    """``node`` with ``tasks`` (those holding resources on it) as the scheduler sees it."""
    held = list(tasks)
    description = node.status.description
    return NodeSnapshot(
        id=node.meta.id,
        hostname=description.hostname,
        role=NodeRole(node.spec.role.value),
        availability=Availability(node.spec.availability.value),
        state=NodeState(node.status.state.value),
        platform=_platform(description.platform),
        labels=dict(node.spec.annotations.labels),
        engine_labels=dict(description.engine_labels),
        kernel_version=description.kernel_version,
        operating_system=description.operating_system,
        storage_driver=description.storage_driver,
        resources=Resources(description.resources.nano_cpus, description.resources.memory_bytes),
        reserved=Resources(
            sum(t.spec.resources.reservations.nano_cpus for t in held),
            sum(t.spec.resources.reservations.memory_bytes for t in held),
        ),
        tasks=tuple(running_task(t) for t in held),
    )


def task_spec(spec: ApiTaskSpec, ports: Sequence[PortConfig] = ()) -> TaskSpec:
    """The placement-relevant part of an api task spec; ``ports`` are the service's published ports."""
    placement = spec.placement
    constraints, affinities = split_constraints(placement.constraints)
    reservations = spec.resources.reservations
    return TaskSpec(
        image=spec.container.image,
        constraints=constraints,
        affinities=affinities,
        preferences=tuple(f"spread={p.spread}" for p in placement.preferences),
        reservations=Resources(reservations.nano_cpus, reservations.memory_bytes),
        host_ports=_host_ports(ports),
        volumes=_volumes(spec),
        max_replicas=placement.max_replicas,
        platforms=tuple(_platform(p) for p in placement.platforms),
        labels=tuple(sorted(spec.container.labels.items())),
    )


def task_request(task: Task) -> TaskRequest:
    """A task to place; a task that already names its node (global services) is only confirmed there."""
    return TaskRequest(
        id=task.meta.id,
        service_id=task.service_id,
        spec=task_spec(task.spec, task.endpoint.ports),
        container_name=task_container_name(task),
        node_id=task.node_id,
    )


def node_matches(node: Node, constraints: Iterable[str], platforms: Iterable[ApiPlatform] = ()) -> bool:
    """Whether ``node`` meets the hard constraints (either syntax; affinities and soft constraints are
    ignored) and supports one of ``platforms`` (none: any). Raises InvalidExpression on a bad one."""
    snapshot = node_snapshot(node)
    hard, _ = split_constraints(constraints)
    for text in hard:
        c = parse_constraint(text)
        if not c.soft and not c.check(snapshot):
            return False
    wanted = [_platform(p) for p in platforms]
    return not wanted or any(p.matches(snapshot.platform) for p in wanted)
