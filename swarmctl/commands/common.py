"""Pieces several command groups share: task rows, task filters, and removing objects one by one."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import click

from api import Node, Task
from api.objects import PortConfig, PublishMode
from swarmctl import filters
from swarmctl.errors import SwarmctlError
from swarmctl.output import short_id
from swarmctl.specs import format_port
from swarmctl.units import since

TASK_COLUMNS = [
    ("ID", "ID"),
    ("Name", "NAME"),
    ("Image", "IMAGE"),
    ("Node", "NODE"),
    ("DesiredState", "DESIRED STATE"),
    ("CurrentState", "CURRENT STATE"),
    ("Error", "ERROR"),
    ("Ports", "PORTS"),
]


def task_name(t: Task) -> str:
    """``web.1`` for a replicated task, ``web.<node id>`` for a global one (Docker's names)."""
    service = t.service_annotations.name or t.service_id[:12]
    return f"{service}.{t.slot}" if t.slot else f"{service}.{t.node_id or t.meta.id}"


def node_name(nodes: Mapping[str, Node], node_id: str) -> str:
    node = nodes.get(node_id)
    if node is None:
        return node_id[:12]
    return node.status.description.hostname or node_id[:12]


def task_error(t: Task) -> str:
    """What went wrong with a task: its error, or why it waits (the scheduler's explanation)."""
    if t.status.err:
        return t.status.err
    message = t.status.message
    return message if message.startswith("no suitable node") else ""


def task_rows(
    tasks: Sequence[Task], nodes: Mapping[str, Node], no_trunc: bool = False
) -> list[dict[str, str]]:
    """Rows as ``docker service ps`` prints them: by service and slot, newest first, history ``\\_``."""

    def group(t: Task) -> tuple[str, int, str]:
        return (t.service_annotations.name, t.slot, t.node_id if not t.slot else "")

    ordered = sorted(tasks, key=lambda t: t.meta.created_at, reverse=True)
    ordered.sort(key=group)
    rows, last = [], None
    for t in ordered:
        key = group(t)
        name = task_name(t) if key != last else f" \\_ {task_name(t)}"
        last = key
        rows.append(
            {
                "ID": short_id(t.meta.id, no_trunc),
                "Name": name,
                "Image": t.spec.container.image,
                "Node": node_name(nodes, t.node_id),
                "DesiredState": t.desired_state.value.capitalize(),
                "CurrentState": f"{t.status.state.value.capitalize()} {since(t.status.timestamp).lower()}",
                "Error": task_error(t),
                "Ports": ", ".join(format_port(p) for p in t.status.ports or host_ports(t)),
            }
        )
    return rows


def host_ports(t: Task) -> tuple[PortConfig, ...]:
    """The ports a task publishes on its node (host mode), as its service gave them."""
    return tuple(p for p in t.endpoint.ports if p.publish_mode is PublishMode.HOST and p.published_port)


def task_filter_keys() -> list[str]:
    return ["id", "name", "node", "desired-state", "service"]


def task_matchers(nodes: Mapping[str, Node]) -> dict[str, filters.Matcher[Task]]:
    """How ``--filter`` keys match a task (``node`` by hostname or id)."""

    def on_node(t: Task, v: str) -> bool:
        return t.node_id.startswith(v) or node_name(nodes, t.node_id) == v

    return {
        "id": lambda t, v: t.meta.id.startswith(v),
        "name": lambda t, v: task_name(t).startswith(v),
        "node": on_node,
        "desired-state": lambda t, v: t.desired_state.value == v.lower(),
        "service": lambda t, v: t.service_id.startswith(v) or t.service_annotations.name == v,
    }


def remove_each(refs: Iterable[str], remove: Callable[[str], None]) -> None:
    """Remove each object, printing its reference; go on after a failure and report them all at the end."""
    errors = []
    for ref in refs:
        try:
            remove(ref)
        except SwarmctlError as e:
            errors.append(str(e))
            continue
        click.echo(ref)
    if errors:
        raise SwarmctlError("; ".join(errors))
