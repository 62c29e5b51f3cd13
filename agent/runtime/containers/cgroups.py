"""Reading a container's cgroup: stats, OOM kills, and cleanup, for cgroup v1 (and hybrid) and v2.

runc creates and removes the cgroups; this module only reads them, and removes what is left behind when a
container died in an unusual way. The container's cgroup path is the spec's absolute ``cgroupsPath``.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_CGROUP2_MAGIC_FILE = "cgroup.controllers"
V1_CONTROLLERS = (
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
)


def is_v2() -> bool:
    """True when /sys/fs/cgroup itself is the unified (cgroup2) hierarchy."""
    return (CGROUP_ROOT / _CGROUP2_MAGIC_FILE).exists()


@cache
def v1_mounts() -> dict[str, Path]:
    """Controller (and ``name=`` hierarchy) → mount point, from /proc/self/mountinfo."""
    mounts: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if len(fields) < 3:
                continue
            fstype, super_opts = fields[0], fields[2]
            mount_point = Path(left.split()[4])
            if fstype == "cgroup":
                for opt in super_opts.split(","):
                    if opt in V1_CONTROLLERS or opt.startswith("name="):
                        mounts.setdefault(opt, mount_point)
            elif fstype == "cgroup2" and mount_point != CGROUP_ROOT:
                mounts.setdefault("unified", mount_point)
    return mounts


def container_paths(cgroups_path: str) -> dict[str, Path]:
    """Every directory the container's cgroup occupies: one on v2, one per hierarchy on v1."""
    rel = cgroups_path.lstrip("/")
    if is_v2():
        return {"unified": CGROUP_ROOT / rel}
    return {name: mount / rel for name, mount in v1_mounts().items()}


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _flat_keyed(path: Path) -> dict[str, int]:
    text = _read(path) or ""
    result: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            result[key] = int(value)
    return result


@dataclass(frozen=True)
class CgroupStats:
    """One sample of a container's resource use."""

    cpu_usage_ns: int = 0
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    memory_usage: int = 0
    memory_max_usage: int = 0
    memory_limit: int | None = None
    memory_cache: int = 0
    pids_current: int = 0
    pids_limit: int | None = None
    oom_kills: int = 0


def _user_hz() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        return 100


def read_stats(cgroups_path: str) -> CgroupStats:
    """Sample CPU, memory and pids counters; missing files read as zero."""
    paths = container_paths(cgroups_path)
    if "unified" in paths and is_v2():
        base = paths["unified"]
        cpu = _flat_keyed(base / "cpu.stat")
        mem_stat = _flat_keyed(base / "memory.stat")
        events = _flat_keyed(base / "memory.events")
        return CgroupStats(
            cpu_usage_ns=cpu.get("usage_usec", 0) * 1000,
            cpu_user_ns=cpu.get("user_usec", 0) * 1000,
            cpu_system_ns=cpu.get("system_usec", 0) * 1000,
            memory_usage=_read_int(base / "memory.current") or 0,
            memory_max_usage=_read_int(base / "memory.peak") or 0,
            memory_limit=_read_int(base / "memory.max"),
            memory_cache=mem_stat.get("file", 0),
            pids_current=_read_int(base / "pids.current") or 0,
            pids_limit=_read_int(base / "pids.max"),
            oom_kills=events.get("oom_kill", 0),
        )
    hz = _user_hz()
    cpuacct = paths.get("cpuacct", Path("/nonexistent"))
    memory = paths.get("memory", Path("/nonexistent"))
    pids = paths.get("pids", Path("/nonexistent"))
    cpu_stat = _flat_keyed(cpuacct / "cpuacct.stat")
    mem_stat = _flat_keyed(memory / "memory.stat")
    limit = _read_int(memory / "memory.limit_in_bytes")
    if limit is not None and limit >= (1 << 62):
        limit = None  # v1 reports "unlimited" as a page-rounded LONG_MAX
    return CgroupStats(
        cpu_usage_ns=_read_int(cpuacct / "cpuacct.usage") or 0,
        cpu_user_ns=cpu_stat.get("user", 0) * 1_000_000_000 // hz,
        cpu_system_ns=cpu_stat.get("system", 0) * 1_000_000_000 // hz,
        memory_usage=_read_int(memory / "memory.usage_in_bytes") or 0,
        memory_max_usage=_read_int(memory / "memory.max_usage_in_bytes") or 0,
        memory_limit=limit,
        memory_cache=mem_stat.get("cache", 0),
        pids_current=_read_int(pids / "pids.current") or 0,
        pids_limit=_read_int(pids / "pids.max"),
        oom_kills=oom_kill_count(cgroups_path),
    )


def oom_kill_count(cgroups_path: str) -> int:
    """How many processes the kernel OOM killer killed in this cgroup (0 if it is gone)."""
    paths = container_paths(cgroups_path)
    if is_v2():
        return _flat_keyed(paths["unified"] / "memory.events").get("oom_kill", 0)
    memory = paths.get("memory")
    if memory is None:
        return 0
    control = _flat_keyed(memory / "memory.oom_control")
    return control.get("oom_kill", 0)


def existing_paths(cgroups_path: str) -> list[Path]:
    """The container's cgroup directories that still exist."""
    return [p for p in container_paths(cgroups_path).values() if p.is_dir()]


def remove(cgroups_path: str) -> None:
    """Remove the container's (empty) cgroup directories, children first; ignore busy or missing ones."""
    for path in existing_paths(cgroups_path):
        for dirpath, _dirnames, _files in sorted(os.walk(path, topdown=False), key=lambda w: -len(w[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def remove_parent_if_empty(parent: str) -> None:
    """Remove a cgroup parent directory (e.g. ``/shoal``) in every hierarchy if no container uses it."""
    for path in container_paths(parent).values():
        with contextlib.suppress(OSError):
            os.rmdir(path)
