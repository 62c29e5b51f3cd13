"""``swarmctl stack …``: deploy Compose files as stacks, list, inspect and remove them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import click
import yaml

from api import Service
from swarmctl import progress
from swarmctl.commands import service_flags as flags
from swarmctl.commands.service import SERVICE_COLUMNS, print_task_list, service_rows
from swarmctl.context import AppContext, pass_app
from swarmctl.errors import SwarmctlError
from swarmctl.output import filter_option, format_option, no_trunc_option, print_rows, quiet_option
from swarmctl.stack.errors import StackError
from swarmctl.stack.model import NAMESPACE_LABEL

# The loader (jsonschema, YAML) is imported by the commands that need it, to keep every other command quick.


@click.group()
def stack() -> None:
    """Manage stacks (Compose files deployed as a group of services)."""


def _warn(message: str) -> None:
    click.echo(f"Warning: {message}", err=True)


@stack.command("deploy")
@click.option(
    "-c",
    "--compose-file",
    "files",
    multiple=True,
    required=True,
    help="Compose file ('-' for stdin); repeat to merge.",
)
@click.option("--prune", is_flag=True, help="Remove services of the stack that are no longer in the files.")
@flags.converge_options
@quiet_option
@click.argument("name", metavar="STACK")
@pass_app
def deploy_cmd(
    app: AppContext, name: str, files: tuple[str, ...], prune: bool, quiet: bool, **o: Any
) -> None:
    """Deploy a new stack or update an existing one."""
    from swarmctl.stack import convert, deploy, loader

    config = loader.load(list(files))
    plan = convert.plan(config, name)
    for w in plan.warnings:
        _warn(w)
    client = app.client
    say = (lambda _msg: None) if quiet else click.echo
    result = deploy.deploy(client, plan, prune=prune, say=say)
    if not quiet and not (result.created or result.updated or result.pruned):
        click.echo(f"Stack {name} is up to date")
    if o["detach"]:
        return
    targets = [progress.Target(sid, svc, baseline) for svc, (sid, baseline) in result.services.items()]
    display = progress.Display(quiet=quiet)
    progress.wait(client, targets, timeout=o["timeout"] / 1e9, what=f"stack {name}", display=display)


@stack.command("config")
@click.option(
    "-c", "--compose-file", "files", multiple=True, required=True, help="Compose file ('-' for stdin)."
)
def config_cmd(files: tuple[str, ...]) -> None:
    """Print the merged, interpolated configuration the files describe."""
    from swarmctl.stack import loader

    config = loader.load(list(files))
    for w in config.warnings:
        _warn(w)
    data = {
        "services": _thaw(config.services),
        "networks": _thaw(config.networks),
        "volumes": _thaw(config.volumes),
        "secrets": _thaw(config.secrets),
    }
    click.echo(
        yaml.safe_dump(
            {k: v for k, v in data.items() if v}, sort_keys=False, default_flow_style=False
        ).rstrip()
    )


def _thaw(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@stack.command("ls")
@format_option
@pass_app
def ls(app: AppContext, fmt: str | None) -> None:
    """List stacks."""
    counts = Counter(s.spec.annotations.labels.get(NAMESPACE_LABEL) for s in app.client.services())
    rows = [{"Name": n, "Services": str(c)} for n, c in sorted(counts.items()) if n]
    print_rows(rows, [("Name", "NAME"), ("Services", "SERVICES")], fmt=fmt)


def _services(app: AppContext, name: str) -> list[Service]:
    from swarmctl.stack.deploy import stack_services

    services = stack_services(app.client, name)
    if not services:
        raise StackError(f"nothing found in stack: {name}")
    return services


@stack.command("services")
@filter_option
@format_option
@quiet_option
@no_trunc_option
@click.argument("name", metavar="STACK")
@pass_app
def services_cmd(
    app: AppContext, name: str, filter_args: tuple[str, ...], fmt: str | None, quiet: bool, no_trunc: bool
) -> None:
    """List the services of a stack."""
    from swarmctl.commands.service import list_services

    wanted = {s.meta.id for s in _services(app, name)}
    services = [s for s in list_services(app.client, filter_args) if s.meta.id in wanted]
    if quiet:
        for s in services:
            click.echo(s.meta.id)
        return
    print_rows(service_rows(app.client, services, no_trunc), SERVICE_COLUMNS, fmt=fmt)


@stack.command("ps")
@filter_option
@format_option
@quiet_option
@no_trunc_option
@click.argument("name", metavar="STACK")
@pass_app
def ps(
    app: AppContext, name: str, filter_args: tuple[str, ...], fmt: str | None, quiet: bool, no_trunc: bool
) -> None:
    """List the tasks of a stack."""
    client = app.client
    tasks = [t for s in _services(app, name) for t in client.tasks(service=s.meta.id)]
    print_task_list(client, tasks, filter_args, fmt=fmt, quiet=quiet, no_trunc=no_trunc)


@stack.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="STACK...")
@pass_app
def rm(app: AppContext, names: tuple[str, ...]) -> None:
    """Remove one or more stacks (their services, networks and secrets; volumes keep their data)."""
    from swarmctl.stack import deploy

    errors = []
    for name in names:
        try:
            deploy.remove(app.client, name, say=click.echo)
        except SwarmctlError as e:
            errors.append(str(e))
    if errors:
        raise SwarmctlError("; ".join(errors))
