"""Published ports: from the host (127.0.0.1 and its address), from another machine, -P, ports in use."""

from __future__ import annotations

import secrets
import socket

import pytest

from agent.network import netlink, nsutil
from agent.network.controller import NetworkController
from agent.network.errors import InvalidNetworkConfig, PortAlreadyAllocated
from agent.network.model import NetworkConfig, PortBinding
from agent.network.sandbox import SandboxConfig
from tests.integration.network.conftest import HOST_ADDR, Lab, can_connect, http_get, requires_netns

pytestmark = [pytest.mark.root, requires_netns]


def cid() -> str:
    return secrets.token_hex(32)


async def test_published_port_answers_from_host_loopback_address_and_other_machine(
    lab: Lab, ctl: NetworkController
) -> None:
    web = await ctl.create_sandbox(SandboxConfig(cid(), "web", publish=("8080:80", "127.0.0.1:8081:80")))
    await lab.httpd(web.netns, "published\n")
    assert set(ctl.port("web")) == {
        PortBinding(80, "tcp", "", 8080),
        PortBinding(80, "tcp", "127.0.0.1", 8081),
    }

    assert await http_get(lab.host, "127.0.0.1", 8080) == "published\n"
    assert await http_get(lab.host, HOST_ADDR, 8080) == "published\n"
    assert await http_get(lab.client, HOST_ADDR, 8080) == "published\n"
    assert await http_get(lab.host, "127.0.0.1", 8081) == "published\n"
    # Bound to 127.0.0.1 only: not reachable on the host's other addresses.
    assert not await can_connect(lab.client, HOST_ADDR, 8081, 1.0)
    # A container reaching its own published port through the host (hairpin).
    assert await http_get(web.netns, HOST_ADDR, 8080) == "published\n"


async def test_published_port_on_a_user_network_from_a_neighbour(lab: Lab, ctl: NetworkController) -> None:
    await ctl.create_network(NetworkConfig(name="appnet"))
    web = await ctl.create_sandbox(SandboxConfig(cid(), "web", network_mode="appnet", publish=("9090:80",)))
    other = await ctl.create_sandbox(SandboxConfig(cid(), "other"))
    await lab.httpd(web.netns, "user net\n")
    assert await http_get(lab.client, HOST_ADDR, 9090) == "user net\n"
    # From a container on another network, through the host's address.
    assert await http_get(other.netns, HOST_ADDR, 9090) == "user net\n"


async def test_host_port_in_use_fails_cleanly(lab: Lab, ctl: NetworkController) -> None:
    busy = await nsutil.arun_in_netns(
        lab.host, nsutil.bound_socket, socket.AF_INET, socket.SOCK_STREAM, ("", 8082)
    )
    busy.listen()
    try:
        rules_before = await ctl.firewall.rules()
        namespaces_before = lab.namespaces()
        with pytest.raises(PortAlreadyAllocated, match="8082"):
            await ctl.create_sandbox(SandboxConfig(cid(), "web", publish=("8083:80", "8082:80")))
        # Nothing half-made: no namespace, no veth on the bridge, no rule, no address used, no port held.
        assert lab.namespaces() == namespaces_before
        async with netlink.iproute(lab.host) as ipr:
            bridge = await netlink.link_index(ipr, "shoal0")
            assert bridge is not None and await netlink.bridge_ports(ipr, bridge) == []
        assert await ctl.firewall.rules() == rules_before
        assert ctl.ports.held() == []
        with pytest.raises(Exception, match="web"):
            ctl.sandbox("web")
    finally:
        busy.close()
    # The same request works once the port is free, with the first address of the subnet.
    web = await ctl.create_sandbox(SandboxConfig(cid(), "web", publish=("8083:80", "8082:80")))
    assert web.endpoints[0].ipv4 == "172.17.0.2"
    # And a port Shoal publishes cannot be published twice.
    with pytest.raises(PortAlreadyAllocated):
        await ctl.create_sandbox(SandboxConfig(cid(), "web2", publish=("8082:80",)))


async def test_publish_all_picks_free_ports(lab: Lab, ctl: NetworkController) -> None:
    web = await ctl.create_sandbox(
        SandboxConfig(
            cid(), "web", exposed=("80/tcp", "53/udp", "8080/tcp"), publish=("8080:8080",), publish_all=True
        )
    )
    ports = {(b.container_port, b.protocol): b.host_port for b in web.ports}
    assert ports[(8080, "tcp")] == 8080
    low, high = ctl.ports.ephemeral_range()
    assert low <= ports[(80, "tcp")] <= high and low <= ports[(53, "udp")] <= high
    await lab.httpd(web.netns, "any port\n")
    assert await http_get(lab.client, HOST_ADDR, ports[(80, "tcp")]) == "any port\n"
    second = await ctl.create_sandbox(SandboxConfig(cid(), "second", exposed=("80/tcp",), publish_all=True))
    assert second.ports[0].host_port != ports[(80, "tcp")]


async def test_ports_cannot_be_published_on_internal_networks(lab: Lab, ctl: NetworkController) -> None:
    await ctl.create_network(NetworkConfig(name="inside", internal=True))
    with pytest.raises(InvalidNetworkConfig):
        await ctl.create_sandbox(SandboxConfig(cid(), "x", network_mode="inside", publish=("8084:80",)))
    assert lab.namespaces() == [lab.prefix + "client", lab.prefix + "host"]


async def test_disconnecting_the_publishing_network_removes_its_ports(
    lab: Lab, ctl: NetworkController
) -> None:
    web = await ctl.create_sandbox(SandboxConfig(cid(), "web", publish=("8085:80",)))
    await lab.httpd(web.netns, "x\n")
    assert await can_connect(lab.client, HOST_ADDR, 8085)
    await ctl.disconnect("web", "bridge")
    assert ctl.port("web") == []
    assert not await can_connect(lab.client, HOST_ADDR, 8085, 1.0)
    assert "8085" not in "\n".join(await ctl.firewall.rules())
