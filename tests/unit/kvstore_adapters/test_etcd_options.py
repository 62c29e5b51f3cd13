"""etcd URL options: what an ``etcd://`` URL turns into, and the mistakes it is rejected for."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore_adapters import InvalidStoreURL, parse_store_url, store_from_url
from kvstore_adapters.etcd import EtcdStore
from kvstore_adapters.etcd_channel import options_from_url


def test_several_endpoints_prefix_and_defaults() -> None:
    opts = options_from_url(parse_store_url("etcd://10.0.0.1:2379,10.0.0.2,[fd00::3]:2381/shoal/prod"))
    assert opts.endpoints == (("10.0.0.1", 2379), ("10.0.0.2", 2379), ("fd00::3", 2381))
    assert opts.prefix == "shoal/prod"
    assert opts.tls is None and opts.user is None
    assert (opts.timeout, opts.connect_timeout) == (10.0, 3.0)


def test_store_keeps_keys_under_the_prefix_and_names_every_endpoint() -> None:
    store = store_from_url("etcd://127.0.0.1:1,127.0.0.1:2,[::1]:3/shoal")
    assert isinstance(store, EtcdStore)
    info = store.info()
    assert (info.backend, info.prefix) == ("etcd", "shoal")
    assert info.endpoints == "127.0.0.1:1,127.0.0.1:2,[::1]:3"
    assert info.extra["root"] == "/shoal/"
    assert store_from_url("etcd://127.0.0.1:1").info().extra["root"] == "/"


def test_tls_files_are_read_when_the_url_is_parsed(tmp_path: Path) -> None:
    for name in ("ca.pem", "c.pem", "k.pem"):
        (tmp_path / name).write_bytes(name.encode())
    url = f"etcd://h:2379/p?cacert={tmp_path}/ca.pem&cert={tmp_path}/c.pem&key={tmp_path}/k.pem&servername=etcd.x"
    tls = options_from_url(parse_store_url(url)).tls
    assert tls is not None
    assert (tls.ca, tls.cert, tls.key, tls.server_name) == (b"ca.pem", b"c.pem", b"k.pem", "etcd.x")
    plain_tls = options_from_url(parse_store_url("etcd://h/p?tls=true")).tls
    assert plain_tls is not None and plain_tls.ca is None


def test_credentials_and_timeouts() -> None:
    opts = options_from_url(parse_store_url("etcd://h/p?user=u&password=pw&timeout=2.5&connect_timeout=0.5"))
    assert (opts.user, opts.password, opts.timeout, opts.connect_timeout) == ("u", "pw", 2.5, 0.5)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("certt=x", "unknown parameter"),
        ("cert=/dev/null", "cert and key go together"),
        ("user=u", "user and password go together"),
        ("timeout=0", "timeout must be a positive number"),
        ("connect_timeout=soon", "connect_timeout must be a positive number"),
        ("cacert=/nonexistent/ca.pem", "cannot read cacert file"),
    ],
)
def test_mistakes_are_rejected_with_the_reason(query: str, message: str) -> None:
    with pytest.raises(InvalidStoreURL, match=message):
        store_from_url(f"etcd://127.0.0.1:2379/p?{query}")
