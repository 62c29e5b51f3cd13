"""Agent session frames: every frame round-trips through msgpack; bad input is a CodecError naming why."""

from __future__ import annotations

import msgpack
import pytest

from api import Network, Secret, Task, TaskState
from api.errors import CodecError
from api.objects import Meta, NodeDescription, Resources, SecretSpec, TaskStatus
from api.session import (
    Assignments,
    Error,
    ErrorCode,
    Frame,
    Heartbeat,
    Register,
    Registered,
    StatusReport,
    StatusUpdate,
    decode_frame,
    encode_frame,
)

FRAMES: list[Frame] = [
    Register(
        hostname="h1",
        addr="10.0.0.1",
        description=NodeDescription(hostname="h1", resources=Resources(nano_cpus=2_000_000_000)),
    ),
    Registered(node_id="n1", heartbeat_period_ns=5_000_000_000, managers=("m1:2377", "m2:2377")),
    Heartbeat(),
    Assignments(
        full=True,
        tasks=(Task(meta=Meta(id="t1", version=7), node_id="n1"),),
        removed=("t0",),
        networks=(Network(meta=Meta(id="net1")),),
        secrets=(Secret(meta=Meta(id="s1"), spec=SecretSpec(data=b"\x00\xffsecret")),),
    ),
    StatusReport(updates=(StatusUpdate("t1", TaskStatus(state=TaskState.RUNNING, exit_code=None)),)),
    Error(message="an agent session needs the node's certificate", code=ErrorCode.UNAUTHENTICATED),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_frames_round_trip(frame: Frame) -> None:
    assert decode_frame(encode_frame(frame)) == frame


def test_the_type_is_on_the_wire() -> None:
    assert msgpack.unpackb(encode_frame(StatusReport()))["type"] == "status"


def test_fatal_error_codes() -> None:
    assert Error("x", ErrorCode.UNAUTHENTICATED).fatal
    assert Error("x", ErrorCode.NODE_REMOVED).fatal
    assert not Error("x", ErrorCode.UNAVAILABLE).fatal


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xc1", "not a valid msgpack frame"),
        (msgpack.packb([1, 2]), "must be a map"),
        (msgpack.packb({"type": "hello"}), "unknown session frame type 'hello'"),
        (msgpack.packb({"type": "registered", "node_id": 5}), "registered.node_id: expected a string"),
        (msgpack.packb({"type": "heartbeat", "extra": 1}), "heartbeat.extra: unknown field"),
    ],
)
def test_bad_frames_are_refused_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(CodecError) as err:
        decode_frame(data)
    assert message in str(err.value)
