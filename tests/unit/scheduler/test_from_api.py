"""Converting api objects into scheduler inputs, and scheduling them end to end."""

from __future__ import annotations

import pytest

from api.objects import (
    Annotations,
    ContainerSpec,
    Endpoint,
    Meta,
    Mount,
    MountType,
    Node,
    NodeAvailability,
    NodeDescription,
    NodeSpec,
    NodeStatus,
    Placement,
    PlacementPreference,
    PortConfig,
    PortProtocol,
    PublishMode,
    ResourceRequirements,
    Task,
    TaskStatus,
)
from api.objects import NodeRole as ApiRole
from api.objects import NodeState as ApiState
from api.objects import Platform as ApiPlatform
from api.objects import Resources as ApiResources
from api.objects import TaskSpec as ApiTaskSpec
from scheduler import (
    Availability,
    HostPort,
    InvalidExpression,
    NodeRole,
    NodeState,
    Platform,
    Resources,
    Scheduler,
)
from scheduler.from_api import (
    check_expressions,
    node_matches,
    node_snapshot,
    task_container_name,
    task_request,
)

GIB = 1 << 30
CORE = 1_000_000_000


def api_node(node_id: str, zone: str, *, mem: int = 4, arch: str = "amd64") -> Node:
    return Node(
        meta=Meta(id=node_id),
        spec=NodeSpec(annotations=Annotations(labels={"zone": zone}), role=ApiRole.MANAGER),
        status=NodeStatus(
            state=ApiState.READY,
            description=NodeDescription(
                hostname=f"host-{node_id}",
                platform=ApiPlatform("linux", arch),
                resources=ApiResources(4 * CORE, mem * GIB),
                engine_labels={"storage": "fast"},
                kernel_version="6.1.0",
                operating_system="Debian GNU/Linux 12",
                storage_driver="overlay2",
            ),
        ),
    )


HOST_80 = PortConfig(
    protocol=PortProtocol.TCP, target_port=80, published_port=8080, publish_mode=PublishMode.HOST
)
INGRESS_443 = PortConfig(target_port=443, published_port=443, publish_mode=PublishMode.INGRESS)


