"""Constraint, affinity and preference expressions in both Swarm syntaxes: parsing, matching, errors."""

from __future__ import annotations

import pytest

from api.errors import ShoalError
from scheduler import InvalidExpression, SchedulerError, parse_affinity, parse_constraint, parse_preference
from scheduler.types import NodeRole, NodeSnapshot, Platform

# A fixed set of nodes; every matching table below lists which of them satisfy an expression, in order.
NODES = (
    NodeSnapshot(
        "id-aaa",
        hostname="node1",
        role=NodeRole.MANAGER,
        platform=Platform("linux", "amd64"),
        labels={"zone": "us-east", "disk": "ssd", "Tier": "Gold"},
        engine_labels={"zone": "engine-zone", "kernel": "5"},
        kernel_version="6.1.0-18-amd64",
        operating_system="Debian GNU/Linux 12",
        storage_driver="overlay2",
    ),
    NodeSnapshot(
        "id-bbb",
        hostname="node2",
        platform=Platform("linux", "arm64"),
        labels={"zone": "us-west", "disk": "hdd"},
        kernel_version="5.10.0",
        operating_system="Ubuntu 22.04",
        storage_driver="btrfs",
    ),
    NodeSnapshot(
        "id-ccc",
        hostname="NODE12",
        platform=Platform("windows", "amd64"),
        labels={"zone": "eu-central"},
        engine_labels={"gpu": "yes", "disk": "nvme"},
        storage_driver="overlay2",
    ),
    NodeSnapshot("id-ddd", hostname="db-1"),
)


def passing(expression: str) -> list[str]:
    c = parse_constraint(expression)
    return [n.hostname for n in NODES if c.check(n)]


SWARMKIT_TABLE = [
    ("node.hostname==node1", ["node1"]),
    ("node.hostname==NODE1", ["node1"]),  # values compare ignoring case
    ("node.hostname!=node1", ["node2", "NODE12", "db-1"]),
    ("node.id==id-bbb", ["node2"]),
    ("node.role==manager", ["node1"]),
    ("node.role!=manager", ["node2", "NODE12", "db-1"]),
    ("node.platform.os==windows", ["NODE12"]),
    ("node.platform.arch==arm64", ["node2"]),
    ("node.labels.zone==us-east", ["node1"]),
    ("node.labels.zone!=us-east", ["node2", "NODE12", "db-1"]),  # a missing label passes !=
    ("node.labels.disk==ssd", ["node1"]),
    ("node.labels.Tier==gold", ["node1"]),
    ("node.labels.tier==gold", []),  # label names are case-sensitive
    ("engine.labels.gpu==yes", ["NODE12"]),
    ("engine.labels.zone==engine-zone", ["node1"]),
    ("node.labels.zone==us*", []),  # no globs in SwarmKit syntax
    ("  node.labels.zone  ==  us-west  ", ["node2"]),  # spaces around key and value are ignored
    ("NODE.LABELS.zone==us-west", ["node2"]),  # the key prefix ignores case
]


@pytest.mark.parametrize(("expression", "expected"), SWARMKIT_TABLE)
def test_swarmkit_syntax(expression: str, expected: list[str]) -> None:
    c = parse_constraint(expression)
    assert not c.soft
    assert passing(expression) == expected


CLASSIC_TABLE = [
    ("constraint:node==node1", ["node1"]),
    ("constraint:node==id-ccc", ["NODE12"]),  # node matches the id too
    ("constraint:node!=node1", ["node2", "NODE12", "db-1"]),
    ("constraint:node==node*", ["node1", "node2"]),  # globs are case-sensitive
    ("constraint:node==node?", ["node1", "node2"]),
    ("constraint:node==*1*", ["node1", "NODE12", "db-1"]),
    ("constraint:node==/node[12]/", ["node1", "node2"]),  # a regex searches anywhere
    ("constraint:node==/^node[12]$/", ["node1", "node2"]),
    ("constraint:node==/(?i)node1/", ["node1", "NODE12"]),
    ("constraint:node!=/(?i)node/", ["db-1"]),
    ("constraint:zone==us-*", ["node1", "node2"]),
    ("constraint:zone==us-[ew]*", ["node1", "node2"]),
    ("constraint:zone==engine-zone", []),  # a node label shadows the engine label of the same name
    ("constraint:gpu==yes", ["NODE12"]),  # engine labels are labels too
    ("constraint:disk==nvme", ["NODE12"]),
    ("constraint:zone!=us-east", ["node2", "NODE12", "db-1"]),
    ("constraint:storagedriver==overlay2", ["node1", "NODE12"]),
    ("constraint:storagedriver!=overlay*", ["node2", "db-1"]),
    ("constraint:kernelversion==6.1*", ["node1"]),
    ("constraint:kernelversion==/^5\\./", ["node2"]),
    ("constraint:operatingsystem==*Debian*", ["node1"]),
    ("constraint:operatingsystem==/(?i)ubuntu/", ["node2"]),
    ("Constraint:Node==node2", ["node2"]),  # prefix and reserved keys ignore case
]


