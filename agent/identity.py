"""A node's identity: its key and its certificate from the cluster CA, how it gets them and keeps them.

Joining (once): the agent parses its join token (``SWMTKN-1-<CA digest>-<secret>``), fetches the CA
certificate from a manager over TLS without trusting it yet (``GET /ca``), and goes on only if its digest
is the one in the token — so the secret never goes to anything but this cluster's managers. Then, now
trusting that CA and requiring the manager's name ``swarm-manager``, it sends the token and the public
half of a key it just made (``POST /join``) and receives its certificate: node id (CN) and role (OU).

From then on the agent talks to managers over mutual TLS with that certificate, and renews it (a new key
each time) before it expires, over that same authenticated identity (``POST /node/renew``); sessions stay
up, since an established TLS connection does not depend on the certificate it began with.

Files in the state dir: ``node.pem`` (certificate and key, mode 0600), ``ca.pem`` and ``node_id``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.errors import AgentError
from api.codec import from_plain, to_plain
from api.errors import CodecError
from api.join import (
    CA_PATH,
    JOIN_PATH,
    MANAGER_SERVER_NAME,
    RENEW_PATH,
    CertificateReply,
    InvalidJoinToken,
    JoinRequest,
    JoinToken,
    RenewRequest,
    ca_digest,
)

log = logging.getLogger(__name__)

CERT_FILE = "node.pem"
CA_FILE = "ca.pem"
NODE_ID_FILE = "node_id"
#: How long one request to a manager may take.
REQUEST_TIMEOUT = 10.0


class JoinRefused(AgentError):
    """Joining (or renewing) failed; ``fatal`` when retrying cannot help (a bad or rotated token, a
    manager that does not hold the token's CA, a removed node)."""

    def __init__(self, message: str, *, fatal: bool) -> None:
        super().__init__(message)
        self.message = message
        self.fatal = fatal


def manager_url(addr: str, path: str) -> str:
    """``https://HOST:PORT/path`` for a manager given as ``host:port`` (or as a URL)."""
    if "://" in addr:
        addr = addr.split("://", 1)[1]
    return f"https://{addr.rstrip('/')}{path}"


def default_renewal_time(cert: x509.Certificate) -> dt.datetime:
    """When to renew: once less than half of the lifetime, or less than 30 minutes, is left."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - max(lifetime / 2, dt.timedelta(minutes=30))


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _subject(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    attrs = cert.subject.get_attributes_for_oid(oid)
    value = attrs[0].value if attrs else ""
    return value.decode() if isinstance(value, bytes) else value


class NodeCredentials:
    """The node's certificate, key and cluster CA, as kept in its state dir."""

    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.cert_file = self.state_dir / CERT_FILE
        self.ca_file = self.state_dir / CA_FILE
        self.certificate: x509.Certificate | None = None
        self._context: ssl.SSLContext | None = None
        self.load()

    # --- what is on disk ----------------------------------------------------------------------------
    def load(self) -> bool:
        """Read the certificate from the state dir; whether there is one."""
        try:
            pem = self.cert_file.read_bytes()
        except FileNotFoundError:
            self.certificate = None
            return False
        self.certificate = x509.load_pem_x509_certificate(pem)
        return True

    @property
    def present(self) -> bool:
        """Whether this node has joined (holds a certificate)."""
        return self.certificate is not None

    @property
    def node_id(self) -> str:
        return _subject(self.certificate, NameOID.COMMON_NAME) if self.certificate is not None else ""

    @property
    def role(self) -> str:
        """``worker`` or ``manager`` (from the certificate's OU)."""
        if self.certificate is None:
            return ""
        return _subject(self.certificate, NameOID.ORGANIZATIONAL_UNIT_NAME).removeprefix("swarm-")

    @property
    def expired(self) -> bool:
        return self.certificate is not None and self.certificate.not_valid_after_utc <= _now()

    def context(self) -> ssl.SSLContext:
        """TLS to managers: trust only the cluster CA, present this node's certificate. One context for
        the agent's life: a renewal loads the new certificate into it for the connections that follow."""
        if self._context is None:
            ctx = ssl.create_default_context(cadata=self.ca_file.read_text())
            ctx.load_cert_chain(self.cert_file)
            self._context = ctx
        return self._context

    def _store(self, reply: CertificateReply, key: ec.EllipticCurvePrivateKey) -> None:
        cert = x509.load_pem_x509_certificate(reply.certificate.encode())
        if cert.public_key() != key.public_key():
            raise JoinRefused("the manager's certificate is not for this node's key", fatal=False)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ca_file.write_text(reply.ca_certificate)
        # One file for certificate and key, replaced at once: a crash never pairs a key with another's cert.
        _write_private(self.cert_file, reply.certificate.encode() + key_pem)
        (self.state_dir / NODE_ID_FILE).write_text(reply.node_id + "\n")
        self.certificate = cert
        if self._context is not None:
            self._context.load_cert_chain(self.cert_file)

    # --- joining --------------------------------------------------------------------------------------
    async def join(
        self, http: aiohttp.ClientSession, manager: str, token: str, *, hostname: str = "", addr: str = ""
    ) -> None:
        """Join through ``manager`` with ``token``. Raises JoinRefused (``fatal`` or not), or the
        connection's aiohttp.ClientError/OSError when the manager cannot be reached."""
        try:
            parsed = JoinToken.parse(token)
        except InvalidJoinToken as e:
            raise JoinRefused(str(e), fatal=True) from None
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        # Not verified yet (nothing is trusted before the token's digest says what to trust); only the
        # public CA certificate travels on this connection.
        async with http.get(manager_url(manager, CA_PATH), ssl=False, timeout=timeout) as r:
            if r.status != 200:
                raise JoinRefused(
                    f"manager {manager} did not give its CA certificate ({r.status})", fatal=False
                )
            ca_pem = await r.text()
        try:
            ca = x509.load_pem_x509_certificate(ca_pem.encode())
        except ValueError:
            raise JoinRefused(f"manager {manager} sent an unreadable CA certificate", fatal=False) from None
        if ca_digest(ca.public_bytes(serialization.Encoding.DER)) != parsed.digest:
            raise JoinRefused(
                f"manager {manager} does not hold the CA the join token names (a wrong token or address, "
                "or someone in between): refusing to send it the token",
                fatal=True,
            )
        pinned = ssl.create_default_context(cadata=ca_pem)
        key = ec.generate_private_key(ec.SECP256R1())
        request = JoinRequest(token=token, public_key=_public_pem(key), hostname=hostname, addr=addr)
        reply = await self._certificate(http, manager, JOIN_PATH, to_plain(request), pinned)
        self._store(reply, key)
        log.info("joined the cluster as %s node %s through manager %s", reply.role, reply.node_id, manager)

    async def renew(self, http: aiohttp.ClientSession, manager: str) -> None:
        """A new certificate (and key) through ``manager``, authenticated by the current one."""
        key = ec.generate_private_key(ec.SECP256R1())
        body = to_plain(RenewRequest(public_key=_public_pem(key)))
        reply = await self._certificate(http, manager, RENEW_PATH, body, self.context())
        if reply.node_id != self.node_id:
            raise JoinRefused(f"manager {manager} renewed the certificate of {reply.node_id!r}", fatal=False)
        self._store(reply, key)
        assert self.certificate is not None
        log.info("renewed the node certificate (valid until %s)", self.certificate.not_valid_after_utc)

    async def _certificate(
        self, http: aiohttp.ClientSession, manager: str, path: str, body: Any, ctx: ssl.SSLContext
    ) -> CertificateReply:
        async with http.post(
            manager_url(manager, path),
            json=body,
            ssl=ctx,
            server_hostname=MANAGER_SERVER_NAME,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        ) as r:
            data = await r.json(content_type=None)
            if r.status != 200:
                message = data.get("message") if isinstance(data, dict) else None
                # 4xx: the manager refuses this node (token, key, removal); retrying cannot help.
                fatal = r.status in (400, 401, 403)
                raise JoinRefused(f"manager {manager}: {message or r.reason}", fatal=fatal)
        try:
            reply: CertificateReply = from_plain(CertificateReply, data)
        except CodecError as e:
            raise JoinRefused(f"manager {manager} answered with {e}", fatal=False) from None
        return reply


def _public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
