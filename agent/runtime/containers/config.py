"""Container and image configuration: frozen values parsed once at the boundary.

``ImageConfig`` is the part of an OCI image's ``config`` object a container needs; ``ContainerConfig``
is what a user asks for (``docker create`` options). Both are immutable; the runtime merges them into an
OCI spec in :mod:`agent.runtime.containers.spec`.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.runtime.errors import InvalidContainerConfig

RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
NETWORK_MODES = ("none", "host")
DEFAULT_STOP_TIMEOUT = 10
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(value: str | int) -> int:
    """Parse a byte size the way Docker's CLI does (``64m``, ``1g``, ``512k``, ``1024``)."""
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(value)
    if match is None:
        raise InvalidContainerConfig("size", f"invalid size {value!r}")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def parse_signal(value: str | int) -> signal.Signals:
    """Parse ``SIGTERM``, ``TERM``, ``term`` or ``15`` into a signal."""
    if isinstance(value, int) or value.isdigit():
        try:
            return signal.Signals(int(value))
        except ValueError:
            raise InvalidContainerConfig("signal", f"invalid signal {value!r}") from None
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return signal.Signals[name]
    except KeyError:
        raise InvalidContainerConfig("signal", f"invalid signal {value!r}") from None


@dataclass(frozen=True)
class ImageConfig:
    """The runtime-relevant part of an OCI image configuration (the ``config`` object of the image JSON)."""

    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_oci(cls, config: Mapping[str, Any] | None) -> ImageConfig:
        """Build from the OCI/Docker image ``config`` object (keys ``Cmd``, ``Entrypoint``, ``Env``…)."""
        config = config or {}
        return cls(
            cmd=tuple(config.get("Cmd") or ()),
            entrypoint=tuple(config.get("Entrypoint") or ()),
            env=tuple(config.get("Env") or ()),
            working_dir=config.get("WorkingDir") or "",
            user=config.get("User") or "",
            stop_signal=config.get("StopSignal") or "",
            exposed_ports=tuple(sorted(config.get("ExposedPorts") or {})),
            volumes=tuple(sorted(config.get("Volumes") or {})),
            labels=dict(config.get("Labels") or {}),
        )


@dataclass(frozen=True)
class Ulimit:
    """One ``--ulimit name=soft[:hard]``; ``name`` without the ``RLIMIT_`` prefix, lower case."""

    name: str
    soft: int
    hard: int

    @classmethod
    def parse(cls, text: str) -> Ulimit:
        """Parse ``nofile=1024:2048`` or ``nproc=512``."""
        name, sep, values = text.partition("=")
        if not sep or not name:
            raise InvalidContainerConfig("ulimits", f"invalid ulimit {text!r}")
        soft_s, _, hard_s = values.partition(":")
        try:
            soft = int(soft_s)
            hard = int(hard_s) if hard_s else soft
        except ValueError:
            raise InvalidContainerConfig("ulimits", f"invalid ulimit {text!r}") from None
        ulimit = cls(name.lower(), soft, hard)
        ulimit.validate()
        return ulimit

    def validate(self) -> None:
        """Refuse unknown names and soft limits above hard ones."""
        if self.name.upper() not in _RLIMITS:
            raise InvalidContainerConfig("ulimits", f"unknown ulimit {self.name!r}")
        if self.soft > self.hard:
            raise InvalidContainerConfig("ulimits", f"{self.name}: soft limit {self.soft} > hard {self.hard}")


_RLIMITS = (
    "AS",
    "CORE",
    "CPU",
    "DATA",
    "FSIZE",
    "LOCKS",
    "MEMLOCK",
    "MSGQUEUE",
    "NICE",
    "NOFILE",
    "NPROC",
    "RSS",
    "RTPRIO",
    "RTTIME",
    "SIGPENDING",
    "STACK",
)


@dataclass(frozen=True)
class RestartPolicy:
    """``--restart``: ``no``, ``on-failure[:max]``, ``always`` or ``unless-stopped``."""

    name: str = "no"
    maximum_retry_count: int = 0

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        """Parse the CLI form, e.g. ``on-failure:3``."""
        name, _, count = text.partition(":")
        name = name or "no"
        if name not in RESTART_POLICIES:
            raise InvalidContainerConfig("restart", f"invalid restart policy {text!r}")
        if count and name != "on-failure":
            raise InvalidContainerConfig(
                "restart", f"maximum retry count only applies to on-failure: {text!r}"
            )
        try:
            retries = int(count) if count else 0
        except ValueError:
            raise InvalidContainerConfig("restart", f"invalid maximum retry count in {text!r}") from None
        if retries < 0:
            raise InvalidContainerConfig("restart", "maximum retry count cannot be negative")
        return cls(name, retries)

    def __str__(self) -> str:
        if self.name == "on-failure" and self.maximum_retry_count:
            return f"on-failure:{self.maximum_retry_count}"
        return self.name


