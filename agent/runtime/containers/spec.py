"""OCI runtime spec (``config.json``) generation with Docker's defaults.

Pure functions: the same inputs give the same spec, so unit tests can check every default without runc.
The only file read is the rootfs's /etc/passwd and /etc/group (for ``--user``).
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtime.containers import seccomp
from agent.runtime.containers.config import DEFAULT_PATH, ContainerConfig, ImageConfig, parse_signal
from agent.runtime.containers.users import ExecUser, resolve_user
from agent.runtime.errors import InvalidContainerConfig

OCI_VERSION = "1.0.2"
INIT_PATH_IN_CONTAINER = "/dev/init"

# Docker's default capability set (moby's oci/caps/defaults.go).
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# Every capability up to CAP_CHECKPOINT_RESTORE (40), in kernel order.
ALL_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# Devices a non-privileged container may use (runc adds its own defaults: null, zero, full, tty, random…).
_DEVICE_RULES: tuple[dict[str, Any], ...] = (
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},  # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},  # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},  # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},  # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},  # tty
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # pts
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},  # tun
)
_TMPFS_DEFAULT_OPTIONS = ("noexec", "nosuid", "nodev")
_CFS_PERIOD = 100_000


def normalize_capability(name: str) -> str:
    """``net_admin``, ``NET_ADMIN`` and ``CAP_NET_ADMIN`` all mean ``CAP_NET_ADMIN``."""
    upper = name.strip().upper()
    if upper == "ALL":
        return upper
    cap = upper if upper.startswith("CAP_") else "CAP_" + upper
    if cap not in ALL_CAPABILITIES:
        raise InvalidContainerConfig("cap_add/cap_drop", f"unknown capability {name!r}")
    return cap


def host_capabilities() -> tuple[str, ...]:
    """The capabilities this process may pass on (its bounding set): "all" for ``--privileged``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    mask = int(line.split()[1], 16)
                    return tuple(c for i, c in enumerate(ALL_CAPABILITIES) if mask & (1 << i))
    except OSError:
        pass
    return ALL_CAPABILITIES


def capabilities(
    cap_add: Iterable[str],
    cap_drop: Iterable[str],
    privileged: bool = False,
    available: Iterable[str] = ALL_CAPABILITIES,
) -> list[str]:
    """The capability set after ``--cap-add``/``--cap-drop``, in kernel order, as Docker computes it.

    ``available`` is what "all" means (Docker uses its own bounding set, so a container never asks the
    kernel for a capability the runtime itself lacks).
    """
    every = set(available)
    if privileged:
        return [c for c in ALL_CAPABILITIES if c in every]
    adds = {normalize_capability(c) for c in cap_add}
    drops = {normalize_capability(c) for c in cap_drop}
    if "ALL" in drops:
        base = set() if "ALL" not in adds else every
        result = base | (adds - {"ALL"})
    elif "ALL" in adds:
        result = every - drops
    else:
        result = (set(DEFAULT_CAPABILITIES) | adds) - drops
    return [c for c in ALL_CAPABILITIES if c in result]


def merge_env(*layers: Iterable[str]) -> list[str]:
    """Merge ``KEY=value`` lists; later layers win, first appearance keeps its position."""
    merged: dict[str, str] = {}
    for layer in layers:
        for item in layer:
            key, sep, value = item.partition("=")
            merged[key] = f"{key}={value}" if sep else key
    return list(merged.values())


@dataclass(frozen=True)
class ProcessPlan:
    """The resolved main process: what Docker shows as Path/Args/Config of a container."""

    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    user: str
    hostname: str
    stop_signal: signal.Signals


def plan_process(container_id: str, config: ContainerConfig, image: ImageConfig) -> ProcessPlan:
    """Merge the user's options with the image's defaults (entrypoint + cmd, env, workdir…)."""
    if config.entrypoint is not None:
        entrypoint = config.entrypoint
        # An explicit entrypoint resets the image's CMD, as in Docker.
        cmd = config.cmd if config.cmd is not None else ()
    else:
        entrypoint = image.entrypoint
        cmd = config.cmd if config.cmd is not None else image.cmd
    args = (*entrypoint, *cmd)
    if not args:
        raise InvalidContainerConfig("cmd", "no command specified")
    hostname = config.hostname or container_id[:12]
    env = merge_env([f"PATH={DEFAULT_PATH}"], image.env, [f"HOSTNAME={hostname}"], config.env)
    stop = parse_signal(config.stop_signal or image.stop_signal or "SIGTERM")
    return ProcessPlan(
        args=args,
        env=tuple(env),
        cwd=config.working_dir or image.working_dir or "/",
        user=config.user if config.user is not None else image.user,
        hostname=hostname,
        stop_signal=stop,
    )


@dataclass(frozen=True)
class SpecPaths:
    """Host paths the spec refers to."""

    rootfs: Path
    hostname_file: Path | None = None
    hosts_file: Path | None = None
    resolv_conf: Path | None = None
    init_binary: Path | None = None


def _mount(dest: str, type_: str, source: str, options: Iterable[str]) -> dict[str, Any]:
    return {"destination": dest, "type": type_, "source": source, "options": list(options)}


def _tmpfs_options(options: str) -> list[str]:
    opts = [o for o in options.split(",") if o]
    result = list(_TMPFS_DEFAULT_OPTIONS)
    # An explicit exec/suid/dev cancels Docker's default for it.
    for opposite, default in (("exec", "noexec"), ("suid", "nosuid"), ("dev", "nodev")):
        if opposite in opts and default in result:
            result.remove(default)
    return result + [o for o in opts if o not in result]


