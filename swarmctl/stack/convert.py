"""Turning a loaded Compose config into the Shoal objects of one stack (a :class:`StackPlan`).

Names are namespaced ``<stack>_<name>`` and everything carries the ``com.docker.stack.namespace`` label.
Services without networks join ``<stack>_default`` (overlay), with their service name as a DNS alias on
every network, as in Docker. Every value that still needs parsing (ports, durations, sizes, constraints)
is parsed here, before anything is created, and a bad one becomes a problem naming its file and line.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from api.objects import (
    Annotations,
    ContainerSpec,
    EndpointMode,
    EndpointSpec,
    FailureAction,
    HealthConfig,
    IPAMConfig,
    Mount,
    MountType,
    NetworkAttachmentConfig,
    NetworkSpec,
    Placement,
    PlacementPreference,
    PortConfig,
    PublishMode,
    ResourceRequirements,
    Resources,
    RestartCondition,
    RestartPolicy,
    SecretReference,
    SecretSpec,
    ServiceMode,
    ServiceSpec,
    TaskSpec,
    UpdateConfig,
    UpdateOrder,
    VolumeSpec,
)
from scheduler import InvalidExpression, parse_preference
from scheduler.from_api import check_expressions
from swarmctl import specs, units
from swarmctl.errors import SwarmctlError
from swarmctl.stack.errors import Problem, StackFileError
from swarmctl.stack.loader import creation_order
from swarmctl.stack.model import (
    IMAGE_LABEL,
    NAMESPACE_LABEL,
    ComposeConfig,
    StackNetwork,
    StackPlan,
    StackSecret,
    StackService,
    StackVolume,
)
from swarmctl.stack.schema import NAME_PATTERN
from swarmctl.stack.source import KeyPath

T = TypeVar("T")
_NAME = re.compile(NAME_PATTERN)
DEFAULT_NETWORK = "default"
_NO_WORDS: tuple[str, ...] = ()
_NO_ENV: list[str] = []
_NO_PORTS: tuple[PortConfig, ...] = ()


def _one_port(text: str, **fields: Any) -> tuple[PortConfig, ...]:
    return (specs.make_port(text, **fields),)


class _Converter:
    def __init__(self, config: ComposeConfig, stack: str, env: Mapping[str, str]) -> None:
        self.config = config
        self.stack = stack
        self.env = env
        self.problems: list[Problem] = []

    def parse(self, path: KeyPath, default: T, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, or ``default`` and a problem at ``path`` if it raises a swarmctl error."""
        try:
            return fn(*args, **kwargs)
        except SwarmctlError as e:
            self.problems.append(self.config.problem(path, str(e)))
            return default

    def full(self, name: str) -> str:
        return f"{self.stack}_{name}"

    def labels(self, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
        out = {k: "" if v is None else str(v) for k, v in (extra or {}).items()}
        out[NAMESPACE_LABEL] = self.stack
        return out

    def duration(self, path: KeyPath, value: Any, default: int) -> int:
        if value is None:
            return default
        return self.parse(path, default, units.parse_duration, str(value))

    # --- top-level objects -----------------------------------------------------------------------------
    def network_name(self, key: str) -> str:
        net = self.config.networks.get(key) or {}
        external = net.get("external")
        if external:
            if isinstance(external, Mapping) and external.get("name"):
                return str(external["name"])
            return str(net.get("name") or key)
        return str(net.get("name") or self.full(key))

    def networks(self) -> list[StackNetwork]:
        used = set(self.config.networks)
        if any(
            not svc.get("networks") or DEFAULT_NETWORK in svc["networks"]
            for svc in self.config.services.values()
        ):
            used.add(DEFAULT_NETWORK)
        out = []
        for key in sorted(used):
            net = self.config.networks.get(key) or {}
            name = self.network_name(key)
            if net.get("external"):
                out.append(StackNetwork(name, None))
                continue
            ipam = tuple(
                self.ipam(("networks", key, "ipam", "config", i), c)
                for i, c in enumerate((net.get("ipam") or {}).get("config") or ())
            )
            spec = NetworkSpec(
                annotations=Annotations(name=name, labels=self.labels(net.get("labels"))),
                driver="overlay",
                ipam=ipam,
                internal=bool(net.get("internal")),
                attachable=bool(net.get("attachable")),
                ipv6=bool(net.get("enable_ipv6")),
                options={k: str(v) for k, v in (net.get("driver_opts") or {}).items()},
            )
            out.append(StackNetwork(name, spec))
        return out

    def ipam(self, path: KeyPath, c: Mapping[str, Any]) -> IPAMConfig:
        """One IPAM entry, its addresses checked here so the manager never refuses a half-created stack."""
        cfg = IPAMConfig(
            subnet=str(c.get("subnet", "")),
            gateway=str(c.get("gateway", "")),
            ip_range=str(c.get("ip_range", "")),
            aux_addresses={k: str(v) for k, v in (c.get("aux_addresses") or {}).items()},
        )
        try:
            subnet = ipaddress.ip_network(cfg.subnet, strict=True)
        except ValueError as e:
            self.problems.append(self.config.problem((*path, "subnet"), f"invalid subnet: {e}"))
            return cfg
        for what, addr in [
            ("gateway", cfg.gateway),
            *(("aux_addresses", a) for a in cfg.aux_addresses.values()),
        ]:
            if not addr:
                continue
            try:
                inside = ipaddress.ip_address(addr) in subnet
            except ValueError as e:
                self.problems.append(self.config.problem((*path, what), str(e)))
                continue
            if not inside:
                self.problems.append(self.config.problem((*path, what), f"{addr} is not in subnet {subnet}"))
        if cfg.ip_range:
            try:
                rng = ipaddress.ip_network(cfg.ip_range, strict=True)
                if rng.version != subnet.version or not rng.subnet_of(subnet):  # type: ignore[arg-type]
                    raise ValueError(f"{rng} is not inside subnet {subnet}")
            except ValueError as e:
                self.problems.append(self.config.problem((*path, "ip_range"), str(e)))
        return cfg

    def _object_name(self, section: Mapping[str, Mapping[str, Any]], key: str) -> str:
        item = section.get(key) or {}
        external = item.get("external")
        if isinstance(external, Mapping) and external.get("name"):
            return str(external["name"])
        if item.get("name"):
            return str(item["name"])
        return key if external else self.full(key)

    def volumes(self) -> list[StackVolume]:
        out = []
        for key, vol in sorted(self.config.volumes.items()):
            name = self._object_name(self.config.volumes, key)
            if vol.get("external"):
                out.append(StackVolume(name, None))
                continue
            spec = VolumeSpec(
                annotations=Annotations(name=name, labels=self.labels(vol.get("labels"))),
                driver=str(vol.get("driver") or "local"),
                driver_opts={k: str(v) for k, v in (vol.get("driver_opts") or {}).items()},
            )
            out.append(StackVolume(name, spec))
        return out

    def secrets(self) -> list[StackSecret]:
        out = []
        for key, sec in sorted(self.config.secrets.items()):
            name = self._object_name(self.config.secrets, key)
            if sec.get("external"):
                out.append(StackSecret(name, None))
                continue
            try:
                data = Path(sec["file"]).read_bytes()
            except OSError as e:
                self.problems.append(
                    self.config.problem(("secrets", key, "file"), f"cannot read: {e.strerror}")
                )
                continue
            labels = self.labels(sec.get("labels"))
            out.append(
                StackSecret(name, SecretSpec(annotations=Annotations(name=name, labels=labels), data=data))
            )
        return out

    # --- services --------------------------------------------------------------------------------------
    def service(self, key: str, svc: Mapping[str, Any]) -> StackService:
        at: KeyPath = ("services", key)
        name = self.full(key)
        if len(name) > 63 or not _NAME.match(name):
            self.problems.append(
                self.config.problem(at, f"service name {name!r} is too long (at most 63 characters)")
            )
        deploy = svc.get("deploy") or {}
        mode = ServiceMode(deploy.get("mode", "replicated"))
        spec = ServiceSpec(
            annotations=Annotations(
                name=name,
                labels={**self.labels(deploy.get("labels")), IMAGE_LABEL: str(svc.get("image", ""))},
            ),
            task=TaskSpec(
                container=self.container(at, svc),
                resources=self.resources(at, deploy.get("resources") or {}),
                restart_policy=self.restart_policy(at, deploy.get("restart_policy") or {}),
                placement=self.placement(at, deploy.get("placement") or {}),
                networks=self.attachments(key, svc),
            ),
            mode=mode,
            replicas=int(deploy.get("replicas", 1)) if mode is ServiceMode.REPLICATED else 0,
            update_config=self.update_config(
                (*at, "deploy", "update_config"), deploy.get("update_config") or {}
            ),
            rollback_config=self.update_config(
                (*at, "deploy", "rollback_config"), deploy.get("rollback_config") or {}
            ),
            endpoint=EndpointSpec(
                mode=EndpointMode(deploy.get("endpoint_mode", "vip")),
                ports=self.ports(at, svc.get("ports") or ()),
            ),
        )
        return StackService(name, spec, tuple(self.full(d) for d in svc.get("depends_on") or ()))

    def container(self, at: KeyPath, svc: Mapping[str, Any]) -> ContainerSpec:
        def words(key: str) -> tuple[str, ...]:
            value = svc.get(key)
            return (
                _NO_WORDS
                if value is None
                else self.parse((*at, key), _NO_WORDS, specs.command_words, value, key)
            )

        env: list[str] = []
        for path in svc.get("env_file") or ():
            env += self.parse((*at, "env_file"), _NO_ENV, units.read_env_file, path)
        for k, v in (svc.get("environment") or {}).items():
            if v is None:  # "KEY" alone: the value comes from the deploying shell, if it has one
                if k in self.env:
                    env.append(f"{k}={self.env[k]}")
            else:
                env.append(f"{k}={v}")
        return ContainerSpec(
            image=str(svc.get("image", "")),
            command=words("entrypoint"),
            args=words("command"),
            env=units.merge_env(env),
            dir=str(svc.get("working_dir", "")),
            user=str(svc.get("user", "")),
            hostname=str(svc.get("hostname", "")),
            labels=self.labels(svc.get("labels")),
            mounts=tuple(self.mount((*at, "volumes", i), v) for i, v in enumerate(svc.get("volumes") or ())),
            healthcheck=self.healthcheck((*at, "healthcheck"), svc.get("healthcheck")),
            stop_signal=str(svc.get("stop_signal", "")),
            stop_grace_period_ns=self.duration(
                (*at, "stop_grace_period"), svc.get("stop_grace_period"), ContainerSpec().stop_grace_period_ns
            ),
            init=bool(svc.get("init", False)),
            read_only=bool(svc.get("read_only", False)),
            secrets=tuple(self.secret_ref(s) for s in svc.get("secrets") or ()),
        )

    def mount(self, path: KeyPath, v: Any) -> Mount:
        if isinstance(v, Mapping):
            kind = MountType(v.get("type", "volume"))
            source = str(v.get("source") or "")
            if kind is MountType.VOLUME and source:
                source = self._object_name(self.config.volumes, source)
            m = Mount(type=kind, source=source, target=str(v["target"]), read_only=bool(v.get("read_only")))
            return self.parse(path, m, specs.check_mount, m, str(dict(v)))
        parts = str(v).split(":")
        if len(parts) == 1:
            m = Mount(type=MountType.VOLUME, target=parts[0])
        elif len(parts) in (2, 3):
            source, target = parts[0], parts[1]
            read_only = len(parts) == 3 and "ro" in parts[2].split(",")
            if source.startswith("/"):
                m = Mount(type=MountType.BIND, source=source, target=target, read_only=read_only)
            else:
                name = self._object_name(self.config.volumes, source)
                m = Mount(type=MountType.VOLUME, source=name, target=target, read_only=read_only)
        else:
            self.problems.append(
                self.config.problem(path, f"invalid volume {v!r} (use [source:]target[:ro])")
            )
            return Mount(target="/")
        return self.parse(path, m, specs.check_mount, m, str(v))

    def healthcheck(self, at: KeyPath, h: Mapping[str, Any] | None) -> HealthConfig | None:
        if h is None:
            return None
        if h.get("disable"):
            return HealthConfig(test=("NONE",))
        base = HealthConfig()
        test = self.parse((*at, "test"), _NO_WORDS, specs.health_test, h["test"]) if "test" in h else ()
        return HealthConfig(
            test=test,
            interval_ns=self.duration((*at, "interval"), h.get("interval"), base.interval_ns),
            timeout_ns=self.duration((*at, "timeout"), h.get("timeout"), base.timeout_ns),
            retries=int(h.get("retries", base.retries)),
            start_period_ns=self.duration((*at, "start_period"), h.get("start_period"), base.start_period_ns),
        )

    def secret_ref(self, s: Any) -> SecretReference:
        source = str(s["source"]) if isinstance(s, Mapping) else str(s)
        target = str(s.get("target") or source) if isinstance(s, Mapping) else source
        return SecretReference(secret_name=self._object_name(self.config.secrets, source), target=target)

    def attachments(self, key: str, svc: Mapping[str, Any]) -> tuple[NetworkAttachmentConfig, ...]:
        nets = svc.get("networks") or {DEFAULT_NETWORK: None}
        out = []
        for net, opts in nets.items():
            aliases = tuple(str(a) for a in ((opts or {}).get("aliases") or ()))
            out.append(NetworkAttachmentConfig(target=self.network_name(net), aliases=(key, *aliases)))
        return tuple(out)

    def ports(self, at: KeyPath, ports: Any) -> tuple[PortConfig, ...]:
        out: list[PortConfig] = []
        for i, p in enumerate(ports):
            path = (*at, "ports", i)
            if isinstance(p, Mapping):
                mode = PublishMode(p.get("mode", "ingress"))
                one = self.parse(
                    path,
                    _NO_PORTS,
                    _one_port,
                    str(dict(p)),
                    target=p["target"],
                    published=p.get("published", 0),
                    protocol=p.get("protocol", "tcp"),
                    mode=mode,
                )
                out += one
            else:
                out += self.parse(path, _NO_PORTS, specs.parse_port, str(p))
        return tuple(out)

    def resources(self, at: KeyPath, r: Mapping[str, Any]) -> ResourceRequirements:
        def one(kind: str) -> Resources:
            section = r.get(kind) or {}
            path = (*at, "deploy", "resources", kind)
            cpus = section.get("cpus")
            memory = section.get("memory")
            return Resources(
                nano_cpus=self.parse((*path, "cpus"), 0, units.parse_cpus, cpus) if cpus is not None else 0,
                memory_bytes=self.parse((*path, "memory"), 0, units.parse_bytes, memory)
                if memory is not None
                else 0,
            )

        return ResourceRequirements(limits=one("limits"), reservations=one("reservations"))

    def restart_policy(self, at: KeyPath, rp: Mapping[str, Any]) -> RestartPolicy:
        base = RestartPolicy()
        path = (*at, "deploy", "restart_policy")
        return RestartPolicy(
            condition=RestartCondition(rp.get("condition", base.condition.value)),
            delay_ns=self.duration((*path, "delay"), rp.get("delay"), base.delay_ns),
            max_attempts=int(rp.get("max_attempts", base.max_attempts)),
            window_ns=self.duration((*path, "window"), rp.get("window"), base.window_ns),
        )

    def placement(self, at: KeyPath, p: Mapping[str, Any]) -> Placement:
        constraints = tuple(str(c) for c in p.get("constraints") or ())
        for i, c in enumerate(constraints):
            try:
                check_expressions([c])
            except InvalidExpression as e:
                self.problems.append(
                    self.config.problem((*at, "deploy", "placement", "constraints", i), str(e))
                )
        prefs = tuple(PlacementPreference(spread=str(x["spread"])) for x in p.get("preferences") or ())
        for i, pref in enumerate(prefs):
            try:
                parse_preference(f"spread={pref.spread}")
            except InvalidExpression as e:
                path = (*at, "deploy", "placement", "preferences", i, "spread")
                self.problems.append(self.config.problem(path, str(e)))
        return Placement(
            constraints=constraints, preferences=prefs, max_replicas=int(p.get("max_replicas_per_node", 0))
        )

    def update_config(self, path: KeyPath, u: Mapping[str, Any]) -> UpdateConfig:
        base = UpdateConfig()
        return UpdateConfig(
            parallelism=int(u.get("parallelism", base.parallelism)),
            delay_ns=self.duration((*path, "delay"), u.get("delay"), base.delay_ns),
            failure_action=FailureAction(u.get("failure_action", base.failure_action.value)),
            monitor_ns=self.duration((*path, "monitor"), u.get("monitor"), base.monitor_ns),
            max_failure_ratio=float(u.get("max_failure_ratio", base.max_failure_ratio)),
            order=UpdateOrder(u.get("order", base.order.value)),
        )


def plan(config: ComposeConfig, stack: str, *, env: Mapping[str, str] | None = None) -> StackPlan:
    """The Shoal objects of stack ``stack``; raises StackFileError if any value does not parse."""
    if not _NAME.match(stack) or len(stack) > 40:
        raise StackFileError(
            [Problem("", 0, "", f"invalid stack name {stack!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*, up to 40")]
        )
    c = _Converter(config, stack, os.environ if env is None else env)
    networks, volumes, secrets = c.networks(), c.volumes(), c.secrets()
    services = [c.service(name, config.services[name]) for name in creation_order(config)]
    if c.problems:
        raise StackFileError(sorted(set(c.problems)))
    return StackPlan(
        name=stack,
        networks=tuple(networks),
        volumes=tuple(volumes),
        secrets=tuple(secrets),
        services=tuple(services),
        warnings=config.warnings,
    )


def with_secret_ids(spec: ServiceSpec, ids: Mapping[str, str]) -> ServiceSpec:
    """``spec`` with each secret reference's id filled in from ``ids`` (secret name → id)."""
    c = spec.task.container
    refs = tuple(replace(r, secret_id=ids.get(r.secret_name, r.secret_id)) for r in c.secrets)
    return replace(spec, task=replace(spec.task, container=replace(c, secrets=refs)))
