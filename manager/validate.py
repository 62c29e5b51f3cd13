"""Checks of user-written specs beyond what the codec's types already guarantee.

Messages follow Docker's wording where Docker has the same check, so users recognise them.
"""

from __future__ import annotations

import ipaddress
import re

from api.objects import NetworkSpec, SecretSpec, ServiceMode, ServiceSpec, VolumeSpec
from manager.errors import InvalidSpec
from scheduler import InvalidExpression, parse_preference
from scheduler.from_api import check_expressions

#: Docker's rule for object names (services, networks, secrets, volumes).
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
MAX_NAME = 63
#: Docker refuses secrets larger than 500 KiB.
MAX_SECRET_BYTES = 500 * 1024
#: The most replicas one service may ask for. The leader creates a service's missing tasks in one pass,
#: so an absurd count (a typo, a script gone wrong) would stall it for everyone; Docker has no limit,
#: but no cluster of Shoal's size runs more tasks than this in one service.
MAX_REPLICAS = 100_000


def check_name(kind: str, name: str) -> None:
    """A name Docker would accept for a ``kind`` object."""
    if not name:
        raise InvalidSpec("name", f"{kind} name must not be empty")
    if len(name) > MAX_NAME or not NAME_RE.match(name):
        raise InvalidSpec(
            "name",
            f"{kind} name {name!r} is invalid: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, up to {MAX_NAME}",
        )


def check_service(spec: ServiceSpec) -> None:
    """Raise InvalidSpec naming the first thing wrong with a service spec."""
    check_name("service", spec.annotations.name)
    c = spec.task.container
    if not c.image:
        raise InvalidSpec("image", "a service needs an image")
    if spec.replicas < 0:
        raise InvalidSpec("replicas", "the number of replicas cannot be negative")
    if spec.replicas > MAX_REPLICAS:
        raise InvalidSpec("replicas", f"at most {MAX_REPLICAS:,} replicas per service, got {spec.replicas:,}")
    if spec.mode is ServiceMode.GLOBAL and spec.replicas not in (0, 1):
        raise InvalidSpec("replicas", "replicas can only be used with replicated mode")
    placement = spec.task.placement
    try:
        check_expressions(placement.constraints)  # both syntaxes, and classic affinities
        for pref in placement.preferences:
            parse_preference(f"spread={pref.spread}")
    except InvalidExpression as e:
        raise InvalidSpec("placement", str(e)) from None
    if placement.max_replicas < 0:
        raise InvalidSpec("max_replicas", "cannot be negative")
    res = spec.task.resources
    for what, value in (
        ("limit-cpu", res.limits.nano_cpus),
        ("limit-memory", res.limits.memory_bytes),
        ("reserve-cpu", res.reservations.nano_cpus),
        ("reserve-memory", res.reservations.memory_bytes),
    ):
        if value < 0:
            raise InvalidSpec(what, "cannot be negative")
    seen: set[tuple[str, int]] = set()
    for port in spec.endpoint.ports:
        if not 0 < port.target_port < 65536 or not 0 <= port.published_port < 65536:
            raise InvalidSpec("publish", f"port out of range in {port.published_port}:{port.target_port}")
        if port.published_port:
            key = (port.protocol.value, port.published_port)
            if key in seen:
                raise InvalidSpec("publish", f"duplicate published port {port.published_port}/{key[0]}")
            seen.add(key)
    for name, cfg in (("update", spec.update_config), ("rollback", spec.rollback_config)):
        if cfg.parallelism < 0 or cfg.delay_ns < 0 or cfg.monitor_ns < 0:
            raise InvalidSpec(f"{name}-config", "parallelism, delay and monitor cannot be negative")
        if not 0.0 <= cfg.max_failure_ratio <= 1.0:
            raise InvalidSpec(f"{name}-max-failure-ratio", "must be between 0 and 1")
    rp = spec.task.restart_policy
    if rp.delay_ns < 0 or rp.max_attempts < 0 or rp.window_ns < 0:
        raise InvalidSpec("restart-policy", "delay, max attempts and window cannot be negative")


def check_network(spec: NetworkSpec) -> None:
    """Raise InvalidSpec naming the first thing wrong with a network spec."""
    check_name("network", spec.annotations.name)
    if spec.driver not in ("overlay", "bridge"):
        raise InvalidSpec("driver", f"unknown network driver {spec.driver!r} (cluster networks: overlay)")
    for ipam in spec.ipam:
        if not ipam.subnet:
            raise InvalidSpec("subnet", "an IPAM entry needs a subnet")
        try:
            subnet = ipaddress.ip_network(ipam.subnet, strict=True)
        except ValueError as e:
            raise InvalidSpec("subnet", str(e)) from None
        addresses = [("gateway", ipam.gateway)] + [("aux-address", a) for a in ipam.aux_addresses.values()]
        for what, addr in addresses:
            if not addr:
                continue
            try:
                inside = ipaddress.ip_address(addr) in subnet
            except ValueError as e:
                raise InvalidSpec(what, str(e)) from None
            if not inside:
                raise InvalidSpec(what, f"{addr} is not in subnet {subnet}")
        if ipam.ip_range:
            try:
                rng = ipaddress.ip_network(ipam.ip_range, strict=True)
            except ValueError as e:
                raise InvalidSpec("ip-range", str(e)) from None
            if not rng.subnet_of(subnet):  # type: ignore[arg-type]
                raise InvalidSpec("ip-range", f"{rng} is not inside subnet {subnet}")


def check_volume(spec: VolumeSpec) -> None:
    """Raise InvalidSpec naming the first thing wrong with a volume spec."""
    check_name("volume", spec.annotations.name)


def check_secret(spec: SecretSpec) -> None:
    """Raise InvalidSpec naming the first thing wrong with a secret spec."""
    check_name("secret", spec.annotations.name)
    if not spec.data:
        raise InvalidSpec("data", "a secret needs data")
    if len(spec.data) > MAX_SECRET_BYTES:
        raise InvalidSpec("data", f"secret data is larger than {MAX_SECRET_BYTES // 1024} KiB")
