"""``swarmctl secret …``: secrets, whose data the manager never returns."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from api import Annotations, Secret
from api.objects import SecretSpec
from swarmctl import filters
from swarmctl.client import Client
from swarmctl.commands.common import filtered, inspect_command, ls_command, rm_command
from swarmctl.context import AppContext, pass_app
from swarmctl.errors import InvalidValue
from swarmctl.output import short_id
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


def _rows(client: Client, secrets: Sequence[Secret], no_trunc: bool) -> list[dict[str, str]]:
    return [
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


ls_command(
    secret,
    "List secrets.",
    objects=filtered(Client.secrets, _MATCHERS),
    rows=_rows,
    columns=[("ID", "ID"), ("Name", "NAME"), ("CreatedAt", "CREATED"), ("UpdatedAt", "UPDATED")],
)
inspect_command(
    secret,
    "Display detailed information on one or more secrets (never their data).",
    "SECRET...",
    Client.secret,
)
rm_command(secret, "Remove one or more secrets.", "SECRET...", Client.remove_secret)
