"""``--change`` lines of ``import`` and ``commit``: Dockerfile instructions applied to an image config.

Supported, as ``docker import`` supports them: ``CMD``, ``ENTRYPOINT``, ``ENV``, ``EXPOSE``, ``LABEL``,
``ONBUILD``, ``STOPSIGNAL``, ``USER``, ``VOLUME``, ``WORKDIR``. ``CMD`` and ``ENTRYPOINT`` take the JSON
(exec) form or the shell form (``CMD echo hi`` → ``["/bin/sh", "-c", "echo hi"]``).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from agent.runtime.errors import InvalidChange

INSTRUCTIONS = frozenset(
    {"CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "ONBUILD", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
)


def _json_array(text: str) -> list[str] | None:
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _pairs(line: str, args: str) -> list[tuple[str, str]]:
    """``k=v k2="v 2"`` → pairs; the legacy ``ENV key value with spaces`` form → one pair."""
    try:
        words = shlex.split(args)
    except ValueError as exc:
        raise InvalidChange(line, str(exc)) from None
    if not words:
        raise InvalidChange(line, "missing arguments")
    if "=" not in words[0]:
        key, _, value = args.strip().partition(" ")
        if not value.strip():
            raise InvalidChange(line, "expected key=value or key value")
        return [(key, value.strip())]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise InvalidChange(line, f"{word!r} is not key=value")
        pairs.append((key, value))
    return pairs


def _set_env(env: list[str], key: str, value: str) -> list[str]:
    out = [e for e in env if e.partition("=")[0] != key]
    out.append(f"{key}={value}")
    return out


def apply_changes(container: Mapping[str, Any], changes: Iterable[str]) -> dict[str, Any]:
    """A new container config (the ``config`` block of an image config) with ``changes`` applied."""
    config: dict[str, Any] = json.loads(json.dumps(dict(container)))
    for raw in changes:
        line = raw.strip()
        if not line:
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        args = args.strip()
        if instruction not in INSTRUCTIONS:
            raise InvalidChange(
                raw, f"{instruction} is not supported (use one of {', '.join(sorted(INSTRUCTIONS))})"
            )
        if not args:
            raise InvalidChange(raw, "missing arguments")
        if instruction in ("CMD", "ENTRYPOINT"):
            command = _json_array(args)
            key = "Cmd" if instruction == "CMD" else "Entrypoint"
            config[key] = command if command is not None else ["/bin/sh", "-c", args]
        elif instruction == "ENV":
            env = list(config.get("Env") or [])
            for key, value in _pairs(raw, args):
                env = _set_env(env, key, value)
            config["Env"] = env
        elif instruction == "LABEL":
            labels = dict(config.get("Labels") or {})
            labels.update(_pairs(raw, args))
            config["Labels"] = labels
        elif instruction == "EXPOSE":
            ports = dict(config.get("ExposedPorts") or {})
            for port in args.split():
                number, _, proto = port.partition("/")
                if (
                    not number.isdigit()
                    or not 0 < int(number) < 65536
                    or proto not in ("", "tcp", "udp", "sctp")
                ):
                    raise InvalidChange(raw, f"invalid port {port!r}")
                ports[f"{int(number)}/{proto or 'tcp'}"] = {}
            config["ExposedPorts"] = ports
        elif instruction == "VOLUME":
            paths = _json_array(args) or args.split()
            volumes = dict(config.get("Volumes") or {})
            volumes.update({p: {} for p in paths})
            config["Volumes"] = volumes
        elif instruction == "ONBUILD":
            config["OnBuild"] = [*(config.get("OnBuild") or []), args]
        else:
            key = {"STOPSIGNAL": "StopSignal", "USER": "User", "WORKDIR": "WorkingDir"}[instruction]
            config[key] = args
    return config
