"""``container run`` flags → the Docker Engine create body, and classic Swarm placement entries in ``Env``.

Flags go through click's real parser on the real command; nothing here needs a manager.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from swarmctl.cli import cli
from swarmctl.commands import container_flags as flags
from swarmctl.commands.container import run
from swarmctl.errors import InvalidValue


def body(*args: str) -> dict[str, Any]:
    """The create body ``container run ARGS`` sends (the image and command come last in ``args``)."""
    with run.make_context("run", list(args)) as ctx:
        o = dict(ctx.params)
    return flags.create_body(o, o.pop("image"), o.pop("command"))


def test_a_bare_run_sends_the_image_and_attaches_output() -> None:
    assert body("busybox") == {
        "Image": "busybox",
        "AttachStdin": False,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": False,
        "OpenStdin": False,
        "HostConfig": {},
    }
    detached = body("-d", "busybox", "sleep", "60")
    assert detached["Cmd"] == ["sleep", "60"]
    assert detached["AttachStdout"] is False and detached["AttachStderr"] is False


def test_every_flag_lands_where_docker_puts_it(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nA=from-file\nB=2\n")
    b = body(
        "--name", "web", "-e", "A=1", "--env-file", str(env_file), "-e", "C=3", "-l", "tier=front",
        "-l", "flag", "-p", "8080:80", "-p", "127.0.0.1:53:53/udp", "-p", "9000", "-P",
        "-v", "data:/data", "-v", "/srv:/srv:ro", "-v", "/scratch",
        "--mount", "type=tmpfs,target=/tmp", "--mount", "type=bind,source=/etc,target=/host-etc,readonly",
        "--volumes-from", "other:ro", "--network", "host", "--restart", "on-failure:3",
        "-w", "/work", "-u", "1000:1000", "--entrypoint", "/bin/sh", "--hostname", "box",
        "-m", "512M", "--cpus", "1.5", "--stop-signal", "SIGINT", "--stop-timeout", "5",
        "busybox", "-c", "echo hi",
    )  # fmt: skip
    assert b["Image"] == "busybox" and b["Cmd"] == ["-c", "echo hi"] and b["Entrypoint"] == ["/bin/sh"]
    # The env file first, then -e, later ones winning in place.
    assert b["Env"] == ["A=1", "B=2", "C=3"]
    assert b["Labels"] == {"tier": "front", "flag": ""}
    assert (b["WorkingDir"], b["User"], b["Hostname"]) == ("/work", "1000:1000", "box")
    assert (b["StopSignal"], b["StopTimeout"]) == ("SIGINT", 5)
    assert b["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "9000/tcp": {}}
    assert b["Volumes"] == {"/scratch": {}}
    host = b["HostConfig"]
    assert host["PortBindings"] == {
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "53"}],
        "9000/tcp": [{"HostIp": "", "HostPort": ""}],
    }
    assert host["PublishAllPorts"] is True
    assert host["Binds"] == ["data:/data", "/srv:/srv:ro"]
    assert host["Mounts"] == [
        {"Type": "tmpfs", "Target": "/tmp", "ReadOnly": False},
        {"Type": "bind", "Target": "/host-etc", "ReadOnly": True, "Source": "/etc"},
    ]
    assert host["VolumesFrom"] == ["other:ro"]
    assert host["NetworkMode"] == "host"
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert host["Memory"] == 512 * 1024 * 1024 and host["NanoCpus"] == 1_500_000_000
    assert "AutoRemove" not in host


def test_rm_is_the_engines_job_only_when_detached() -> None:
    # Attached, swarmctl removes the container after reading its exit code (its logs must outlive it).
    assert "AutoRemove" not in body("--rm", "busybox")["HostConfig"]
    assert body("--rm", "-d", "busybox")["HostConfig"]["AutoRemove"] is True


def test_an_empty_entrypoint_clears_the_images() -> None:
    assert body("--entrypoint", "", "busybox")["Entrypoint"] == [""]


def test_a_bare_env_key_comes_from_this_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_HERE", "yes")
    monkeypatch.delenv("NOT_SET", raising=False)
    assert body("-e", "FROM_HERE", "-e", "NOT_SET", "busybox")["Env"] == ["FROM_HERE=yes"]


# --- placement ------------------------------------------------------------------------------------------
def test_classic_placement_rides_in_env_after_the_variables() -> None:
    b = body(
        "-e", "constraint:node==node-1", "-e", "A=1", "-e", "affinity:container!=web*",
        "-e", "constraint:zone==~eu", "-e", "affinity:image==redis", "busybox",
    )  # fmt: skip
    assert b["Env"] == [
        "A=1",
        "constraint:node==node-1",
        "affinity:container!=web*",
        "constraint:zone==~eu",
        "affinity:image==redis",
    ]


@pytest.mark.parametrize(
    ("given", "entry"),
    [
        ("node==node-1", "constraint:node==node-1"),
        ("zone!=eu", "constraint:zone!=eu"),
        ("node.hostname==node-2", "constraint:node==node-2"),
        ("node.id==abc123", "constraint:node==abc123"),
        ("node.labels.zone==eu", "constraint:zone==eu"),
        ("engine.labels.storage!=ssd", "constraint:storage!=ssd"),
        ("constraint:rack==~r1", "constraint:rack==~r1"),
        ("affinity:container==db", "affinity:container==db"),
        ("node==/node-[12]/", "constraint:node==/node-[12]/"),
    ],
)
def test_constraint_flags_become_classic_entries(given: str, entry: str) -> None:
    assert flags.constraint_entry(given) == entry
    assert body("--constraint", given, "busybox")["Env"] == [entry]


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("zone", "operators"),
        ("node.role==manager", "not available for containers"),
        ("node==", "missing value"),
        ("node==/[/", "regular expression"),
    ],
)
def test_bad_constraints_are_refused_before_any_request(given: str, reason: str) -> None:
    with pytest.raises(InvalidValue, match=reason):
        flags.constraint_entry(given)


def test_bad_env_placement_is_refused() -> None:
    with pytest.raises(InvalidValue, match="constraint:zone"):
        body("-e", "constraint:zone", "busybox")


# --- value syntaxes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "bindings"),
    [
        ("80", [("80/tcp", "", "")]),
        ("8080:80", [("80/tcp", "", "8080")]),
        ("8080:80/udp", [("80/udp", "", "8080")]),
        ("10.0.0.1:8080:80", [("80/tcp", "10.0.0.1", "8080")]),
        ("10.0.0.1::80", [("80/tcp", "10.0.0.1", "")]),
        ("[::1]:8080:80", [("80/tcp", "::1", "8080")]),
        ("8000-8001:80-81", [("80/tcp", "", "8000"), ("81/tcp", "", "8001")]),
        ("8000-8010:80", [("80/tcp", "", "8000-8010")]),
    ],
)
def test_publish_forms(text: str, bindings: list[tuple[str, str, str]]) -> None:
    assert flags.parse_publish(text) == bindings


def test_expose_adds_ports_for_publish_all() -> None:
    b = body(
        "-P", "--expose", "80", "--expose", "53/udp", "--expose", "8000-8001", "-p", "9000:90", "busybox"
    )
    assert list(b["ExposedPorts"]) == ["80/tcp", "53/udp", "8000/tcp", "8001/tcp", "90/tcp"]
    assert b["HostConfig"]["PublishAllPorts"] is True
    for bad in ("http", "80/icmp", "0", "9-8"):
        with pytest.raises(InvalidValue, match="expose"):
            flags.parse_expose(bad)


@pytest.mark.parametrize("text", ["", "http", "80/icmp", "1:2:3:4", "8000-8002:80-81", "0:80", "70000"])
def test_bad_publish_values(text: str) -> None:
    with pytest.raises(InvalidValue):
        flags.parse_publish(text)


@pytest.mark.parametrize("text", ["relative", "data:relative", "a:/b:bogus", "a:/b:ro:x", ":/data"])
def test_bad_volumes(text: str) -> None:
    with pytest.raises(InvalidValue):
        flags.parse_volume(text)


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("no", {"Name": "", "MaximumRetryCount": 0}),
        ("always", {"Name": "always", "MaximumRetryCount": 0}),
        ("unless-stopped", {"Name": "unless-stopped", "MaximumRetryCount": 0}),
        ("on-failure", {"Name": "on-failure", "MaximumRetryCount": 0}),
        ("on-failure:5", {"Name": "on-failure", "MaximumRetryCount": 5}),
    ],
)
def test_restart_policies(text: str, policy: dict[str, Any]) -> None:
    assert flags.parse_restart(text) == policy


@pytest.mark.parametrize("text", ["sometimes", "always:3", "on-failure:x", "on-failure:-1"])
def test_bad_restart_policies(text: str) -> None:
    with pytest.raises(InvalidValue):
        flags.parse_restart(text)


def test_conflicts_and_unsupported_modes_are_usage_errors() -> None:
    with pytest.raises(click.UsageError, match="--restart and --rm"):
        body("--rm", "--restart", "always", "busybox")
    with pytest.raises(click.UsageError, match="TTY"):
        body("-it", "busybox")
    with pytest.raises(InvalidValue, match="name"):
        body("--name", "a/b", "busybox")


# --- through the command line ---------------------------------------------------------------------------
def cli_run(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """``swarmctl ARGS`` with no manager behind it (a request would end in exit code 2)."""
    result = CliRunner().invoke(cli, ["-H", f"unix://{tmp_path}/none.sock", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["container", "run", "-t", "busybox"], ["TTY", "not supported"]),
        (["container", "run", "-i", "busybox", "sh"], ["stdin"]),
        (["container", "exec", "-it", "web", "sh"], ["TTY"]),
        (["container", "run", "--restart", "always", "--rm", "busybox"], ["--restart and --rm"]),
        (["container", "run", "-p", "80/icmp", "busybox"], ["publish", "icmp"]),
        (["container", "run", "--constraint", "zone", "busybox"], ["constraint", "zone"]),
        (["container", "run", "-m", "lots", "busybox"], ["memory"]),
        (["container", "run"], ["IMAGE"]),
        (["container", "ls", "--filter", "colour=red"], ["unknown key", "colour"]),
        (["image", "pull", "Busybox"], ["image reference", "lowercase"]),
        (["image", "tag", "busybox", "x@sha256:" + "a" * 64], ["digest"]),
        (["image", "load", "-i", "/nonexistent.tar"], ["does not exist"]),
    ],
)
def test_usage_errors_are_one_line_and_exit_1_without_a_manager(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    code, out, err = cli_run(tmp_path, *args)
    lines = err.strip().splitlines()
    assert code == 1, (out, err)
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for w in words:
        assert w in lines[0], lines[0]


def test_an_unreachable_manager_is_exit_2(tmp_path: Path) -> None:
    code, _, err = cli_run(tmp_path, "container", "ls")
    assert code == 2 and "cannot reach the manager" in err
    code, _, err = cli_run(tmp_path, "image", "pull", "busybox")
    assert code == 2 and "cannot reach the manager" in err


def test_the_groups_are_registered_and_completion_still_works(tmp_path: Path) -> None:
    code, out, _ = cli_run(tmp_path, "container", "--help")
    assert code == 0 and all(c in out for c in ("run", "ls", "logs", "exec", "stop", "rm", "inspect"))
    code, out, _ = cli_run(tmp_path, "image", "--help")
    assert code == 0 and all(c in out for c in ("ls", "pull", "push", "load", "tag", "rm"))
    result = CliRunner().invoke(
        cli, [], env={"_SWARMCTL_COMPLETE": "bash_complete", "COMP_WORDS": "swarmctl cont", "COMP_CWORD": "1"}
    )
    assert "container" in result.stdout
    result = CliRunner().invoke(
        cli,
        [],
        env={"_SWARMCTL_COMPLETE": "bash_complete", "COMP_WORDS": "swarmctl image p", "COMP_CWORD": "2"},
    )
    assert "pull" in result.stdout and "push" in result.stdout
