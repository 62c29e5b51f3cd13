"""Legacy container links (``--link name:alias`` on the default bridge).

A link gives the linking container an ``/etc/hosts`` entry for the target and the environment variables
the Docker user guide documents, computed exactly as Docker's ``links.ToEnv`` does::

    DB_NAME=/web/db
    DB_PORT=tcp://172.17.0.5:5432
    DB_PORT_5432_TCP=tcp://172.17.0.5:5432
    DB_PORT_5432_TCP_ADDR=172.17.0.5
    DB_PORT_5432_TCP_PORT=5432
    DB_PORT_5432_TCP_PROTO=tcp
    DB_ENV_POSTGRES_USER=…

Runs of consecutive ports of one protocol also get ``…_START`` / ``…_END`` variables.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.network.errors import InvalidNetworkConfig


def parse_link(spec: str) -> tuple[str, str]:
    """``name[:alias]`` → ``(name, alias)``; the alias defaults to the name."""
    name, _, alias = spec.partition(":")
    name = name.strip().lstrip("/")
    alias = alias.strip() or name
    if not name:
        raise InvalidNetworkConfig("--link", f"invalid link {spec!r}")
    return name, alias


def _sorted_ports(ports: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    # Docker's order: by number, tcp before other protocols on the same number.
    return sorted(set(ports), key=lambda p: (p[0], p[1] != "tcp", p[1]))


def link_env(
    alias: str,
    parent_name: str,
    target_ip: str,
    ports: Iterable[tuple[int, str]],
    target_env: Iterable[str] = (),
) -> list[str]:
    """The environment a link to ``alias`` (a container at ``target_ip`` exposing ``ports``) adds."""
    prefix = alias.upper().replace("-", "_")
    ordered = _sorted_ports(ports)
    env: list[str] = []
    if ordered:
        port, proto = ordered[0]
        env.append(f"{prefix}_PORT={proto}://{target_ip}:{port}")
    i = 0
    while i < len(ordered):
        port, proto = ordered[i]
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == (ordered[j][0] + 1, proto):
            j += 1
        if j > i:
            last = ordered[j][0]
            key = f"{prefix}_PORT_{port}_{proto.upper()}"
            env += [
                f"{key}_START={proto}://{target_ip}:{port}",
                f"{key}_ADDR={target_ip}",
                f"{key}_PROTO={proto}",
                f"{key}_PORT_START={port}",
                f"{key}_END={proto}://{target_ip}:{last}",
                f"{key}_PORT_END={last}",
            ]
            i = j + 1
        else:
            i += 1
    for port, proto in ordered:
        key = f"{prefix}_PORT_{port}_{proto.upper()}"
        env += [
            f"{key}={proto}://{target_ip}:{port}",
            f"{key}_ADDR={target_ip}",
            f"{key}_PORT={port}",
            f"{key}_PROTO={proto}",
        ]
    env.append(f"{prefix}_NAME=/{parent_name.lstrip('/')}/{alias}")
    for item in target_env:
        name, sep, value = item.partition("=")
        # Docker leaves out what image builds add and what would only confuse the linking container.
        if not sep or name in ("HOME", "PATH"):
            continue
        env.append(f"{prefix}_ENV_{name}={value}")
    return env


def link_hosts_entry(alias: str, target_name: str, target_ip: str) -> tuple[str, tuple[str, ...]]:
    """The ``/etc/hosts`` line a link adds: the alias, then the target's name if it differs."""
    names = (alias,) if alias == target_name else (alias, target_name)
    return target_ip, names
