"""``service logs`` output as Docker prints it, and the ``--since``/``--tail`` values it sends."""

from __future__ import annotations

import pytest

from swarmctl.errors import InvalidValue
from swarmctl.logs import LogFormat, format_line, parse_since, parse_tail, task_context

TASK = "abcdefghijklmnopqrstuvwxy"
LINE = {
    "task": TASK,
    "node": "n1",
    "stream": "stdout",
    "time": "2024-05-01T10:00:00.000000001Z",
    "text": "hi",
}


def test_the_context_is_service_slot_task_and_host() -> None:
    assert task_context("web", 1, "n1", TASK, "host1", LogFormat()) == "web.1.abcdefghijkl@host1"
    assert task_context("web", 1, "n1", TASK, "host1", LogFormat(no_trunc=True)) == f"web.1.{TASK}@host1"
    assert task_context("web", 1, "n1", TASK, "host1", LogFormat(no_task_ids=True)) == "web.1@host1"
    # A global service's tasks have no slot: the node names them, as their containers are named.
    assert task_context("agent", 0, "n1", TASK, "host1", LogFormat(no_task_ids=True)) == "agent.n1@host1"


def test_slots_are_padded_so_that_the_lines_align() -> None:
    fmt = LogFormat(no_task_ids=True, slot_width=2)
    lines = [format_line(task_context("web", s, "n", TASK, "h", fmt), LINE, fmt) for s in (1, 10)]
    assert lines == ["web.1@h     | hi", "web.10@h    | hi"]
    assert lines[0].index("|") == lines[1].index("|")


def test_timestamps_go_first_and_raw_is_the_text_alone() -> None:
    ctx = "web.1.abcdefghijkl@host1"
    assert format_line(ctx, LINE, LogFormat()) == "web.1.abcdefghijkl@host1    | hi"
    assert format_line(ctx, LINE, LogFormat(timestamps=True)) == (
        "2024-05-01T10:00:00.000000001Z web.1.abcdefghijkl@host1    | hi"
    )
    assert format_line(ctx, LINE, LogFormat(raw=True)) == "hi"
    assert format_line(ctx, LINE, LogFormat(raw=True, timestamps=True)) == "2024-05-01T10:00:00.000000001Z hi"


@pytest.mark.parametrize(
    ("text", "sent"),
    [
        ("42m", "1699997480.000000000"),
        ("1h30m", "1699994600.000000000"),
        ("1.5s", "1699999998.500000000"),
        ("1700000000", "1700000000.000000000"),
        ("1699999999.25", "1699999999.250000000"),
        ("2023-11-14T22:13:20Z", "1700000000.000000000"),
    ],
)
def test_since_is_sent_as_unix_seconds(text: str, sent: str) -> None:
    assert parse_since(text, now=1_700_000_000.0) == sent


def test_a_bad_since_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(InvalidValue, match="since"):
        parse_since("last tuesday")


@pytest.mark.parametrize(
    ("text", "sent"), [("10", "10"), ("0", "0"), ("all", "all"), ("-1", "all"), ("x", "all")]
)
def test_tail_is_a_count_or_all(text: str, sent: str) -> None:
    assert parse_tail(text) == sent
