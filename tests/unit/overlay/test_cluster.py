"""From cluster objects to the host networking's requests (what the executor hands the controller)."""

from __future__ import annotations

import pytest

from agent.network.model import NetworkRecord
from api.objects import (
    Annotations,
    IPAMConfig,
    Meta,
    Network,
    NetworkAttachment,
    NetworkSpec,
    NetworkStatus,
    Task,
)
from api.peers import task_container_name
from overlay.cluster import network_config, task_attachments
from overlay.driver import VNI_OPTIONS, network_vni
from overlay.errors import InvalidOverlayConfig


def test_a_cluster_network_keeps_its_id_subnets_and_vni() -> None:
    net = Network(
        meta=Meta(id="abc"),
        spec=NetworkSpec(
            annotations=Annotations(name="my-net", labels={"team": "a"}), internal=True, attachable=True
        ),
        status=NetworkStatus(vni=4097, ipam=(IPAMConfig(subnet="10.0.9.0/24", gateway="10.0.9.1"),)),
    )
    config = network_config(net)
    assert (config.id, config.name, config.driver) == ("abc", "my-net", "overlay")
    assert config.internal and config.attachable and config.labels == {"team": "a"}
    assert [(p.subnet, p.gateway) for p in config.ipam] == [("10.0.9.0/24", "10.0.9.1")]
    assert config.options[VNI_OPTIONS[0]] == "4097"
    record = NetworkRecord(id="abc", name="my-net", driver="overlay", created="", options=config.options)
    assert network_vni(record) == 4097


@pytest.mark.parametrize("value", [None, "", "x", "0", str(1 << 24)])
def test_an_overlay_without_a_valid_vni_is_refused(value: str | None) -> None:
    options = {} if value is None else {"vni": value}
    record = NetworkRecord(id="abc", name="my-net", driver="overlay", created="", options=options)
    with pytest.raises(InvalidOverlayConfig) as refused:
        network_vni(record)
    assert refused.value.field == "vni" and "my-net" in str(refused.value)


def test_docker_style_vni_lists_take_the_first_id() -> None:
    record = NetworkRecord(
        id="a", name="n", driver="overlay", created="", options={"vxlanid_list": "4100,4101"}
    )
    assert network_vni(record) == 4100


def test_task_names_and_addresses() -> None:
    task = Task(
        meta=Meta(id="t1"),
        slot=2,
        service_annotations=Annotations(name="web"),
        networks=(
            NetworkAttachment("n1", ("10.0.9.3/24",)),
            NetworkAttachment("n2", ("fd00::3/64", "10.0.10.3/24")),
        ),
    )
    assert task_container_name(task) == "web.2.t1"
    global_task = Task(meta=Meta(id="t2"), node_id="node7", service_annotations=Annotations(name="agent"))
    assert task_container_name(global_task) == "agent.node7.t2"
    assert [(a.network_id, a.ip, a.ip6) for a in task_attachments(task)] == [
        ("n1", "10.0.9.3", ""),
        ("n2", "10.0.10.3", "fd00::3"),
    ]
