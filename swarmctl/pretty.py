"""``inspect --pretty``: services and nodes as readable text, laid out like Docker's."""

from __future__ import annotations

from api import Node, Service
from api.objects import ServiceMode, UpdateConfig
from swarmctl.units import format_bytes, format_cpus, format_duration


def _lines(pairs: list[tuple[str, str]], indent: str = "") -> list[str]:
    # One value column for the whole page, as Docker's tabwriter output has.
    width = max(20, *(len(k) + 2 for k, _ in pairs)) - len(indent) if pairs else 0
    return [f"{indent}{k + ':':<{width}}{v}".rstrip() for k, v in pairs]


def _labels(labels: dict[str, str]) -> list[str]:
    return [f" {k}={v}" for k, v in sorted(labels.items())]


def _update_config(title: str, cfg: UpdateConfig) -> list[str]:
    return [
        f"{title}:",
        *_lines(
            [
                ("Parallelism", str(cfg.parallelism)),
                ("Delay", format_duration(cfg.delay_ns)),
                ("On failure", cfg.failure_action.value),
                ("Monitoring Period", format_duration(cfg.monitor_ns)),
                ("Max failure ratio", f"{cfg.max_failure_ratio:g}"),
                ("Update order", cfg.order.value),
            ],
            " ",
        ),
    ]


def pretty_service(s: Service) -> str:
    """A service as ``docker service inspect --pretty`` shows one."""
    spec, task = s.spec, s.spec.task
    c = task.container
    out = _lines([("ID", s.meta.id), ("Name", spec.annotations.name)])
    if spec.annotations.labels:
        out += ["Labels:", *_labels(spec.annotations.labels)]
    out += _lines([("Service Mode", spec.mode.value.capitalize())])
    if spec.mode is ServiceMode.REPLICATED:
        out += _lines([("Replicas", str(spec.replicas))], " ")
    if s.status.update_state.value != "none":
        out += [
            "UpdateStatus:",
            *_lines([("State", s.status.update_state.value), ("Message", s.status.update_message)], " "),
        ]
    p = task.placement
    if p.constraints or p.preferences or p.max_replicas:
        out.append("Placement:")
        pairs = []
        if p.constraints:
            pairs.append(("Constraints", "[" + " ".join(p.constraints) + "]"))
        if p.preferences:
            pairs.append(("Preferences", ", ".join(f"spread={x.spread}" for x in p.preferences)))
        if p.max_replicas:
            pairs.append(("Max Replicas Per Node", str(p.max_replicas)))
        out += _lines(pairs, " ")
    out += _update_config("UpdateConfig", spec.update_config)
    out += _update_config("RollbackConfig", spec.rollback_config)
    out.append("ContainerSpec:")
    pairs = [("Image", c.image)]
    if c.command:
        pairs.append(("Command", " ".join(c.command)))
    if c.args:
        pairs.append(("Args", " ".join(c.args)))
    if c.env:
        pairs.append(("Env", " ".join(c.env)))
    if c.dir:
        pairs.append(("Dir", c.dir))
    if c.user:
        pairs.append(("User", c.user))
    if c.healthcheck and c.healthcheck.test:
        pairs.append(("Healthcheck", " ".join(c.healthcheck.test)))
    out += _lines(pairs, " ")
    if c.mounts:
        out.append("Mounts:")
        for m in c.mounts:
            ro = ",readonly" if m.read_only else ""
            out.append(f" type={m.type.value},source={m.source},target={m.target}{ro}")
    if c.secrets:
        out.append("Secrets:")
        out += [f" {r.secret_name} -> /run/secrets/{r.target}" for r in c.secrets]
    res = task.resources
    if (
        res.reservations.nano_cpus
        or res.reservations.memory_bytes
        or res.limits.nano_cpus
        or res.limits.memory_bytes
    ):
        out.append("Resources:")
        for title, r in (("Reservations", res.reservations), ("Limits", res.limits)):
            if r.nano_cpus or r.memory_bytes:
                out.append(f" {title}:")
                if r.nano_cpus:
                    out.append(f"  CPU:     {format_cpus(r.nano_cpus)}")
                if r.memory_bytes:
                    out.append(f"  Memory:  {format_bytes(r.memory_bytes)}")
    rp = task.restart_policy
    out += [
        "RestartPolicy:",
        *_lines(
            [
                ("Condition", rp.condition.value),
                ("Delay", format_duration(rp.delay_ns)),
                ("Max attempts", str(rp.max_attempts)),
            ],
            " ",
        ),
    ]
    if task.networks:
        out += _lines([("Networks", " ".join(n.target for n in task.networks))])
    out += _lines([("Endpoint Mode", spec.endpoint.mode.value)])
    ports = s.status.endpoint.ports or spec.endpoint.ports
    if ports:
        out.append("Ports:")
        for port in ports:
            out += [
                f" PublishedPort = {port.published_port}",
                f"  Protocol = {port.protocol.value}",
                f"  TargetPort = {port.target_port}",
                f"  PublishMode = {port.publish_mode.value}",
            ]
    return "\n".join(out)


def pretty_node(n: Node) -> str:
    """A node as ``docker node inspect --pretty`` shows one."""
    d = n.status.description
    out = _lines([("ID", n.meta.id), ("Hostname", d.hostname)])
    if n.spec.annotations.labels:
        out += ["Labels:", *_labels(n.spec.annotations.labels)]
    out += _lines(
        [
            ("Joined at", n.meta.created_at.isoformat()),
            ("Status", ""),
        ]
    )
    out += _lines(
        [
            ("State", n.status.state.value.capitalize()),
            ("Availability", n.spec.availability.value.capitalize()),
            ("Address", n.status.addr),
        ],
        " ",
    )
    out += _lines([("Role", n.spec.role.value)])
    out += [
        "Platform:",
        *_lines([("Operating System", d.platform.os), ("Architecture", d.platform.architecture)], " "),
    ]
    out += [
        "Resources:",
        *_lines(
            [
                ("CPUs", format_cpus(d.resources.nano_cpus)),
                ("Memory", format_bytes(d.resources.memory_bytes)),
            ],
            " ",
        ),
    ]
    if d.engine_labels:
        out += ["Engine Labels:", *_labels(d.engine_labels)]
    if d.kernel_version:
        out += _lines([("Kernel Version", d.kernel_version)])
    return "\n".join(out)