@dataclass(frozen=True)
class Resources:
    """cgroup limits. ``memory_swap`` is memory plus swap as Docker counts it (-1: unlimited swap)."""

    memory: int = 0
    memory_swap: int = 0
    nano_cpus: int = 0
    cpu_shares: int = 0
    pids_limit: int = 0

    def validate(self) -> None:
        """Refuse limits the kernel or Docker would refuse."""
        if self.memory and self.memory < 6 * 1024 * 1024:
            raise InvalidContainerConfig("memory", "minimum memory limit allowed is 6MB")
        if self.memory_swap > 0 and self.memory and self.memory_swap < self.memory:
            raise InvalidContainerConfig("memory_swap", "must be larger than the memory limit")
        if self.memory_swap > 0 and not self.memory:
            raise InvalidContainerConfig("memory_swap", "set a memory limit together with memory-swap")
        if self.nano_cpus < 0 or self.cpu_shares < 0:
            raise InvalidContainerConfig("cpus", "cannot be negative")
        if self.nano_cpus and self.nano_cpus < 10_000_000:
            raise InvalidContainerConfig("cpus", "minimum is 0.01")


def cpus_to_nano(cpus: float | str) -> int:
    """``--cpus 1.5`` as Docker's NanoCPUs."""
    try:
        return round(float(cpus) * 1e9)
    except ValueError:
        raise InvalidContainerConfig("cpus", f"invalid value {cpus!r}") from None


MOUNT_TYPES = ("bind", "volume")
PROPAGATIONS = ("rprivate", "private", "rshared", "shared", "rslave", "slave")


