"""Docker's service flag syntaxes, parsed into the object model's pieces.

Used by ``service create``/``update`` (flags) and by the stack loader (Compose values), so both read
``8080:80/udp``, ``type=volume,source=data,target=/data`` or ``spread=node.labels.zone`` the same way.
"""

from __future__ import annotations

import re
import shlex

from api.objects import (
    HealthConfig,
    Mount,
    MountType,
    NetworkAttachmentConfig,
    PlacementPreference,
    PortConfig,
    PortProtocol,
    PublishMode,
)
from swarmctl.errors import InvalidValue
from swarmctl.units import parse_bool, parse_csv_options, parse_int

_SHORT_PORT = re.compile(
    r"^(?:(?P<published>\d+(?:-\d+)?):)?(?P<target>\d+(?:-\d+)?)(?:/(?P<proto>[a-zA-Z]+))?$"
)


def _protocol(value: str, text: str) -> PortProtocol:
    try:
        return PortProtocol(value.lower())
    except ValueError:
        raise InvalidValue("port", text, f"unknown protocol {value!r} (use tcp, udp or sctp)") from None


def _port_range(value: str, text: str) -> list[int]:
    low, _, high = value.partition("-")
    first, last = int(low), int(high or low)
    if last < first:
        raise InvalidValue("port", text, f"bad range {value}")
    ports = list(range(first, last + 1))
    if not all(0 < p < 65536 for p in ports):
        raise InvalidValue("port", text, "ports must be between 1 and 65535")
    return ports


def parse_port(text: str) -> tuple[PortConfig, ...]:
    """``80``, ``8080:80``, ``8080:80/udp``, ``8000-8001:80-81`` or ``published=8080,target=80,mode=host``."""
    text = text.strip()
    if "=" in text:
        return (_long_port(text),)
    m = _SHORT_PORT.match(text)
    if m is None:
        if text.count(":") >= 2:
            raise InvalidValue("port", text, "a host IP in a published port is not supported")
        raise InvalidValue("port", text, "use [published:]target[/protocol], e.g. 8080:80/tcp")
    proto = _protocol(m.group("proto") or "tcp", text)
    targets = _port_range(m.group("target"), text)
    published = _port_range(m.group("published"), text) if m.group("published") else [0] * len(targets)
    if len(published) != len(targets):
        raise InvalidValue("port", text, "published and target ranges differ in size")
    return tuple(
        PortConfig(protocol=proto, target_port=t, published_port=p)
        for p, t in zip(published, targets, strict=True)
    )


def _long_port(text: str) -> PortConfig:
    opts = parse_csv_options(text, "port")
    unknown = set(opts) - {"target", "published", "protocol", "mode", "name"}
    if unknown:
        raise InvalidValue("port", text, f"unknown field {sorted(unknown)[0]!r}")
    if "target" not in opts:
        raise InvalidValue("port", text, "target is required")
    mode = opts.get("mode", "ingress").lower()
    try:
        publish_mode = PublishMode(mode)
    except ValueError:
        raise InvalidValue("port", text, f"unknown mode {mode!r} (use ingress or host)") from None
    return make_port(
        text,
        target=opts["target"],
        published=opts.get("published") or 0,
        protocol=opts.get("protocol", "tcp"),
        mode=publish_mode,
        name=opts.get("name", ""),
    )


def make_port(
    text: str,
    *,
    target: str | int,
    published: str | int = 0,
    protocol: str = "tcp",
    mode: PublishMode = PublishMode.INGRESS,
    name: str = "",
) -> PortConfig:
    """One port from its long-form fields (shared with Compose's long port syntax)."""
    tp = parse_int(str(target), "target port", minimum=1)
    pp = parse_int(str(published), "published port", minimum=0)
    if tp > 65535 or pp > 65535:
        raise InvalidValue("port", text, "ports must be between 1 and 65535")
    return PortConfig(
        name=name, protocol=_protocol(protocol, text), target_port=tp, published_port=pp, publish_mode=mode
    )


def format_port(p: PortConfig) -> str:
    """``*:8080->80/tcp`` as ``docker service ls`` shows a published port."""
    published = str(p.published_port) if p.published_port else ""
    return f"*:{published}->{p.target_port}/{p.protocol.value}"


_MOUNT_KEYS = {"type", "source", "src", "target", "destination", "dst", "readonly", "ro", "read-only"}


