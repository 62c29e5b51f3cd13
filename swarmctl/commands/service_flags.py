"""The flags of ``service create`` and ``service update``, and how they change a :class:`ServiceSpec`.

Names, defaults and syntaxes are Docker's. Scalar flags default to "not given" (None), so ``update``
changes only what was typed and ``create`` keeps the object model's defaults (which are Docker's).
List flags are plain on ``create`` (``--env``) and come as ``-add``/``-rm`` pairs on ``update``
(``--env-add``/``--env-rm``); removals apply before additions, as in Docker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import click

from api.objects import (
    Annotations,
    EndpointMode,
    FailureAction,
    Mount,
    NetworkAttachmentConfig,
    PlacementPreference,
    PortConfig,
    RestartCondition,
    SecretReference,
    ServiceMode,
    ServiceSpec,
    UpdateConfig,
    UpdateOrder,
)
from swarmctl import specs, units
from swarmctl.client import Client
from swarmctl.errors import SwarmctlError

F = TypeVar("F", bound=Callable[..., Any])


class _Unit(click.ParamType):  # type: ignore[type-arg]
    """A click type around one of swarmctl.units' parsers (durations, sizes, CPUs)."""

    def __init__(self, name: str, parse: Callable[[str], int]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return self._parse(value)
        except SwarmctlError as e:
            self.fail(str(e), param, ctx)


DURATION = _Unit("duration", units.parse_duration)
BYTES = _Unit("bytes", units.parse_bytes)
CPUS = _Unit("decimal", units.parse_cpus)


def _choice(*values: str) -> click.Choice[str]:
    return click.Choice(values, case_sensitive=False)


def _apply(f: F, options: Sequence[Callable[[F], F]]) -> F:
    for option in reversed(options):
        f = option(f)
    return f


_SCALARS: list[Callable[[Any], Any]] = [
    click.option("--replicas", type=click.IntRange(min=0), help="Number of tasks."),
    click.option(
        "--max-replicas-per-node", type=click.IntRange(min=0), help="Maximum tasks per node (0: no limit)."
    ),
    click.option("--reserve-cpu", type=CPUS, help="Reserve CPUs (e.g. 0.5)."),
    click.option("--reserve-memory", type=BYTES, help="Reserve memory (e.g. 512M)."),
    click.option("--limit-cpu", type=CPUS, help="Limit CPUs."),
    click.option("--limit-memory", type=BYTES, help="Limit memory."),
    click.option("--endpoint-mode", type=_choice("vip", "dnsrr"), help="Endpoint mode (vip or dnsrr)."),
    click.option(
        "--restart-condition", type=_choice("none", "on-failure", "any"), help="Restart when (default any)."
    ),
    click.option("--restart-delay", type=DURATION, help="Delay between restart attempts (default 5s)."),
    click.option(
        "--restart-max-attempts", type=click.IntRange(min=0), help="Maximum restarts before giving up."
    ),
    click.option("--restart-window", type=DURATION, help="Window used to evaluate the restart policy."),
    click.option(
        "--update-parallelism", type=click.IntRange(min=0), help="Tasks updated at once (0: all; default 1)."
    ),
    click.option("--update-delay", type=DURATION, help="Delay between updates (default 0s)."),
    click.option(
        "--update-failure-action",
        type=_choice("pause", "continue", "rollback"),
        help="On update failure (default pause).",
    ),
    click.option(
        "--update-monitor",
        type=DURATION,
        help="How long to watch each updated task for failure (default 5s).",
    ),
    click.option(
        "--update-max-failure-ratio",
        type=click.FloatRange(0, 1),
        help="Failure rate to tolerate during an update.",
    ),
    click.option(
        "--update-order", type=_choice("stop-first", "start-first"), help="Update order (default stop-first)."
    ),
    click.option(
        "--rollback-parallelism", type=click.IntRange(min=0), help="Tasks rolled back at once (0: all)."
    ),
    click.option("--rollback-delay", type=DURATION, help="Delay between task rollbacks."),
    click.option("--rollback-failure-action", type=_choice("pause", "continue"), help="On rollback failure."),
    click.option("--rollback-monitor", type=DURATION, help="How long to watch each rolled-back task."),
    click.option(
        "--rollback-max-failure-ratio",
        type=click.FloatRange(0, 1),
        help="Failure rate to tolerate in a rollback.",
    ),
    click.option("--rollback-order", type=_choice("stop-first", "start-first"), help="Rollback order."),
    click.option("--health-cmd", help="Command to run to check health."),
    click.option("--health-interval", type=DURATION, help="Time between health checks."),
    click.option("--health-timeout", type=DURATION, help="Maximum time one check may run."),
    click.option("--health-retries", type=click.IntRange(min=0), help="Failures in a row before unhealthy."),
    click.option("--health-start-period", type=DURATION, help="Grace period before failures count."),
    click.option(
        "--no-healthcheck", is_flag=True, default=False, help="Disable any container-specified healthcheck."
    ),
    click.option("-w", "--workdir", help="Working directory inside the container."),
    click.option("-u", "--user", help="Username or UID[:GID]."),
    click.option("--hostname", help="Container hostname."),
    click.option("--entrypoint", help="Overwrite the image's entrypoint."),
    click.option("--stop-signal", help="Signal to stop the container."),
    click.option(
        "--stop-grace-period", type=DURATION, help="Time to wait before force-killing (default 10s)."
    ),
    click.option("--init/--no-init", default=None, help="Run an init inside the container."),
    click.option(
        "--read-only/--read-write", default=None, help="Mount the container's root filesystem read-only."
    ),
]


def converge_options(f: F) -> F:
    """``--detach`` and ``--timeout`` of commands that wait for convergence."""
    return _apply(
        f,
        [
            click.option(
                "-d", "--detach", is_flag=True, help="Exit at once instead of waiting for convergence."
            ),
            click.option(
                "--timeout",
                type=DURATION,
                default="2m",
                show_default=True,
                help="How long to wait for convergence before failing.",
            ),
        ],
    )


def create_options(f: F) -> F:
    """Every flag of ``service create``."""
    lists = [
        click.option("--name", help="Service name."),
        click.option("--image", "image_opt", help="Image (instead of the IMAGE argument)."),
        click.option(
            "--mode",
            type=_choice("replicated", "global"),
            default="replicated",
            show_default=True,
            help="Service mode.",
        ),
        click.option("--constraint", "constraints", multiple=True, help="Placement constraint (repeatable)."),
        click.option(
            "--placement-pref",
            "placement_prefs",
            multiple=True,
            help="Placement preference: spread=node.labels.X.",
        ),
        click.option(
            "-p",
            "--publish",
            "publish",
            multiple=True,
            help="Publish a port: [published:]target[/proto] or long syntax.",
        ),
        click.option(
            "--network", "networks", multiple=True, help="Network attachment: NAME or name=N,alias=A."
        ),
        click.option("-e", "--env", "env", multiple=True, help="Environment variable KEY=VALUE."),
        click.option(
            "--env-file", "env_files", multiple=True, help="Read environment variables from a file."
        ),
        click.option("-l", "--label", "labels", multiple=True, help="Service label KEY=VALUE."),
        click.option(
            "--container-label", "container_labels", multiple=True, help="Container label KEY=VALUE."
        ),
        click.option(
            "--mount",
            "mounts",
            multiple=True,
            help="Mount: type=volume|bind|tmpfs,source=…,target=…[,readonly].",
        ),
        click.option(
            "--secret", "secrets", multiple=True, help="Secret to expose: NAME or source=N,target=F."
        ),
    ]
    return _apply(f, lists + _SCALARS)


def update_options(f: F) -> F:
    """Every flag of ``service update``."""
    pairs = []
    for name, what in (
        ("constraint", "placement constraint"),
        ("placement-pref", "placement preference"),
        ("publish", "published port"),
        ("network", "network"),
        ("env", "environment variable"),
        ("label", "service label"),
        ("container-label", "container label"),
        ("mount", "mount (by target)"),
        ("secret", "secret"),
    ):
        pairs.append(click.option(f"--{name}-add", multiple=True, help=f"Add a {what}."))
        pairs.append(click.option(f"--{name}-rm", multiple=True, help=f"Remove a {what}."))
    extra = [
        click.option("--image", "image_opt", help="New image."),
        click.option("--args", help="New command arguments."),
        click.option("--env-file", "env_files", multiple=True, help="Add environment variables from a file."),
        click.option("--force", is_flag=True, help="Redeploy the tasks even if nothing changed."),
        click.option("--rollback", is_flag=True, help="Roll back to the previous spec."),
    ]
    return _apply(f, extra + pairs + _SCALARS)


# --- building specs ---------------------------------------------------------------------------------------
def _labels(entries: Iterable[str], what: str) -> dict[str, str]:
    return dict(units.parse_kv(e, what, need_value=False) for e in entries)


def _env(entries: Iterable[str], files: Iterable[str]) -> list[str]:
    out: list[str] = []
    for path in files:
        out += units.read_env_file(path)
    for e in entries:
        units.parse_kv(e, "environment variable", need_value=False)
        out.append(e)
    return out


def _ports(entries: Iterable[str]) -> list[PortConfig]:
    return [p for e in entries for p in specs.parse_port(e)]


def _secret_refs(client: Client, entries: Iterable[str]) -> list[SecretReference]:
    refs = []
    for e in entries:
        source, target = specs.parse_secret(e)
        secret = client.secret(source)
        refs.append(
            SecretReference(secret_id=secret.meta.id, secret_name=secret.spec.annotations.name, target=target)
        )
    return refs


def _networks(client: Client, entries: Iterable[str]) -> list[NetworkAttachmentConfig]:
    out = []
    for e in entries:
        att = specs.parse_network(e)
        # Stored by name: the allocator and the agents look networks up by name or full id.
        out.append(replace(att, target=client.network(att.target).spec.annotations.name))
    return out


def build_spec(client: Client, o: dict[str, Any], image: str, command: Sequence[str]) -> ServiceSpec:
    """The spec ``service create`` sends, from its flags."""
    spec = ServiceSpec(
        annotations=Annotations(name=o["name"] or "", labels=_labels(o["labels"], "label")),
        mode=ServiceMode(o["mode"].lower()),
        replicas=o["replicas"] if o["replicas"] is not None else (0 if o["mode"] == "global" else 1),
    )
    c = spec.task.container
    c = replace(
        c,
        image=image,
        args=tuple(command),
        env=units.merge_env(_env(o["env"], o["env_files"])),
        labels=_labels(o["container_labels"], "container label"),
        mounts=tuple(specs.parse_mount(m) for m in o["mounts"]),
        secrets=tuple(_secret_refs(client, o["secrets"])),
    )
    placement = replace(
        spec.task.placement,
        constraints=tuple(o["constraints"]),
        preferences=tuple(specs.parse_preference(p) for p in o["placement_prefs"]),
    )
    task = replace(
        spec.task, container=c, placement=placement, networks=tuple(_networks(client, o["networks"]))
    )
    spec = replace(spec, task=task, endpoint=replace(spec.endpoint, ports=tuple(_ports(o["publish"]))))
    return apply_scalars(spec, o)


def apply_scalars(spec: ServiceSpec, o: dict[str, Any]) -> ServiceSpec:
    """``spec`` with every scalar flag that was given applied."""
    task, c = spec.task, spec.task.container
    if o.get("replicas") is not None:
        spec = replace(spec, replicas=o["replicas"])
    if o.get("max_replicas_per_node") is not None:
        task = replace(task, placement=replace(task.placement, max_replicas=o["max_replicas_per_node"]))
    res = task.resources
    limits = _set(res.limits, nano_cpus=o.get("limit_cpu"), memory_bytes=o.get("limit_memory"))
    reservations = _set(
        res.reservations, nano_cpus=o.get("reserve_cpu"), memory_bytes=o.get("reserve_memory")
    )
    task = replace(task, resources=replace(res, limits=limits, reservations=reservations))
    rp = _set(
        task.restart_policy,
        condition=RestartCondition(o["restart_condition"].lower()) if o.get("restart_condition") else None,
        delay_ns=o.get("restart_delay"),
        max_attempts=o.get("restart_max_attempts"),
        window_ns=o.get("restart_window"),
    )
    task = replace(task, restart_policy=rp)
    c = _set(
        c,
        dir=o.get("workdir"),
        user=o.get("user"),
        hostname=o.get("hostname"),
        command=specs.command_words(o["entrypoint"], "entrypoint")
        if o.get("entrypoint") is not None
        else None,
        stop_signal=o.get("stop_signal"),
        stop_grace_period_ns=o.get("stop_grace_period"),
        init=o.get("init"),
        read_only=o.get("read_only"),
    )
    health = specs.healthcheck(
        c.healthcheck,
        cmd=o.get("health_cmd"),
        interval=o.get("health_interval"),
        timeout=o.get("health_timeout"),
        retries=o.get("health_retries"),
        start_period=o.get("health_start_period"),
        disable=bool(o.get("no_healthcheck")),
    )
    task = replace(task, container=replace(c, healthcheck=health))
    endpoint = spec.endpoint
    if o.get("endpoint_mode"):
        endpoint = replace(endpoint, mode=EndpointMode(o["endpoint_mode"].lower()))
    return replace(
        spec,
        task=task,
        endpoint=endpoint,
        update_config=_update_config(spec.update_config, o, "update"),
        rollback_config=_update_config(spec.rollback_config, o, "rollback"),
    )


def _update_config(cfg: UpdateConfig, o: dict[str, Any], prefix: str) -> UpdateConfig:
    action = o.get(f"{prefix}_failure_action")
    order = o.get(f"{prefix}_order")
    updated: UpdateConfig = _set(
        cfg,
        parallelism=o.get(f"{prefix}_parallelism"),
        delay_ns=o.get(f"{prefix}_delay"),
        monitor_ns=o.get(f"{prefix}_monitor"),
        max_failure_ratio=o.get(f"{prefix}_max_failure_ratio"),
        failure_action=FailureAction(action.lower()) if action else None,
        order=UpdateOrder(order.lower()) if order else None,
    )
    return updated


def _set(obj: Any, **changes: Any) -> Any:
    given = {k: v for k, v in changes.items() if v is not None}
    return replace(obj, **given) if given else obj


def update_spec(client: Client, current: ServiceSpec, o: dict[str, Any]) -> ServiceSpec:
    """The spec ``service update`` sends: ``current`` with the flags applied."""
    spec = apply_scalars(current, o)
    task, c = spec.task, spec.task.container
    if o.get("image_opt"):
        c = replace(c, image=o["image_opt"])
    if o.get("args") is not None:
        c = replace(c, args=specs.command_words(o["args"], "args"))

    env_rm = set(o["env_rm"])
    env = [e for e in c.env if e.partition("=")[0] not in env_rm]
    env += _env(o["env_add"], o["env_files"])
    c = replace(c, env=units.merge_env(env))
    c = replace(
        c, labels=_edit_labels(c.labels, o["container_label_rm"], o["container_label_add"], "container label")
    )
    mounts_rm = set(o["mount_rm"])
    mounts: list[Mount] = [m for m in c.mounts if m.target not in mounts_rm]
    for text in o["mount_add"]:
        m = specs.parse_mount(text)
        mounts = [x for x in mounts if x.target != m.target] + [m]
    c = replace(c, mounts=tuple(mounts))
    secrets_rm = set(o["secret_rm"])
    secrets = [s for s in c.secrets if s.secret_name not in secrets_rm and s.secret_id not in secrets_rm]
    for ref in _secret_refs(client, o["secret_add"]):
        secrets = [s for s in secrets if s.target != ref.target] + [ref]
    c = replace(c, secrets=tuple(secrets))

    constraints = [x for x in task.placement.constraints if x not in set(o["constraint_rm"])]
    constraints += [x for x in o["constraint_add"] if x not in constraints]
    prefs_rm = {specs.parse_preference(p) for p in o["placement_pref_rm"]}
    prefs: list[PlacementPreference] = [p for p in task.placement.preferences if p not in prefs_rm]
    prefs += [p for p in map(specs.parse_preference, o["placement_pref_add"]) if p not in prefs]
    placement = replace(task.placement, constraints=tuple(constraints), preferences=tuple(prefs))

    nets = _edit_networks(client, task.networks, o["network_rm"], o["network_add"])
    task = replace(task, container=c, placement=placement, networks=nets)
    if o.get("force"):
        task = replace(task, force_update=task.force_update + 1)

    ports = _edit_ports(spec.endpoint.ports, o["publish_rm"], o["publish_add"])
    labels = _edit_labels(spec.annotations.labels, o["label_rm"], o["label_add"], "label")
    return replace(
        spec,
        annotations=replace(spec.annotations, labels=labels),
        task=task,
        endpoint=replace(spec.endpoint, ports=ports),
    )


def _edit_labels(labels: dict[str, str], rm: Iterable[str], add: Iterable[str], what: str) -> dict[str, str]:
    out = {k: v for k, v in labels.items() if k not in set(rm)}
    out.update(_labels(add, what))
    return out


def _edit_networks(
    client: Client, current: Sequence[NetworkAttachmentConfig], rm: Sequence[str], add: Sequence[str]
) -> tuple[NetworkAttachmentConfig, ...]:
    gone: set[str] = set()
    for ref in rm:
        net = client.network(ref)
        gone |= {net.meta.id, net.spec.annotations.name, ref}
    out = [a for a in current if a.target not in gone]
    for att in _networks(client, add):
        out = [a for a in out if a.target != att.target] + [att]
    return tuple(out)


def _edit_ports(
    current: Sequence[PortConfig], rm: Sequence[str], add: Sequence[str]
) -> tuple[PortConfig, ...]:
    out = list(current)
    for text in rm:
        for gone in specs.parse_port(text):
            out = [
                p
                for p in out
                if not (
                    p.target_port == gone.target_port
                    and p.protocol is gone.protocol
                    and (not gone.published_port or p.published_port == gone.published_port)
                )
            ]
    for p in _ports(add):
        out = [x for x in out if not (x.target_port == p.target_port and x.protocol is p.protocol)] + [p]
    return tuple(out)
