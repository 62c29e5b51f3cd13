"""User-defined and default bridges: reachability, the embedded DNS, icc, internal networks, links."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from agent.network import netlink
from agent.network.controller import NetworkController
from agent.network.errors import LinkError, NetworkInUse, PoolOverlap, PredefinedNetwork
from agent.network.model import IPAMPool, NetworkConfig
from agent.network.sandbox import SandboxConfig
from overlay.dns import EmbeddedDNS
from tests.integration.network.conftest import (
    CLIENT_ADDR,
    UPSTREAM_ANSWER,
    UPSTREAM_NAME,
    Lab,
    can_connect,
    controller_config,
    http_get,
    requires_netns,
)

pytestmark = [pytest.mark.root, requires_netns]


def cid() -> str:
    return secrets.token_hex(32)


async def test_two_containers_reach_each_other_by_ip_name_and_alias(lab: Lab, ctl: NetworkController) -> None:
    await ctl.create_network(NetworkConfig(name="appnet", ipam=(IPAMPool("10.210.0.0/24"),)))
    web = await ctl.create_sandbox(SandboxConfig(cid(), "web", network_mode="appnet", aliases=("www",)))
    client = await ctl.create_sandbox(SandboxConfig(cid(), "client", network_mode="appnet"))
    assert web.endpoints[0].addresses == ("10.210.0.2/24",)
    assert client.endpoints[0].addresses == ("10.210.0.3/24",)
    await lab.httpd(web.netns, "web page\n")

    assert await http_get(client.netns, "10.210.0.2") == "web page\n"
    for name in ("web", "www", "web.appnet", web.container_id[:12]):
        status, out = await lab.nslookup(client.netns, name)
        assert status == 0 and "10.210.0.2" in out, (name, out)
    # The resolver configuration the container gets points at the embedded server.
    assert client.files.resolv_conf.startswith("nameserver 127.0.0.11\n")
    assert "ndots:0" in client.files.resolv_conf


async def test_dns_forwards_other_names_and_passes_nxdomain(lab: Lab, ctl: NetworkController) -> None:
    await ctl.create_network(NetworkConfig(name="appnet"))
    box = await ctl.create_sandbox(SandboxConfig(cid(), "box", network_mode="appnet"))
    status, out = await lab.nslookup(box.netns, UPSTREAM_NAME)
    assert status == 0 and UPSTREAM_ANSWER in out
    status, out = await lab.nslookup(box.netns, "no-such-name.test")
    assert status != 0 and "NXDOMAIN" in out


async def test_icc_false_blocks_container_to_container(lab: Lab, ctl: NetworkController) -> None:
    await ctl.create_network(NetworkConfig(name="closed", options={"icc": "false"}))
    await ctl.create_network(NetworkConfig(name="open"))
    a = await ctl.create_sandbox(SandboxConfig(cid(), "a", network_mode="closed"))
    b = await ctl.create_sandbox(SandboxConfig(cid(), "b", network_mode="closed"))
    c = await ctl.create_sandbox(SandboxConfig(cid(), "c", network_mode="open"))
    d = await ctl.create_sandbox(SandboxConfig(cid(), "d", network_mode="open"))
    await lab.httpd(a.netns, "a\n")
    await lab.httpd(c.netns, "c\n")
    assert not await can_connect(b.netns, a.endpoints[0].ipv4, 80, 1.0)
    assert await http_get(d.netns, c.endpoints[0].ipv4) == "c\n"
    # Separate bridge networks are isolated from each other.
    assert not await can_connect(d.netns, a.endpoints[0].ipv4, 80, 1.0)


async def test_internal_network_has_no_outbound_route(lab: Lab, ctl: NetworkController) -> None:
    await lab.httpd(lab.client, "outside\n")
    await ctl.create_network(NetworkConfig(name="inside", internal=True))
    await ctl.create_network(NetworkConfig(name="outbound"))
    internal = await ctl.create_sandbox(SandboxConfig(cid(), "internal", network_mode="inside"))
    normal = await ctl.create_sandbox(SandboxConfig(cid(), "normal", network_mode="outbound"))

    async with netlink.iproute(internal.netns) as ipr:
        routes = [r async for r in await ipr.route("dump", family=2, table=254)]
    assert all(r["dst_len"] != 0 for r in routes), "an internal network must not get a default route"
    assert internal.endpoints[0].gateways == ()
    assert not await can_connect(internal.netns, CLIENT_ADDR, 80, 1.0)
    # The same outside server is reachable from a normal network (masqueraded by the host).
    assert await http_get(normal.netns, CLIENT_ADDR) == "outside\n"


async def test_connect_and_disconnect_live(lab: Lab, ctl: NetworkController) -> None:
    await ctl.create_network(NetworkConfig(name="front"))
    back = await ctl.create_network(NetworkConfig(name="back"))
    db = await ctl.create_sandbox(SandboxConfig(cid(), "db", network_mode="back"))
    app = await ctl.create_sandbox(SandboxConfig(cid(), "app", network_mode="front"))
    await lab.httpd(db.netns, "db\n")
    assert not await can_connect(app.netns, db.endpoints[0].ipv4, 80, 1.0)

    endpoint = await ctl.connect("app", "back", aliases=("api",), ip="")
    assert endpoint.ifname == "eth1"
    status, out = await lab.nslookup(app.netns, "db")
    assert status == 0 and db.endpoints[0].ipv4 in out
    status, out = await lab.nslookup(db.netns, "api")
    assert status == 0 and endpoint.ipv4 in out
    assert await http_get(app.netns, db.endpoints[0].ipv4) == "db\n"
    assert ctl.inspect_network("back")["Containers"][app.container_id]["IPv4Address"] == endpoint.addresses[0]

    await ctl.disconnect("app", back.id)
    assert "eth1" not in await netlink.sandbox_interfaces(app.netns)
    assert not await can_connect(app.netns, db.endpoints[0].ipv4, 80, 1.0)
    status, _ = await lab.nslookup(db.netns, "api")
    assert status != 0


async def test_rm_refused_while_in_use_then_everything_goes(lab: Lab, ctl: NetworkController) -> None:
    net = await ctl.create_network(NetworkConfig(name="busy", labels={"team": "a"}))
    box = await ctl.create_sandbox(SandboxConfig(cid(), "box", network_mode="busy"))
    with pytest.raises(NetworkInUse):
        await ctl.remove_network("busy")
    with pytest.raises(PredefinedNetwork):
        await ctl.remove_network("bridge")
    assert await ctl.prune_networks() == []
    await ctl.remove_sandbox("box")
    assert lab.namespaces() == [lab.prefix + "client", lab.prefix + "host"]
    async with netlink.iproute(lab.host) as ipr:
        assert await netlink.bridge_ports(ipr, await netlink.link_index(ipr, net.interface) or 0) == []
    assert await ctl.prune_networks(labels=["team=b"]) == []
    assert await ctl.prune_networks(labels=["team"]) == ["busy"]
    async with netlink.iproute(lab.host) as ipr:
        assert await netlink.link_index(ipr, net.interface) is None
    rules = "\n".join(await ctl.firewall.rules())
    assert net.interface not in rules and net.ipam[0].subnet not in rules
    assert box.endpoints[0].ipv4 not in rules


async def test_subnets_never_overlap(lab: Lab, ctl: NetworkController) -> None:
    default = ctl.network("bridge")
    assert default.ipam[0].subnet == "172.17.0.0/16"
    a = await ctl.create_network(NetworkConfig(name="a"))
    b = await ctl.create_network(NetworkConfig(name="b"))
    assert (a.ipam[0].subnet, b.ipam[0].subnet) == ("172.18.0.0/16", "172.19.0.0/16")
    with pytest.raises(PoolOverlap):
        await ctl.create_network(NetworkConfig(name="c", ipam=(IPAMPool("172.18.3.0/24"),)))
    # The host's own routes are avoided too (the lab's 10.200.0.0/24 link is one).
    d = await ctl.create_network(
        NetworkConfig(
            name="d", ipam=(IPAMPool("10.201.0.0/16", gateway="10.201.0.254", ip_range="10.201.5.0/24"),)
        )
    )
    box = await ctl.create_sandbox(SandboxConfig(cid(), "box", network_mode="d", ip="10.201.9.9"))
    assert box.endpoints[0].addresses == ("10.201.9.9/16",)
    other = await ctl.create_sandbox(SandboxConfig(cid(), "other", network_mode="d"))
    assert other.endpoints[0].addresses == ("10.201.5.0/16",)
    assert ctl.inspect_network(d.id)["IPAM"]["Config"][0]["Gateway"] == "10.201.0.254"


async def test_default_bridge_has_no_dns_but_links_work(lab: Lab, ctl: NetworkController) -> None:
    db = await ctl.create_sandbox(
        SandboxConfig(cid(), "db", exposed=("5432/tcp",), env=("POSTGRES_USER=shoal", "PATH=/bin"))
    )
    web = await ctl.create_sandbox(SandboxConfig(cid(), "web", links=("db:database",)))
    ip = db.endpoints[0].ipv4
    assert ip.startswith("172.17.")
    assert set(web.env) >= {
        f"DATABASE_PORT=tcp://{ip}:5432",
        f"DATABASE_PORT_5432_TCP=tcp://{ip}:5432",
        f"DATABASE_PORT_5432_TCP_ADDR={ip}",
        "DATABASE_PORT_5432_TCP_PORT=5432",
        "DATABASE_PORT_5432_TCP_PROTO=tcp",
        "DATABASE_NAME=/web/database",
        "DATABASE_ENV_POSTGRES_USER=shoal",
    }
    assert not any(v.startswith("DATABASE_ENV_PATH=") for v in web.env)
    assert f"{ip}\tdatabase db" in web.files.hosts.splitlines()
    # No embedded DNS on the default bridge: nothing answers on 127.0.0.11 there.
    status, _ = await lab.nslookup(web.netns, "db")
    assert status != 0
    assert "127.0.0.11" not in web.files.resolv_conf
    await ctl.create_network(NetworkConfig(name="user"))
    with pytest.raises(LinkError, match="default bridge"):
        await ctl.create_sandbox(SandboxConfig(cid(), "x", network_mode="user", links=("db",)))
    assert lab.prefix + "x" not in "".join(lab.namespaces())


async def test_links_pass_through_icc_false(lab: Lab, tmp_path: Path, upstream: str) -> None:
    await lab.setup()
    config = controller_config(lab, tmp_path / "state-icc", upstream, icc=False)
    ctl = NetworkController(config, EmbeddedDNS(timeout=1))
    try:
        await ctl.start()
        db = await ctl.create_sandbox(SandboxConfig(cid(), "db", exposed=("80/tcp",)))
        other = await ctl.create_sandbox(SandboxConfig(cid(), "other"))
        web = await ctl.create_sandbox(SandboxConfig(cid(), "web", links=("db",)))
        await lab.httpd(db.netns, "linked\n")
        assert await http_get(web.netns, db.endpoints[0].ipv4) == "linked\n"
        assert not await can_connect(other.netns, db.endpoints[0].ipv4, 80, 1.0)
    finally:
        await ctl.teardown()
        await ctl.dns.close()
