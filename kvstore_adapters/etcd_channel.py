"""Connection pieces of the etcd adapter: URL options, TLS material, gRPC channels per endpoint, errors.

:class:`~kvstore_adapters.etcd.EtcdStore` owns the channels itself instead of using ``aetcd.Client``, which
opens plaintext channels only and talks to a single endpoint; the generated messages and stubs come from
``aetcd.rpc``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc

from kvstore_adapters.base import StoreURL
from kvstore_adapters.errors import InvalidStoreURL, KVError

__all__ = [
    "LOST",
    "Endpoint",
    "EtcdError",
    "EtcdOptions",
    "TLSFiles",
    "not_sent",
    "options_from_url",
    "reason",
]

PARAMS = frozenset(
    {"cacert", "cert", "key", "tls", "servername", "user", "password", "timeout", "connect_timeout"}
)
_TRUE = frozenset({"1", "true", "yes", "on"})

#: Codes that mean "this endpoint did not answer"; another one may.
LOST = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

# gRPC's defaults suit long-lived services badly here: reconnect backoff grows to two minutes (a restarted
# etcd would stay unused that long) and idle streams are never probed (a watch on a vanished host would
# hang until the kernel gives up on the socket). etcd refuses pings more often than every 5 s.
_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # gRPC also uses this as the least time one connection attempt (TCP + TLS + HTTP/2) may take.
    ("grpc.min_reconnect_backoff_ms", 5000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    # Range replies of big prefixes exceed gRPC's 4 MiB default; etcd itself bounds what it sends.
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.max_send_message_length", 2**31 - 1),
)


class EtcdError(KVError):
    """etcd refused a request for a reason other than being unreachable (permissions, a bad argument…)."""

    def __init__(self, operation: str, code: str, details: str) -> None:
        super().__init__(f"etcd {operation} failed: {details} ({code})")
        self.operation = operation
        self.code = code
        self.details = details


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """TLS material, read from the files the URL names. ``None`` fields use gRPC's defaults."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None

    def credentials(self) -> Any:
        """gRPC channel credentials for this material."""
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)


@dataclass(frozen=True, slots=True)
class EtcdOptions:
    """Everything an etcd URL says, checked."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str = ""
    tls: TLSFiles | None = None
    user: str | None = None
    password: str | None = None
    timeout: float = 10.0
    connect_timeout: float = 3.0


def options_from_url(url: StoreURL) -> EtcdOptions:
    """Check an ``etcd://`` URL and read the TLS files it names; InvalidStoreURL says what is wrong."""
    raw = url.raw or f"{url.scheme}://…"
    if url.scheme != "etcd":
        raise InvalidStoreURL(raw, f"scheme {url.scheme!r} is not etcd")
    if not url.endpoints:
        raise InvalidStoreURL(raw, "no endpoint (etcd://host:port/prefix)")
    params = dict(url.params)
    unknown = sorted(set(params) - PARAMS)
    if unknown:
        known = ", ".join(sorted(PARAMS))
        raise InvalidStoreURL(raw, f"unknown parameter(s) {', '.join(unknown)}; known: {known}")
    if ("cert" in params) != ("key" in params):
        raise InvalidStoreURL(raw, "cert and key go together")
    if ("user" in params) != ("password" in params):
        raise InvalidStoreURL(raw, "user and password go together")

    def read(name: str) -> bytes | None:
        path = params.get(name)
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as err:
            raise InvalidStoreURL(raw, f"cannot read {name} file {path}: {err.strerror}") from err

    def seconds(name: str, default: float) -> float:
        text = params.get(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value > 0 or math.isinf(value):
            raise InvalidStoreURL(raw, f"{name} must be a positive number of seconds, not {text!r}")
        return value

    tls: TLSFiles | None = None
    if params.get("tls", "").lower() in _TRUE or any(n in params for n in ("cacert", "cert", "key")):
        tls = TLSFiles(read("cacert"), read("cert"), read("key"), params.get("servername"))
    return EtcdOptions(
        tuple(url.endpoints),
        url.prefix,
        tls,
        params.get("user"),
        params.get("password"),
        seconds("timeout", 10.0),
        seconds("connect_timeout", 3.0),
    )


class Endpoint:
    """One etcd member address and, once opened, its channel and stubs."""

    __slots__ = ("auth", "channel", "host", "kv", "lease", "port", "target", "watch")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.channel: Any = None
        self.kv: Any = None
        self.lease: Any = None
        self.watch: Any = None
        self.auth: Any = None

    def open(self, tls: TLSFiles | None, credentials: Any) -> None:
        """Create the channel (gRPC connects lazily, so this never blocks)."""
        if self.channel is not None:
            return
        options: list[tuple[str, int | str]] = list(_CHANNEL_OPTIONS)
        if tls is None:
            self.channel = grpc.aio.insecure_channel(self.target, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self.channel = grpc.aio.secure_channel(self.target, credentials, options=options)
        self.kv = rpc.KVStub(self.channel)
        self.lease = rpc.LeaseStub(self.channel)
        self.watch = rpc.WatchStub(self.channel)
        self.auth = rpc.AuthStub(self.channel)

    async def close(self) -> None:
        """Close the channel (ending its calls); :meth:`open` makes a new one."""
        channel, self.channel = self.channel, None
        self.kv = self.lease = self.watch = self.auth = None
        if channel is not None:
            await channel.close(None)


def not_sent(err: grpc.aio.AioRpcError) -> bool:
    """Whether the request certainly never reached etcd (no connection could be made)."""
    details = (err.details() or "").lower()
    return "failed to connect" in details or "connection refused" in details


def reason(exc: BaseException, timeout: float | None = None) -> str:
    """A short description of why a request failed, for StoreUnavailable messages."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s" if timeout else "no answer in time"
    return str(exc) or type(exc).__name__
