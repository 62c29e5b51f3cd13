"""``swarmctl service …``: create, list, inspect, update, scale, roll back and remove services."""

from __future__ import annotations

import re
import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import click

from api import Node, Service, Task, TaskState
from api.objects import ServiceMode
from swarmctl import filters, progress
from swarmctl.client import Client, retry_on_conflict
from swarmctl.commands import service_flags as flags
from swarmctl.commands.common import (
    TASK_COLUMNS,
    inspect_command,
    ls_command,
    rm_command,
    task_filter_keys,
    task_matchers,
    task_rows,
)
from swarmctl.context import AppContext, pass_app
from swarmctl.errors import InvalidValue, SwarmctlError
from swarmctl.logs import log_options, print_logs
from swarmctl.output import filter_option, format_option, no_trunc_option, print_rows, quiet_option, short_id
from swarmctl.pretty import pretty_service
from swarmctl.specs import format_port
from swarmctl.units import parse_int

SERVICE_COLUMNS = [
    ("ID", "ID"),
    ("Name", "NAME"),
    ("Mode", "MODE"),
    ("Replicas", "REPLICAS"),
    ("Image", "IMAGE"),
    ("Ports", "PORTS"),
]


@click.group()
def service() -> None:
    """Manage services."""


# --- create / update / scale / rollback -------------------------------------------------------------------
@service.command(context_settings={"allow_interspersed_args": False})
@flags.create_options
@flags.converge_options
@quiet_option
@click.argument("image", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_app
def create(app: AppContext, image: str | None, command: tuple[str, ...], **o: Any) -> None:
    """Create a service: IMAGE [COMMAND] [ARG...]."""
    if o["image_opt"]:
        if image is not None:
            command = (image, *command)
        image = o["image_opt"]
    if not image:
        raise click.UsageError(
            "an image is required: swarmctl service create [OPTIONS] IMAGE [COMMAND] [ARG...]"
        )
    if o["mode"] == "global" and o["replicas"] is not None:
        raise click.UsageError("--replicas can only be used with replicated mode")
    client = app.client
    spec = flags.build_spec(client, o, image, command)
    if not spec.annotations.name:
        spec = replace(spec, annotations=replace(spec.annotations, name=generated_name(image)))
    service_id = client.create_service(spec)
    click.echo(service_id)
    if not o["detach"]:
        _wait(client, [progress.Target(service_id, spec.annotations.name)], o, quiet=o["quiet"])


def generated_name(image: str) -> str:
    """A name for a service created without ``--name``: the image's name and a random suffix."""
    base = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    base = re.sub(r"[^a-zA-Z0-9_.-]", "-", base).strip("-_.") or "service"
    return f"{base[:40]}-{secrets.token_hex(3)}"


def _wait(
    client: Client, targets: list[progress.Target], o: dict[str, Any], *, quiet: bool, what: str = ""
) -> None:
    display = progress.Display(quiet=quiet)
    progress.wait(client, targets, timeout=o["timeout"] / 1e9, what=what, display=display)


@service.command()
@flags.update_options
@flags.converge_options
@quiet_option
@click.argument("ref", metavar="SERVICE")
@pass_app
def update(app: AppContext, ref: str, **o: Any) -> None:
    """Update a service."""
    client = app.client
    service_id = client.service(ref).meta.id
    if o["rollback"]:
        current = client.service(service_id)
        client.rollback_service(service_id)
        target = progress.Target(
            service_id, current.spec.annotations.name, current.status.update_started_at, rollback=True
        )
    else:

        def write(cur: Service) -> Service:
            if o["replicas"] is not None and cur.spec.mode is ServiceMode.GLOBAL:
                raise click.UsageError("--replicas can only be used with replicated mode")
            client.update_service(cur, flags.update_spec(client, cur.spec, o))
            return cur

        current = retry_on_conflict(lambda: client.service(service_id), write)
        target = progress.Target(service_id, current.spec.annotations.name, current.status.update_started_at)
    click.echo(current.spec.annotations.name)
    if not o["detach"]:
        _wait(client, [target], o, quiet=o["quiet"])


@service.command()
@flags.converge_options
@click.argument("pairs", nargs=-1, required=True, metavar="SERVICE=REPLICAS...")
@pass_app
def scale(app: AppContext, pairs: tuple[str, ...], **o: Any) -> None:
    """Scale one or more replicated services: web=3 api=5."""
    wanted: list[tuple[str, int]] = []
    for pair in pairs:
        ref, sep, text = pair.rpartition("=")
        if not sep or not ref:
            raise InvalidValue("scale", pair, "use SERVICE=REPLICAS")
        wanted.append((ref, parse_int(text, "replicas")))
    client = app.client
    targets, errors = [], []
    for ref, count in wanted:
        try:
            svc = _scale_one(client, ref, count)
        except SwarmctlError as e:
            errors.append(str(e))
            continue
        click.echo(f"{svc.spec.annotations.name} scaled to {count}")
        targets.append(progress.Target(svc.meta.id, svc.spec.annotations.name, svc.status.update_started_at))
    if targets and not o["detach"]:
        _wait(client, targets, o, quiet=False)
    if errors:
        raise SwarmctlError("; ".join(errors))


def _scale_one(client: Client, ref: str, count: int) -> Service:
    service_id = client.service(ref).meta.id

    def write(svc: Service) -> Service:
        if svc.spec.mode is not ServiceMode.REPLICATED:
            raise SwarmctlError(f"{ref}: scale can only be used with replicated mode")
        client.update_service(svc, replace(svc.spec, replicas=count))
        return svc

    return retry_on_conflict(lambda: client.service(service_id), write)


@service.command()
@flags.converge_options
@quiet_option
@click.argument("ref", metavar="SERVICE")
@pass_app
def rollback(app: AppContext, ref: str, **o: Any) -> None:
    """Revert a service to its previous spec."""
    client = app.client
    current = client.service(ref)
    client.rollback_service(current.meta.id)
    click.echo(current.spec.annotations.name)
    if not o["detach"]:
        target = progress.Target(
            current.meta.id, current.spec.annotations.name, current.status.update_started_at, rollback=True
        )
        _wait(client, [target], o, quiet=o["quiet"])


# --- ls / ps / inspect / rm -------------------------------------------------------------------------------
def service_rows(client: Client, services: Sequence[Service], no_trunc: bool = False) -> list[dict[str, str]]:
    """``service ls`` rows (also used by ``stack services``)."""
    tasks_by_service: dict[str, list[Task]] = defaultdict(list)
    for t in client.tasks():
        tasks_by_service[t.service_id].append(t)
    nodes: list[Node] = client.nodes() if any(s.spec.mode is ServiceMode.GLOBAL for s in services) else []
    rows = []
    for s in services:
        tasks = tasks_by_service.get(s.meta.id, [])
        running = sum(
            1 for t in tasks if t.status.state is TaskState.RUNNING and t.desired_state is TaskState.RUNNING
        )
        is_global = s.spec.mode is ServiceMode.GLOBAL
        desired = progress.eligible_nodes(s, nodes) if is_global else s.spec.replicas
        replicas = f"{running}/{desired}"
        if s.spec.task.placement.max_replicas:
            replicas += f" (max {s.spec.task.placement.max_replicas} per node)"
        ports = s.status.endpoint.ports or s.spec.endpoint.ports
        rows.append(
            {
                "ID": short_id(s.meta.id, no_trunc),
                "Name": s.spec.annotations.name,
                "Mode": s.spec.mode.value,
                "Replicas": replicas,
                "Image": s.spec.task.container.image,
                "Ports": ", ".join(format_port(p) for p in ports),
            }
        )
    return rows


_SERVICE_MATCHERS: dict[str, filters.Matcher[Service]] = {
    "id": lambda s, v: s.meta.id.startswith(v),
    "name": lambda s, v: s.spec.annotations.name.startswith(v),
    "label": lambda s, v: filters.label_matches(s.spec.annotations.labels, v),
    "mode": lambda s, v: s.spec.mode.value == v,
}


def list_services(client: Client, filter_args: Sequence[str]) -> list[Service]:
    parsed = filters.parse(filter_args, _SERVICE_MATCHERS)
    return filters.apply(client.services(), parsed, _SERVICE_MATCHERS)


ls_command(service, "List services.", objects=list_services, rows=service_rows, columns=SERVICE_COLUMNS)


@service.command()
@filter_option
@format_option
@quiet_option
@no_trunc_option
@click.argument("refs", nargs=-1, required=True, metavar="SERVICE...")
@pass_app
def ps(
    app: AppContext,
    refs: tuple[str, ...],
    filter_args: tuple[str, ...],
    fmt: str | None,
    quiet: bool,
    no_trunc: bool,
) -> None:
    """List the tasks of one or more services."""
    client = app.client
    tasks: list[Task] = []
    for ref in refs:
        tasks += client.tasks(service=client.service(ref).meta.id)
    print_task_list(client, tasks, filter_args, fmt=fmt, quiet=quiet, no_trunc=no_trunc)


def print_task_list(
    client: Client,
    tasks: list[Task],
    filter_args: Sequence[str],
    *,
    fmt: str | None,
    quiet: bool,
    no_trunc: bool,
) -> None:
    """Tasks as ``service ps`` shows them (shared with ``stack ps`` and ``node ps``)."""
    nodes = {n.meta.id: n for n in client.nodes()}
    parsed = filters.parse(filter_args, task_filter_keys())
    tasks = filters.apply(tasks, parsed, task_matchers(nodes))
    if quiet:
        for t in tasks:
            click.echo(t.meta.id)
        return
    print_rows(task_rows(tasks, nodes, no_trunc), TASK_COLUMNS, fmt=fmt)


inspect_command(
    service,
    "Display detailed information on one or more services.",
    "SERVICE...",
    Client.service,
    pretty=pretty_service,
)


@service.command()
@log_options
@click.argument("ref", metavar="SERVICE|TASK")
@pass_app
def logs(app: AppContext, ref: str, **o: Any) -> None:
    """Fetch the logs of a service or task."""
    client = app.client
    svc = client.find(client.service, ref)
    if svc is not None:
        width = len(str(svc.spec.replicas)) if svc.spec.mode is ServiceMode.REPLICATED else 1
        print_logs(client, f"/services/{svc.meta.id}/logs", o, width)
        return
    task = client.find(client.task, ref)
    if task is None:
        raise SwarmctlError(f"no such task or service: {ref}")
    print_logs(client, f"/tasks/{task.meta.id}/logs", o, len(str(task.slot)))


rm_command(service, "Remove one or more services.", "SERVICE...", Client.remove_service)
