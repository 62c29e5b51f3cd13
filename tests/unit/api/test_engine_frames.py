"""Engine-call frames of an agent session round-trip through msgpack, bodies as raw bytes; only the
headers worth carrying pass the tunnel."""

from __future__ import annotations

import msgpack
import pytest

from api.engine import (
    CHUNK,
    DEFAULT_WINDOW,
    ENGINE_FRAME_TYPES,
    EngineAck,
    EngineCancel,
    EngineData,
    EngineRequest,
    EngineResponse,
    carried_headers,
)
from api.errors import CodecError
from api.session import FRAME_TYPES, Frame, decode_frame, encode_frame

FRAMES: list[tuple[str, Frame]] = [
    (
        "engine_request",
        EngineRequest(
            "c1",
            "POST",
            "/containers/create?name=web",
            {"content-type": "application/json"},
            b'{"Image": "busybox"}',
            more=False,
            window=4,
        ),
    ),
    ("engine_request", EngineRequest("c2", "POST", "/images/load", {}, bytes(range(256)), more=True)),
    ("engine_request", EngineRequest()),
    (
        "engine_response",
        EngineResponse("c1", 201, {"content-type": "application/json", "api-version": "1.43"}),
    ),
    ("engine_data", EngineData("c1", b"\x00\xff" * (CHUNK // 2))),
    ("engine_data", EngineData("c1", b"", end=True)),
    ("engine_data", EngineData("c1", b"partial", end=True, error="connection reset")),
    ("engine_ack", EngineAck("c1", 8)),
    ("engine_cancel", EngineCancel("c1")),
]


@pytest.mark.parametrize(("name", "frame"), FRAMES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(FRAMES)])
def test_engine_frames_round_trip_with_their_type_on_the_wire(name: str, frame: Frame) -> None:
    data = encode_frame(frame)
    assert msgpack.unpackb(data)["type"] == name
    assert decode_frame(data) == frame


def test_every_engine_frame_type_is_a_session_frame_and_tested_here() -> None:
    assert ENGINE_FRAME_TYPES.items() <= FRAME_TYPES.items()
    assert {name for name, _ in FRAMES} == set(ENGINE_FRAME_TYPES)


def test_a_request_defaults_to_the_default_window() -> None:
    assert decode_frame(encode_frame(EngineRequest("c"))) == EngineRequest("c", window=DEFAULT_WINDOW)


def test_a_body_is_bytes_on_the_wire() -> None:
    raw = msgpack.unpackb(encode_frame(EngineData("c", b"\xff\x00")))
    assert raw["data"] == b"\xff\x00"
    bad = {"type": "engine_data", "call_id": "c", "data": "text", "end": False, "error": ""}
    with pytest.raises(CodecError, match="data"):
        decode_frame(msgpack.packb(bad))


def test_only_the_carried_headers_pass_lower_cased() -> None:
    headers = {
        "Content-Type": "application/x-tar",
        "X-Registry-Auth": "e30=",
        "Api-Version": "1.43",
        "OSType": "linux",
        "Connection": "keep-alive",
        "Transfer-Encoding": "chunked",
        "Content-Length": "12",
        "Authorization": "Bearer x",
    }
    assert carried_headers(headers) == {
        "content-type": "application/x-tar",
        "x-registry-auth": "e30=",
        "api-version": "1.43",
        "ostype": "linux",
    }
