"""Logs parsing, restart decisions, users, config parsing, error classification, ``ps`` parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.runtime.containers import restart
from agent.runtime.containers.config import (
    ContainerConfig,
    ImageConfig,
    RestartPolicy,
    Ulimit,
    parse_signal,
    parse_size,
)
from agent.runtime.containers.introspect import parse_ps, validate_name
from agent.runtime.containers.logs import (
    LogEntry,
    LogFilter,
    format_timestamp,
    parse_lines,
    parse_timestamp,
    read_logs,
)
from agent.runtime.containers.oci import classify_start_error, clean_runc_message
from agent.runtime.containers.state import ContainerRecord, ContainerState, StateStore
from agent.runtime.containers.users import resolve_user, secure_join
from agent.runtime.errors import InvalidContainerConfig

LOG = b"""2024-05-01T10:00:00.000000001+00:00 stdout F hello
2024-05-01T10:00:00.5+00:00 stderr F oops
2024-05-01T10:00:01.000000000+00:00 stdout P part one,\x20
2024-05-01T10:00:01.100000000+00:00 stderr F interleaved
2024-05-01T10:00:01.200000000+00:00 stdout F part two
2024-05-01T12:00:02.000000000+02:00 stdout F local time
2024-05-01T10:00:03.000000000Z stdout P no newline at the end
"""


def test_cri_lines_are_parsed_and_partials_joined() -> None:
    entries = list(parse_lines(LOG.splitlines(keepends=True)))
    assert [(e.stream, e.message) for e in entries] == [
        ("stdout", b"hello\n"),
        ("stderr", b"oops\n"),
        ("stderr", b"interleaved\n"),
        ("stdout", b"part one, part two\n"),
        ("stdout", b"local time\n"),
        ("stdout", b"no newline at the end"),
    ]
    assert entries[0].time_ns == parse_timestamp(b"2024-05-01T10:00:00.000000001Z")
    assert entries[4].time_ns == parse_timestamp(b"2024-05-01T10:00:02Z")  # offsets are honoured
    assert format_timestamp(entries[0].time_ns) == "2024-05-01T10:00:00.000000001Z"
    assert (
        LogEntry(entries[0].time_ns, "stdout", b"x\n").render(True) == b"2024-05-01T10:00:00.000000001Z x\n"
    )


def test_log_filters(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    path.write_bytes(LOG)
    assert [e.message for e in read_logs([path], LogFilter(stdout=False))] == [b"oops\n", b"interleaved\n"]
    assert [e.message for e in read_logs([path], LogFilter(tail=2))] == [
        b"local time\n",
        b"no newline at the end",
    ]
    assert read_logs([path], LogFilter(tail=0)) == []
    since = parse_timestamp(b"2024-05-01T10:00:01Z")
    until = parse_timestamp(b"2024-05-01T10:00:02Z")
    assert [e.message for e in read_logs([path], LogFilter(since_ns=since, until_ns=until))] == [
        b"interleaved\n",
        b"part one, part two\n",
        b"local time\n",
    ]
    assert read_logs([tmp_path / "missing.log"]) == []


@pytest.mark.parametrize(
    ("policy", "code", "count", "expected"),
    [
        ("no", 1, 0, False),
        ("always", 0, 5, True),
        ("unless-stopped", 0, 0, True),
        ("on-failure", 0, 0, False),
        ("on-failure", 1, 100, True),
        ("on-failure:3", 1, 2, True),
        ("on-failure:3", 1, 3, False),
    ],
)
def test_restart_decisions(policy: str, code: int, count: int, expected: bool) -> None:
    decision = restart.decide(RestartPolicy.parse(policy), code, False, count, 1.0, 0.0)
    assert decision.restart is expected


def test_manual_stop_wins_and_backoff_grows_then_resets() -> None:
    always = RestartPolicy.parse("always")
    assert not restart.decide(always, 1, True, 0, 1.0, 0.0).restart
    delays, delay = [], 0.0
    for _ in range(12):
        delay = restart.decide(always, 1, False, 0, 0.5, delay).delay
        delays.append(delay)
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8] and delays[-1] == restart.MAX_DELAY
    assert restart.decide(always, 1, False, 0, 10.0, 30.0).delay == 0.1  # ran 10 s: back to 100 ms


def test_config_parsing() -> None:
    assert parse_size("64m") == 64 << 20 and parse_size("1g") == 1 << 30 and parse_size("512") == 512
    assert parse_size("1.5k") == 1536
    assert parse_signal("term").name == "SIGTERM" and parse_signal("9").name == "SIGKILL"
    assert Ulimit.parse("nofile=10:20") == Ulimit("nofile", 10, 20) and Ulimit.parse("nproc=5").hard == 5
    assert str(RestartPolicy.parse("on-failure:3")) == "on-failure:3"
    for bad in ("sometimes", "always:3", "on-failure:x", "on-failure:-1"):
        with pytest.raises(InvalidContainerConfig):
            RestartPolicy.parse(bad)
    for bad in ("nofile", "bogus=1", "nofile=5:1"):
        with pytest.raises(InvalidContainerConfig):
            Ulimit.parse(bad)
    with pytest.raises(InvalidContainerConfig):
        parse_size("lots")
    assert validate_name("/web-1") == "web-1"
    with pytest.raises(InvalidContainerConfig):
        validate_name("bad name")


def test_config_and_record_round_trip(tmp_path: Path) -> None:
    config = ContainerConfig(
        image="img",
        cmd=("a", "b"),
        labels={"k": "v"},
        ulimits=(Ulimit("nofile", 1, 2),),
        restart_policy=RestartPolicy.parse("on-failure:2"),
        tmpfs={"/run": ""},
    )
    assert ContainerConfig.from_json(config.to_json()) == config
    store = StateStore(tmp_path)
    record = ContainerRecord(
        "c" * 64,
        "n",
        1,
        config,
        ImageConfig.from_oci({"Cmd": ["sh"], "Labels": {"x": "y"}}),
        "/r",
        "a",
        ("b",),
        "/shoal/c",
        ContainerState(status="exited", exit_code=3),
    )
    store.save(record)
    assert store.load_all() == [record]
    assert store.read_exit_code(record.id) is None
    store.exit_file(record.id).write_text("137")
    assert store.read_exit_code(record.id) == 137


def test_users_and_secure_join(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nbob:x:1001:1002::/home/bob:/bin/sh\n"
    )
    (tmp_path / "etc" / "group").write_text("bob:x:1002:\nwheel:x:10:bob,alice\n")
    bob = resolve_user(tmp_path, "bob")
    assert (bob.uid, bob.gid, bob.additional_gids, bob.home) == (1001, 1002, (10,), "/home/bob")
    assert resolve_user(tmp_path, "").uid == 0 and resolve_user(tmp_path, "").home == "/root"
    assert resolve_user(tmp_path, "bob:wheel").gid == 10
    assert resolve_user(tmp_path, "42").uid == 42
    with pytest.raises(InvalidContainerConfig):
        resolve_user(tmp_path, "bob:nogroup")
    # A symlink pointing outside the rootfs stays inside it.
    (tmp_path / "escape").symlink_to("/../../../etc")
    assert secure_join(tmp_path, "/escape/passwd") == tmp_path / "etc" / "passwd"
    assert secure_join(tmp_path, "/../../etc/group") == tmp_path / "etc" / "group"


def test_start_errors_are_classified_like_docker() -> None:
    raw = (
        'time="x" level=error msg="runc create failed: unable to start container process: exec: \\"nope\\": '
        'executable file not found in $PATH"\n'
    )
    message = clean_runc_message(raw)
    assert message.startswith("runc create failed") and '"nope"' in message
    assert classify_start_error(message) == 127
    assert classify_start_error('exec: "/etc/passwd": permission denied') == 126
    assert classify_start_error("exec: stat /x: no such file or directory") == 127
    assert classify_start_error("cgroup: cannot set memory limit: permission denied") == 125
    assert clean_runc_message('{"level":"error","msg":"exec failed: boom"}') == "exec failed: boom"


def test_ps_output_is_filtered_by_pid() -> None:
    output = (
        "UID PID PPID C STIME TTY TIME CMD\nroot 10 1 0 10:00 ? 00:00:00 sh -c sleep 5\n"
        "root 11 10 0 10:00 ? 00:00:00 sleep 5\nroot 99 1 0 10:00 ? 00:00:00 other\n"
    )
    top = parse_ps(output, [10, 11])
    assert top.titles[1] == "PID" and [row[-1] for row in top.processes] == ["sh -c sleep 5", "sleep 5"]
