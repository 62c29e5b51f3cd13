"""Log frames of an agent session round-trip through msgpack; times parse as Docker's ``since`` takes them."""

from __future__ import annotations

import msgpack
import pytest

from api.errors import CodecError
from api.logs import (
    LogLine,
    LogOptions,
    LogsAck,
    LogsBatch,
    LogsCancel,
    LogsEnd,
    LogsSubscribe,
    format_time,
    parse_time,
)
from api.session import Frame, decode_frame, encode_frame

FRAMES: list[tuple[str, Frame]] = [
    ("logs_subscribe", LogsSubscribe("s1", ("t1", "t2"), LogOptions(True, 10, 5, True, False), window=4)),
    ("logs", LogsBatch("s1", "t1", (LogLine("stdout", 1, "héllo"), LogLine("stderr", 2, "")))),
    ("logs_end", LogsEnd("s1", "t2", "task t2 is not on this node")),
    ("logs_end", LogsEnd("s1")),
    ("logs_ack", LogsAck("s1", 8)),
    ("logs_cancel", LogsCancel("s1")),
]


@pytest.mark.parametrize(("name", "frame"), FRAMES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(FRAMES)])
def test_log_frames_round_trip_with_their_type_on_the_wire(name: str, frame: Frame) -> None:
    data = encode_frame(frame)
    assert msgpack.unpackb(data)["type"] == name
    assert decode_frame(data) == frame


def test_a_log_batch_with_a_bad_line_names_the_field() -> None:
    body = {"type": "logs", "subscription_id": "s", "task_id": "t", "lines": [{"stream": 1}]}
    with pytest.raises(CodecError, match="lines"):
        decode_frame(msgpack.packb(body))


def test_options_accept_lines_of_the_wanted_streams_from_since_on() -> None:
    only_err = LogOptions(stdout=False, since_ns=100)
    assert only_err.accepts(LogLine("stderr", 100, "x"))
    assert not only_err.accepts(LogLine("stderr", 99, "x"))
    assert not only_err.accepts(LogLine("stdout", 200, "x"))
    assert not LogOptions(stderr=False).accepts(LogLine("stderr", 0, "x"))


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1700000000", 1_700_000_000_000_000_000),
        ("1700000000.5", 1_700_000_000_500_000_000),
        ("1700000000.000000001", 1_700_000_000_000_000_001),
        ("2023-11-14T22:13:20Z", 1_700_000_000_000_000_000),
        ("2023-11-14T22:13:20.25Z", 1_700_000_000_250_000_000),
        ("2023-11-15T00:13:20+02:00", 1_700_000_000_000_000_000),
        ("2023-11-14T21:13:20-0100", 1_700_000_000_000_000_000),
        ("2023-11-14", 1_699_920_000_000_000_000),
    ],
)
def test_since_takes_unix_seconds_and_rfc3339(text: str, ns: int) -> None:
    assert parse_time(text) == ns


@pytest.mark.parametrize("text", ["yesterday", "10m", "2023-13-01T00:00:00Z", "-5", "2023-11-14T25:00:00Z"])
def test_a_bad_time_is_a_codec_error_naming_the_parameter(text: str) -> None:
    with pytest.raises(CodecError, match="since"):
        parse_time(text, "since")


def test_times_print_as_docker_timestamps_and_parse_back() -> None:
    ns = 1_700_000_000_123_456_789
    assert format_time(ns) == "2023-11-14T22:13:20.123456789Z"
    assert parse_time(format_time(ns)) == ns
