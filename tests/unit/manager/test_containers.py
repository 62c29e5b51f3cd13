"""Placing one-off containers (manager/containers.py): placement expressions taken out of a create body's
environment, what of the body placement depends on, and the scheduler's choice among nodes as their
engines report them (containers, published ports, images) plus their cluster tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from api.objects import (
    ContainerSpec,
    Meta,
    Node,
    NodeDescription,
    NodeStatus,
    ResourceRequirements,
    Task,
)
from api.objects import NodeState as ApiState
from api.objects import Resources as ApiResources
from api.objects import TaskSpec as ApiTaskSpec
from manager.containers import (
    ONE_OFF,
    NodeEngine,
    container_name,
    create_spec,
    engine_snapshot,
    place_container,
    split_placement,
)
from manager.errors import InvalidSpec
from scheduler import HostPort, InvalidExpression, NoSuitableNode, Resources, TaskSpec
from scheduler.reasons import (
    REASON_AFFINITY,
    REASON_CONSTRAINT,
    REASON_DEPENDENCY,
    REASON_HOST_PORT,
    REASON_INSUFFICIENT_MEMORY,
    REASON_NODE_UNKNOWN,
)

GIB = 1 << 30
CORE = 1_000_000_000


def node(node_id: str, *, mem: int = 4) -> Node:
    return Node(
        meta=Meta(id=node_id),
        status=NodeStatus(
            state=ApiState.READY,
            description=NodeDescription(
                hostname=f"host-{node_id}", resources=ApiResources(4 * CORE, mem * GIB)
            ),
        ),
    )


def container(
    name: str,
    *,
    cid: str = "",
    image: str = "busybox",
    state: str = "running",
    ports: Sequence[Mapping[str, Any]] = (),
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One entry of ``/containers/json?all=1`` as the agent's engine lists it."""
    return {
        "Id": cid or f"id-{name}",
        "Names": [f"/{name}"],
        "Image": image,
        "State": state,
        "Ports": list(ports),
        "Labels": dict(labels or {}),
    }


BUSYBOX = {"Id": "sha256:" + "ab" * 32, "RepoTags": ["busybox:latest"]}
REDIS = {"Id": "sha256:" + "cd" * 32, "RepoTags": ["redis:7"]}


def three_nodes(**engines: dict[str, Any]) -> list[NodeEngine]:
    """n1, n2, n3 with the containers and images given as ``n2={"containers": [...], "images": [...]}``."""
    return [
        NodeEngine(node(n), engines.get(n, {}).get("containers", ()), engines.get(n, {}).get("images", ()))
        for n in ("n1", "n2", "n3")
    ]


def place(
    engines: Sequence[NodeEngine],
    env: Sequence[str] = (),
    *,
    name: str = "",
    node_id: str = "",
    tasks_on: Mapping[str, Sequence[Task]] | None = None,
    **body: Any,
) -> str | NoSuitableNode:
    """What ``POST /containers/create`` decides for a body with ``env`` (and ``body``'s other fields)."""
    _, placement = split_placement(env)
    spec = create_spec({"Image": "busybox", **body}, placement)
    return place_container(engines, tasks_on or {}, spec, name, node_id)


def reasons(result: str | NoSuitableNode) -> dict[str, str]:
    """The rejections of a refusal: reason constant → detail."""
    assert isinstance(result, NoSuitableNode), f"placed on {result}"
    assert result.service_id == ONE_OFF
    return {r.reason: r.detail for r in result.rejections}


# --- the create body ----------------------------------------------------------------------------------------
def test_placement_expressions_leave_the_environment_in_order() -> None:
    env = ["A=1", "constraint:node==n1", "B=constraint:x", "Affinity:image==redis", "affinity:container!=db"]
    kept, placement = split_placement(env)
    assert kept == ["A=1", "B=constraint:x"]
    assert placement == ["constraint:node==n1", "Affinity:image==redis", "affinity:container!=db"]
    assert split_placement(()) == ([], [])
    assert split_placement([7]) == (["7"], [])


def test_a_listed_containers_name_loses_dockers_slash() -> None:
    assert container_name({"Names": ["/web"]}) == "web"
    assert container_name({"Names": []}) == ""
    assert container_name({}) == ""