@dataclass(frozen=True)
class Mount:
    """One resolved mount: a host directory (a bind's source or a volume's data) at ``target``.

    ``source`` is what the user named: the host path of a bind, the volume's name. ``named`` is False for
    anonymous volumes (an image's ``VOLUME``, ``-v /path``), which ``rm -v`` removes with the container.
    """

    type: str
    source: str
    target: str
    host_path: str
    read_only: bool = False
    propagation: str = "rprivate"
    named: bool = True

    def validate(self) -> None:
        """Refuse what runc could not mount."""
        if self.type not in MOUNT_TYPES:
            raise InvalidContainerConfig("mounts", f"unsupported mount type {self.type!r}")
        if not self.target.startswith("/") or self.target.rstrip("/") == "":
            raise InvalidContainerConfig("mounts", f"invalid mount point {self.target!r}")
        if not self.host_path.startswith("/"):
            raise InvalidContainerConfig("mounts", f"source must be an absolute path: {self.host_path!r}")
        if self.propagation not in PROPAGATIONS:
            raise InvalidContainerConfig("mounts", f"invalid propagation {self.propagation!r}")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (the state file)."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class ContainerConfig:
    """What a user asks for when creating a container; ``None`` means "take the image's value"."""

    image: str
    image_id: str = ""
    cmd: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str | None = None
    user: str | None = None
    hostname: str | None = None
    domainname: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str | None = None
    stop_timeout: int | None = None
    init: bool = False
    read_only: bool = False
    tmpfs: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    ulimits: tuple[Ulimit, ...] = ()
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    no_new_privileges: bool = True
    seccomp_profile: str = "default"
    network_mode: str = "none"
    #: A directory with the container's ``hosts``, ``hostname`` and ``resolv.conf``, kept by its network
    #: sandbox and bound at ``/etc`` instead of the runtime's own; empty: the runtime writes ``hosts``
    #: and ``hostname`` itself and the image's ``resolv.conf`` stays.
    etc_dir: str = ""
    resources: Resources = field(default_factory=Resources)
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    auto_remove: bool = False

    def validate(self) -> None:
        """Check what can be checked before the image and the rootfs are known."""
        if not self.image:
            raise InvalidContainerConfig("image", "an image is required")
        for var in self.env:
            if not var or var.startswith("="):
                raise InvalidContainerConfig("env", f"invalid environment variable {var!r}")
        if self.working_dir and not self.working_dir.startswith("/"):
            raise InvalidContainerConfig("working_dir", f"must be an absolute path, not {self.working_dir!r}")
        for path in self.tmpfs:
            if not path.startswith("/") or path == "/":
                raise InvalidContainerConfig("tmpfs", f"invalid mount point {path!r}")
        seen = {p.rstrip("/") for p in self.tmpfs}
        for mount in self.mounts:
            mount.validate()
            target = mount.target.rstrip("/")
            if target in seen:
                raise InvalidContainerConfig("mounts", f"duplicate mount point: {target}")
            seen.add(target)
        for ulimit in self.ulimits:
            ulimit.validate()
        if self.stop_signal:
            parse_signal(self.stop_signal)
        if self.stop_timeout is not None and self.stop_timeout < -1:
            raise InvalidContainerConfig("stop_timeout", "must be -1 (wait forever) or more")
        if not (self.network_mode in NETWORK_MODES or self.network_mode.startswith("/")):
            raise InvalidContainerConfig("network_mode", f"unsupported network mode {self.network_mode!r}")
        if self.seccomp_profile not in ("default", "unconfined"):
            raise InvalidContainerConfig("seccomp_profile", "must be 'default' or 'unconfined'")
        if self.auto_remove and self.restart_policy.name != "no":
            raise InvalidContainerConfig("restart", "conflicting options: restart policy and auto-remove")
        self.resources.validate()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, the inverse of :meth:`from_json`."""
        return {
            "image": self.image,
            "image_id": self.image_id,
            "cmd": None if self.cmd is None else list(self.cmd),
            "entrypoint": None if self.entrypoint is None else list(self.entrypoint),
            "env": list(self.env),
            "working_dir": self.working_dir,
            "user": self.user,
            "hostname": self.hostname,
            "domainname": self.domainname,
            "labels": dict(self.labels),
            "stop_signal": self.stop_signal,
            "stop_timeout": self.stop_timeout,
            "init": self.init,
            "read_only": self.read_only,
            "tmpfs": dict(self.tmpfs),
            "mounts": [m.to_json() for m in self.mounts],
            "ulimits": [[u.name, u.soft, u.hard] for u in self.ulimits],
            "cap_add": list(self.cap_add),
            "cap_drop": list(self.cap_drop),
            "privileged": self.privileged,
            "no_new_privileges": self.no_new_privileges,
            "seccomp_profile": self.seccomp_profile,
            "network_mode": self.network_mode,
            "etc_dir": self.etc_dir,
            "resources": {
                "memory": self.resources.memory,
                "memory_swap": self.resources.memory_swap,
                "nano_cpus": self.resources.nano_cpus,
                "cpu_shares": self.resources.cpu_shares,
                "pids_limit": self.resources.pids_limit,
            },
            "restart_policy": [self.restart_policy.name, self.restart_policy.maximum_retry_count],
            "auto_remove": self.auto_remove,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ContainerConfig:
        """Rebuild from :meth:`to_json` output (the state file)."""

        def opt_tuple(value: Sequence[str] | None) -> tuple[str, ...] | None:
            return None if value is None else tuple(value)

        name, retries = data.get("restart_policy") or ("no", 0)
        return cls(
            image=data["image"],
            image_id=data.get("image_id", ""),
            cmd=opt_tuple(data.get("cmd")),
            entrypoint=opt_tuple(data.get("entrypoint")),
            env=tuple(data.get("env", ())),
            working_dir=data.get("working_dir"),
            user=data.get("user"),
            hostname=data.get("hostname"),
            domainname=data.get("domainname", ""),
            labels=dict(data.get("labels", {})),
            stop_signal=data.get("stop_signal"),
            stop_timeout=data.get("stop_timeout"),
            init=bool(data.get("init")),
            read_only=bool(data.get("read_only")),
            tmpfs=dict(data.get("tmpfs", {})),
            mounts=tuple(Mount(**m) for m in data.get("mounts", ())),
            ulimits=tuple(Ulimit(n, s, h) for n, s, h in data.get("ulimits", ())),
            cap_add=tuple(data.get("cap_add", ())),
            cap_drop=tuple(data.get("cap_drop", ())),
            privileged=bool(data.get("privileged")),
            no_new_privileges=data.get("no_new_privileges", True),
            seccomp_profile=data.get("seccomp_profile", "default"),
            network_mode=data.get("network_mode", "none"),
            etc_dir=data.get("etc_dir", ""),
            resources=Resources(**data.get("resources", {})),
            restart_policy=RestartPolicy(name, retries),
            auto_remove=bool(data.get("auto_remove")),
        )
