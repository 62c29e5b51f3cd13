"""/etc/hosts, /etc/hostname, /etc/resolv.conf contents and legacy link variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.network.errors import InvalidNetworkConfig
from agent.network.etcfiles import (
    EtcFiles,
    ResolvConf,
    hosts_file,
    parse_add_host,
    parse_resolv_conf,
    resolv_conf,
)
from agent.network.links import link_env, link_hosts_entry, parse_link
from agent.network.model import DNSConfig

HOST = parse_resolv_conf(
    "# host file\nnameserver 127.0.0.53\nnameserver 10.1.1.1\nsearch corp.example\noptions edns0 ndots:2\n"
)


def test_parse_resolv_conf() -> None:
    assert ResolvConf(("127.0.0.53", "10.1.1.1"), ("corp.example",), ("edns0", "ndots:2")) == HOST


def test_embedded_resolv_conf_points_at_127_0_0_11_with_ndots_0() -> None:
    text = resolv_conf(DNSConfig(), HOST, embedded=True, upstreams=("10.1.1.1",))
    lines = text.splitlines()
    assert lines[0] == "nameserver 127.0.0.11"
    assert "search corp.example" in lines
    assert "options ndots:0 edns0" in lines
    assert "10.1.1.1" in lines[-1] and lines[-1].startswith("#")
    assert sum(line.startswith("nameserver") for line in lines) == 1


def test_embedded_resolv_conf_honours_dns_search_and_options() -> None:
    dns = DNSConfig(servers=("9.9.9.9",), search=("a.example", "b.example"), options=("ndots:3", "timeout:1"))
    text = resolv_conf(dns, HOST, embedded=True)
    assert "search a.example b.example" in text
    assert "options ndots:3 timeout:1" in text
    assert "9.9.9.9" in text  # noted as the upstream, not as a nameserver line
    assert "nameserver 9.9.9.9" not in text


def test_default_bridge_resolv_conf_drops_loopback_servers() -> None:
    text = resolv_conf(DNSConfig(), HOST, embedded=False)
    assert "nameserver 10.1.1.1" in text and "127.0.0.53" not in text
    only_loopback = ResolvConf(("127.0.0.53",))
    assert resolv_conf(DNSConfig(), only_loopback, embedded=False).splitlines()[:2] == [
        "nameserver 8.8.8.8",
        "nameserver 8.8.4.4",
    ]
    dns = DNSConfig(servers=("1.1.1.1",), search=(".",))
    text = resolv_conf(dns, HOST, embedded=False)
    assert text.startswith("nameserver 1.1.1.1\n") and "search" not in text


def test_hosts_file() -> None:
    text = hosts_file(
        "web1",
        "example.org",
        ["172.18.0.5/16"],
        [("db.local", "10.0.0.9")],
        [("172.17.0.3", ("database", "db"))],
    )
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert "10.0.0.9\tdb.local" in lines
    assert "172.17.0.3\tdatabase db" in lines
    assert lines[-1] == "172.18.0.5\tweb1.example.org\tweb1"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("db:10.0.0.9", ("db", "10.0.0.9")),
        ("db=10.0.0.9", ("db", "10.0.0.9")),
        ("v6:::1", ("v6", "::1")),
        ("v6:[2001:db8::1]", ("v6", "2001:db8::1")),
        ("gw:host-gateway", ("gw", "host-gateway")),
    ],
)
def test_parse_add_host(entry: str, expected: tuple[str, str]) -> None:
    assert parse_add_host(entry) == expected


def test_parse_add_host_rejects_garbage() -> None:
    with pytest.raises(InvalidNetworkConfig):
        parse_add_host("db:not-an-ip")
    with pytest.raises(InvalidNetworkConfig):
        parse_add_host("nocolon")


def test_etc_files_write(tmp_path: Path) -> None:
    files = EtcFiles("h\n", "n\n", "r\n")
    paths = files.write(tmp_path / "etc")
    assert {p.name for p in paths.values()} == {"hosts", "hostname", "resolv.conf"}
    assert (tmp_path / "etc" / "resolv.conf").read_text() == "r\n"


def test_link_env_matches_the_user_guide() -> None:
    # docker run -d --name db -e POSTGRES_PASSWORD=secret training/postgres (EXPOSE 5432)
    # docker run --name web --link db:db training/webapp env
    env = link_env("db", "web", "172.17.0.5", [(5432, "tcp")], ["POSTGRES_PASSWORD=secret", "PATH=/bin"])
    assert env == [
        "DB_PORT=tcp://172.17.0.5:5432",
        "DB_PORT_5432_TCP=tcp://172.17.0.5:5432",
        "DB_PORT_5432_TCP_ADDR=172.17.0.5",
        "DB_PORT_5432_TCP_PORT=5432",
        "DB_PORT_5432_TCP_PROTO=tcp",
        "DB_NAME=/web/db",
        "DB_ENV_POSTGRES_PASSWORD=secret",
    ]


def test_link_env_ranges_and_aliases_with_dashes() -> None:
    env = link_env("my-db", "web", "10.0.0.2", [(8001, "tcp"), (8000, "tcp"), (8002, "tcp"), (53, "udp")])
    assert env[0] == "MY_DB_PORT=udp://10.0.0.2:53"
    assert "MY_DB_PORT_8000_TCP_START=tcp://10.0.0.2:8000" in env
    assert "MY_DB_PORT_8000_TCP_END=tcp://10.0.0.2:8002" in env
    assert "MY_DB_PORT_8000_TCP_PORT_END=8002" in env
    assert "MY_DB_PORT_8001_TCP_ADDR=10.0.0.2" in env
    assert "MY_DB_NAME=/web/my-db" in env


def test_parse_link_and_hosts_entry() -> None:
    assert parse_link("db") == ("db", "db")
    assert parse_link("/db:database") == ("db", "database")
    assert link_hosts_entry("database", "db", "172.17.0.5") == ("172.17.0.5", ("database", "db"))
    assert link_hosts_entry("db", "db", "172.17.0.5") == ("172.17.0.5", ("db",))
