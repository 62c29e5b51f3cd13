"""The manager's TLS listener and who may call what.

:class:`TLSSite` serves the API app over TLS like aiohttp's ``TCPSite``, but does each handshake itself
(``loop.start_tls``) so that a refused one — a certificate of another cluster, an expired one, plain
HTTP on the TLS port — is logged with OpenSSL's reason; aiohttp's own site drops those silently.

:func:`authorizer` is the middleware that decides, per request, from the caller's certificate:

=====================================  ==========================================================
caller                                 may call
=====================================  ==========================================================
the unix socket (root on the host)     everything (agent sessions need a node certificate)
TLS, no client certificate             ``GET /ca``, ``POST /join``, ``GET /_ping``
a worker node's certificate            those, plus its own session and ``POST /node/renew``
a manager node's certificate           everything
a manager's own (server) certificate   everything (manager-to-manager calls)
an administrator's certificate         everything but an agent session
plain TCP without TLS                  nothing
=====================================  ==========================================================

A node's certificate counts only while its Node object exists: a removed node is refused even though
its certificate has not expired (its session gets a ``node_removed`` frame from the dispatcher instead).
Every refusal is logged with who asked for what.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from api import Node
from api.join import CA_PATH, JOIN_PATH, RENEW_PATH
from api.session import SESSION_PATH
from manager.ca import ROLE_ADMIN, ROLE_MANAGER, CertificateError, NodeIdentity
from manager.errors import Forbidden, Unauthenticated
from manager.pki import ClusterPKI

log = logging.getLogger(__name__)

#: How long a client may take over its TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Paths anyone reaching the TLS port may call.
PUBLIC = frozenset({("GET", CA_PATH), ("POST", JOIN_PATH), ("GET", "/_ping")})
#: Paths any node of the cluster may call, workers included.
NODE_PATHS = frozenset({("GET", SESSION_PATH), ("POST", RENEW_PATH)})
#: Where the authorizer leaves the :class:`Caller` on the request (a typed key where aiohttp has them).
CALLER: Any = web.RequestKey("caller", object) if hasattr(web, "RequestKey") else "shoal.caller"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Caller:
    """Who made a request: the local unix socket, or a TLS peer and what its certificate says."""

    local: bool = False
    identity: NodeIdentity | None = None
    peer: str = ""

    def __str__(self) -> str:
        if self.local:
            return "the local socket"
        if self.identity is None:
            return f"{self.peer} (no certificate)"
        return f"{self.peer} ({self.identity.kind} {self.identity.node_id})"

    @property
    def node(self) -> NodeIdentity | None:
        """The identity if it is a node's certificate (not an administrator's or a manager process')."""
        i = self.identity
        return i if i is not None and not i.server and i.role != ROLE_ADMIN else None


def caller_of(request: web.Request) -> Caller:
    """The caller the authorizer found for ``request``."""
    found = request.get(CALLER)
    return found if isinstance(found, Caller) else Caller()


def _peer(transport: asyncio.BaseTransport | None) -> str:
    if transport is None:
        return "?"
    name = transport.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return str(name or "?")


