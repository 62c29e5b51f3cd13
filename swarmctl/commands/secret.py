"""``swarmctl secret …``: secrets, whose data the manager never returns."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from api import Annotations, Secret, to_plain
from api.objects import SecretSpec
from swarmctl import filters
from swarmctl.commands.common import remove_each
from swarmctl.context import AppContext, pass_app
from swarmctl.errors import InvalidValue
from swarmctl.output import (
    filter_option,
    format_option,
    no_trunc_option,
    print_objects,
    print_rows,
    quiet_option,
    short_id,
)
from swarmctl.units import parse_kv, since

_MATCHERS: dict[str, filters.Matcher[Secret]] = {
    "id": lambda s, v: s.meta.id.startswith(v),
    "name": lambda s, v: s.spec.annotations.name.startswith(v),
    "label": lambda s, v: filters.label_matches(s.spec.annotations.labels, v),
}


@click.group()
def secret() -> None:
    """Manage secrets."""


@secret.command()
@click.option("-l", "--label", multiple=True, metavar="KEY=VALUE", help="Secret label.")
@click.argument("name")
@click.argument("file", metavar="FILE|-")
@pass_app
def create(app: AppContext, name: str, file: str, label: tuple[str, ...]) -> None:
    """Create a secret from a file, or from stdin with '-'."""
    if file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(file).read_bytes()
        except OSError as e:
            raise InvalidValue("secret file", file, e.strerror or str(e)) from None
    spec = SecretSpec(
        annotations=Annotations(
            name=name, labels=dict(parse_kv(x, "label", need_value=False) for x in label)
        ),
        data=data,
    )
    click.echo(app.client.create_secret(spec))


@secret.command("ls")
@filter_option
@format_option
@quiet_option
@no_trunc_option
@pass_app
def ls(app: AppContext, filter_args: tuple[str, ...], fmt: str | None, quiet: bool, no_trunc: bool) -> None:
    """List secrets."""
    secrets = filters.apply(app.client.secrets(), filters.parse(filter_args, _MATCHERS), _MATCHERS)
    rows = [
        {
            "ID": short_id(s.meta.id, no_trunc),
            "FullID": s.meta.id,
            "Name": s.spec.annotations.name,
            "Digest": s.status.digest,
            "CreatedAt": since(s.meta.created_at),
            "UpdatedAt": since(s.meta.updated_at),
        }
        for s in secrets
    ]
    columns = [("ID", "ID"), ("Name", "NAME"), ("CreatedAt", "CREATED"), ("UpdatedAt", "UPDATED")]
    print_rows(rows, columns, fmt=fmt, quiet=quiet, quiet_key="FullID")


@secret.command()
@format_option
@click.argument("refs", nargs=-1, required=True, metavar="SECRET...")
@pass_app
def inspect(app: AppContext, refs: tuple[str, ...], fmt: str | None) -> None:
    """Display detailed information on one or more secrets (never their data)."""
    print_objects([to_plain(app.client.secret(r)) for r in refs], fmt=fmt)


@secret.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="SECRET...")
@pass_app
def rm(app: AppContext, refs: tuple[str, ...]) -> None:
    """Remove one or more secrets."""
    remove_each(refs, app.client.remove_secret)
