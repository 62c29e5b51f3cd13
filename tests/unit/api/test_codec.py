"""Codec round trips (hypothesis) and typed errors that name the offending field."""

from __future__ import annotations

import dataclasses
import json
import typing
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import (
    OBJECT_KINDS,
    CodecError,
    Service,
    Task,
    TaskState,
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
    from_plain,
    to_plain,
)
from api.objects import ContainerSpec, Mount, MountType, ServiceSpec, TaskSpec

# The model holds UTC times with microsecond precision and finite floats; generate exactly those.
st.register_type_strategy(
    datetime,
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
)
st.register_type_strategy(float, st.floats(allow_nan=False, allow_infinity=False))
# msgpack integers are 64-bit; the model's counters and sizes all fit.
st.register_type_strategy(int, st.integers(min_value=-(2**63), max_value=2**64 - 1))

KINDS = sorted(OBJECT_KINDS.items())


def full(tp: Any) -> st.SearchStrategy[Any]:
    """Objects with EVERY field drawn (st.builds alone leaves fields with defaults at their defaults)."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return st.builds(
            tp, **{f.name: st.deferred(lambda h=hints[f.name]: full(h)) for f in dataclasses.fields(tp)}
        )
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        return st.lists(full(args[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=8), full(args[1]), max_size=3)
    if origin in (typing.Union, __import__("types").UnionType):
        return st.none() | full(next(a for a in args if a is not type(None)))
    return st.from_type(tp)


def test_generated_objects_are_not_just_defaults() -> None:
    seen = set()

    @settings(max_examples=30, deadline=None)
    @given(full(Service))
    def draw(svc: Service) -> None:
        seen.add(svc.spec.replicas)

    draw()
    assert len(seen) > 5


@pytest.mark.parametrize(("kind", "tp"), KINDS, ids=[k for k, _ in KINDS])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_msgpack_round_trip(kind: str, tp: type, data: st.DataObject) -> None:
    obj = data.draw(full(tp))
    assert decode_msgpack(tp, encode_msgpack(obj)) == obj


@pytest.mark.parametrize(("kind", "tp"), KINDS, ids=[k for k, _ in KINDS])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_json_round_trip(kind: str, tp: type, data: st.DataObject) -> None:
    obj = data.draw(full(tp))
    text = encode_json(obj)
    json.loads(text)  # plain JSON, nothing Python-specific
    assert decode_json(tp, text) == obj


def test_missing_fields_take_defaults() -> None:
    svc = decode_json(Service, '{"spec": {"annotations": {"name": "web"}, "replicas": 3}}')
    assert svc.spec.annotations.name == "web"
    assert svc.spec.replicas == 3
    assert svc.spec.task == TaskSpec()


@pytest.mark.parametrize(
    ("doc", "field", "words"),
    [
        ({"spec": {"replicas": "3"}}, "spec.replicas", "expected an integer, got str"),
        ({"spec": {"replicas": True}}, "spec.replicas", "expected an integer, got bool"),
        ({"spec": {"replcas": 3}}, "spec.replcas", "unknown field for ServiceSpec"),
        ({"spec": {"mode": "everywhere"}}, "spec.mode", "'everywhere' is not one of 'replicated', 'global'"),
        (
            {"spec": {"task": {"container": {"mounts": [{"type": "volume"}, {"type": "nfs"}]}}}},
            "spec.task.container.mounts[1].type",
            "is not one of",
        ),
        ({"spec": {"task": {"container": {"env": "A=1"}}}}, "spec.task.container.env", "expected a list"),
        ({"spec": {"annotations": {"labels": {"a": 1}}}}, "spec.annotations.labels.a", "expected a string"),
        ({"meta": {"created_at": "yesterday"}}, "meta.created_at", "not an RFC 3339 time"),
        ({"meta": {"created_at": "2026-01-01T00:00:00"}}, "meta.created_at", "without a timezone"),
        ({"spec": []}, "spec", "expected an object, got list"),
    ],
)
def test_invalid_input_names_the_field(doc: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(CodecError) as err:
        from_plain(Service, doc)
    assert err.value.field == field
    assert words in str(err.value)


def test_bad_json_and_msgpack_are_codec_errors() -> None:
    with pytest.raises(CodecError, match="malformed JSON"):
        decode_json(Service, "{not json")
    with pytest.raises(CodecError, match="not a valid msgpack"):
        decode_msgpack(Task, b"\xc1")
    with pytest.raises(CodecError, match="schema version 99"):
        decode_msgpack(Task, msgpack.packb([99, {}]))
    with pytest.raises(CodecError, match=r"status\.state"):
        decode_msgpack(Task, msgpack.packb([1, {"status": {"state": "sleeping"}}]))


def test_integers_beyond_64_bits_are_refused_by_msgpack() -> None:
    with pytest.raises(CodecError, match="cannot encode"):
        encode_msgpack(Task(slot=2**64))


def test_wire_spelling() -> None:
    t = Task(
        desired_state=TaskState.RUNNING,
        spec=TaskSpec(container=ContainerSpec(image="busybox", mounts=(Mount(MountType.BIND, "/a", "/b"),))),
    )
    plain = to_plain(t)
    assert plain["desired_state"] == "running"
    assert plain["spec"]["container"]["mounts"] == [
        {"type": "bind", "source": "/a", "target": "/b", "read_only": False}
    ]
    assert plain["meta"]["created_at"] == "1970-01-01T00:00:00.000000Z"
    assert to_plain(t, binary=True)["meta"]["created_at"] == 0
    assert from_plain(ServiceSpec, {"annotations": {"name": "x"}}).annotations.name == "x"
