"""``swarmctl network …``: cluster-wide (overlay) networks."""

from __future__ import annotations

from collections.abc import Sequence

import click

from api import Annotations, Network
from api.objects import IPAMConfig, NetworkSpec
from swarmctl import filters
from swarmctl.client import Client
from swarmctl.commands.common import filtered, inspect_command, ls_command, rm_command
from swarmctl.context import AppContext, pass_app
from swarmctl.errors import InvalidValue
from swarmctl.output import short_id
from swarmctl.units import parse_kv

_MATCHERS: dict[str, filters.Matcher[Network]] = {
    "id": lambda n, v: n.meta.id.startswith(v),
    "name": lambda n, v: v in n.spec.annotations.name,
    "driver": lambda n, v: n.spec.driver == v,
    "label": lambda n, v: filters.label_matches(n.spec.annotations.labels, v),
}


@click.group()
def network() -> None:
    """Manage networks."""


@network.command()
@click.option("-d", "--driver", default="overlay", show_default=True, help="Network driver.")
@click.option("--subnet", multiple=True, help="Subnet in CIDR format (repeatable).")
@click.option("--gateway", multiple=True, help="Gateway of the matching subnet.")
@click.option("--ip-range", multiple=True, help="Allocate addresses from a sub-range of the matching subnet.")
@click.option("--aux-address", multiple=True, metavar="NAME=IP", help="Addresses the allocator must not use.")
@click.option("--internal", is_flag=True, help="Restrict external access to the network.")
@click.option("--attachable", is_flag=True, help="Allow one-off containers to attach.")
@click.option("--ipv6", is_flag=True, help="Enable IPv6.")
@click.option("-o", "--opt", multiple=True, metavar="KEY=VALUE", help="Driver option.")
@click.option("--label", multiple=True, metavar="KEY=VALUE", help="Network label.")
@click.argument("name")
@pass_app
def create(
    app: AppContext,
    name: str,
    driver: str,
    subnet: tuple[str, ...],
    gateway: tuple[str, ...],
    ip_range: tuple[str, ...],
    aux_address: tuple[str, ...],
    internal: bool,
    attachable: bool,
    ipv6: bool,
    opt: tuple[str, ...],
    label: tuple[str, ...],
) -> None:
    """Create a network."""
    if len(gateway) > len(subnet) or len(ip_range) > len(subnet):
        raise InvalidValue("gateway", ",".join(gateway), "every --gateway and --ip-range needs its --subnet")
    if aux_address and len(subnet) != 1:
        raise InvalidValue("aux-address", ",".join(aux_address), "needs exactly one --subnet")
    aux = dict(parse_kv(a, "aux-address") for a in aux_address)
    ipam = tuple(
        IPAMConfig(
            subnet=s,
            gateway=gateway[i] if i < len(gateway) else "",
            ip_range=ip_range[i] if i < len(ip_range) else "",
            aux_addresses=aux if i == 0 else {},
        )
        for i, s in enumerate(subnet)
    )
    spec = NetworkSpec(
        annotations=Annotations(
            name=name, labels=dict(parse_kv(x, "label", need_value=False) for x in label)
        ),
        driver=driver,
        ipam=ipam,
        internal=internal,
        attachable=attachable,
        ipv6=ipv6,
        options=dict(parse_kv(x, "option") for x in opt),
    )
    click.echo(app.client.create_network(spec))


def _rows(client: Client, nets: Sequence[Network], no_trunc: bool) -> list[dict[str, str]]:
    return [
        {
            "ID": short_id(n.meta.id, no_trunc),
            "FullID": n.meta.id,
            "Name": n.spec.annotations.name,
            "Driver": n.spec.driver,
            "Scope": "swarm",
        }
        for n in nets
    ]


ls_command(
    network,
    "List networks.",
    objects=filtered(Client.networks, _MATCHERS),
    rows=_rows,
    columns=[("ID", "NETWORK ID"), ("Name", "NAME"), ("Driver", "DRIVER"), ("Scope", "SCOPE")],
)
inspect_command(
    network, "Display detailed information on one or more networks.", "NETWORK...", Client.network
)
rm_command(network, "Remove one or more networks.", "NETWORK...", Client.remove_network)
