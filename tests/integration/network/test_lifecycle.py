"""Removal leaves nothing, an agent restart rebuilds everything, IPv6, shared and none/host sandboxes."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from agent.network import netlink, nsutil
from agent.network.controller import NetworkController
from agent.network.model import IPAMPool, NetworkConfig
from agent.network.sandbox import SandboxConfig
from overlay.dns import EmbeddedDNS
from tests.integration.network.conftest import (
    HOST_ADDR,
    Lab,
    can_connect,
    controller_config,
    http_get,
    requires_netns,
)

pytestmark = [pytest.mark.root, requires_netns]


def cid() -> str:
    return secrets.token_hex(32)


async def host_links(lab: Lab) -> list[str]:
    async with netlink.iproute(lab.host) as ipr:
        return sorted([str(m.get("ifname")) async for m in await ipr.link("dump")])


async def test_teardown_and_removals_leave_nothing(lab: Lab, ctl: NetworkController) -> None:
    before = await host_links(lab)
    await ctl.create_network(NetworkConfig(name="n1"))
    a = await ctl.create_sandbox(SandboxConfig(cid(), "a", network_mode="n1", publish=("8090:80",)))
    await ctl.connect("a", "bridge")
    assert len(await host_links(lab)) == len(before) + 3  # a bridge and two veths
    await ctl.remove_sandbox("a")
    await ctl.remove_network("n1")
    assert await host_links(lab) == before
    assert not [n for n in lab.namespaces() if n.endswith(a.container_id[:12])]
    text = "\n".join(await ctl.firewall.rules())
    assert "8090" not in text and a.endpoints[0].ipv4 not in text

    await ctl.create_sandbox(SandboxConfig(cid(), "b", publish=("8091:80",)))
    await ctl.teardown()
    assert await host_links(lab) == ["eth0", "lo"]
    assert await ctl.firewall.dump() == []
    assert lab.namespaces() == [lab.prefix + "client", lab.prefix + "host"]


async def test_agent_restart_rebuilds_rules_and_dns_without_disturbing_containers(
    lab: Lab, ctl: NetworkController, tmp_path: Path, upstream: str
) -> None:
    await ctl.create_network(NetworkConfig(name="appnet"))
    web = await ctl.create_sandbox(SandboxConfig(cid(), "web", network_mode="appnet", publish=("8092:80",)))
    client = await ctl.create_sandbox(SandboxConfig(cid(), "client", network_mode="appnet"))
    await lab.httpd(web.netns, "survives\n")
    rules = await ctl.firewall.rules()
    await ctl.close()  # the agent stops: containers, bridges and rules stay
    assert await http_get(lab.client, HOST_ADDR, 8092) == "survives\n"
    status, _ = await lab.nslookup(client.netns, "web")
    assert status != 0  # nobody serves DNS while the agent is down

    # Someone flushes the table while the agent is down; the restart must rebuild it.
    await ctl.firewall.remove()
    again = NetworkController(controller_config(lab, tmp_path / "state", upstream), EmbeddedDNS(timeout=1))
    try:
        await again.start()
        assert await again.firewall.rules() == rules
        assert await http_get(lab.client, HOST_ADDR, 8092) == "survives\n"
        status, out = await lab.nslookup(client.netns, "web")
        assert status == 0 and web.endpoints[0].ipv4 in out
        assert again.port("web") == list(web.ports)
        # The next container does not get an address already in use.
        third = await again.create_sandbox(SandboxConfig(cid(), "third", network_mode="appnet"))
        assert third.endpoints[0].ipv4 not in (web.endpoints[0].ipv4, client.endpoints[0].ipv4)
    finally:
        await again.close()
        await again.dns.close()


async def test_ipv6_addresses_are_assigned_reachable_and_resolvable(lab: Lab, ctl: NetworkController) -> None:
    await ctl.create_network(
        NetworkConfig(name="v6", ipv6=True, ipam=(IPAMPool("10.220.0.0/24"), IPAMPool("fd00:220::/64")))
    )
    a = await ctl.create_sandbox(SandboxConfig(cid(), "a", network_mode="v6"))
    b = await ctl.create_sandbox(SandboxConfig(cid(), "b", network_mode="v6"))
    assert a.endpoints[0].addresses == ("10.220.0.2/24", "fd00:220::2/64")
    await lab.httpd(a.netns, "six\n")
    assert await http_get(b.netns, "fd00:220::2") == "six\n"
    status, out = await lab.nslookup(b.netns, "a")
    assert status == 0 and "fd00:220::2" in out and "10.220.0.2" in out


async def test_container_mode_shares_a_sandbox_and_none_has_only_loopback(
    lab: Lab, ctl: NetworkController
) -> None:
    main = await ctl.create_sandbox(SandboxConfig(cid(), "main", hostname="mainhost"))
    side = await ctl.create_sandbox(SandboxConfig(cid(), "side", network_mode="container:main"))
    assert side.netns == main.netns and side.runtime_mode == main.netns
    assert side.files == main.files
    await lab.httpd(side.netns, "shared\n")
    assert await can_connect(main.netns, "127.0.0.1", 80)

    alone = await ctl.create_sandbox(SandboxConfig(cid(), "alone", network_mode="none"))
    assert alone.endpoints == ()
    assert await netlink.sandbox_interfaces(alone.netns) == ["lo"]
    host = await ctl.create_sandbox(SandboxConfig(cid(), "hosted", network_mode="host"))
    assert host.runtime_mode == "host" and host.netns == ""

    await ctl.remove_sandbox("side")
    assert await can_connect(main.netns, "127.0.0.1", 80)  # the owner keeps its namespace
    await ctl.remove_sandbox("alone")
    assert not nsutil.netns_path(alone.netns).endswith(tuple(lab.namespaces()))


async def test_etc_files_are_written_and_follow_connect(
    lab: Lab, ctl: NetworkController, tmp_path: Path
) -> None:
    etc = tmp_path / "etc-web"
    web = await ctl.create_sandbox(
        SandboxConfig(
            cid(),
            "web",
            hostname="web1",
            domainname="example.org",
            extra_hosts=("gw:host-gateway",),
            etc_dir=str(etc),
        )
    )
    assert (etc / "hostname").read_text() == "web1\n"
    hosts = (etc / "hosts").read_text()
    assert "172.17.0.1\tgw" in hosts and f"{web.endpoints[0].ipv4}\tweb1.example.org\tweb1" in hosts
    assert "127.0.0.11" not in (etc / "resolv.conf").read_text()
    await ctl.create_network(NetworkConfig(name="later"))
    await ctl.connect("web", "later")
    assert (etc / "resolv.conf").read_text().startswith("nameserver 127.0.0.11\n")
    inspect = ctl.inspect_network("later")
    assert json.loads(json.dumps(inspect))["Containers"][web.container_id]["Name"] == "web"


async def test_default_bridge_options(lab: Lab, tmp_path: Path, upstream: str) -> None:
    await lab.setup()
    config = controller_config(
        lab,
        tmp_path / "state-bip",
        upstream,
        bip="10.240.0.1/24",
        fixed_cidr="10.240.0.128/25",
        mtu=1400,
        ipv6=True,
        fixed_cidr_v6="fd00:240::/64",
    )
    ctl = NetworkController(config, EmbeddedDNS(timeout=1))
    try:
        await ctl.start()
        box = await ctl.create_sandbox(SandboxConfig(cid(), "box"))
        other = await ctl.create_sandbox(SandboxConfig(cid(), "other"))
        assert box.endpoints[0].addresses == ("10.240.0.128/24", "fd00:240::2/64")
        async with netlink.iproute(box.netns) as ipr:
            link = (await ipr.link("get", index=await netlink.link_index(ipr, "eth0")))[0]
            assert link.get("mtu") == 1400
        await lab.httpd(box.netns, "v6 default\n")
        assert await http_get(other.netns, "fd00:240::2") == "v6 default\n"
        assert await http_get(lab.host, "10.240.0.128") == "v6 default\n"
    finally:
        await ctl.teardown()
        await ctl.dns.close()


async def test_ipv6_published_port_from_another_machine(lab: Lab, ctl: NetworkController) -> None:
    async with netlink.iproute(lab.host) as ipr:
        await ipr.addr(
            "add", index=await netlink.link_index(ipr, "eth0"), address="fd00:200::1", prefixlen=64, flags=2
        )
    async with netlink.iproute(lab.client) as ipr:
        await ipr.addr(
            "add", index=await netlink.link_index(ipr, "eth0"), address="fd00:200::2", prefixlen=64, flags=2
        )
    pools = (IPAMPool("10.221.0.0/24"), IPAMPool("fd00:221::/64"))
    await ctl.create_network(NetworkConfig(name="v6", ipv6=True, ipam=pools))
    web = await ctl.create_sandbox(SandboxConfig(cid(), "web", network_mode="v6", publish=("8093:80",)))
    await lab.httpd(web.netns, "six published\n")
    assert await http_get(lab.client, "fd00:200::1", 8093) == "six published\n"
    assert await http_get(lab.client, HOST_ADDR, 8093) == "six published\n"
