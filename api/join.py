"""Joining a cluster: the join token's shape, the CA digest it pins, and the bodies of the join endpoints.

A join token is Docker's ``SWMTKN-1-<CA digest>-<secret>``: the digest (sha256 of the cluster root CA
certificate's DER bytes, in base 36, 50 characters) lets a new node check that the manager it reached
speaks for the cluster it means to join before it sends the secret; the secret (25 base-36 characters,
about 129 bits) is what admits it. Rotating a token replaces the secret and keeps the digest.

The endpoints (served by every manager, docs/security.md):

- ``GET /ca``: the root CA certificate (PEM), over TLS without a client certificate; checked against
  the digest of the token before anything else is sent.
- ``POST /join`` (:class:`JoinRequest` → :class:`CertificateReply`): the token once, and the public half
  of a key the node made; the answer is the node's certificate (its node id and role inside).
- ``POST /node/renew`` (:class:`RenewRequest` → :class:`CertificateReply`): a new certificate for the
  node that presents a valid one, over mutual TLS.
- ``POST /client-certificate`` (:class:`ClientCertificateRequest` → :class:`CertificateReply`): an
  administrator's certificate for ``swarmctl`` over TCP; the manager's unix socket (root) or a manager
  certificate only.

No I/O happens here.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass

from api.errors import ModelError

TOKEN_PREFIX = "SWMTKN-1-"
DIGEST_CHARS = 50
SECRET_CHARS = 25
_ALPHABET = string.digits + string.ascii_lowercase

CA_PATH = "/ca"
JOIN_PATH = "/join"
RENEW_PATH = "/node/renew"
CLIENT_CERT_PATH = "/client-certificate"
ROTATE_TOKEN_PATH = "/swarm/join-tokens/rotate"
#: The name every manager certificate carries and agents check: a worker's certificate, though issued by
#: the same CA, does not, so no node can pose as a manager to another.
MANAGER_SERVER_NAME = "swarm-manager"


class InvalidJoinToken(ModelError):
    """Text that is not a join token (``SWMTKN-1-<50 characters>-<25 characters>``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid join token: {reason}")
        self.reason = reason


def _base36(n: int, width: int) -> str:
    digits = []
    while n:
        n, d = divmod(n, 36)
        digits.append(_ALPHABET[d])
    return "".join(reversed(digits)).rjust(width, "0")


def ca_digest(cert_der: bytes) -> str:
    """The digest a join token carries for a root CA certificate (its DER bytes)."""
    return _base36(int.from_bytes(hashlib.sha256(cert_der).digest(), "big"), DIGEST_CHARS)


@dataclass(frozen=True)
class JoinToken:
    """A parsed join token."""

    digest: str
    secret: str

    @classmethod
    def new(cls, digest: str) -> JoinToken:
        """A fresh token (a new random secret) for the CA with ``digest``."""
        return cls(digest, "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_CHARS)))

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        """Read a token; raises InvalidJoinToken saying what is wrong with it."""
        text = text.strip()
        if not text.startswith(TOKEN_PREFIX):
            raise InvalidJoinToken(f"it does not start with {TOKEN_PREFIX}")
        digest, sep, secret = text[len(TOKEN_PREFIX) :].partition("-")
        if not sep or len(digest) != DIGEST_CHARS or len(secret) != SECRET_CHARS:
            raise InvalidJoinToken(
                f"expected {TOKEN_PREFIX}<{DIGEST_CHARS} characters>-<{SECRET_CHARS} characters>"
            )
        if not set(digest + secret) <= set(_ALPHABET):
            raise InvalidJoinToken("only digits and lower-case letters may follow the prefix")
        return cls(digest, secret)

    def __str__(self) -> str:
        return f"{TOKEN_PREFIX}{self.digest}-{self.secret}"


@dataclass(frozen=True)
class JoinRequest:
    """``POST /join``: a new node's token and public key."""

    token: str = ""
    #: The node's public key, PEM (SubjectPublicKeyInfo); ECDSA P-256.
    public_key: str = ""
    hostname: str = ""
    #: The node's cluster address (empty: the address the request comes from).
    addr: str = ""


@dataclass(frozen=True)
class RenewRequest:
    """``POST /node/renew``: the public key of the node's next certificate (a new key each time)."""

    public_key: str = ""


@dataclass(frozen=True)
class ClientCertificateRequest:
    """``POST /client-certificate``: the public key an administrator's client will use."""

    public_key: str = ""


@dataclass(frozen=True)
class CertificateReply:
    """A certificate the cluster's CA issued, and the CA certificate to verify managers with."""

    #: The certificate's subject CN: the node id (or the administrator's name).
    node_id: str = ""
    #: ``worker`` or ``manager`` for nodes, ``admin`` for client certificates.
    role: str = ""
    certificate: str = ""
    ca_certificate: str = ""