def test_the_spec_takes_what_placement_depends_on() -> None:
    body = {
        "Image": "redis:7",
        "Labels": {"tier": "db", "app": "shop"},
        "HostConfig": {
            "PortBindings": {
                "80/tcp": [{"HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": "8081"}],
                "53/udp": [{"HostPort": "5353"}],
                "443": [{"HostPort": "8443"}],
                "9000/tcp": [{"HostPort": ""}, {}, None],  # an ephemeral port holds nothing in advance
                "9001/tcp": [{"HostPort": "0"}],
                "9002/tcp": None,
            },
            "VolumesFrom": ["data:ro", "logs"],
            "Links": ["/db:database", "cache"],
            "NetworkMode": "container:sidecar",
            "NanoCpus": CORE // 2,
            "Memory": GIB,
        },
    }
    spec = create_spec(body, ["constraint:zone==eu", "affinity:container!=web*", "node.role==worker"])
    assert spec == TaskSpec(
        image="redis:7",
        constraints=("constraint:zone==eu", "node.role==worker"),
        affinities=("affinity:container!=web*",),
        reservations=Resources(CORE // 2, GIB),
        host_ports=(HostPort(8080), HostPort(8081), HostPort(5353, "udp"), HostPort(8443)),
        volumes_from=("data", "logs"),
        links=("db", "cache"),
        network_mode="container:sidecar",
        labels=(("app", "shop"), ("tier", "db")),
    )


@pytest.mark.parametrize("mode", ["bridge", "host", "none", "", "mynet"])
def test_only_a_container_network_mode_is_a_dependency(mode: str) -> None:
    assert create_spec({"Image": "busybox", "HostConfig": {"NetworkMode": mode}}, []).network_mode == ""


def test_a_bare_body_asks_for_nothing_but_its_image() -> None:
    assert create_spec({"Image": "busybox", "HostConfig": None, "Labels": None}, []) == TaskSpec(
        image="busybox"
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "Image"),
        ({"Image": ""}, "Image"),
        ({"Image": 5}, "Image"),
        ({"Image": "busybox", "HostConfig": []}, "HostConfig"),
        ({"Image": "busybox", "HostConfig": {"PortBindings": "80:80"}}, "PortBindings"),
        ({"Image": "busybox", "Labels": ["a=b"]}, "Labels"),
    ],
)
def test_a_bad_body_names_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        create_spec(body, [])
    assert err.value.field == field


@pytest.mark.parametrize(
    "expression",
    [
        "constraint:node=n1",
        "constraint:==n1",
        "affinity:container",
        "affinity:image==/[/",
        "node.colour==red",
    ],
)
def test_a_bad_expression_is_refused_naming_it(expression: str) -> None:
    with pytest.raises(InvalidExpression) as err:
        create_spec({"Image": "busybox"}, [expression])
    assert err.value.expression == expression


