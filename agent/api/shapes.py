"""Runtime objects in the Docker Engine API's JSON shapes: container summaries and inspect, stats."""

from __future__ import annotations

import math
import os
import time
from typing import Any

from agent.runtime.containers.cgroups import CgroupStats
from agent.runtime.containers.config import Mount
from agent.runtime.containers.introspect import docker_inspect
from agent.runtime.containers.state import ContainerRecord, rfc3339


def human_duration(seconds: float) -> str:
    """Docker's ``HumanDuration`` (go-units): "Less than a second", "3 seconds", "About a minute"…"""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{math.floor(seconds / 3600) // 24 // 365} years"


def status_text(record: ContainerRecord, now_ns: int | None = None) -> str:
    """The ``Status`` column of ``docker ps``: "Up 3 seconds", "Exited (0) 2 seconds ago", "Created"…"""
    state = record.state
    now = time.time_ns() if now_ns is None else now_ns
    if state.status in ("running", "paused"):
        up = "Up " + human_duration((now - state.started_at) / 1e9)
        return up + " (Paused)" if state.status == "paused" else up
    if state.status == "restarting":
        return f"Restarting ({state.exit_code}) {human_duration((now - state.finished_at) / 1e9)} ago"
    if state.status == "removing":
        return "Removal In Progress"
    if state.status == "dead":
        return "Dead"
    if not state.started_at:
        return "Created"
    if not state.finished_at:
        return ""
    return f"Exited ({state.exit_code}) {human_duration((now - state.finished_at) / 1e9)} ago"


def mount_point(mount: Mount) -> dict[str, Any]:
    """One entry of ``Mounts`` in inspect and list output."""
    out: dict[str, Any] = {"Type": mount.type}
    if mount.type == "volume":
        out["Name"] = mount.source
    out.update(
        {
            "Source": mount.host_path,
            "Destination": mount.target,
            "Mode": "ro" if mount.read_only else ("" if mount.type == "volume" else "rw"),
            "RW": not mount.read_only,
            "Propagation": mount.propagation if mount.type == "bind" else "",
        }
    )
    if mount.type == "volume":
        out["Driver"] = "local"
    return out


def _binds(record: ContainerRecord) -> list[str] | None:
    binds = [
        f"{m.source}:{m.target}" + (":ro" if m.read_only else "")
        for m in record.config.mounts
        if m.type == "bind" or m.named
    ]
    return binds or None


def container_summary(record: ContainerRecord, now_ns: int | None = None) -> dict[str, Any]:
    """One element of ``GET /containers/json``."""
    cfg = record.config
    return {
        "Id": record.id,
        "Names": ["/" + record.name],
        "Image": cfg.image,
        "ImageID": cfg.image_id,
        "Command": " ".join([record.path, *record.args]),
        "Created": record.created // 1_000_000_000,
        "Ports": [],
        "Labels": {**record.image_config.labels, **cfg.labels},
        "State": record.state.status,
        "Status": status_text(record, now_ns),
        "HostConfig": {"NetworkMode": cfg.network_mode},
        "NetworkSettings": {"Networks": {}},
        "Mounts": [mount_point(m) for m in cfg.mounts],
    }


def container_inspect(record: ContainerRecord, driver: str, log_path: str) -> dict[str, Any]:
    """``GET /containers/{id}/json``: the runtime's inspect plus what Docker's clients rely on."""
    data = docker_inspect(record)
    data["Driver"] = driver
    data["GraphDriver"]["Name"] = driver
    data["Platform"] = "linux"
    data["LogPath"] = log_path
    data["MountLabel"] = data["ProcessLabel"] = data["AppArmorProfile"] = ""
    data["Mounts"] = [mount_point(m) for m in record.config.mounts]
    data["HostConfig"]["Binds"] = _binds(record)
    data["HostConfig"]["VolumesFrom"] = None
    config = data["Config"]
    # Docker's clients read these to choose how to attach and how to read logs (no TTY: multiplexed).
    for key in ("AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin", "StdinOnce"):
        config[key] = False
    volumes: dict[str, dict[str, str]] = {
        m.target: {} for m in record.config.mounts if m.type == "volume" and not m.named
    }
    config["Volumes"] = {**(config.get("Volumes") or {}), **volumes} or None
    data["NetworkSettings"] = {"Networks": {}, "Ports": {}, "IPAddress": "", "SandboxKey": ""}
    return data


def _system_cpu_ns() -> int:
    """Host CPU time (all CPUs, every state) in nanoseconds, as Docker's ``system_cpu_usage``."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return 0
    ticks = sum(int(v) for v in fields[:8])
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _cpu_block(stats: CgroupStats | None, system_ns: int) -> dict[str, Any]:
    return {
        "cpu_usage": {
            "total_usage": stats.cpu_usage_ns if stats else 0,
            "usage_in_kernelmode": stats.cpu_system_ns if stats else 0,
            "usage_in_usermode": stats.cpu_user_ns if stats else 0,
        },
        "system_cpu_usage": system_ns,
        "online_cpus": os.cpu_count() or 1,
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }


def host_memory() -> int:
    """Total RAM, Docker's memory limit for an unlimited container."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


class StatsSampler:
    """Turns cgroup samples into Docker's stats objects; keeps the previous one for ``precpu_stats``."""

    def __init__(self) -> None:
        self._previous: tuple[int, CgroupStats, int] | None = None

    def sample(self, record: ContainerRecord, stats: CgroupStats) -> dict[str, Any]:
        """The object ``GET /containers/{id}/stats`` returns for one sample."""
        now, system = time.time_ns(), _system_cpu_ns()
        pre_at, pre, pre_system = self._previous or (0, None, 0)
        self._previous = (now, stats, system)
        return {
            "read": rfc3339(now),
            "preread": rfc3339(pre_at),
            "id": record.id,
            "name": "/" + record.name,
            "pids_stats": {
                "current": stats.pids_current,
                **({"limit": stats.pids_limit} if stats.pids_limit else {}),
            },
            "num_procs": 0,
            "blkio_stats": {"io_service_bytes_recursive": None},
            "storage_stats": {},
            "cpu_stats": _cpu_block(stats, system),
            "precpu_stats": _cpu_block(pre, pre_system),
            "memory_stats": {
                "usage": stats.memory_usage,
                "max_usage": stats.memory_max_usage,
                "limit": stats.memory_limit or host_memory(),
                "stats": {"cache": stats.memory_cache},
                "failcnt": stats.oom_kills,
            },
        }
