"""Helpers for looking into containers: ``top`` parsing, exec process specs, Docker-shaped inspect JSON."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtime.containers.spec import merge_env, plan_process
from agent.runtime.containers.state import ContainerRecord, rfc3339
from agent.runtime.containers.users import resolve_user
from agent.runtime.errors import ContainerError, ContainerRuntimeError, InvalidContainerConfig

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_ADJECTIVES = (
    "brave",
    "calm",
    "eager",
    "fond",
    "gentle",
    "happy",
    "keen",
    "lucid",
    "merry",
    "nifty",
    "quiet",
    "sharp",
    "tender",
    "vivid",
    "witty",
    "zealous",
)
_NOUNS = (
    "albatross",
    "barracuda",
    "carp",
    "dolphin",
    "eel",
    "flounder",
    "grouper",
    "herring",
    "marlin",
    "minnow",
    "perch",
    "salmon",
    "sardine",
    "tuna",
    "wrasse",
    "zander",
)


def validate_name(name: str) -> str:
    """Docker's container name rule; a leading ``/`` is accepted and dropped."""
    name = name.lstrip("/")
    if not NAME_RE.match(name):
        raise InvalidContainerConfig(
            "name", f"invalid container name {name!r}, only [a-zA-Z0-9][a-zA-Z0-9_.-] allowed"
        )
    return name


def random_name(taken: Iterable[str]) -> str:
    """A fresh ``adjective_fish`` name not in ``taken``."""
    used = set(taken)
    while True:
        name = f"{random.choice(_ADJECTIVES)}_{random.choice(_NOUNS)}"
        if name not in used:
            return name
        name = f"{name}{random.randint(1, 9999)}"
        if name not in used:
            return name


@dataclass(frozen=True)
class TopResult:
    """``docker top``: column titles and one row per process."""

    titles: tuple[str, ...]
    processes: tuple[tuple[str, ...], ...]


def parse_ps(output: str, pids: Iterable[int]) -> TopResult:
    """Keep the rows of ``ps`` output whose PID belongs to the container (what Docker's top does)."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        raise ContainerRuntimeError("ps printed nothing")
    titles = lines[0].split()
    if "PID" not in titles:
        raise ContainerRuntimeError("ps output has no PID column; pass options that include it")
    pid_index = titles.index("PID")
    wanted = {str(p) for p in pids}
    rows = []
    for line in lines[1:]:
        fields = line.split()
        if len(fields) <= pid_index or fields[pid_index] not in wanted:
            continue
        head = fields[: len(titles) - 1]
        tail = " ".join(fields[len(titles) - 1 :])
        rows.append((*head, tail))
    return TopResult(tuple(titles), tuple(rows))


@dataclass(frozen=True)
class ExecResult:
    """The outcome of a non-interactive exec; ``error`` is set when the command could not be started."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    error: str = ""


def exec_process(
    base: Mapping[str, Any],
    rootfs: Path,
    cmd: Sequence[str],
    env: Sequence[str] = (),
    user: str | None = None,
    workdir: str | None = None,
) -> dict[str, Any]:
    """An OCI process for ``runc exec``: the container's own process with the command and overrides."""
    if not cmd:
        raise InvalidContainerConfig("cmd", "no command specified")
    process = dict(base)
    process["args"] = list(cmd)
    process["terminal"] = False
    process["env"] = merge_env(base.get("env", ()), env)
    if workdir:
        process["cwd"] = workdir
    if user is not None:
        resolved = resolve_user(rootfs, user)
        process["user"] = {"uid": resolved.uid, "gid": resolved.gid}
        if resolved.additional_gids:
            process["user"]["additionalGids"] = list(resolved.additional_gids)
    return process