# --- what the scheduler sees of a node ----------------------------------------------------------------------
def test_the_snapshot_adds_the_engines_containers_and_images_to_the_nodes_tasks() -> None:
    task = Task(
        meta=Meta(id="t1"),
        service_id="svc",
        slot=1,
        node_id="n1",
        spec=ApiTaskSpec(
            container=ContainerSpec(image="nginx:1.25"),
            resources=ResourceRequirements(reservations=ApiResources(CORE, GIB)),
        ),
    )
    engine = NodeEngine(
        node("n1"),
        [
            container(
                "web", ports=[{"PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}], labels={"a": "b"}
            ),
            container("old", state="exited", ports=[{"PrivatePort": 53, "PublicPort": 5353, "Type": "udp"}]),
            container("quiet", ports=[{"PrivatePort": 90, "Type": "tcp"}]),  # exposed, not published
            # the task itself, as the engine lists it
            {"Id": "t1", "Names": ["/svc.1.t1"], "Image": "nginx:1.25", "State": "running"},
        ],
        [BUSYBOX, {"Id": "sha256:" + "ef" * 32, "RepoTags": None}],
    )
    snap = engine_snapshot(engine, [task])
    assert snap.id == "n1" and snap.hostname == "host-n1"
    assert snap.reserved == Resources(CORE, GIB)
    by_name = {t.container_name: t for t in snap.tasks}
    assert list(by_name) == ["svc.1.t1", "web", "old", "quiet"]  # the task once, then the other containers
    assert by_name["web"].host_ports == (HostPort(8080),) and by_name["web"].labels == {"a": "b"}
    assert by_name["old"].host_ports == ()  # a stopped container holds no port
    assert by_name["quiet"].host_ports == ()
    assert {"busybox", "busybox:latest", BUSYBOX["Id"], "ab" * 6, "ef" * 6} <= snap.images


# --- placement ----------------------------------------------------------------------------------------------
def test_a_node_constraint_picks_the_node_by_name_or_id() -> None:
    engines = three_nodes()
    assert place(engines, ["constraint:node==host-n2"]) == "n2"
    assert place(engines, ["constraint:node==n3"]) == "n3"
    assert place(engines, ["constraint:node!=host-n1", "constraint:node!=n2"]) == "n3"
    refused = place(engines, ["constraint:node==nope"])
    assert reasons(refused) == {REASON_CONSTRAINT: "constraint:node==nope"}
    assert isinstance(refused, NoSuitableNode)
    assert "constraint:node==nope not met on 3 nodes" in refused.message


def test_container_affinity_goes_to_the_node_running_it_and_anti_affinity_avoids_it() -> None:
    engines = three_nodes(n2={"containers": [container("db")]})
    assert place(engines, ["affinity:container==db"]) == "n2"
    for _ in range(5):
        assert place(engines, ["affinity:container!=db"]) in ("n1", "n3")
    assert place(engines, ["affinity:container!=db", "constraint:node!=n1"]) == "n3"
    missing = place(engines, ["affinity:container==cache"])
    assert reasons(missing) == {REASON_AFFINITY: "affinity:container==cache"}
    alone = three_nodes(n1={"containers": [container("db")]}, n2={"containers": [container("db")]})
    assert place(alone, ["affinity:container!=db"]) == "n3"


def test_a_stopped_container_still_counts_by_name() -> None:
    engines = three_nodes(n3={"containers": [container("job", state="exited")]})
    assert place(engines, ["affinity:container==job"]) == "n3"


def test_image_affinity_requires_or_prefers_nodes_holding_the_image() -> None:
    engines = three_nodes(n2={"images": [BUSYBOX]}, n3={"images": [REDIS]})
    assert place(engines, ["affinity:image==busybox"]) == "n2"
    assert place(engines, ["affinity:image==busybox:latest"]) == "n2"
    assert place(engines, ["affinity:image==redis"]) == "n3"
    assert place(engines, ["affinity:image==redis:7"]) == "n3"
    assert place(engines, ["affinity:image==~busybox"]) == "n2"  # soft: preferred while some node has it
    assert place(engines, ["affinity:image!=busybox", "affinity:image!=redis"]) == "n1"
    absent = ["affinity:image==alpine"]
    assert reasons(place(engines, absent)) == {REASON_AFFINITY: "affinity:image==alpine"}
    assert place(engines, ["affinity:image==~alpine"]) in ("n1", "n2", "n3")  # soft: dropped


def test_an_image_a_container_runs_counts_as_present() -> None:
    engines = three_nodes(n1={"containers": [container("c", image="redis:7")]})
    assert place(engines, ["affinity:image==redis"]) == "n1"


def test_a_published_host_port_excludes_the_node() -> None:
    published = [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}]
    engines = three_nodes(
        n1={"containers": [container("web1", ports=published)]},
        n2={"containers": [container("web2", ports=published)]},
        n3={"containers": [container("web3", ports=published, state="exited")]},
    )
    wants_8080: dict[str, Any] = {"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}}
    for _ in range(5):
        assert place(engines, **wants_8080) == "n3"  # a stopped container holds no port
    busy = [e for e in engines if e.node.meta.id != "n3"]
    assert reasons(place(busy, **wants_8080)) == {REASON_HOST_PORT: "8080/tcp"}
    udp = {"PortBindings": {"80/udp": [{"HostPort": "8080"}]}}
    assert place(busy, HostConfig=udp) in ("n1", "n2")  # the same port of another protocol is free


def test_volumes_from_links_and_container_network_go_to_their_containers_node() -> None:
    engines = three_nodes(n1={"containers": [container("data")]}, n3={"containers": [container("db")]})
    assert place(engines, HostConfig={"VolumesFrom": ["data:ro"]}) == "n1"
    assert place(engines, HostConfig={"Links": ["/db:database"]}) == "n3"
    assert place(engines, HostConfig={"NetworkMode": "container:db"}) == "n3"
    split = place(engines, HostConfig={"VolumesFrom": ["data"], "Links": ["db"]})
    assert reasons(split) == {REASON_DEPENDENCY: "data"}  # wherever db runs, data does not
    assert reasons(place(engines, HostConfig={"VolumesFrom": ["gone"]})) == {REASON_DEPENDENCY: "gone"}


def test_reservations_count_the_nodes_cluster_tasks() -> None:
    engines = [NodeEngine(node("n1", mem=4)), NodeEngine(node("n2", mem=4))]
    big = Task(
        meta=Meta(id="t-big"),
        service_id="svc",
        slot=1,
        node_id="n1",
        spec=ApiTaskSpec(resources=ResourceRequirements(reservations=ApiResources(0, 3 * GIB))),
    )
    wants_2g: dict[str, Any] = {"HostConfig": {"Memory": 2 * GIB}}
    assert place(engines, tasks_on={"n1": [big]}, **wants_2g) == "n2"
    refused = place(engines, tasks_on={"n1": [big]}, HostConfig={"Memory": 5 * GIB})
    assert reasons(refused) == {REASON_INSUFFICIENT_MEMORY: ""}


def test_a_glob_anti_affinity_avoids_every_match() -> None:
    engines = three_nodes(n1={"containers": [container("web-1")]}, n2={"containers": [container("web-2")]})
    assert place(engines, ["affinity:container!=web-*"], name="web-3") == "n3"
    assert place(engines, ["affinity:container==/web-[2-9]/"]) == "n2"


def test_a_pinned_node_is_confirmed_or_refused_with_the_reason() -> None:
    engines = three_nodes(n2={"containers": [container("db")]})
    assert place(engines, node_id="n1") == "n1"
    assert place(engines, ["constraint:node==host-n3"], node_id="n3") == "n3"
    refused = place(engines, ["constraint:node==host-n2"], node_id="n1")
    assert reasons(refused) == {REASON_CONSTRAINT: "constraint:node==host-n2"}
    assert reasons(place(engines, ["affinity:container==db"], node_id="n3")) == {
        REASON_AFFINITY: "affinity:container==db"
    }
    unknown = place(engines, node_id="n9")
    assert reasons(unknown) == {REASON_NODE_UNKNOWN: "n9"}


def test_no_node_at_all_is_no_suitable_node() -> None:
    refused = place([])
    assert isinstance(refused, NoSuitableNode)
    assert refused.message.startswith("no suitable node")
