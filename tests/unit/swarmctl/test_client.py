"""Host addresses, and what the client says when no manager answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmctl.client import Client, TLSOptions, parse_host
from swarmctl.errors import InvalidValue, ManagerUnreachable
from tests.servers import closed_port


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("unix:///run/shoal/manager.sock", "unix:///run/shoal/manager.sock"),
        ("/tmp/m.sock", "unix:///tmp/m.sock"),
        ("http://10.0.0.1:2377", "http://10.0.0.1:2377"),
        ("https://manager:4443", "https://manager:4443"),
        ("tcp://10.0.0.1:2377", "http://10.0.0.1:2377"),
        ("10.0.0.1", "http://10.0.0.1:2377"),
    ],
)
def test_host_forms(raw: str, text: str) -> None:
    assert str(parse_host(raw)) == text


def test_tcp_hosts_use_tls_when_asked() -> None:
    assert parse_host("tcp://m:2377", tls=True).scheme == "https"


@pytest.mark.parametrize("raw", ["unix://relative.sock", "ftp://x:1", "http://:80", "http://h:port"])
def test_bad_hosts(raw: str) -> None:
    with pytest.raises(InvalidValue):
        parse_host(raw)


def test_tls_files_default_to_the_config_dir(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    opts = TLSOptions.from_dir(str(tmp_path), key="/elsewhere/key.pem")
    assert opts.ca == str(tmp_path / "ca.pem") and opts.cert == "" and opts.key == "/elsewhere/key.pem"


def test_unreachable_managers_are_named(tmp_path: Path) -> None:
    with pytest.raises(ManagerUnreachable, match=r"unix://.*nothing.sock: No such file or directory"):
        Client(f"unix://{tmp_path}/nothing.sock").services()
    port = closed_port()
    with pytest.raises(ManagerUnreachable, match=f"http://127.0.0.1:{port}: Connection refused"):
        Client(f"http://127.0.0.1:{port}", timeout=2).services()