def identify(request: web.Request, pki: ClusterPKI) -> Caller:
    """Who is calling; raises Unauthenticated for plain TCP and for certificates this cluster refuses."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        return Caller(local=True)
    peer = _peer(transport)
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        raise Unauthenticated("this manager accepts only TLS connections on TCP")
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        return Caller(peer=peer)
    try:
        return Caller(identity=pki.identify(der), peer=peer)
    except CertificateError as e:
        raise Unauthenticated(f"certificate refused: {e}") from None


def authorizer(pki: ClusterPKI) -> Middleware:
    """The middleware that lets each request through, or refuses (401/403) and logs it."""

    @web.middleware
    async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            caller = identify(request, pki)
            request[CALLER] = caller
            await _check(pki, caller, request.method, request.path)
        except (Unauthenticated, Forbidden) as e:
            log.warning(
                "refused %s %s from %s: %s", request.method, request.path, _peer(request.transport), e
            )
            raise
        return await handler(request)

    return authorize


async def _check(pki: ClusterPKI, caller: Caller, method: str, path: str) -> None:
    key = (method, path)
    if caller.local or key in PUBLIC:
        return
    identity = caller.identity
    if identity is None:
        raise Unauthenticated(
            f"{method} {path} needs a client certificate of this cluster (swarmctl: see docs/security.md)"
        )
    node = caller.node
    if node is None:
        return  # an administrator, or another manager
    if node.role != ROLE_MANAGER and key not in NODE_PATHS:
        raise Forbidden(f"worker node {node.node_id} may not call {method} {path} (managers only)")
    if path == SESSION_PATH:
        return  # the dispatcher answers a removed node with a node_removed frame
    store = pki.store
    if store.get(Node, node.node_id) is None and await store.fetch(Node, node.node_id) is None:
        raise Forbidden(f"node {node.node_id} has been removed from the cluster")


class _TLSGate(asyncio.Protocol):
    """A TCP connection until its TLS handshake is done; then the HTTP protocol takes it over."""

    def __init__(self, site: TLSSite) -> None:
        self._site = site
        self._inner: asyncio.Protocol | None = None
        self._early: list[bytes] = []
        self._eof = False
        self._lost: tuple[Exception | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the ClientHello is for the TLS layer start_tls puts in between
        job = asyncio.get_running_loop().create_task(self._handshake(transport))
        self._site._handshakes.add(job)
        job.add_done_callback(self._site._handshakes.discard)

    async def _handshake(self, raw: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        peer = _peer(raw)
        try:
            tls = await loop.start_tls(
                raw, self, self._site.context, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except ssl.SSLError as e:
            log.warning("refused a TLS connection from %s: %s", peer, _reason(e))
            raw.abort()
            return
        except (OSError, TimeoutError) as e:  # the client went away, or took too long
            log.debug("TLS handshake with %s failed: %s", peer, e)
            raw.abort()
            return
        if tls is None:  # pragma: no cover - only for transports without TLS support
            raw.abort()
            return
        server: Any = self._site.runner_server
        inner: asyncio.Protocol = server()
        # Decrypted data from now on goes straight to the HTTP protocol; what came before is replayed.
        tls.set_protocol(inner)
        self._inner = inner
        inner.connection_made(tls)
        for chunk in self._early:
            inner.data_received(chunk)
        self._early.clear()
        if self._eof:
            inner.eof_received()
        if self._lost is not None:
            inner.connection_lost(self._lost[0])

    # Until the HTTP protocol takes over, the TLS layer hands what it decrypts to the gate.
    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)
        else:
            self._lost = (exc,)


def _reason(e: ssl.SSLError) -> str:
    if isinstance(e, ssl.SSLCertVerificationError) and e.verify_message:
        return f"client certificate refused: {e.verify_message}"
    return str(e.reason or e).replace("_", " ").lower()


class TLSSite(web.BaseSite):
    """Serve an aiohttp runner on ``host:port`` over TLS with ``context``, logging refused handshakes."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, context: ssl.SSLContext) -> None:
        super().__init__(runner, ssl_context=context)
        self.context = context
        self._host = host
        self._port = port
        self._handshakes: set[asyncio.Task[None]] = set()

    @property
    def runner_server(self) -> Any:
        server = self._runner.server
        assert server is not None
        return server

    @property
    def name(self) -> str:
        return f"https://{self._host or '0.0.0.0'}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _TLSGate(self), self._host or None, self._port, backlog=self._backlog, reuse_address=True
        )

    async def stop(self) -> None:
        await super().stop()
        for job in list(self._handshakes):
            job.cancel()
        for job in list(self._handshakes):
            with contextlib.suppress(asyncio.CancelledError):
                await job
