"""``swarmctl task …``: every task in the cluster, whatever its service."""

from __future__ import annotations

from typing import Any

import click

from api import to_plain
from swarmctl.commands.service import print_task_list
from swarmctl.context import AppContext, pass_app
from swarmctl.logs import log_options, print_logs
from swarmctl.output import filter_option, format_option, no_trunc_option, print_objects, quiet_option


@click.group()
def task() -> None:
    """Inspect tasks."""


@task.command("ls")
@filter_option
@format_option
@quiet_option
@no_trunc_option
@pass_app
def ls(app: AppContext, filter_args: tuple[str, ...], fmt: str | None, quiet: bool, no_trunc: bool) -> None:
    """List tasks (filters: id, name, node, desired-state, service)."""
    client = app.client
    print_task_list(client, client.tasks(), filter_args, fmt=fmt, quiet=quiet, no_trunc=no_trunc)


@task.command()
@format_option
@click.argument("refs", nargs=-1, required=True, metavar="TASK...")
@pass_app
def inspect(app: AppContext, refs: tuple[str, ...], fmt: str | None) -> None:
    """Display detailed information on one or more tasks."""
    print_objects([to_plain(app.client.task(r)) for r in refs], fmt=fmt)


@task.command()
@log_options
@click.argument("ref", metavar="TASK")
@pass_app
def logs(app: AppContext, ref: str, **o: Any) -> None:
    """Fetch the logs of a task."""
    task_id = app.client.task(ref).meta.id
    print_logs(app.client, f"/tasks/{task_id}/logs", o)