@pytest.mark.parametrize(("expression", "expected"), CLASSIC_TABLE)
def test_classic_syntax(expression: str, expected: list[str]) -> None:
    assert passing(expression) == expected


@pytest.mark.parametrize(
    ("expression", "negate"),
    [("constraint:zone==~us-east", False), ("constraint:zone!=~us-east", True)],
)
def test_classic_soft_constraints(expression: str, negate: bool) -> None:
    c = parse_constraint(expression)
    assert c.soft and c.negate is negate
    assert passing(expression) == (["node2", "NODE12", "db-1"] if negate else ["node1"])


MALFORMED_CONSTRAINTS = [
    ("node.labels.zone=eu", "expected one of the operators"),
    ("node.labels.zone", "expected one of the operators"),
    ("==eu", "missing key"),
    ("node.labels.zone==", "missing value"),
    ("node.labels.==eu", "missing label name"),
    ("node.color==red", "unknown key"),
    ("zone==eu", "unknown key"),
    ("node.labels.zone==e~u", "invalid value"),
    ("node.labels.zo ne==eu", "invalid key"),
    ("constraint:zone==", "missing value"),
    ("constraint:zone==~", "missing value"),
    ("constraint:zone", "expected one of the operators"),
    ("constraint:==eu", "missing key"),
    ("constraint:zo ne==eu", "invalid key"),
    ("constraint:node==/node[12/", "bad regular expression"),
    ("constraint:node==/no(?i)de/", "bad regular expression"),
]


@pytest.mark.parametrize(("expression", "fragment"), MALFORMED_CONSTRAINTS)
def test_malformed_constraints_raise_a_typed_error_naming_the_expression(
    expression: str, fragment: str
) -> None:
    with pytest.raises(InvalidExpression) as info:
        parse_constraint(expression)
    err = info.value
    assert isinstance(err, SchedulerError) and isinstance(err, ShoalError)
    assert err.expression == expression
    assert repr(expression) in str(err)
    assert fragment in err.reason


AFFINITY_TABLE = [
    ("affinity:container==web.1", "container", "", False, False),
    ("container==web*", "container", "", False, False),
    ("affinity:image!=redis", "image", "", True, False),
    ("affinity:image==~redis:7", "image", "", False, True),
    ("affinity:com.example.tier!=~front", "label", "com.example.tier", True, True),
    ("affinity:Container==db", "container", "", False, False),
]


@pytest.mark.parametrize(("expression", "kind", "label", "negate", "soft"), AFFINITY_TABLE)
def test_affinity_parsing(expression: str, kind: str, label: str, negate: bool, soft: bool) -> None:
    a = parse_affinity(expression)
    assert (a.kind, a.label, a.negate, a.soft) == (kind, label, negate, soft)
    assert a.expression == expression


@pytest.mark.parametrize(
    "expression", ["affinity:container", "affinity:container==", "affinity:image==/re(dis/", "affinity:==x"]
)
def test_malformed_affinities_raise(expression: str) -> None:
    with pytest.raises(InvalidExpression) as info:
        parse_affinity(expression)
    assert info.value.expression == expression


@pytest.mark.parametrize(
    ("expression", "attribute"),
    [
        ("spread=node.labels.zone", "label:zone"),
        ("spread=engine.labels.rack", "engine:rack"),
        (" spread = node.labels.dc ", "label:dc"),
    ],
)
def test_preference_parsing(expression: str, attribute: str) -> None:
    assert parse_preference(expression).attribute == attribute


@pytest.mark.parametrize(
    "expression", ["node.labels.zone", "spread=", "spread=node.hostname", "pack=node.labels.zone"]
)
def test_malformed_preferences_raise(expression: str) -> None:
    with pytest.raises(InvalidExpression) as info:
        parse_preference(expression)
    assert info.value.expression == expression
