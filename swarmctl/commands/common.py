"""Pieces several command groups share: task rows, task filters, removing objects one by one, and the
``ls``/``inspect``/``rm`` commands of a kind of cluster object."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import click

from api import Node, Task, to_plain
from api.objects import PortConfig, PublishMode
from swarmctl import filters
from swarmctl.client import Client
from swarmctl.context import AppContext, pass_app
from swarmctl.errors import SwarmctlError
from swarmctl.output import (
    Columns,
    filter_option,
    format_option,
    no_trunc_option,
    print_objects,
    print_rows,
    quiet_option,
    short_id,
)
from swarmctl.specs import format_port
from swarmctl.units import since

T = TypeVar("T")

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


# --- ls / inspect / rm of one kind of object ----------------------------------------------------------------
def filtered(
    fetch: Callable[[Client], list[T]], matchers: Mapping[str, filters.Matcher[T]]
) -> Callable[[Client, Sequence[str]], list[T]]:
    """The objects ``fetch`` gets that the ``--filter`` arguments keep (the request is made first)."""
    return lambda client, args: filters.apply(fetch(client), filters.parse(args, matchers), matchers)


def _full_id(obj: Any) -> str:
    return str(obj.meta.id)


def ls_command(
    group: click.Group,
    help: str,
    *,
    objects: Callable[[Client, Sequence[str]], list[T]],
    rows: Callable[[Client, Sequence[T], bool], list[dict[str, str]]],
    columns: Columns,
    quiet_id: Callable[[T], str] = _full_id,
    no_trunc: bool = True,
) -> None:
    """Add ``ls`` (``-f``, ``--format``, ``-q`` and, with ``no_trunc``, ``--no-trunc``) to ``group``.

    ``objects`` are those the filters keep; ``-q`` prints ``quiet_id`` of each before any row is made (rows
    may ask the manager for more), else they print as ``rows`` under ``columns``.
    """

    def ls(
        app: AppContext, filter_args: tuple[str, ...], fmt: str | None, quiet: bool, no_trunc: bool = False
    ) -> None:
        found = objects(app.client, filter_args)
        if quiet:
            for obj in found:
                click.echo(quiet_id(obj))
            return
        print_rows(rows(app.client, found, no_trunc), columns, fmt=fmt)

    command = pass_app(ls)
    if no_trunc:
        command = no_trunc_option(command)
    group.command("ls", help=help)(filter_option(format_option(quiet_option(command))))


def inspect_command(
    group: click.Group,
    help: str,
    metavar: str,
    get: Callable[[Client, str], T],
    *,
    pretty: Callable[[T], str] | None = None,
) -> None:
    """Add ``inspect REF...`` to ``group``: each object ``get`` finds, as JSON or ``--format``, or (when
    ``pretty`` is given) with ``--pretty`` as that text, the objects a blank line apart."""

    def inspect(app: AppContext, refs: tuple[str, ...], fmt: str | None, pretty_flag: bool = False) -> None:
        found = [get(app.client, r) for r in refs]
        if pretty is not None and pretty_flag:
            click.echo("\n\n".join(pretty(obj) for obj in found))
            return
        print_objects([to_plain(obj) for obj in found], fmt=fmt)

    command = click.argument("refs", nargs=-1, required=True, metavar=metavar)(pass_app(inspect))
    if pretty is not None:
        command = click.option(
            "--pretty", "pretty_flag", is_flag=True, help="Print the information in a human friendly format."
        )(command)
    group.command("inspect", help=help)(format_option(command))


def rm_command(group: click.Group, help: str, metavar: str, remove: Callable[[Client, str], None]) -> None:
    """Add ``rm REF...`` to ``group``: :func:`remove_each` with ``remove``."""

    def rm(app: AppContext, refs: tuple[str, ...]) -> None:
        remove_each(refs, functools.partial(remove, app.client))

    group.command("rm", help=help)(
        click.argument("refs", nargs=-1, required=True, metavar=metavar)(pass_app(rm))
    )
