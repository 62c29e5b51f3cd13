"""Store URL parsing and the lazy adapter registry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvstore_adapters import InvalidStoreURL, StoreURL, open_store, parse_store_url, store_from_url
from kvstore_adapters.memory import MemoryStore


def test_etcd_url_with_several_hosts_prefix_and_tls_params() -> None:
    url = "etcd://h1:2379,h2:12379,h3/shoal?cacert=/ca.pem&cert=/c.pem&key=/k.pem"
    parsed = parse_store_url(url)
    assert parsed == StoreURL(
        "etcd",
        (("h1", 2379), ("h2", 12379), ("h3", 2379)),
        "shoal",
        {"cacert": "/ca.pem", "cert": "/c.pem", "key": "/k.pem"},
        url,
    )


@pytest.mark.parametrize(
    ("url", "scheme", "endpoints", "prefix"),
    [
        ("zk://10.0.0.1/shoal", "zk", (("10.0.0.1", 2181),), "shoal"),
        ("zookeeper://zk1:2182/a/b/", "zk", (("zk1", 2182),), "a/b"),
        ("consul://c1/shoal", "consul", (("c1", 8500),), "shoal"),
        ("ETCD://127.0.0.1", "etcd", (("127.0.0.1", 2379),), ""),
        ("etcd://[::1]:2400,[fe80::1]/p", "etcd", (("::1", 2400), ("fe80::1", 2379)), "p"),
        ("memory://", "memory", (), ""),
        ("memory://shared-1/pre/fix", "memory", (), "pre/fix"),
    ],
)
def test_default_ports_and_prefixes(url: str, scheme: str, endpoints: tuple[tuple[str, int], ...],
                                    prefix: str) -> None:
    parsed = parse_store_url(url)
    assert (parsed.scheme, parsed.endpoints, parsed.prefix, parsed.raw) == (scheme, endpoints, prefix, url)


def test_memory_name_goes_into_params() -> None:
    assert parse_store_url("memory://cluster-a").params == {"name": "cluster-a"}
    assert parse_store_url("memory://").params == {}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h:6379/x", "unknown scheme 'redis' (known: consul, etcd, memory, zk, zookeeper)"),
        ("etcd://h:0/x", "bad port '0'"),
        ("etcd://h:65536/x", "bad port '65536'"),
        ("etcd://h:abc/x", "bad port 'abc'"),
        ("etcd:///x", "no host"),
        ("zk://", "no host"),
        ("etcd://h1,,h2/x", "empty host"),
        ("etcd://:2379/x", "no host"),
        ("etcd://h/x?a=1&a=2", "'a' given twice"),
        ("etcd://user:pw@h/x", "credentials"),
        ("etcd://h/a//b", "empty segment"),
        ("etcd://h/../b", "'..'"),
        ("h1:2379", "missing '://'"),
        ("", "empty URL"),
        ("memory://bad name", "bad memory store name"),
        ("etcd://bad_host!/x", "bad host"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(InvalidStoreURL) as info:
        parse_store_url(url)
    assert message in str(info.value)
    assert info.value.url == url
    assert repr(url) in str(info.value)


def test_store_from_url_builds_the_adapter_unconnected() -> None:
    store = store_from_url("memory://reg-test/pfx")
    assert isinstance(store, MemoryStore)
    assert store.info().prefix == "pfx"
    assert store.info().backend == "memory"


async def test_open_store_connects() -> None:
    store = await open_store("memory://")
    await store.put("k", b"v")
    assert (kv := await store.get("k")) is not None and kv.value == b"v"
    await store.close()


def test_adapters_are_imported_only_when_used() -> None:
    code = (
        "import sys\n"
        "from kvstore_adapters import store_from_url\n"
        "store_from_url('memory://x')\n"
        "bad = [m for m in ('kazoo', 'aetcd', 'grpc', 'aiohttp', 'kvstore_adapters.etcd',"
        " 'kvstore_adapters.zookeeper', 'kvstore_adapters.consul') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "try:\n"
        "    store_from_url('etcd://127.0.0.1:2379/x')\n"
        "except Exception as exc:\n"
        "    print('etcd adapter unavailable:', exc)\n"
        "assert 'kazoo' not in sys.modules and 'kvstore_adapters.zookeeper' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