def api_task(
    task_id: str,
    *,
    constraints: tuple[str, ...] = (),
    node_id: str = "",
    mem: int = 0,
    ports: tuple[PortConfig, ...] = (),
    slot: int = 1,
) -> Task:
    spec = ApiTaskSpec(
        container=ContainerSpec(
            image="nginx:1.25",
            labels={"tier": "front"},
            mounts=(Mount(MountType.VOLUME, "data", "/data"), Mount(MountType.BIND, "/etc", "/host")),
        ),
        resources=ResourceRequirements(reservations=ApiResources(CORE // 2, mem * GIB)),
        placement=Placement(
            constraints=constraints,
            preferences=(PlacementPreference("node.labels.zone"),),
            max_replicas=2,
            platforms=(ApiPlatform("linux", "x86_64"),),
        ),
    )
    return Task(
        meta=Meta(id=task_id),
        service_id="svc-web",
        slot=slot,
        node_id=node_id,
        spec=spec,
        service_annotations=Annotations(name="web"),
        endpoint=Endpoint(ports=ports),
    )


def test_node_snapshot_carries_what_the_filters_read() -> None:
    running = api_task("t1", node_id="n1", mem=1, ports=(HOST_80, INGRESS_443))
    snap = node_snapshot(api_node("n1", "eu"), [running])
    assert (snap.id, snap.hostname, snap.role, snap.state) == (
        "n1",
        "host-n1",
        NodeRole.MANAGER,
        NodeState.READY,
    )
    assert snap.availability is Availability.ACTIVE
    assert snap.platform == Platform("linux", "amd64")
    assert dict(snap.labels) == {"zone": "eu"} and dict(snap.engine_labels) == {"storage": "fast"}
    assert (snap.kernel_version, snap.operating_system, snap.storage_driver) == (
        "6.1.0",
        "Debian GNU/Linux 12",
        "overlay2",
    )
    assert snap.resources == Resources(4 * CORE, 4 * GIB)
    assert snap.reserved == Resources(CORE // 2, GIB)
    (task,) = snap.tasks
    assert task.container_name == "web.1.t1"
    assert task.host_ports == (HostPort(8080, "tcp"),)  # ingress ports are not bound on the node
    assert task.volumes == ("data",)
    assert dict(task.labels) == {"tier": "front"}


def test_task_request_separates_affinities_and_keeps_the_preassigned_node() -> None:
    t = api_task("t2", constraints=("node.labels.zone==eu", "affinity:container!=web*"), node_id="n9", slot=0)
    req = task_request(t)
    assert (req.id, req.service_id, req.node_id) == ("t2", "svc-web", "n9")
    assert req.container_name == "web.n9.t2"
    assert req.spec.constraints == ("node.labels.zone==eu",)
    assert req.spec.affinities == ("affinity:container!=web*",)
    assert req.spec.preferences == ("spread=node.labels.zone",)
    assert req.spec.max_replicas == 2
    assert req.spec.platforms == (Platform("linux", "x86_64"),)
    assert req.spec.labels == (("tier", "front"),)
    assert task_container_name(t) == "web.n9.t2"


def test_api_objects_schedule_end_to_end() -> None:
    nodes = [api_node("n1", "eu", mem=2), api_node("n2", "eu"), api_node("n3", "us")]
    running = api_task("old", node_id="n2", mem=1, ports=(HOST_80,))
    sched = Scheduler([node_snapshot(n, [running] if n.meta.id == "n2" else []) for n in nodes])
    pending = [
        api_task(f"new{i}", constraints=("node.labels.zone==eu",), mem=1, ports=(HOST_80,)) for i in range(3)
    ]
    result = sched.schedule(task_request(t) for t in pending)
    assert result.assignments == {"new0": "n1"}
    assert result.unassigned["new1"].message == (
        "no suitable node (host port 8080/tcp in use on 2 nodes; "
        "constraint node.labels.zone==eu not met on 1 node)"
    )


def test_node_matches_applies_hard_constraints_and_platforms() -> None:
    node = api_node("n1", "eu", arch="arm64")
    drained = Node(meta=node.meta, spec=NodeSpec(availability=NodeAvailability.DRAIN), status=node.status)
    assert node_matches(node, ("node.labels.zone==eu", "constraint:storagedriver==overlay*"))
    assert not node_matches(node, ("node.labels.zone!=eu",))
    assert node_matches(node, ("constraint:zone==~us", "affinity:container==x"))  # soft and affinity ignored
    assert node_matches(node, (), (ApiPlatform("linux", "aarch64"),))
    assert not node_matches(node, (), (ApiPlatform("linux", "amd64"),))
    assert node_matches(drained, ())  # availability is the orchestrator's business
    with pytest.raises(InvalidExpression):
        node_matches(node, ("node.labels.zone=eu",))


def test_check_expressions_parses_constraints_and_affinities() -> None:
    check_expressions(("node.role==worker", "affinity:image==redis", "constraint:zone==~eu"))
    with pytest.raises(InvalidExpression) as info:
        check_expressions(("affinity:image",))
    assert info.value.expression == "affinity:image"


def test_unknown_enum_values_follow_the_model() -> None:
    down = api_node("n1", "eu")
    down = Node(meta=down.meta, spec=down.spec, status=NodeStatus(state=ApiState.DOWN))
    snap = node_snapshot(down)
    assert snap.state is NodeState.DOWN and snap.resources == Resources()


def test_ended_task_status_ports_still_count_when_the_caller_passes_it() -> None:
    bound = api_task("t3", node_id="n1")
    bound = Task(
        meta=bound.meta,
        service_id=bound.service_id,
        node_id="n1",
        spec=bound.spec,
        status=TaskStatus(ports=(HOST_80,)),
    )
    (task,) = node_snapshot(api_node("n1", "eu"), [bound]).tasks
    assert task.host_ports == (HostPort(8080),)
