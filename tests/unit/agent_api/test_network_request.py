"""The networking part of a create body, as parsed for an API served with a network controller."""

from __future__ import annotations

import pytest

from agent.api.create import EndpointRequest, parse_create, port_specs
from agent.api.errors import BadParameter, docker_error
from agent.network.errors import InvalidNetworkConfig, NetworkNotFound, PortAlreadyAllocated
from agent.network.model import DNSConfig
from agent.network.ports import PortRequest, parse_publish


def test_port_bindings_become_publish_specs_that_parse_back() -> None:
    specs = port_specs(
        {
            "80/tcp": [{"HostIp": "", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": "8081"}],
            "53/udp": [{"HostIp": "0.0.0.0", "HostPort": ""}],
            "443": [{}],
            "9/tcp": None,  # exposed, not published
            "81/tcp": [{"HostIp": "::1", "HostPort": "9000-9010"}],
        }
    )
    assert specs == (
        "8080:80/tcp",
        "127.0.0.1:8081:80/tcp",
        "0.0.0.0::53/udp",
        "443/tcp",
        "[::1]:9000-9010:81/tcp",
    )
    assert [r for spec in specs for r in parse_publish(spec)] == [
        PortRequest(80, "tcp", "", 8080, 8080),
        PortRequest(80, "tcp", "127.0.0.1", 8081, 8081),
        PortRequest(53, "udp"),
        PortRequest(443, "tcp"),
        PortRequest(81, "tcp", "::1", 9000, 9010),
    ]
    with pytest.raises(BadParameter):
        port_specs({"http": [{}]})
    with pytest.raises(BadParameter):
        port_specs({"80/tcp": {"HostPort": "1"}})


def test_parse_create_with_networking_keeps_the_request() -> None:
    parsed = parse_create(
        {
            "Image": "busybox",
            "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
            "HostConfig": {
                "NetworkMode": "appnet",
                "PortBindings": {"80/tcp": [{"HostPort": "8080"}]},
                "PublishAllPorts": True,
                "Dns": ["10.0.0.2"],
                "DnsSearch": ["example.test"],
                "DnsOptions": ["ndots:2"],
                "ExtraHosts": ["gw:host-gateway"],
            },
            "NetworkingConfig": {
                "EndpointsConfig": {
                    "appnet": {"Aliases": ["db"], "IPAMConfig": {"IPv4Address": "10.201.0.5"}},
                    "other": None,
                }
            },
        },
        networking=True,
    )
    net = parsed.network
    assert net is not None and parsed.warnings == ()
    assert parsed.config.network_mode == "none"  # a placeholder until the sandbox gives its namespace
    assert net.mode == "appnet" and net.publish == ("8080:80/tcp",) and net.publish_all
    assert net.exposed == ("53/udp", "8080/tcp")
    assert net.endpoints == {"appnet": EndpointRequest(("db",), "10.201.0.5"), "other": EndpointRequest()}
    assert net.dns == DNSConfig(("10.0.0.2",), ("example.test",), ("ndots:2",))
    assert net.extra_hosts == ("gw:host-gateway",)
    # host and none stay the runtime's own; container:<ref> is accepted (the controller shares namespaces).
    assert (
        parse_create(
            {"Image": "b", "HostConfig": {"NetworkMode": "host"}}, networking=True
        ).config.network_mode
        == "host"
    )
    shared = parse_create({"Image": "b", "HostConfig": {"NetworkMode": "container:web"}}, networking=True)
    assert shared.network is not None and shared.network.mode == "container:web"
    # Without a controller nothing changes: no network request, the same warnings as before.
    assert parse_create({"Image": "b"}).network is None


def test_network_errors_map_to_dockers_statuses() -> None:
    assert docker_error(NetworkNotFound("nosuch")) == (404, "network nosuch not found")
    assert docker_error(PortAlreadyAllocated("", 8080, "tcp", "published"))[0] == 409
    assert docker_error(InvalidNetworkConfig("-p", "bad"))[0] == 400
