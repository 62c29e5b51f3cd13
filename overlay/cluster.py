"""From the cluster's objects to the host networking's requests, for the agent's container executor.

A cluster network (api.objects.Network, as the managers allocated it) becomes a local network of the same
id with :func:`network_config`; a task's network attachments become the address its container gets on
each (:func:`task_attachments`). The task's container should be named
:func:`~api.peers.task_container_name`, the name the overlay's DNS answers for it on every host.

Service names and network aliases are *not* given to the container's endpoint as aliases: on overlays
they are service-level names (the virtual IP, or every task in ``dnsrr`` mode) that the peer table
answers on every host alike; registered on one endpoint they would also answer with that one task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.network.errors import NetworkError, NetworkExists, NetworkNotFound
from agent.network.model import IPAMPool, NetworkConfig
from api.objects import Network, Task
from overlay.driver import DRIVER, VNI_OPTIONS

if TYPE_CHECKING:
    from agent.network.controller import NetworkController


def network_config(network: Network) -> NetworkConfig:
    """The local request for a cluster network: its id, allocated subnets and VXLAN id."""
    spec, status = network.spec, network.status
    options = dict(spec.options)
    if spec.driver == DRIVER and status.vni:
        options[VNI_OPTIONS[0]] = str(status.vni)
    pools = tuple(
        IPAMPool(subnet=c.subnet, gateway=c.gateway, ip_range=c.ip_range, aux_addresses=dict(c.aux_addresses))
        for c in (status.ipam or spec.ipam)
    )
    return NetworkConfig(
        name=spec.annotations.name,
        driver=spec.driver,
        ipam=pools,
        internal=spec.internal,
        ipv6=spec.ipv6,
        attachable=spec.attachable,
        labels=dict(spec.annotations.labels),
        options=options,
        id=network.meta.id,
    )


async def ensure_network(ctl: NetworkController, network: Network) -> None:
    """Make the cluster network known to the host's controller, if it is not yet.

    A network the cluster removed stays in the controller's state (its devices go with its last task);
    one made again under the same name has another id, and the old record, unused, gives way to it.
    """
    try:
        ctl.network(network.meta.id)
        return
    except NetworkNotFound:
        pass
    name = network.spec.annotations.name
    for record in ctl.list_networks():
        if (
            record.name == name
            and record.driver == network.spec.driver
            and record.id != network.meta.id
            and not ctl.state.users_of(record.id)
        ):
            try:
                await ctl.remove_network(record.id)
            except NetworkError:
                break  # taken again meanwhile: creating the new one says why it cannot be
    try:
        await ctl.create_network(network_config(network))
    except NetworkExists as exc:
        if exc.owner != network.meta.id:
            raise
        # Made meanwhile by another caller (a task being prepared, the routing mesh): just as good.


@dataclass(frozen=True)
class Attachment:
    """One network of a task: the network's id and the task's addresses there (bare, without prefix)."""

    network_id: str
    ip: str = ""
    ip6: str = ""


def task_attachments(task: Task) -> list[Attachment]:
    """The task's networks in the order its spec lists them (the first is the container's ``eth0``)."""
    out = []
    for attachment in task.networks:
        v4 = next((a.split("/")[0] for a in attachment.addresses if ":" not in a), "")
        v6 = next((a.split("/")[0] for a in attachment.addresses if ":" in a), "")
        out.append(Attachment(attachment.network_id, v4, v6))
    return out
