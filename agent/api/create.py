"""``POST /containers/create``: Docker's body (``Config`` plus ``HostConfig``) → what the runtime takes.

Served with a network controller, the body's networking (``NetworkMode``, ``PortBindings``,
``PublishAllPorts``, ``ExposedPorts``, ``NetworkingConfig``, DNS, extra hosts, links) becomes a
:class:`NetworkRequest` for :mod:`agent.api.networking`. Without one, the default network is ``none`` and
published ports are ignored, each with a warning. Other fields this runtime has no use for (log drivers…)
are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.api.errors import BadParameter, NotSupported
from agent.network.model import DNSConfig
from agent.runtime.containers.config import ContainerConfig, Resources, RestartPolicy, Ulimit
from agent.runtime.volumes.spec import MountRequest, parse_bind, request

DEFAULT_NETWORKS = ("", "default", "bridge")
_PORT_KEY = re.compile(r"^(\d+)(?:/([a-zA-Z]+))?$")


@dataclass(frozen=True)
class EndpointRequest:
    """``NetworkingConfig.EndpointsConfig[network]``: the container's aliases and addresses there."""

    aliases: tuple[str, ...] = ()
    ip: str = ""
    ip6: str = ""


@dataclass(frozen=True)
class NetworkRequest:
    """What a create body asks of the network (read only when the API has a network controller)."""

    #: ``HostConfig.NetworkMode`` as given: ``""``/``default``/``bridge``, a network, ``container:<ref>``.
    mode: str = ""
    #: ``HostConfig.PortBindings`` as ``-p`` specifications (``ip:host:container/proto``).
    publish: tuple[str, ...] = ()
    publish_all: bool = False
    #: ``Config.ExposedPorts`` (``80/tcp``); the image's are added by the caller.
    exposed: tuple[str, ...] = ()
    #: By network name or id as the body gives it.
    endpoints: Mapping[str, EndpointRequest] = field(default_factory=dict)
    dns: DNSConfig = field(default_factory=DNSConfig)
    extra_hosts: tuple[str, ...] = ()
    links: tuple[str, ...] = ()


@dataclass(frozen=True)
class CreateRequest:
    """A parsed create body: the container's config, its mounts, its network, and what was ignored."""

    config: ContainerConfig
    mounts: tuple[MountRequest, ...] = ()
    volumes: tuple[str, ...] = ()
    volumes_from: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)
    #: Set only when parsed for an API with a network controller.
    network: NetworkRequest | None = None


