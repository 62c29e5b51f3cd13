"""Store URLs → adapters.

``etcd://h1:2379,h2:2379/shoal?cacert=ca.pem&cert=c.pem&key=k.pem``, ``zk://h:2181/shoal``,
``consul://h:8500/shoal``, ``memory://`` (a private in-process store) and ``memory://NAME/prefix`` (one
in-process store shared by every client that names it). Adapter modules are imported only when their
scheme is used, so a manager on etcd never imports kazoo.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from kvstore_adapters.base import KVStore, StoreURL
from kvstore_adapters.errors import InvalidStoreURL


@dataclass(frozen=True, slots=True)
class AdapterEntry:
    """Where an adapter lives and what it needs from a URL."""

    module: str
    cls: str
    default_port: int | None
    #: Network stores need at least one host; ``memory`` has none.
    needs_host: bool = True


#: Scheme → adapter. ``zookeeper`` is an alias of ``zk``.
ADAPTERS: dict[str, AdapterEntry] = {
    "etcd": AdapterEntry("kvstore_adapters.etcd", "EtcdStore", 2379),
    "zk": AdapterEntry("kvstore_adapters.zookeeper", "ZooKeeperStore", 2181),
    "zookeeper": AdapterEntry("kvstore_adapters.zookeeper", "ZooKeeperStore", 2181),
    "consul": AdapterEntry("kvstore_adapters.consul", "ConsulStore", 8500),
    "memory": AdapterEntry("kvstore_adapters.memory", "MemoryStore", None, needs_host=False),
}

_CANONICAL_SCHEME = {"zookeeper": "zk"}
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-_]*[A-Za-z0-9])?$")
_MEMORY_NAME_RE = re.compile(r"^[A-Za-z0-9._\-]+$")


def known_schemes() -> list[str]:
    """Every scheme the registry accepts, sorted."""
    return sorted(ADAPTERS)


def parse_store_url(url: str) -> StoreURL:
    """Parse a store URL; raises InvalidStoreURL saying what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidStoreURL(str(url), "empty URL")
    raw = url
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidStoreURL(raw, f"missing '://' (expected e.g. etcd://127.0.0.1:2379/shoal; schemes: "
                                   f"{', '.join(known_schemes())})")
    scheme = scheme.lower()
    entry = ADAPTERS.get(scheme)
    if entry is None:
        raise InvalidStoreURL(raw, f"unknown scheme {scheme!r} (known: {', '.join(known_schemes())})")
    if "#" in rest:
        raise InvalidStoreURL(raw, "fragments ('#') are not allowed")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    params = _parse_query(raw, query)
    prefix = _parse_prefix(raw, path)
    canonical = _CANONICAL_SCHEME.get(scheme, scheme)

    if not entry.needs_host:
        # memory://NAME: the "host" is the name of a shared in-process store.
        if netloc:
            if not _MEMORY_NAME_RE.match(netloc):
                raise InvalidStoreURL(raw, f"bad memory store name {netloc!r} (use letters, digits, . _ -)")
            params["name"] = netloc
        return StoreURL(canonical, (), prefix, params, raw)

    if "@" in netloc:
        raise InvalidStoreURL(raw, "credentials in the URL are not supported; pass them as query parameters")
    if not netloc:
        raise InvalidStoreURL(raw, "no host (expected e.g. "
                                   f"{canonical}://127.0.0.1:{entry.default_port}/shoal)")
    endpoints = tuple(_parse_endpoint(raw, part, entry.default_port) for part in netloc.split(","))
    return StoreURL(canonical, endpoints, prefix, params, raw)


def _parse_endpoint(raw: str, part: str, default_port: int | None) -> tuple[str, int]:
    part = part.strip()
    if not part:
        raise InvalidStoreURL(raw, "empty host in the host list")
    if part.startswith("["):  # [v6addr]:port
        host, bracket, after = part[1:].partition("]")
        if not bracket or not host:
            raise InvalidStoreURL(raw, f"bad IPv6 host {part!r}")
        if after and not after.startswith(":"):
            raise InvalidStoreURL(raw, f"bad host {part!r}")
        port_text = after[1:] if after else ""
        has_port = bool(after)
    else:
        host, colon, port_text = part.partition(":")
        has_port = bool(colon)
        if not host:
            raise InvalidStoreURL(raw, f"no host in {part!r}")
        if not _HOST_RE.match(host):
            raise InvalidStoreURL(raw, f"bad host {host!r}")
    if has_port:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidStoreURL(raw, f"bad port {port_text!r} for host {host!r} (1-65535)")
        port = int(port_text)
    elif default_port is None:
        raise InvalidStoreURL(raw, f"host {host!r} needs a port")
    else:
        port = default_port
    return host, port


def _parse_prefix(raw: str, path: str) -> str:
    prefix = unquote(path).strip("/")
    if "//" in prefix:
        raise InvalidStoreURL(raw, f"empty segment in prefix {prefix!r}")
    if any(seg in (".", "..") for seg in prefix.split("/")):
        raise InvalidStoreURL(raw, f"'.' or '..' in prefix {prefix!r}")
    return prefix


def _parse_query(raw: str, query: str) -> dict[str, str]:
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise InvalidStoreURL(raw, f"bad query string: {exc}") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise InvalidStoreURL(raw, f"parameter {name!r} given twice")
        params[name] = value
    return params


def adapter_class(scheme: str, raw_url: str = "") -> type[KVStore]:
    """The adapter class for ``scheme``, importing its module now."""
    entry = ADAPTERS.get(scheme)
    if entry is None:
        raise InvalidStoreURL(raw_url or f"{scheme}://", f"unknown scheme {scheme!r} "
                                                          f"(known: {', '.join(known_schemes())})")
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        raise InvalidStoreURL(raw_url or f"{scheme}://",
                              f"the {scheme} adapter cannot be loaded: {exc}") from exc
    cls = getattr(module, entry.cls, None)
    if not (isinstance(cls, type) and issubclass(cls, KVStore)):
        raise InvalidStoreURL(raw_url or f"{scheme}://", f"{entry.module}.{entry.cls} is not a KVStore")
    return cls


def store_from_url(url: str | StoreURL) -> KVStore:
    """A client (not yet connected) for the store the URL names."""
    parsed = url if isinstance(url, StoreURL) else parse_store_url(url)
    return adapter_class(parsed.scheme, parsed.raw).from_url(parsed)


async def open_store(url: str | StoreURL) -> KVStore:
    """A connected client for the store the URL names; raises StoreUnavailable if it cannot connect."""
    store = store_from_url(url)
    try:
        await store.connect()
    except BaseException:
        # The connect error is the one worth reporting, not a failure to tidy up after it.
        with contextlib.suppress(Exception):
            await store.close()
        raise
    return store
