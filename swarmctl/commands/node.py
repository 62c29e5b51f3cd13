"""``swarmctl node …``: list, inspect, update, promote, demote and remove nodes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import click

from api import Node
from api.objects import NodeAvailability, NodeRole, NodeSpec
from swarmctl import filters
from swarmctl.client import Client, retry_on_conflict
from swarmctl.commands.common import filtered, inspect_command, ls_command, remove_each
from swarmctl.commands.service import print_task_list
from swarmctl.context import AppContext, pass_app
from swarmctl.output import filter_option, format_option, no_trunc_option, quiet_option, short_id
from swarmctl.pretty import pretty_node
from swarmctl.units import parse_kv

NODE_COLUMNS = [
    ("ID", "ID"),
    ("Hostname", "HOSTNAME"),
    ("Status", "STATUS"),
    ("Availability", "AVAILABILITY"),
    ("ManagerStatus", "MANAGER STATUS"),
    ("Address", "ADDRESS"),
]

_MATCHERS: dict[str, filters.Matcher[Node]] = {
    "id": lambda n, v: n.meta.id.startswith(v),
    "name": lambda n, v: n.status.description.hostname.startswith(v),
    "role": lambda n, v: n.spec.role.value == v.lower(),
    "availability": lambda n, v: n.spec.availability.value == v.lower(),
    "node.label": lambda n, v: filters.label_matches(n.spec.annotations.labels, v),
    "label": lambda n, v: filters.label_matches(n.status.description.engine_labels, v),
}


@click.group()
def node() -> None:
    """Manage the cluster's nodes."""


def _rows(client: Client, nodes: Sequence[Node], no_trunc: bool) -> list[dict[str, str]]:
    leader = _leader(client)
    rows = []
    for n in nodes:
        manager_status = ""
        if n.spec.role is NodeRole.MANAGER:
            manager_status = "Leader" if n.meta.id == leader else "Reachable"
        rows.append(
            {
                "ID": short_id(n.meta.id, no_trunc),
                "Hostname": n.status.description.hostname,
                "Status": n.status.state.value.capitalize(),
                "Availability": n.spec.availability.value.capitalize(),
                "ManagerStatus": manager_status,
                "Address": n.status.addr,
            }
        )
    return rows


def _leader(client: Client) -> str:
    try:
        return client.cluster().status.leader
    except Exception:  # an uninitialised cluster has no leader to show
        return ""


ls_command(node, "List nodes.", objects=filtered(Client.nodes, _MATCHERS), rows=_rows, columns=NODE_COLUMNS)
inspect_command(
    node, "Display detailed information on one or more nodes.", "NODE...", Client.node, pretty=pretty_node
)


@node.command()
@filter_option
@format_option
@quiet_option
@no_trunc_option
@click.argument("refs", nargs=-1, required=True, metavar="NODE...")
@pass_app
def ps(
    app: AppContext,
    refs: tuple[str, ...],
    filter_args: tuple[str, ...],
    fmt: str | None,
    quiet: bool,
    no_trunc: bool,
) -> None:
    """List the tasks on one or more nodes."""
    client = app.client
    tasks = [t for ref in refs for t in client.tasks(node=client.node(ref).meta.id)]
    print_task_list(client, tasks, filter_args, fmt=fmt, quiet=quiet, no_trunc=no_trunc)


def _update(client: Client, ref: str, change: Callable[[NodeSpec], NodeSpec]) -> Node:
    node_id = client.node(ref).meta.id

    def write(n: Node) -> Node:
        client.update_node(n, change(n.spec))
        return n

    return retry_on_conflict(lambda: client.node(node_id), write)


@node.command()
@click.option(
    "--availability",
    type=click.Choice(["active", "pause", "drain"], case_sensitive=False),
    help="Availability of the node.",
)
@click.option(
    "--role", type=click.Choice(["worker", "manager"], case_sensitive=False), help="Role of the node."
)
@click.option("--label-add", multiple=True, metavar="KEY=VALUE", help="Add or update a node label.")
@click.option("--label-rm", multiple=True, metavar="KEY", help="Remove a node label if it exists.")
@click.argument("ref", metavar="NODE")
@pass_app
def update(
    app: AppContext,
    ref: str,
    availability: str | None,
    role: str | None,
    label_add: tuple[str, ...],
    label_rm: tuple[str, ...],
) -> None:
    """Update a node's availability, role or labels."""
    added = dict(parse_kv(x, "label", need_value=False) for x in label_add)

    def change(spec: NodeSpec) -> NodeSpec:
        labels = {k: v for k, v in spec.annotations.labels.items() if k not in label_rm}
        labels.update(added)
        spec = replace(spec, annotations=replace(spec.annotations, labels=labels))
        if availability:
            spec = replace(spec, availability=NodeAvailability(availability.lower()))
        if role:
            spec = replace(spec, role=NodeRole(role.lower()))
        return spec

    _update(app.client, ref, change)
    click.echo(ref)


def _set_role(app: AppContext, refs: tuple[str, ...], role: NodeRole, verb: str) -> None:
    for ref in refs:
        current = app.client.node(ref)
        name = current.status.description.hostname or ref
        if current.spec.role is role:
            click.echo(f"Node {name} is already a {role.value} in the cluster.")
            continue
        _update(app.client, ref, lambda spec: replace(spec, role=role))
        click.echo(f"Node {name} {verb} to a {role.value} in the cluster.")


@node.command()
@click.argument("refs", nargs=-1, required=True, metavar="NODE...")
@pass_app
def promote(app: AppContext, refs: tuple[str, ...]) -> None:
    """Promote one or more nodes to manager."""
    _set_role(app, refs, NodeRole.MANAGER, "promoted")


@node.command()
@click.argument("refs", nargs=-1, required=True, metavar="NODE...")
@pass_app
def demote(app: AppContext, refs: tuple[str, ...]) -> None:
    """Demote one or more nodes from manager to worker."""
    _set_role(app, refs, NodeRole.WORKER, "demoted")


@node.command("rm")
@click.option("-f", "--force", is_flag=True, help="Force-remove a node that is still connected.")
@click.argument("refs", nargs=-1, required=True, metavar="NODE...")
@pass_app
def rm(app: AppContext, refs: tuple[str, ...], force: bool) -> None:
    """Remove one or more nodes from the cluster."""
    remove_each(refs, lambda ref: app.client.remove_node(ref, force=force))
