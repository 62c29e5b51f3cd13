"""``swarmctl cluster …``: the cluster object and the tokens new nodes join with."""

from __future__ import annotations

import click

from api import to_plain
from api.objects import NodeRole
from swarmctl.context import AppContext, pass_app
from swarmctl.output import format_option, print_objects


@click.group()
def cluster() -> None:
    """Manage the cluster."""


@cluster.command()
@format_option
@pass_app
def inspect(app: AppContext, fmt: str | None) -> None:
    """Display the cluster's settings and status."""
    print_objects([to_plain(app.client.cluster())], fmt=fmt)


@cluster.command("join-token")
@click.option("-q", "--quiet", is_flag=True, help="Only display the token.")
@click.argument("role", type=click.Choice(["worker", "manager"], case_sensitive=False))
@pass_app
def join_token(app: AppContext, role: str, quiet: bool) -> None:
    """Show the token a new worker or manager joins with."""
    client = app.client
    tokens = client.cluster().status.join_tokens
    token = tokens.worker if role.lower() == "worker" else tokens.manager
    if quiet:
        click.echo(token)
        return
    click.echo(f"To add a {role.lower()} to this cluster, run the following command on the new host:\n")
    click.echo(f"    shoal-agent --token {token} --manager {_manager_addresses(app)}\n")


def _manager_addresses(app: AppContext) -> str:
    """Where agents reach the managers: the managers' node addresses, or the address swarmctl uses."""
    client = app.client
    addrs = [n.status.addr for n in client.nodes() if n.spec.role is NodeRole.MANAGER and n.status.addr]
    if addrs:
        return ",".join(f"{a}:2377" if ":" not in a else a for a in addrs)
    a = client.address
    return f"{a.host}:{a.port}" if a.scheme != "unix" else "<manager-address>:2377"
