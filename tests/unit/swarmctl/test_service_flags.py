"""``service create``/``update`` flags mapped onto ServiceSpec, and how bad usage is reported.

Parsing runs click's real parser on the real commands; nothing here needs a manager (a command that gets
as far as talking to one fails with exit code 2, which some tests check on purpose).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from api.objects import (
    EndpointMode,
    FailureAction,
    MountType,
    PlacementPreference,
    RestartCondition,
    ServiceMode,
    UpdateOrder,
)
from swarmctl.cli import cli
from swarmctl.client import Client
from swarmctl.commands import service_flags as flags
from swarmctl.commands.service import create, update

S = 1_000_000_000


def params(command: click.Command, args: list[str]) -> dict[str, Any]:
    with command.make_context(command.name or "", args) as ctx:
        return dict(ctx.params)


@pytest.fixture
def client(tmp_path: Path) -> Client:
    """A client with no manager behind it: any call it makes fails loudly."""
    return Client(f"unix://{tmp_path}/none.sock")


def created(client: Client, *args: str) -> Any:
    p = params(create, list(args))
    return flags.build_spec(client, p, p["image"], p["command"])


def test_create_flags_fill_the_spec(client: Client, tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("FROM_FILE=1\nA=from-file\n")
    spec = created(
        client,
        "--name", "web", "--replicas", "3", "-e", "A=1", "--env-file", str(env_file), "-l", "tier=front",
        "--container-label", "c=1", "--constraint", "node.role==worker",
        "--placement-pref", "spread=node.labels.zone", "--max-replicas-per-node", "2",
        "--reserve-cpu", "0.25", "--reserve-memory", "64M", "--limit-cpu", "1.5",
        "--limit-memory", "1G", "-p", "8080:80", "-p", "53:53/udp", "--endpoint-mode", "dnsrr",
        "--mount", "type=volume,source=data,target=/data", "--restart-condition", "on-failure",
        "--restart-delay", "10s", "--restart-max-attempts", "4", "--restart-window", "2m",
        "--update-parallelism", "2", "--update-delay", "1m30s", "--update-failure-action", "rollback",
        "--update-monitor", "20s", "--update-order", "start-first", "--update-max-failure-ratio", "0.25",
        "--rollback-parallelism", "0", "--rollback-failure-action", "continue",
        "--health-cmd", "curl -f http://localhost/", "--health-interval", "5s", "--health-retries", "2",
        "-w", "/srv", "-u", "app", "--hostname", "h", "--entrypoint", "/bin/sh -c", "--stop-signal", "SIGINT",
        "--stop-grace-period", "30s", "--init", "--read-only",
        "nginx:1.25", "nginx", "-g", "daemon off;",
    )  # fmt: skip
    c, task = spec.task.container, spec.task
    assert spec.annotations.name == "web" and spec.annotations.labels == {"tier": "front"}
    assert spec.replicas == 3 and spec.mode is ServiceMode.REPLICATED
    assert c.image == "nginx:1.25" and c.args == ("nginx", "-g", "daemon off;")
    assert c.command == ("/bin/sh", "-c")
    assert c.env == ("FROM_FILE=1", "A=1")  # --env wins over --env-file
    assert c.labels == {"c": "1"}
    assert task.placement.constraints == ("node.role==worker",)
    assert task.placement.preferences == (PlacementPreference("node.labels.zone"),)
    assert task.placement.max_replicas == 2
    assert task.resources.reservations.nano_cpus == 250_000_000
    assert task.resources.reservations.memory_bytes == 64 << 20
    assert task.resources.limits.nano_cpus == 1_500_000_000 and task.resources.limits.memory_bytes == 1 << 30
    assert [(p.published_port, p.target_port, p.protocol.value) for p in spec.endpoint.ports] == [
        (8080, 80, "tcp"),
        (53, 53, "udp"),
    ]
    assert spec.endpoint.mode is EndpointMode.DNSRR
    assert c.mounts[0].type is MountType.VOLUME and c.mounts[0].target == "/data"
    rp = task.restart_policy
    assert (rp.condition, rp.delay_ns, rp.max_attempts, rp.window_ns) == (
        RestartCondition.ON_FAILURE,
        10 * S,
        4,
        120 * S,
    )
    u = spec.update_config
    assert (u.parallelism, u.delay_ns, u.failure_action, u.monitor_ns, u.order, u.max_failure_ratio) == (
        2, 90 * S, FailureAction.ROLLBACK, 20 * S, UpdateOrder.START_FIRST, 0.25,
    )  # fmt: skip
    assert (
        spec.rollback_config.parallelism == 0
        and spec.rollback_config.failure_action is FailureAction.CONTINUE
    )
    assert c.healthcheck is not None and c.healthcheck.test == ("CMD-SHELL", "curl -f http://localhost/")
    assert (c.healthcheck.interval_ns, c.healthcheck.retries) == (5 * S, 2)
    assert (c.dir, c.user, c.hostname, c.stop_signal, c.stop_grace_period_ns) == (
        "/srv",
        "app",
        "h",
        "SIGINT",
        30 * S,
    )
    assert c.init and c.read_only


def test_unnamed_services_get_a_name_from_their_image() -> None:
    from swarmctl.commands.service import generated_name

    assert generated_name("registry.local:5000/team/nginx:1.25").startswith("nginx-")
    assert generated_name("busybox@sha256:abc") != generated_name("busybox@sha256:abc")


def test_defaults_are_dockers(client: Client) -> None:
    spec = created(client, "busybox")
    assert spec.replicas == 1 and spec.annotations.name == ""
    assert spec.update_config.parallelism == 1 and spec.update_config.monitor_ns == 5 * S
    assert spec.update_config.failure_action is FailureAction.PAUSE
    assert (
        spec.task.restart_policy.condition is RestartCondition.ANY
        and spec.task.restart_policy.delay_ns == 5 * S
    )
    assert spec.task.container.healthcheck is None
    assert created(client, "--mode", "global", "busybox").replicas == 0


def test_update_adds_and_removes(client: Client) -> None:
    base = created(
        client, "--name", "web", "-e", "A=1", "-e", "B=2", "-l", "x=1", "--constraint", "node.role==worker",
        "-p", "8080:80", "-p", "9090:90", "--mount", "type=volume,source=d,target=/d", "busybox",
    )  # fmt: skip
    p = params(
        update,
        [
            "--env-rm", "A", "--env-add", "B=3", "--env-add", "C=4", "--label-rm", "x", "--label-add", "y=2",
            "--constraint-rm", "node.role==worker", "--constraint-add", "node.labels.zone==eu",
            "--publish-rm", "90", "--publish-add", "443:443", "--mount-rm", "/d", "--image", "busybox:2",
            "--args", "sleep 5", "--replicas", "4", "--force", "--limit-memory", "256M", "web",
        ],
    )  # fmt: skip
    spec = flags.update_spec(client, base, p)
    c = spec.task.container
    assert c.env == ("B=3", "C=4")
    assert spec.annotations.labels == {"y": "2"}
    assert spec.task.placement.constraints == ("node.labels.zone==eu",)
    assert [p.target_port for p in spec.endpoint.ports] == [80, 443]
    assert c.mounts == ()
    assert c.image == "busybox:2" and c.args == ("sleep", "5")
    assert spec.replicas == 4 and spec.task.force_update == base.task.force_update + 1
    assert spec.task.resources.limits.memory_bytes == 256 << 20
    # What was not mentioned stays as it was.
    assert spec.update_config == base.update_config and spec.annotations.name == "web"


def test_update_without_flags_changes_nothing(client: Client) -> None:
    base = created(client, "--name", "web", "-e", "A=1", "busybox")
    assert flags.update_spec(client, base, params(update, ["web"])) == base


def run(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env={"SHOAL_HOST": f"unix://{tmp_path}/none.sock"})
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["service", "create", "--replcas", "2", "busybox"],
            "No such option '--replcas'. Did you mean '--replicas'? (see 'swarmctl service create --help')",
        ),
        (
            ["service", "create", "--limit-memory", "12Q", "busybox"],
            "invalid memory '12Q': use a size such as 512M",
        ),
        (["service", "create", "--restart-delay", "5", "busybox"], "use a duration such as 10s"),
        (["service", "create", "--mode", "both", "busybox"], "'both' is not one of 'replicated', 'global'"),
        (
            ["service", "create", "--mode", "global", "--replicas", "2", "busybox"],
            "--replicas can only be used with replicated mode",
        ),
        (["service", "create", "--name", "web"], "an image is required"),
        (
            ["service", "create", "--update-max-failure-ratio", "2", "busybox"],
            "2.0 is not in the range 0<=x<=1",
        ),
        (["service", "create", "-p", "http", "busybox"], "invalid port 'http'"),
        (["service", "create", "--mount", "source=x", "busybox"], "target is required"),
        (["service", "scale", "web"], "use SERVICE=REPLICAS"),
        (["service", "scale", "web=many"], "invalid replicas 'many': must be an integer"),
        (["service", "ls", "--filter", "colour=red"], "unknown key 'colour'"),
        (["service", "ls", "--format", "{{.Name"], "unbalanced braces"),
        (["stack", "deploy", "web"], "Missing option '-c'"),
        (["--host", "ftp://x", "service", "ls"], "invalid host 'ftp://x'"),
        (["nosuch"], "No such command 'nosuch'"),
    ],
)
def test_bad_usage_is_one_line_and_exit_1(tmp_path: Path, args: list[str], words: str) -> None:
    code, out, err = run(tmp_path, *args)
    lines = err.strip().splitlines()
    assert code == 1, (out, err)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and words in lines[0], err


def test_an_unreachable_manager_is_exit_2(tmp_path: Path) -> None:
    code, _, err = run(tmp_path, "service", "ls")
    assert code == 2
    assert (
        err.strip()
        == f"Error: cannot reach the manager at unix://{tmp_path}/none.sock: No such file or directory"
    )


def test_help_and_version(tmp_path: Path) -> None:
    code, out, _ = run(tmp_path, "service", "create", "--help")
    assert code == 0 and "--update-failure-action" in out and "--placement-pref" in out
    code, out, _ = run(tmp_path, "version")
    assert code == 0 and out.startswith("swarmctl ")
    code, out, _ = run(tmp_path, "service")
    assert code == 0 and "create" in out and "rollback" in out
    code, out, _ = run(tmp_path, "completion", "bash")
    assert code == 0 and "_SWARMCTL_COMPLETE" in out
