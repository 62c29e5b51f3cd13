"""A task spec compiled for placement: expressions parsed, dependencies and images resolved, once."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.expr import (
    Affinity,
    Constraint,
    Preference,
    parse_affinity,
    parse_constraint,
    parse_preference,
)
from scheduler.types import HostPort, TaskSpec


def image_names(ref: str) -> tuple[str, ...]:
    """The names an image reference answers to: ``redis:7`` → (``redis:7``, ``redis``);
    ``redis`` → (``redis``, ``redis:latest``). Classic Swarm matched image affinities the same way."""
    if not ref:
        return ()
    name = ref.split("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    names = [ref]
    if name != ref:
        names.append(name)  # without the digest
    if colon > slash:
        names.append(name[:colon])  # without the tag
    elif name == ref:
        names.append(name + ":latest")  # an untagged reference means :latest
    return tuple(dict.fromkeys(names))


def dependencies(spec: TaskSpec) -> tuple[str, ...]:
    """Names of the containers a task needs beside it: ``volumes_from`` (``name[:ro]``), ``links``
    (``name[:alias]``) and ``network_mode`` ``container:<name>``."""
    names: list[str] = []
    for entry in spec.volumes_from:
        names.append(entry.split(":", 1)[0])
    for entry in spec.links:
        names.append(entry.split(":", 1)[0].lstrip("/"))
    if spec.network_mode.startswith("container:"):
        names.append(spec.network_mode[len("container:") :])
    return tuple(sorted({n for n in names if n}))


@dataclass(frozen=True, slots=True)
class CompiledSpec:
    """What the filters, the strategies and :class:`NodeInfo` read for one batch of identical tasks."""

    service_id: str
    spec: TaskSpec
    constraints: tuple[Constraint, ...]
    soft_constraints: tuple[Constraint, ...]
    affinities: tuple[Affinity, ...]
    anti_affinities: tuple[Affinity, ...]
    soft_affinities: tuple[Affinity, ...]
    preferences: tuple[Preference, ...]
    dependencies: tuple[str, ...]
    nano_cpus: int
    memory_bytes: int
    host_ports: frozenset[HostPort]
    image_names: tuple[str, ...]

    @property
    def has_soft(self) -> bool:
        """Whether the batch has soft expressions (tried first, dropped when they leave no node)."""
        return bool(self.soft_constraints or self.soft_affinities)


def compile_spec(service_id: str, spec: TaskSpec) -> CompiledSpec:
    """Parse and resolve ``spec``; raises :class:`~scheduler.errors.InvalidExpression` on a bad expression."""
    constraints = [parse_constraint(c) for c in spec.constraints]
    affinities = [parse_affinity(a) for a in spec.affinities]
    return CompiledSpec(
        service_id=service_id,
        spec=spec,
        constraints=tuple(c for c in constraints if not c.soft),
        soft_constraints=tuple(c for c in constraints if c.soft),
        affinities=tuple(a for a in affinities if not a.soft and not a.negate),
        anti_affinities=tuple(a for a in affinities if not a.soft and a.negate),
        soft_affinities=tuple(a for a in affinities if a.soft),
        preferences=tuple(parse_preference(p) for p in spec.preferences),
        dependencies=dependencies(spec),
        nano_cpus=spec.reservations.nano_cpus,
        memory_bytes=spec.reservations.memory_bytes,
        host_ports=frozenset(spec.host_ports),
        image_names=image_names(spec.image),
    )
