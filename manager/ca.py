"""The cluster's certificate authority: a root CA, node certificates and the checks made on them.

As in SwarmKit, a node certificate's subject says who the node is: ``CN`` is the node id, ``OU`` its role
(``swarm-manager`` or ``swarm-worker``) and ``O`` the cluster id; a certificate from another cluster's CA,
or an expired one, is refused. Keys are ECDSA P-256. Certificates are renewed when less than half (or
less than 30 minutes) of their lifetime is left, without the node rejoining.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from manager.errors import ManagerError

ROLE_MANAGER = "swarm-manager"
ROLE_WORKER = "swarm-worker"
ROOT_CN = "swarm-ca"
#: Docker's default node certificate lifetime, and the shortest it accepts.
DEFAULT_EXPIRY = dt.timedelta(days=90)
MIN_EXPIRY = dt.timedelta(hours=1)
ROOT_EXPIRY = dt.timedelta(days=20 * 365)


class CertificateError(ManagerError):
    """A certificate that is not acceptable: another cluster's, expired, or not a node certificate."""


@dataclass(frozen=True)
class NodeIdentity:
    """Who a valid node certificate says its holder is."""

    node_id: str
    role: str
    cluster_id: str
    not_after: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class RootCA:
    """A cluster root CA: its certificate, and (on managers) its key to sign node certificates."""

    def __init__(
        self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None, cluster_id: str
    ) -> None:
        self.cert = cert
        self.key = key
        self.cluster_id = cluster_id

    @classmethod
    def create(cls, cluster_id: str) -> RootCA:
        """A new root CA for ``cluster_id``."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CN)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + ROOT_EXPIRY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key, cluster_id)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes | None, cluster_id: str) -> RootCA:
        """A root CA loaded from PEM (without a key: can verify, cannot sign)."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = None
        if key_pem:
            loaded = serialization.load_pem_private_key(key_pem, password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise CertificateError("the CA key is not an ECDSA key")
            key = loaded
        return cls(cert, key, cluster_id)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        if self.key is None:
            raise CertificateError("this copy of the root CA has no key")
        return _pem_key(self.key)

    def issue(
        self,
        node_id: str,
        role: str,
        csr_public_key: ec.EllipticCurvePublicKey,
        expiry: dt.timedelta = DEFAULT_EXPIRY,
    ) -> x509.Certificate:
        """A node certificate for ``node_id`` in ``role`` over the node's own public key."""
        if self.key is None:
            raise CertificateError("only a manager holding the CA key can issue certificates")
        if role not in (ROLE_MANAGER, ROLE_WORKER):
            raise CertificateError(f"unknown role {role!r}")
        expiry = max(expiry, MIN_EXPIRY)
        now = _now()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.cluster_id),
            ]
        )
        san = [x509.DNSName(node_id), x509.DNSName(role)]
        if role == ROLE_MANAGER:
            san.append(x509.DNSName("swarm-manager"))
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(csr_public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + expiry)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def verify(self, cert: x509.Certificate, now: dt.datetime | None = None) -> NodeIdentity:
        """Who ``cert`` belongs to; raises CertificateError if this CA did not issue it or it expired."""
        now = now or _now()
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, Exception) as e:  # InvalidSignature has no common base
            raise CertificateError(
                f"certificate not issued by this cluster's CA: {e or type(e).__name__}"
            ) from None
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateError(f"certificate expired at {cert.not_valid_after_utc.isoformat()}")
        identity = identity_of(cert)
        if identity.cluster_id != self.cluster_id:
            raise CertificateError(f"certificate is for cluster {identity.cluster_id}, not {self.cluster_id}")
        return identity


def identity_of(cert: x509.Certificate) -> NodeIdentity:
    """The node id, role and cluster a node certificate names (not verified)."""

    def one(oid: x509.ObjectIdentifier) -> str:
        attrs = cert.subject.get_attributes_for_oid(oid)
        if len(attrs) != 1:
            raise CertificateError(f"not a node certificate: subject has no single {oid._name}")
        value = attrs[0].value
        return value.decode() if isinstance(value, bytes) else value

    return NodeIdentity(
        node_id=one(NameOID.COMMON_NAME),
        role=one(NameOID.ORGANIZATIONAL_UNIT_NAME),
        cluster_id=one(NameOID.ORGANIZATION_NAME),
        not_after=cert.not_valid_after_utc,
    )


def new_node_key() -> ec.EllipticCurvePrivateKey:
    """A fresh node key (kept on the node; only its public half travels)."""
    return ec.generate_private_key(ec.SECP256R1())


def needs_renewal(cert: x509.Certificate, now: dt.datetime | None = None) -> bool:
    """Renew when less than half of the lifetime, or less than 30 minutes, is left."""
    now = now or _now()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    left = cert.not_valid_after_utc - now
    return left < lifetime / 2 or left < dt.timedelta(minutes=30)


def write_private(path: Path, data: bytes) -> None:
    """Write a key or credential readable by root only (mode 0600 from the start, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)
