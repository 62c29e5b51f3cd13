"""``swarmctl volume …``: named volumes, created on each node that runs a task using them."""

from __future__ import annotations

from collections.abc import Sequence

import click

from api import Annotations, Volume, new_id
from api.objects import VolumeSpec
from swarmctl import filters
from swarmctl.client import Client
from swarmctl.commands.common import filtered, inspect_command, ls_command, rm_command
from swarmctl.context import AppContext, pass_app
from swarmctl.units import parse_kv

_MATCHERS: dict[str, filters.Matcher[Volume]] = {
    "name": lambda v, x: x in v.spec.annotations.name,
    "driver": lambda v, x: v.spec.driver == x,
    "label": lambda v, x: filters.label_matches(v.spec.annotations.labels, x),
}


@click.group()
def volume() -> None:
    """Manage volumes."""


@volume.command()
@click.option("-d", "--driver", default="local", show_default=True, help="Volume driver.")
@click.option("-o", "--opt", multiple=True, metavar="KEY=VALUE", help="Driver option.")
@click.option("--label", multiple=True, metavar="KEY=VALUE", help="Volume label.")
@click.argument("name", required=False)
@pass_app
def create(
    app: AppContext, name: str | None, driver: str, opt: tuple[str, ...], label: tuple[str, ...]
) -> None:
    """Create a volume (a random name when none is given)."""
    name = name or new_id()
    spec = VolumeSpec(
        annotations=Annotations(
            name=name, labels=dict(parse_kv(x, "label", need_value=False) for x in label)
        ),
        driver=driver,
        driver_opts=dict(parse_kv(x, "option") for x in opt),
    )
    app.client.create_volume(spec)
    click.echo(name)


def _rows(client: Client, vols: Sequence[Volume], no_trunc: bool) -> list[dict[str, str]]:
    return [{"Driver": v.spec.driver, "Name": v.spec.annotations.name} for v in vols]


# Volumes are known by name: ``-q`` prints names, and there is no id to truncate.
ls_command(
    volume,
    "List volumes.",
    objects=filtered(Client.volumes, _MATCHERS),
    rows=_rows,
    columns=[("Driver", "DRIVER"), ("Name", "VOLUME NAME")],
    quiet_id=lambda v: v.spec.annotations.name,
    no_trunc=False,
)
inspect_command(volume, "Display detailed information on one or more volumes.", "VOLUME...", Client.volume)
rm_command(volume, "Remove one or more volumes.", "VOLUME...", Client.remove_volume)
