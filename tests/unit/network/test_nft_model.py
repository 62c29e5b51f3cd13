"""The nftables ruleset text, and the JSON state round trip."""

from __future__ import annotations

import json
from pathlib import Path

from agent.network.model import (
    DNSConfig,
    EndpointRecord,
    IPAMPool,
    LinkRecord,
    NetworkRecord,
    PortBinding,
    SandboxRecord,
    from_json,
    to_json,
)
from agent.network.nft import BridgeView, LinkAccept, PortMapping, Ruleset, add_bridge_rules
from agent.network.store import NetworkStore


def render(**kwargs: object) -> str:
    rules = Ruleset(table="shoal")
    add_bridge_rules(rules, **kwargs)  # type: ignore[arg-type]
    return rules.render()


def test_script_replaces_the_table_atomically() -> None:
    text = render(bridges=[])
    lines = text.splitlines()
    # Create-if-missing, delete, recreate: one nft transaction replaces the table whatever was there.
    assert lines[:3] == ["table inet shoal", "delete table inet shoal", "table inet shoal {"]
    assert text.count("type nat hook prerouting") == 1


def test_published_ports_dnat_from_outside_and_from_the_host() -> None:
    mapping = PortMapping(PortBinding(80, "tcp", "", 8080), "172.18.0.2", "br1")
    bound = PortMapping(PortBinding(53, "udp", "127.0.0.1", 5353), "172.18.0.2", "br1")
    v6 = PortMapping(PortBinding(80, "tcp", "", 8080), "fd00::2", "br1")
    text = render(bridges=[BridgeView("br1", ("172.18.0.0/16",))], mappings=[mapping, bound, v6])
    assert "meta nfproto ipv4 tcp dport 8080 dnat ip to 172.18.0.2:80" in text
    assert "ip daddr 127.0.0.1 udp dport 5353 dnat ip to 172.18.0.2:53" in text
    assert "meta nfproto ipv6 tcp dport 8080 dnat ip6 to [fd00::2]:80" in text
    assert "ip saddr 172.18.0.2 ip daddr 172.18.0.2 tcp dport 80 masquerade" in text
    assert 'oifname "br1" ip saddr 127.0.0.0/8 masquerade' in text
    assert 'ip saddr 172.18.0.0/16 oifname != "br1" masquerade' in text
    # Both hooks jump to the same chain: from outside (prerouting) and from the host itself (output).
    assert text.count("fib daddr type local jump publish") == 2


def test_internal_bridges_neither_masquerade_nor_forward_outside() -> None:
    text = render(bridges=[BridgeView("int0", ("10.9.0.0/24",), internal=True)])
    assert "10.9.0.0/24" not in text
    assert 'iifname "int0" oifname != "int0" drop' in text
    assert 'oifname "int0" iifname != "int0" drop' in text


def test_icc_off_drops_bridge_traffic_except_links_and_published_ports() -> None:
    text = render(
        bridges=[BridgeView("br0", ("172.17.0.0/16",), icc=False), BridgeView("br1", ("172.18.0.0/16",))],
        links=[LinkAccept("br0", "172.17.0.3", "172.17.0.2", 5432)],
    )
    lines = [line.strip() for line in text.splitlines()]
    accept = 'iifname "br0" oifname "br0" ip saddr 172.17.0.3 ip daddr 172.17.0.2 tcp dport 5432 accept'
    drop = 'iifname "br0" oifname "br0" drop'
    assert lines.index(accept) < lines.index(drop)
    assert 'iifname "br1" oifname "br1" drop' not in lines
    assert 'elements = { "br0", "br1" }' in text
    assert 'iifname "br0" oifname != "br0" oifname @bridges drop' in lines


def test_records_round_trip_through_json(tmp_path: Path) -> None:
    sandbox = SandboxRecord(
        container_id="c" * 64,
        name="web",
        netns="/run/netns/x",
        dns=DNSConfig(servers=("1.1.1.1",), options=("ndots:1",)),
        extra_hosts=(("db", "10.0.0.9"),),
        links=(LinkRecord("d" * 64, "db"),),
    )
    assert from_json(SandboxRecord, json.loads(json.dumps(to_json(sandbox)))) == sandbox
    network = NetworkRecord(
        id="n" * 64,
        name="net",
        driver="bridge",
        created="now",
        ipam=(IPAMPool("10.0.0.0/24", "10.0.0.1", "10.0.0.0/24", {"a": "10.0.0.9"}),),
        labels={"team": "x"},
    )
    endpoint = EndpointRecord(
        id="e" * 64,
        network_id=network.id,
        container_id=sandbox.container_id,
        addresses=("10.0.0.2/24", "fd00::2/64"),
        ports=(PortBinding(80, "tcp", "", 8080),),
    )
    store = NetworkStore(tmp_path)
    store.save_network(network)
    store.save_endpoint(endpoint)
    store.save_sandbox(sandbox)
    (tmp_path / "networks" / "broken.json").write_text("{not json")
    again = NetworkStore(tmp_path)
    assert again.networks() == [network]
    assert again.endpoints() == [endpoint]
    assert again.sandboxes() == [sandbox]
    assert endpoint.ipv4 == "10.0.0.2" and endpoint.ipv6 == "fd00::2"
    store.delete_endpoint(endpoint.id)
    assert again.endpoints() == []