def parse_mount(text: str) -> Mount:
    """Docker's ``--mount type=volume,source=data,target=/data,readonly``."""
    opts = parse_csv_options(text, "mount")
    unknown = set(opts) - _MOUNT_KEYS
    if unknown:
        raise InvalidValue("mount", text, f"unknown field {sorted(unknown)[0]!r}")
    kind = opts.get("type", "volume").lower()
    try:
        mtype = MountType(kind)
    except ValueError:
        raise InvalidValue("mount", text, f"unknown type {kind!r} (use volume, bind or tmpfs)") from None
    source = opts.get("source") or opts.get("src") or ""
    target = opts.get("target") or opts.get("destination") or opts.get("dst") or ""
    read_only = False
    for key in ("readonly", "ro", "read-only"):
        if key in opts:
            read_only = parse_bool(opts[key], "mount readonly")
    return check_mount(Mount(type=mtype, source=source, target=target, read_only=read_only), text)


def check_mount(m: Mount, text: str) -> Mount:
    """The rules Docker applies to a mount, with its wording."""
    if not m.target:
        raise InvalidValue("mount", text, "target is required")
    if not m.target.startswith("/"):
        raise InvalidValue("mount", text, f"target {m.target!r} must be an absolute path")
    if m.type is MountType.BIND and not m.source.startswith("/"):
        raise InvalidValue("mount", text, "a bind mount needs an absolute source path")
    if m.type is MountType.TMPFS and m.source:
        raise InvalidValue("mount", text, "a tmpfs mount takes no source")
    return m


def parse_network(text: str) -> NetworkAttachmentConfig:
    """``NAME`` or ``name=NAME,alias=A,alias=B``."""
    if "=" not in text:
        return NetworkAttachmentConfig(target=text)
    target, aliases = "", []
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = key.strip().lower()
        if key in ("name", "target"):
            target = value
        elif key == "alias":
            aliases.append(value)
        else:
            raise InvalidValue("network", text, f"unknown field {key!r} (use name=…,alias=…)")
    if not target:
        raise InvalidValue("network", text, "name is required")
    return NetworkAttachmentConfig(target=target, aliases=tuple(aliases))


def parse_secret(text: str) -> tuple[str, str]:
    """``NAME`` or ``source=NAME,target=FILE``: (secret name, file name under /run/secrets)."""
    if "=" not in text:
        return text, text
    opts = parse_csv_options(text, "secret")
    unknown = set(opts) - {"source", "src", "target", "uid", "gid", "mode"}
    if unknown:
        raise InvalidValue("secret", text, f"unknown field {sorted(unknown)[0]!r}")
    source = opts.get("source") or opts.get("src") or ""
    if not source:
        raise InvalidValue("secret", text, "source is required")
    return source, opts.get("target") or source


def parse_preference(text: str) -> PlacementPreference:
    """``spread=node.labels.zone``."""
    strategy, sep, value = text.partition("=")
    if strategy.strip().lower() != "spread" or not sep or not value:
        raise InvalidValue(
            "placement preference", text, "use spread=<node attribute>, e.g. spread=node.labels.zone"
        )
    return PlacementPreference(spread=value.strip())


def command_words(value: str | list[str] | tuple[str, ...], what: str = "command") -> tuple[str, ...]:
    """A command as words: lists as they are, strings split as a shell would."""
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as e:
            raise InvalidValue(what, value, str(e)) from None
    return tuple(str(v) for v in value)


def health_test(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Docker's healthcheck test: a string runs in a shell; a list starts with CMD, CMD-SHELL or NONE."""
    if isinstance(value, str):
        return ("CMD-SHELL", value)
    words = tuple(str(v) for v in value)
    if not words:
        return ()
    if words[0] not in ("CMD", "CMD-SHELL", "NONE"):
        raise InvalidValue("healthcheck test", list(words), "a list must start with CMD, CMD-SHELL or NONE")
    return words


def healthcheck(
    base: HealthConfig | None,
    *,
    cmd: str | None = None,
    interval: int | None = None,
    timeout: int | None = None,
    retries: int | None = None,
    start_period: int | None = None,
    disable: bool = False,
) -> HealthConfig | None:
    """``base`` with the given health flags applied (``disable`` gives Docker's ["NONE"])."""
    if disable:
        if cmd is not None:
            raise InvalidValue("healthcheck", cmd, "--no-healthcheck conflicts with --health-cmd")
        return HealthConfig(test=("NONE",))
    if all(v is None for v in (cmd, interval, timeout, retries, start_period)):
        return base
    h = base or HealthConfig()
    return HealthConfig(
        test=health_test(cmd) if cmd is not None else h.test,
        interval_ns=h.interval_ns if interval is None else interval,
        timeout_ns=h.timeout_ns if timeout is None else timeout,
        retries=h.retries if retries is None else retries,
        start_period_ns=h.start_period_ns if start_period is None else start_period,
    )