def docker_inspect(record: ContainerRecord) -> dict[str, Any]:
    """The record in the shape of Docker's ``GET /containers/{id}/json`` (the fields this runtime has)."""
    cfg = record.config
    state = record.state
    plan = plan_process(record.id, cfg, record.image_config)
    labels = {**record.image_config.labels, **cfg.labels}
    res = cfg.resources
    return {
        "Id": record.id,
        "Created": rfc3339(record.created),
        "Path": record.path,
        "Args": list(record.args),
        "State": {
            "Status": state.status,
            "Running": state.status in ("running", "paused"),
            "Paused": state.status == "paused",
            "Restarting": state.status == "restarting",
            "OOMKilled": state.oom_killed,
            "Dead": state.status == "dead",
            "Pid": state.pid,
            "ExitCode": state.exit_code,
            "Error": state.error,
            "StartedAt": rfc3339(state.started_at),
            "FinishedAt": rfc3339(state.finished_at),
        },
        "Image": cfg.image_id or cfg.image,
        "Name": "/" + record.name,
        "RestartCount": state.restart_count,
        "Driver": "overlay",
        "HostConfig": {
            "Privileged": cfg.privileged,
            "ReadonlyRootfs": cfg.read_only,
            "CapAdd": list(cfg.cap_add) or None,
            "CapDrop": list(cfg.cap_drop) or None,
            "Init": cfg.init,
            "Tmpfs": dict(cfg.tmpfs) or None,
            "NetworkMode": cfg.network_mode,
            "RestartPolicy": {
                "Name": cfg.restart_policy.name,
                "MaximumRetryCount": cfg.restart_policy.maximum_retry_count,
            },
            "AutoRemove": cfg.auto_remove,
            "Memory": res.memory,
            "MemorySwap": res.memory_swap,
            "NanoCpus": res.nano_cpus,
            "CpuShares": res.cpu_shares,
            "PidsLimit": res.pids_limit or None,
            "Ulimits": [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in cfg.ulimits] or None,
            "SecurityOpt": (["no-new-privileges"] if cfg.no_new_privileges else [])
            + (["seccomp=unconfined"] if cfg.seccomp_profile == "unconfined" else [])
            or None,
        },
        "Config": {
            "Hostname": plan.hostname,
            "Domainname": cfg.domainname,
            "User": plan.user,
            "Env": list(plan.env),
            "Cmd": list(cfg.cmd if cfg.cmd is not None else record.image_config.cmd) or None,
            "Entrypoint": list(
                cfg.entrypoint if cfg.entrypoint is not None else record.image_config.entrypoint
            )
            or None,
            "Image": cfg.image,
            "WorkingDir": plan.cwd if plan.cwd != "/" or cfg.working_dir else "",
            "Labels": labels,
            "StopSignal": plan.stop_signal.name,
            "StopTimeout": cfg.stop_timeout,
            "ExposedPorts": {p: {} for p in record.image_config.exposed_ports} or None,
            "Volumes": {v: {} for v in record.image_config.volumes} or None,
        },
        "GraphDriver": {"Name": "overlay", "Data": {"MergedDir": record.rootfs}},
    }


def matches_filters(record: ContainerRecord, filters: Mapping[str, Sequence[str]]) -> bool:
    """Docker's list filters: ``label=k[=v]``, ``status``, ``name`` (substring), ``ancestor``, ``id``."""
    labels = {**record.image_config.labels, **record.config.labels}
    for key, values in filters.items():
        if not values:
            continue
        if key == "label":
            ok = any(
                (
                    v.partition("=")[0] in labels
                    and (not v.partition("=")[1] or labels[v.partition("=")[0]] == v.partition("=")[2])
                )
                for v in values
            )
        elif key == "status":
            ok = record.state.status in values
        elif key == "name":
            ok = any(v.lstrip("/") in record.name for v in values)
        elif key == "ancestor":
            ok = any(v in (record.config.image, record.config.image_id) for v in values)
        elif key == "id":
            ok = any(record.id.startswith(v) for v in values)
        else:
            raise ContainerError("", f"invalid filter {key!r}")
        if not ok:
            return False
    return True
