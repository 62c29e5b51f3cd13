"""Docker's port, mount, network, secret and health syntaxes."""

from __future__ import annotations

import pytest

from api.objects import HealthConfig, MountType, PortProtocol, PublishMode
from swarmctl import specs
from swarmctl.errors import InvalidValue


def test_short_ports() -> None:
    (p,) = specs.parse_port("8080:80")
    assert (p.published_port, p.target_port, p.protocol) == (8080, 80, PortProtocol.TCP)
    (p,) = specs.parse_port("53:53/udp")
    assert p.protocol is PortProtocol.UDP
    (p,) = specs.parse_port("80")
    assert (p.published_port, p.target_port) == (0, 80)
    ranged = specs.parse_port("8000-8002:80-82")
    assert [(p.published_port, p.target_port) for p in ranged] == [(8000, 80), (8001, 81), (8002, 82)]


def test_long_ports() -> None:
    (p,) = specs.parse_port("published=8080,target=80,protocol=udp,mode=host")
    assert (p.published_port, p.target_port, p.protocol, p.publish_mode) == (
        8080,
        80,
        PortProtocol.UDP,
        PublishMode.HOST,
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("127.0.0.1:8080:80", "host IP"),
        ("80:http", r"use \[published:\]target"),
        ("8080:80/icmp", "unknown protocol 'icmp'"),
        ("8000-8001:80", "ranges differ"),
        ("70000", "between 1 and 65535"),
        ("published=80", "target is required"),
        ("target=80,mode=bridge", "unknown mode 'bridge'"),
        ("target=80,hostip=1.2.3.4", "unknown field 'hostip'"),
    ],
)
def test_bad_ports(text: str, words: str) -> None:
    with pytest.raises(InvalidValue, match=words):
        specs.parse_port(text)


def test_format_port() -> None:
    (p,) = specs.parse_port("8080:80")
    assert specs.format_port(p) == "*:8080->80/tcp"


def test_mounts() -> None:
    m = specs.parse_mount("type=volume,source=data,target=/data,readonly")
    assert (m.type, m.source, m.target, m.read_only) == (MountType.VOLUME, "data", "/data", True)
    m = specs.parse_mount("type=bind,src=/srv,dst=/srv,ro=false")
    assert (m.type, m.read_only) == (MountType.BIND, False)
    assert specs.parse_mount("type=tmpfs,target=/tmp").type is MountType.TMPFS


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("type=volume,source=data", "target is required"),
        ("type=bind,source=rel,target=/x", "absolute source"),
        ("type=nfs,target=/x", "unknown type 'nfs'"),
        ("target=data", "must be an absolute path"),
        ("target=/x,colour=red", "unknown field 'colour'"),
        ("type=tmpfs,source=x,target=/x", "takes no source"),
    ],
)
def test_bad_mounts(text: str, words: str) -> None:
    with pytest.raises(InvalidValue, match=words):
        specs.parse_mount(text)


def test_networks_secrets_preferences() -> None:
    assert specs.parse_network("front").target == "front"
    att = specs.parse_network("name=front,alias=web,alias=www")
    assert (att.target, att.aliases) == ("front", ("web", "www"))
    assert specs.parse_secret("key") == ("key", "key")
    assert specs.parse_secret("source=key,target=api_key") == ("key", "api_key")
    assert specs.parse_preference("spread=node.labels.zone").spread == "node.labels.zone"
    with pytest.raises(InvalidValue, match="spread="):
        specs.parse_preference("binpack=memory")
    with pytest.raises(InvalidValue, match="source is required"):
        specs.parse_secret("target=x")


def test_healthchecks() -> None:
    h = specs.healthcheck(None, cmd="curl -f http://localhost/", interval=5_000_000_000, retries=2)
    assert h is not None and h.test == ("CMD-SHELL", "curl -f http://localhost/")
    assert (h.interval_ns, h.retries, h.timeout_ns) == (5_000_000_000, 2, HealthConfig().timeout_ns)
    assert specs.healthcheck(h, disable=True) == HealthConfig(test=("NONE",))
    assert specs.healthcheck(h) is h
    with pytest.raises(InvalidValue, match="must start with CMD"):
        specs.health_test(["curl", "x"])


def test_command_words() -> None:
    assert specs.command_words("sh -c 'echo hi'") == ("sh", "-c", "echo hi")
    assert specs.command_words(["a", "b c"]) == ("a", "b c")
    with pytest.raises(InvalidValue):
        specs.command_words("echo 'unterminated")
