"""``swarmctl volume …``: named volumes, created on each node that runs a task using them."""

from __future__ import annotations

import click

from api import Annotations, Volume, new_id, to_plain
from api.objects import VolumeSpec
from swarmctl import filters
from swarmctl.commands.common import remove_each
from swarmctl.context import AppContext, pass_app
from swarmctl.output import filter_option, format_option, print_objects, print_rows, quiet_option
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


@volume.command("ls")
@filter_option
@format_option
@quiet_option
@pass_app
def ls(app: AppContext, filter_args: tuple[str, ...], fmt: str | None, quiet: bool) -> None:
    """List volumes."""
    vols = filters.apply(app.client.volumes(), filters.parse(filter_args, _MATCHERS), _MATCHERS)
    rows = [{"Driver": v.spec.driver, "Name": v.spec.annotations.name} for v in vols]
    print_rows(rows, [("Driver", "DRIVER"), ("Name", "VOLUME NAME")], fmt=fmt, quiet=quiet, quiet_key="Name")


@volume.command()
@format_option
@click.argument("refs", nargs=-1, required=True, metavar="VOLUME...")
@pass_app
def inspect(app: AppContext, refs: tuple[str, ...], fmt: str | None) -> None:
    """Display detailed information on one or more volumes."""
    print_objects([to_plain(app.client.volume(r)) for r in refs], fmt=fmt)


@volume.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="VOLUME...")
@pass_app
def rm(app: AppContext, refs: tuple[str, ...]) -> None:
    """Remove one or more volumes."""
    remove_each(refs, app.client.remove_volume)
