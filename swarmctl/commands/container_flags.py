"""``container run``'s flags (Docker's) → a Docker Engine create body, with classic Swarm placement.

Placement rides in ``Env`` as classic Swarm had it: ``constraint:node==host1``, ``constraint:zone!=eu``,
``affinity:container==web``, ``affinity:image==redis`` (``==~``/``!=~`` soft), given with ``-e`` or built from
``--constraint EXPR``; the manager takes them out of ``Env`` and places the container (``--node NAME``
goes as the ``node`` query parameter, which pins it to that node if the expressions allow).
``--constraint`` takes either syntax; SwarmKit keys are written the classic way (``node.hostname==h1`` →
``constraint:node==h1``, ``node.labels.zone==eu`` → ``constraint:zone==eu``: classic Swarm looks a key up
among node labels, then engine labels).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import click

from api.objects import MountType
from scheduler import InvalidExpression
from scheduler.expr import parse_affinity, parse_constraint
from swarmctl.errors import InvalidValue
from swarmctl.specs import parse_mount
from swarmctl.units import merge_env, parse_bytes, parse_cpus, parse_int, parse_kv, read_env_file

F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_PLACEMENT_PREFIXES = ("constraint:", "affinity:")
_SWARMKIT_KEY = re.compile(
    r"^\s*(node\.id|node\.hostname|node\.role|node\.platform\.os|node\.platform\.arch|"
    r"node\.labels\.|engine\.labels\.)",
    re.IGNORECASE,
)
_BIND_MODES = {
    "rw", "ro", "z", "Z", "nocopy", "shared", "slave", "private", "rshared", "rslave", "rprivate",
    "consistent", "cached", "delegated",
}  # fmt: skip
_RESTART = ("no", "always", "unless-stopped", "on-failure")


# --- placement -------------------------------------------------------------------------------------------
def is_placement(entry: str) -> bool:
    """Whether an ``Env`` entry is a classic Swarm constraint or affinity."""
    return entry.strip()[:11].lower().startswith(_PLACEMENT_PREFIXES)


def check_placement(entry: str) -> str:
    """``entry`` if it parses as a classic constraint or affinity; InvalidValue otherwise."""
    try:
        if entry.strip().lower().startswith("affinity:"):
            parse_affinity(entry)
        else:
            parse_constraint(entry)
    except InvalidExpression as e:
        raise InvalidValue("constraint", entry, e.reason) from None
    return entry.strip()


def constraint_entry(expression: str) -> str:
    """``--constraint EXPR`` as an ``Env`` entry (see the module docstring)."""
    text = expression.strip()
    if is_placement(text):
        return check_placement(text)
    m = _SWARMKIT_KEY.match(text)
    if m is not None:
        key = m.group(1).lower()
        rest = text[m.end() :]
        if key in ("node.id", "node.hostname"):
            text = "node" + rest
        elif key in ("node.labels.", "engine.labels."):
            text = rest
        else:
            raise InvalidValue(
                "constraint",
                expression,
                f"{key} is not available for containers; use node, a label, storagedriver, kernelversion "
                "or operatingsystem",
            )
    return check_placement("constraint:" + text)


def env_entries(
    env: Sequence[str], env_files: Sequence[str], environ: dict[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """(variables, placement entries) from ``--env-file`` then ``-e`` (later ones win, as Docker's). A
    bare ``KEY`` takes its value from this environment, and is left out when it is not set there."""
    environ = dict(os.environ) if environ is None else environ
    variables: list[str] = []
    placement: list[str] = []
    for entry in [*(e for f in env_files for e in read_env_file(f)), *env]:
        if is_placement(entry):
            placement.append(check_placement(entry))
            continue
        key, sep, _ = entry.partition("=")
        if not key:
            raise InvalidValue("env", entry, "use KEY=VALUE")
        if not sep:
            if key not in environ:
                continue
            entry = f"{key}={environ[key]}"
        variables.append(entry)
    return list(merge_env(variables)), placement


# --- ports, volumes, restart ------------------------------------------------------------------------------
def _ports(text: str, value: str, what: str) -> list[int]:
    low, sep, high = value.partition("-")
    try:
        first, last = int(low), int(high) if sep else int(low)
    except ValueError:
        raise InvalidValue("publish", text, f"bad {what} port {value!r}") from None
    if not 0 < first <= last < 65536:
        raise InvalidValue("publish", text, f"bad {what} port {value!r} (1-65535)")
    return list(range(first, last + 1))


def parse_publish(text: str) -> list[tuple[str, str, str]]:
    """``-p [ip:][host_port:]container_port[/proto]`` → (``80/tcp``, host ip, host port) bindings."""
    rest, _, proto = text.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise InvalidValue("publish", text, f"unknown protocol {proto!r} (use tcp, udp or sctp)")
    ip = ""
    if rest.startswith("["):
        ip, sep, rest = rest[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise InvalidValue("publish", text, "use [ip:][host_port:]container_port[/protocol]")
        rest = rest[1:]
        parts = rest.split(":")
        if len(parts) == 1:
            raise InvalidValue("publish", text, "a host IP needs a host port field (ip::container_port)")
        host, container = parts[0], parts[1]
        if len(parts) > 2:
            raise InvalidValue("publish", text, "use [ip:][host_port:]container_port[/protocol]")
    else:
        parts = rest.split(":")
        if len(parts) > 3:
            raise InvalidValue("publish", text, "use [ip:][host_port:]container_port[/protocol]")
        container = parts[-1]
        host = parts[-2] if len(parts) >= 2 else ""
        ip = parts[0] if len(parts) == 3 else ""
    targets = _ports(text, container, "container")
    if not host:
        return [(f"{t}/{proto}", ip, "") for t in targets]
    published = _ports(text, host, "host")
    if len(targets) == 1 and len(published) > 1:
        return [(f"{targets[0]}/{proto}", ip, host)]  # the engine picks a free port of the range
    if len(published) != len(targets):
        raise InvalidValue("publish", text, "host and container port ranges differ in size")
    return [(f"{t}/{proto}", ip, str(p)) for t, p in zip(targets, published, strict=True)]


def parse_expose(text: str) -> list[str]:
    """``--expose 80``, ``80/udp`` or ``8000-8010``: the ports as ``ExposedPorts`` keys."""
    value, _, proto = text.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in ("tcp", "udp", "sctp"):
        raise InvalidValue("expose", text, f"unknown protocol {proto!r} (use tcp, udp or sctp)")
    try:
        return [f"{p}/{proto}" for p in _ports(text, value, "container")]
    except InvalidValue:
        raise InvalidValue(
            "expose", text, "use PORT[/PROTO] or a range, e.g. 80, 53/udp, 8000-8010"
        ) from None


def parse_volume(text: str) -> tuple[str, str]:
    """``-v``: ("bind", the entry for HostConfig.Binds) or ("anonymous", the container path)."""
    parts = text.split(":")
    if len(parts) == 1:
        if not text.startswith("/"):
            raise InvalidValue("volume", text, "a container path must be absolute")
        return "anonymous", text
    if len(parts) > 3 or not parts[0]:
        raise InvalidValue("volume", text, "use [SOURCE:]TARGET[:OPTIONS]")
    if not parts[1].startswith("/"):
        raise InvalidValue("volume", text, f"the container path {parts[1]!r} must be absolute")
    if len(parts) == 3:
        unknown = [m for m in parts[2].split(",") if m not in _BIND_MODES]
        if unknown:
            raise InvalidValue("volume", text, f"unknown option {unknown[0]!r}")
    return "bind", text


def mount_body(text: str) -> dict[str, Any]:
    """``--mount type=…,source=…,target=…[,readonly]`` as an Engine API mount."""
    m = parse_mount(text)
    body: dict[str, Any] = {"Type": m.type.value, "Target": m.target, "ReadOnly": m.read_only}
    if m.source and m.type is not MountType.TMPFS:
        body["Source"] = m.source
    return body


def parse_restart(text: str) -> dict[str, Any]:
    """``no``, ``always``, ``unless-stopped`` or ``on-failure[:N]``."""
    name, sep, count = text.strip().partition(":")
    if name not in _RESTART:
        raise InvalidValue(
            "restart policy", text, "use no, always, unless-stopped or on-failure[:max-retries]"
        )
    if sep and name != "on-failure":
        raise InvalidValue("restart policy", text, "only on-failure takes a maximum retry count")
    retries = parse_int(count, "restart retries") if sep else 0
    return {"Name": "" if name == "no" else name, "MaximumRetryCount": retries}


# --- the create body --------------------------------------------------------------------------------------
def create_body(o: dict[str, Any], image: str, command: Sequence[str]) -> dict[str, Any]:
    """The Docker Engine create body for ``container run``'s options ``o`` (see :func:`run_options`);
    ``--node`` is not in it (the manager takes it as a query parameter)."""
    if o.get("tty") or o.get("interactive"):
        raise click.UsageError(
            "a TTY and stdin are not supported (-t/--tty, -i/--interactive): run without them"
        )
    if o.get("name") and not _NAME.match(o["name"]):
        raise InvalidValue("name", o["name"], "only [a-zA-Z0-9][a-zA-Z0-9_.-]+ are allowed")
    restart = parse_restart(o.get("restart") or "no")
    if o.get("rm") and restart["Name"]:
        raise click.UsageError("conflicting options: --restart and --rm")
    variables, placement = env_entries(o.get("env") or (), o.get("env_file") or ())
    placement += [constraint_entry(c) for c in o.get("constraint") or ()]
    body: dict[str, Any] = {"Image": image}
    if command:
        body["Cmd"] = list(command)
    if o.get("entrypoint") is not None:
        body["Entrypoint"] = [o["entrypoint"]]
    if variables or placement:
        body["Env"] = [*variables, *placement]
    labels = dict(parse_kv(x, "label", need_value=False) for x in o.get("label") or ())
    if labels:
        body["Labels"] = labels
    for flag, key in (("workdir", "WorkingDir"), ("user", "User"), ("hostname", "Hostname")):
        if o.get(flag):
            body[key] = o[flag]
    if o.get("stop_signal"):
        body["StopSignal"] = o["stop_signal"]
    if o.get("stop_timeout") is not None:
        body["StopTimeout"] = o["stop_timeout"]
    detach = bool(o.get("detach"))
    body.update(
        AttachStdin=False, AttachStdout=not detach, AttachStderr=not detach, Tty=False, OpenStdin=False
    )
    body["HostConfig"] = host_config(o, restart, detach)
    exposed = [port for e in o.get("expose") or () for port in parse_expose(e)]
    exposed += [port for p in o.get("publish") or () for port, _, _ in parse_publish(p)]
    if exposed:
        body["ExposedPorts"] = {port: {} for port in exposed}
    anonymous = [t for kind, t in map(parse_volume, o.get("volume") or ()) if kind == "anonymous"]
    if anonymous:
        body["Volumes"] = {t: {} for t in anonymous}
    return body


def host_config(o: dict[str, Any], restart: dict[str, Any], detach: bool) -> dict[str, Any]:
    host: dict[str, Any] = {}
    binds = [t for kind, t in map(parse_volume, o.get("volume") or ()) if kind == "bind"]
    if binds:
        host["Binds"] = binds
    mounts = [mount_body(m) for m in o.get("mount") or ()]
    if mounts:
        host["Mounts"] = mounts
    port_bindings: dict[str, list[dict[str, str]]] = {}
    for p in o.get("publish") or ():
        for port, ip, host_port in parse_publish(p):
            port_bindings.setdefault(port, []).append({"HostIp": ip, "HostPort": host_port})
    if port_bindings:
        host["PortBindings"] = port_bindings
    if o.get("publish_all"):
        host["PublishAllPorts"] = True
    if o.get("network"):
        host["NetworkMode"] = o["network"]
    if restart["Name"]:
        host["RestartPolicy"] = restart
    # Attached, the command removes the container itself once it has read the exit code; detached, the
    # engine does it when the container stops (docker run -d --rm).
    if o.get("rm") and detach:
        host["AutoRemove"] = True
    if o.get("volumes_from"):
        host["VolumesFrom"] = list(o["volumes_from"])
    if o.get("memory"):
        host["Memory"] = parse_bytes(o["memory"])
    if o.get("cpus"):
        host["NanoCpus"] = parse_cpus(o["cpus"])
    return host


def _many(*names: str, metavar: str, help: str) -> Callable[[F], F]:
    return click.option(*names, multiple=True, metavar=metavar, help=help)


def run_options(f: F) -> F:
    """``container run``'s options, Docker's names."""
    options: Iterable[Callable[[F], F]] = [
        click.option(
            "-d", "--detach", is_flag=True, help="Run in the background and print the container ID."
        ),
        click.option("--name", default="", help="Assign a name to the container."),
        _many(
            "-e",
            "--env",
            metavar="KEY=VALUE",
            help="Set an environment variable, or a constraint:/affinity:.",
        ),
        _many("--env-file", metavar="FILE", help="Read environment variables from a file."),
        _many("-l", "--label", metavar="KEY=VALUE", help="Set a container label."),
        _many("-p", "--publish", metavar="[IP:]HOST:CONTAINER", help="Publish a container port."),
        click.option(
            "-P", "--publish-all", is_flag=True, help="Publish every exposed port to a random port."
        ),
        _many("--expose", metavar="PORT[/PROTO]", help="Expose a port or a range of ports (for -P)."),
        _many("-v", "--volume", metavar="[SRC:]DST[:OPTS]", help="Bind mount a volume."),
        _many("--mount", metavar="type=…,source=…,target=…", help="Attach a filesystem mount."),
        _many("--volumes-from", metavar="CONTAINER", help="Mount the volumes of a container."),
        click.option(
            "--network", "--net", default="", help="Connect the container to a network (host, none)."
        ),
        click.option(
            "--restart", default="no", help="Restart policy: no, always, unless-stopped, on-failure[:N]."
        ),
        click.option("--rm", is_flag=True, help="Remove the container when it exits."),
        click.option("-w", "--workdir", default="", help="Working directory inside the container."),
        click.option("-u", "--user", default="", help="Username or UID (format: <name|uid>[:<group|gid>])."),
        click.option("--entrypoint", default=None, help="Overwrite the default ENTRYPOINT of the image."),
        click.option("--hostname", default="", help="Container host name."),
        click.option("-m", "--memory", default="", help="Memory limit (512M, 1G)."),
        click.option("--cpus", default="", help="Number of CPUs (0.5)."),
        click.option("--stop-signal", default="", help="Signal to stop the container."),
        click.option("--stop-timeout", type=int, default=None, help="Seconds to wait before killing it."),
        _many("--constraint", metavar="EXPR", help="Placement constraint (node==h1, zone!=eu, affinity:…)."),
        click.option("--node", default="", help="Run on this node (hostname or id)."),
        click.option("-t", "--tty", is_flag=True, hidden=True),
        click.option("-i", "--interactive", is_flag=True, hidden=True),
    ]
    for option in reversed(list(options)):
        f = option(f)
    return f