def _strings(body: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    """A Docker "strslice": a list of strings, one string, or null."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise BadParameter(key, "expected a string or a list of strings")


def _list(body: Mapping[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadParameter(key, "expected a list")
    return value


def _dict(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadParameter(key, "expected an object")
    return value


def _int(body: Mapping[str, Any], key: str) -> int:
    value = body.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadParameter(key, "expected an integer")
    return value


def _str(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadParameter(key, "expected a string")
    return value


def _mount(item: Any) -> tuple[MountRequest | None, tuple[str, str] | None]:
    """One ``HostConfig.Mounts`` entry → a mount request, or a tmpfs (path, options)."""
    if not isinstance(item, dict):
        raise BadParameter("HostConfig.Mounts", "each mount must be an object")
    kind = _str(item, "Type") or "volume"
    target = _str(item, "Target") or _str(item, "Destination")
    if kind == "tmpfs":
        opts = _dict(item, "TmpfsOptions")
        parts = []
        if opts.get("SizeBytes"):
            parts.append(f"size={int(opts['SizeBytes'])}")
        if opts.get("Mode"):
            parts.append(f"mode={int(opts['Mode']):o}")
        return None, (target, ",".join(parts))
    bind_opts = _dict(item, "BindOptions")
    volume_opts = _dict(item, "VolumeOptions")
    if _dict(volume_opts, "DriverConfig").get("Name") not in (None, "", "local"):
        raise BadParameter("HostConfig.Mounts", "only the local volume driver is available")
    return (
        request(
            kind,
            target,
            _str(item, "Source"),
            bool(item.get("ReadOnly")),
            _str(bind_opts, "Propagation"),
            bool(volume_opts.get("NoCopy")),
        ),
        None,
    )


def _security(options: Sequence[Any]) -> tuple[bool | None, str]:
    no_new_privileges: bool | None = None
    seccomp = "default"
    for option in options:
        text = str(option)
        key, sep, value = text.replace(":", "=", 1).partition("=")
        if key == "no-new-privileges":
            no_new_privileges = not sep or value.lower() in ("true", "1")
        elif key == "seccomp":
            if value not in ("unconfined", "default", ""):
                raise BadParameter("HostConfig.SecurityOpt", "custom seccomp profiles are not supported")
            seccomp = value or "default"
        elif key not in ("apparmor", "label"):
            raise BadParameter("HostConfig.SecurityOpt", f"unknown option {text!r}")
    return no_new_privileges, seccomp


def _resources(host: Mapping[str, Any]) -> Resources:
    nano_cpus = _int(host, "NanoCpus")
    quota, period = _int(host, "CpuQuota"), _int(host, "CpuPeriod")
    if not nano_cpus and quota > 0:
        nano_cpus = quota * 1_000_000_000 // (period or 100_000)
    pids = host.get("PidsLimit")
    return Resources(
        memory=_int(host, "Memory"),
        memory_swap=_int(host, "MemorySwap"),
        nano_cpus=nano_cpus,
        cpu_shares=_int(host, "CpuShares"),
        pids_limit=pids if isinstance(pids, int) and pids > 0 else 0,
    )


def port_specs(bindings: Mapping[str, Any]) -> tuple[str, ...]:
    """``HostConfig.PortBindings`` (``{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}``) as ``-p`` specs.

    An empty ``HostPort`` (or ``[{}]``) publishes on any free port; ``null`` publishes nothing, as in Docker.
    """
    out = []
    for key, entries in bindings.items():
        match = _PORT_KEY.match(str(key))
        if match is None:
            raise BadParameter("HostConfig.PortBindings", f"invalid port {key!r}")
        target = f"{match[1]}/{(match[2] or 'tcp').lower()}"
        if entries is None:
            continue
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise BadParameter("HostConfig.PortBindings", f"{key}: expected a list of bindings")
        for entry in entries or [{}]:
            host_ip, host_port = _str(entry, "HostIp"), _str(entry, "HostPort")
            if ":" in host_ip:
                host_ip = f"[{host_ip}]"
            prefix = f"{host_ip}:{host_port}:" if host_ip else (f"{host_port}:" if host_port else "")
            out.append(prefix + target)
    return tuple(out)


def parse_network(body: Mapping[str, Any]) -> NetworkRequest:
    """The networking part of a create body."""
    host = _dict(body, "HostConfig")
    endpoints = {}
    for network, item in _dict(_dict(body, "NetworkingConfig"), "EndpointsConfig").items():
        if item is None:
            item = {}
        if not isinstance(item, dict):
            raise BadParameter("NetworkingConfig.EndpointsConfig", f"{network}: expected an object")
        ipam = _dict(item, "IPAMConfig")
        endpoints[str(network)] = EndpointRequest(
            aliases=tuple(str(a) for a in _list(item, "Aliases")),
            ip=_str(ipam, "IPv4Address"),
            ip6=_str(ipam, "IPv6Address"),
        )
    return NetworkRequest(
        mode=_str(host, "NetworkMode"),
        publish=port_specs(_dict(host, "PortBindings")),
        publish_all=bool(host.get("PublishAllPorts")),
        exposed=tuple(sorted(str(p) for p in _dict(body, "ExposedPorts"))),
        endpoints=endpoints,
        dns=DNSConfig(
            servers=tuple(str(v) for v in _list(host, "Dns")),
            search=tuple(str(v) for v in _list(host, "DnsSearch")),
            options=tuple(str(v) for v in _list(host, "DnsOptions")),
        ),
        extra_hosts=tuple(str(v) for v in _list(host, "ExtraHosts")),
        links=tuple(str(v) for v in _list(host, "Links")),
    )


def parse_create(body: Mapping[str, Any], *, networking: bool = False) -> CreateRequest:
    """Turn a create body into a :class:`CreateRequest`; raises :class:`BadParameter` on bad fields.

    ``networking``: the API has a network controller, so ``network`` is parsed and the config's
    ``network_mode`` is a placeholder (``none``) until the container's sandbox gives its namespace.
    """
    image = _str(body, "Image")
    if not image:
        raise BadParameter("Image", "an image is required")
    if body.get("Tty"):
        raise NotSupported("a TTY (Tty: true)")
    if body.get("OpenStdin"):
        raise NotSupported("an attached stdin (OpenStdin: true)")
    host = _dict(body, "HostConfig")
    warnings: list[str] = []

    mounts = [parse_bind(str(b)) for b in _list(host, "Binds")]
    tmpfs = {str(k): str(v) for k, v in _dict(host, "Tmpfs").items()}
    for item in _list(host, "Mounts"):
        mount, tmp = _mount(item)
        if mount is not None:
            mounts.append(mount)
        elif tmp is not None:
            tmpfs[tmp[0]] = tmp[1]

    network = _str(host, "NetworkMode")
    network_request = parse_network(body) if networking else None
    if networking:
        network = network if network in ("none", "host") else "none"
    elif network in DEFAULT_NETWORKS:
        network = "none"
        warnings.append("bridge networking is not available yet: the container has only a loopback interface")
    elif network not in ("none", "host"):
        raise BadParameter("HostConfig.NetworkMode", f"network mode {network!r} is not supported")
    if not networking and _dict(host, "PortBindings"):
        warnings.append("published ports are not available yet: PortBindings ignored")

    policy = _dict(host, "RestartPolicy")
    restart = RestartPolicy(_str(policy, "Name") or "no", _int(policy, "MaximumRetryCount"))
    restart = RestartPolicy.parse(str(restart)) if restart.name else RestartPolicy()
    no_new_privileges, seccomp = _security(_list(host, "SecurityOpt"))
    entrypoint = _strings(body, "Entrypoint")
    if entrypoint == ("",):
        entrypoint = ()  # --entrypoint "": no entrypoint at all, not the image's
    stop_timeout = body.get("StopTimeout")
    config = ContainerConfig(
        image=image,
        cmd=_strings(body, "Cmd"),
        entrypoint=entrypoint,
        env=tuple(str(e) for e in _list(body, "Env")),
        working_dir=_str(body, "WorkingDir") or None,
        user=_str(body, "User") or None,
        hostname=_str(body, "Hostname") or None,
        domainname=_str(body, "Domainname"),
        labels={str(k): str(v) for k, v in _dict(body, "Labels").items()},
        stop_signal=_str(body, "StopSignal") or None,
        stop_timeout=stop_timeout if isinstance(stop_timeout, int) else None,
        init=bool(host.get("Init")),
        read_only=bool(host.get("ReadonlyRootfs")),
        tmpfs=tmpfs,
        ulimits=tuple(
            Ulimit(str(u.get("Name", "")).lower(), int(u.get("Soft", 0)), int(u.get("Hard", 0)))
            for u in _list(host, "Ulimits")
            if isinstance(u, dict)
        ),
        cap_add=tuple(str(c) for c in _list(host, "CapAdd")),
        cap_drop=tuple(str(c) for c in _list(host, "CapDrop")),
        privileged=bool(host.get("Privileged")),
        no_new_privileges=True if no_new_privileges is None else no_new_privileges,
        seccomp_profile=seccomp,
        network_mode=network,
        resources=_resources(host),
        restart_policy=restart,
        auto_remove=bool(host.get("AutoRemove")),
    )
    return CreateRequest(
        config=config,
        mounts=tuple(mounts),
        volumes=tuple(sorted(_dict(body, "Volumes"))),
        volumes_from=tuple(str(v) for v in _list(host, "VolumesFrom")),
        warnings=tuple(warnings),
        network=network_request,
    )
