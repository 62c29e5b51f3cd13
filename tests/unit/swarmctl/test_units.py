"""Durations, sizes and CPU counts as Docker users type them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from swarmctl.errors import InvalidValue
from swarmctl.units import (
    format_bytes,
    format_duration,
    merge_env,
    parse_bytes,
    parse_cpus,
    parse_duration,
    read_env_file,
    since,
)

S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("0", 0),
        ("10s", 10 * S),
        ("1m30s", 90 * S),
        ("1.5h", 5400 * S),
        ("300ms", 300_000_000),
        ("2us", 2_000),
        ("2µs", 2_000),
        ("1h2m3s4ms", 3723 * S + 4_000_000),
        (".5s", S // 2),
    ],
)
def test_go_durations(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["10", "ten seconds", "1d", "", "s", "5 s", "1m30"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(InvalidValue, match="use a duration such as 10s, 1m30s or 500ms"):
        parse_duration(text, "restart-delay")


@pytest.mark.parametrize("ns", [0, 1, 999, 5 * S, 90 * S, 3723 * S, 300_000_000, 3600 * S])
def test_formatted_durations_parse_back(ns: int) -> None:
    assert parse_duration(format_duration(ns)) == ns


def test_formatting_matches_go() -> None:
    assert format_duration(90 * S) == "1m30s"
    assert format_duration(3600 * S) == "1h0m0s"
    assert format_duration(300_000_000) == "300ms"


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("512M", 512 << 20),
        ("512m", 512 << 20),
        ("1g", 1 << 30),
        ("2GiB", 2 << 30),
        ("1.5k", 1536),
        ("100", 100),
        ("64MB", 64 << 20),
        (1048576, 1048576),
    ],
)
def test_memory_sizes_are_binary_like_docker(text: str | int, n: int) -> None:
    assert parse_bytes(text) == n


@pytest.mark.parametrize("text", ["12Q", "M", "-5M", "1.2.3G", "lots"])
def test_bad_memory_sizes(text: str) -> None:
    with pytest.raises(InvalidValue, match="size such as 512M"):
        parse_bytes(text, "limit-memory")


def test_cpus_are_decimal_cores() -> None:
    assert parse_cpus("0.5") == 500_000_000
    assert parse_cpus("2") == 2_000_000_000
    assert parse_cpus(1.25) == 1_250_000_000
    for bad in ("-1", "half", "0.0000000001"):
        with pytest.raises(InvalidValue):
            parse_cpus(bad)


def test_format_bytes() -> None:
    assert format_bytes(512 << 20) == "512MiB"
    assert format_bytes(1536) == "1.5KiB"
    assert format_bytes(12) == "12B"


def test_env_files_skip_comments_and_later_values_win(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "app.env"
    path.write_text("# settings\nA=1\n\nexport B=two words\nA=3\n")
    assert read_env_file(path) == ["A=1", "B=two words", "A=3"]
    assert merge_env(read_env_file(path)) == ("A=3", "B=two words")
    path.write_text("NOT A VAR\n")
    with pytest.raises(InvalidValue, match="bad line"):
        read_env_file(path)


def test_since_reads_like_docker() -> None:
    now = datetime(2024, 1, 1, 12, tzinfo=UTC)
    assert since(now - timedelta(seconds=5), now) == "5 seconds ago"
    assert since(now - timedelta(seconds=70), now) == "About a minute ago"
    assert since(now - timedelta(minutes=5), now) == "5 minutes ago"
    assert since(now - timedelta(hours=3), now) == "3 hours ago"
