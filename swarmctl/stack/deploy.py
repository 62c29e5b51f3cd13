"""Deploying a :class:`StackPlan` through the API, and removing a stack.

A deploy first checks everything it can without writing (external objects exist, secrets that exist
already hold the same data, no name belongs to something outside the stack); then it creates networks,
volumes and secrets, then services in dependency order. A service whose spec digest (``HASH_LABEL``) is
unchanged is left alone; a changed one is updated, which the manager rolls out as a rolling update. If a
write fails, everything this deploy created is removed again before the error is reported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from api import Service, to_plain
from api.objects import ServiceSpec
from swarmctl.client import Client, retry_on_conflict
from swarmctl.errors import SwarmctlError
from swarmctl.stack.convert import with_secret_ids
from swarmctl.stack.errors import DeployError, StackError
from swarmctl.stack.model import HASH_LABEL, NAMESPACE_LABEL, StackPlan

Say = Callable[[str], None]


@dataclass
class DeployResult:
    """What a deploy did: services it created, updated, left alone, and removed (``--prune``)."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    #: service name → (id, update_started_at before this deploy), for waiting on convergence.
    services: dict[str, tuple[str, datetime | None]] = field(default_factory=dict)


def spec_digest(spec: ServiceSpec) -> str:
    """A digest of everything in a service spec but the digest label itself."""
    labels = {k: v for k, v in spec.annotations.labels.items() if k != HASH_LABEL}
    plain = to_plain(replace(spec, annotations=replace(spec.annotations, labels=labels)))
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:32]


def _with_digest(spec: ServiceSpec) -> ServiceSpec:
    labels = {**spec.annotations.labels, HASH_LABEL: spec_digest(spec)}
    return replace(spec, annotations=replace(spec.annotations, labels=labels))


def stack_services(client: Client, stack: str) -> list[Service]:
    return [s for s in client.services() if s.spec.annotations.labels.get(NAMESPACE_LABEL) == stack]


def _preflight(client: Client, plan: StackPlan) -> dict[str, str]:
    """Check what must hold before writing anything; the ids of the secrets that exist already."""
    problems: list[str] = []
    for net in plan.networks:
        found = client.find(client.network, net.name)
        if net.spec is None and found is None:
            problems.append(f"network {net.name!r} is declared as external, but could not be found")
        elif (
            net.spec is not None
            and found is not None
            and found.spec.annotations.labels.get(NAMESPACE_LABEL) != plan.name
        ):
            problems.append(f"network {net.name!r} exists already and is not part of stack {plan.name}")
    for vol in plan.volumes:
        if vol.spec is None and client.find(client.volume, vol.name) is None:
            problems.append(f"volume {vol.name!r} is declared as external, but could not be found")
    secret_ids: dict[str, str] = {}
    for sec in plan.secrets:
        found = client.find(client.secret, sec.name)
        if found is None:
            if sec.spec is None:
                problems.append(f"secret {sec.name!r} is declared as external, but could not be found")
            continue
        secret_ids[sec.name] = found.meta.id
        if sec.spec is not None:
            digest = "sha256:" + hashlib.sha256(sec.spec.data).hexdigest()
            if found.status.digest and found.status.digest != digest:
                problems.append(
                    f"secret {sec.name!r} exists with different data; secrets cannot be changed"
                    " (remove it, or give the new one another name)"
                )
    for svc in plan.services:
        found = client.find(client.service, svc.name)
        if found is not None and found.spec.annotations.labels.get(NAMESPACE_LABEL) != plan.name:
            problems.append(f"service {svc.name!r} exists already and is not part of stack {plan.name}")
    if problems:
        raise StackError("; ".join(problems))
    return secret_ids