def process_spec(
    plan: ProcessPlan, user: ExecUser, config: ContainerConfig, caps: list[str]
) -> dict[str, Any]:
    """The OCI ``process`` object (also the base of ``runc exec --process``)."""
    env = list(plan.env)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={user.home}")
    process: dict[str, Any] = {
        "terminal": False,
        "user": {"uid": user.uid, "gid": user.gid},
        "args": list(plan.args),
        "env": env,
        "cwd": plan.cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "noNewPrivileges": config.no_new_privileges and not config.privileged,
    }
    if user.additional_gids:
        process["user"]["additionalGids"] = list(user.additional_gids)
    if config.ulimits:
        process["rlimits"] = [
            {"type": f"RLIMIT_{u.name.upper()}", "soft": u.soft, "hard": u.hard} for u in config.ulimits
        ]
    return process


def build_spec(
    container_id: str,
    config: ContainerConfig,
    image: ImageConfig,
    paths: SpecPaths,
    cgroups_path: str,
    cgroup_v2: bool,
    annotations: Mapping[str, str] | None = None,
    available_capabilities: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The whole OCI spec for one run of a container (``available_capabilities``: default the host's)."""
    config.validate()
    plan = plan_process(container_id, config, image)
    user = resolve_user(paths.rootfs, plan.user)
    available = host_capabilities() if available_capabilities is None else available_capabilities
    caps = capabilities(config.cap_add, config.cap_drop, config.privileged, available)
    process = process_spec(plan, user, config, caps)
    if config.init:
        if paths.init_binary is None:
            raise InvalidContainerConfig("init", "no init binary available on this host")
        process["args"] = [INIT_PATH_IN_CONTAINER, "--", *process["args"]]

    privileged = config.privileged
    host_network = config.network_mode == "host"
    ro = [] if privileged else ["ro"]
    mounts = [
        _mount("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
        _mount("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
        _mount(
            "/dev/pts",
            "devpts",
            "devpts",
            ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"),
        ),
        _mount("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", "size=65536k")),
        _mount("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
    ]
    if host_network:
        # sysfs cannot be mounted fresh without a network namespace of our own: bind the host's.
        mounts.append(_mount("/sys", "bind", "/sys", ("rbind", "nosuid", "noexec", "nodev", *ro)))
    else:
        mounts.append(_mount("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", *ro)))
    mounts.append(
        _mount("/sys/fs/cgroup", "cgroup", "cgroup", ("nosuid", "noexec", "nodev", "relatime", *ro))
    )
    user_mounts = [
        _mount(dest, "tmpfs", "tmpfs", _tmpfs_options(opts)) for dest, opts in sorted(config.tmpfs.items())
    ]
    for m in config.mounts:
        options = ["rbind", m.propagation, *(["ro"] if m.read_only else [])]
        user_mounts.append(_mount(m.target, "bind", m.host_path, options))
    # Parents before children (a volume at /data and a bind at /data/conf), as Docker orders them.
    user_mounts.sort(key=lambda m: len(Path(m["destination"]).parts))
    mounts.extend(user_mounts)
    for dest, src in (
        ("/etc/hostname", paths.hostname_file),
        ("/etc/hosts", paths.hosts_file),
        ("/etc/resolv.conf", paths.resolv_conf),
    ):
        if src is not None:
            mounts.append(_mount(dest, "bind", str(src), ("rbind", "rprivate")))
    if config.init and paths.init_binary is not None:
        mounts.append(_mount(INIT_PATH_IN_CONTAINER, "bind", str(paths.init_binary), ("bind", "ro")))

    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if config.network_mode == "none":
        namespaces.append({"type": "network"})
    elif config.network_mode.startswith("/"):
        namespaces.append({"type": "network", "path": config.network_mode})
    if cgroup_v2:
        namespaces.append({"type": "cgroup"})

    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": cgroups_path,
        "resources": _resources(config, privileged),
    }
    if not privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
        if config.seccomp_profile == "default":
            linux["seccomp"] = seccomp.default_profile(caps)

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": str(paths.rootfs), "readonly": config.read_only},
        "hostname": plan.hostname,
        "mounts": mounts,
        "linux": linux,
    }
    if config.domainname:
        spec["domainname"] = config.domainname
    if annotations:
        spec["annotations"] = dict(annotations)
    return spec


def _resources(config: ContainerConfig, privileged: bool) -> dict[str, Any]:
    res = config.resources
    resources: dict[str, Any] = {
        "devices": [{"allow": True, "access": "rwm"}] if privileged else [dict(r) for r in _DEVICE_RULES]
    }
    if res.memory:
        memory: dict[str, Any] = {"limit": res.memory}
        # Docker: with no --memory-swap, the container may use as much swap as memory.
        swap = res.memory_swap if res.memory_swap else 2 * res.memory
        memory["swap"] = swap
        resources["memory"] = memory
    cpu: dict[str, Any] = {}
    if res.cpu_shares:
        cpu["shares"] = res.cpu_shares
    if res.nano_cpus:
        cpu["period"] = _CFS_PERIOD
        cpu["quota"] = res.nano_cpus * _CFS_PERIOD // 1_000_000_000
    if cpu:
        resources["cpu"] = cpu
    if res.pids_limit:
        resources["pids"] = {"limit": res.pids_limit}
    return resources