def deploy(client: Client, plan: StackPlan, *, prune: bool = False, say: Say = print) -> DeployResult:
    """Create or update everything in ``plan``; on a failed write, remove what this call created."""
    secret_ids = _preflight(client, plan)
    existing = {s.spec.annotations.name: s for s in stack_services(client, plan.name)}
    result = DeployResult()
    undo: list[tuple[str, str, Callable[[str], None]]] = []  # (kind, name, remover)
    step = ""
    try:
        for net in plan.networks:
            if net.spec is not None and client.find(client.network, net.name) is None:
                step = f"creating network {net.name}"
                say(f"Creating network {net.name}")
                client.create_network(net.spec)
                undo.append(("network", net.name, client.remove_network))
        for vol in plan.volumes:
            if vol.spec is not None and client.find(client.volume, vol.name) is None:
                step = f"creating volume {vol.name}"
                say(f"Creating volume {vol.name}")
                client.create_volume(vol.spec)
                undo.append(("volume", vol.name, client.remove_volume))
        for sec in plan.secrets:
            if sec.spec is not None and sec.name not in secret_ids:
                step = f"creating secret {sec.name}"
                say(f"Creating secret {sec.name}")
                secret_ids[sec.name] = client.create_secret(sec.spec)
                undo.append(("secret", sec.name, client.remove_secret))
        for svc in plan.services:
            spec = _with_digest(with_secret_ids(svc.spec, secret_ids))
            current = existing.get(svc.name)
            if current is None:
                step = f"creating service {svc.name}"
                say(f"Creating service {svc.name}")
                service_id = client.create_service(spec)
                undo.append(("service", svc.name, client.remove_service))
                result.created.append(svc.name)
                result.services[svc.name] = (service_id, None)
            elif current.spec.annotations.labels.get(HASH_LABEL) == spec.annotations.labels[HASH_LABEL]:
                result.unchanged.append(svc.name)
                result.services[svc.name] = (current.meta.id, current.status.update_started_at)
            else:
                step = f"updating service {svc.name}"
                say(f"Updating service {svc.name}")
                before = _update(client, current.meta.id, spec)
                result.updated.append(svc.name)
                result.services[svc.name] = (current.meta.id, before)
    except SwarmctlError as e:
        undone = _undo(undo)
        raise DeployError(f"{step}: {e}", undone) from None
    if prune:
        wanted = set(plan.service_names())
        for name, old in sorted(existing.items()):
            if name not in wanted:
                say(f"Removing service {name}")
                client.remove_service(old.meta.id)
                result.pruned.append(name)
    return result


def _update(client: Client, service_id: str, spec: ServiceSpec) -> datetime | None:
    """Write ``spec`` over the service; its update start time before the write (for waiting)."""

    def write(current: Service) -> datetime | None:
        client.update_service(current, spec)
        return current.status.update_started_at

    return retry_on_conflict(lambda: client.service(service_id), write)


def _undo(undo: list[tuple[str, str, Callable[[str], None]]]) -> list[str]:
    """Remove what was created, newest first (services before the networks they use); best effort."""
    undone = []
    for kind, name, remove in reversed(undo):
        try:
            remove(name)
            undone.append(f"{kind} {name}")
        except SwarmctlError:
            continue
    return undone


def remove(client: Client, stack: str, *, say: Say = print) -> list[str]:
    """Remove the stack's services, then its networks and secrets (volumes keep their data, as in Docker)."""
    removed: list[str] = []
    errors: list[str] = []
    services = stack_services(client, stack)
    networks = [n for n in client.networks() if n.spec.annotations.labels.get(NAMESPACE_LABEL) == stack]
    secrets = [s for s in client.secrets() if s.spec.annotations.labels.get(NAMESPACE_LABEL) == stack]
    if not (services or networks or secrets):
        raise StackError(f"nothing found in stack: {stack}")
    steps: list[tuple[str, list[tuple[str, str]], Callable[[str], None]]] = [
        ("service", [(s.spec.annotations.name, s.meta.id) for s in services], client.remove_service),
        ("secret", [(s.spec.annotations.name, s.meta.id) for s in secrets], client.remove_secret),
        ("network", [(n.spec.annotations.name, n.meta.id) for n in networks], client.remove_network),
    ]
    for kind, objs, rm in steps:
        for name, obj_id in sorted(objs):
            say(f"Removing {kind} {name}")
            try:
                rm(obj_id)
                removed.append(f"{kind} {name}")
            except SwarmctlError as e:
                errors.append(f"removing {kind} {name}: {e}")
    if errors:
        raise StackError("; ".join(errors))
    return removed
