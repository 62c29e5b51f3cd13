"""The cluster's certificate authority: a root CA, node certificates and the checks made on them.

As in SwarmKit, a node certificate's subject says who the node is: ``CN`` is the node id, ``OU`` its role
(``swarm-manager`` or ``swarm-worker``) and ``O`` the cluster id; a certificate from another cluster's CA,
or an expired one, is refused. Keys are ECDSA P-256. Certificates are renewed when less than half (or
less than 30 minutes) of their lifetime is left, without the node rejoining.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from api.join import MANAGER_SERVER_NAME, ca_digest
from api.objects import NodeRole
from manager.errors import ManagerError

ROLE_MANAGER = "swarm-manager"
ROLE_WORKER = "swarm-worker"
#: Client certificates for administrators (``swarmctl`` over TCP): the whole API, but no agent session.
ROLE_ADMIN = "swarm-admin"
ROLES = (ROLE_MANAGER, ROLE_WORKER, ROLE_ADMIN)
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
    #: A manager's own (server) certificate rather than a node's or an administrator's.
    server: bool = False

    @property
    def kind(self) -> str:
        """How logs name the holder: ``worker``/``manager`` node, ``admin``, or ``manager process``."""
        if self.server:
            return "manager process"
        return {ROLE_WORKER: "worker", ROLE_MANAGER: "manager", ROLE_ADMIN: "admin"}.get(self.role, self.role)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def cert_role(role: NodeRole) -> str:
    """The certificate role (OU) of a node role."""
    return ROLE_MANAGER if role is NodeRole.MANAGER else ROLE_WORKER


def node_role(cert_role: str) -> NodeRole | None:
    """The node role a certificate role names (None for administrators' certificates)."""
    return {ROLE_MANAGER: NodeRole.MANAGER, ROLE_WORKER: NodeRole.WORKER}.get(cert_role)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (for files readable by root only)."""
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
    def digest(self) -> str:
        """The digest join tokens carry to pin this CA (api.join.ca_digest)."""
        return ca_digest(self.cert.public_bytes(serialization.Encoding.DER))

    @property
    def key_pem(self) -> bytes:
        if self.key is None:
            raise CertificateError("this copy of the root CA has no key")
        return private_key_pem(self.key)

    def issue(
        self,
        node_id: str,
        role: str,
        csr_public_key: ec.EllipticCurvePublicKey,
        expiry: dt.timedelta = DEFAULT_EXPIRY,
        names: Iterable[str] = (),
        *,
        server: bool = False,
    ) -> x509.Certificate:
        """A node certificate for ``node_id`` in ``role`` over the node's own public key.

        ``server``: a manager's own certificate, the one its listener presents. Only those carry the name
        ``swarm-manager`` (which agents check) and may serve TLS, so no node's certificate — a manager
        node's neither — can pose as a manager. ``names`` are further host names and IP addresses a server
        certificate is valid for (the manager's addresses, for clients that check the host they dialled).
        """
        if self.key is None:
            raise CertificateError("only a manager holding the CA key can issue certificates")
        if role not in ROLES:
            raise CertificateError(f"unknown role {role!r}")
        if server and role != ROLE_MANAGER:
            raise CertificateError("only managers have server certificates")
        names = [*names, MANAGER_SERVER_NAME] if server else list(names)
        if MANAGER_SERVER_NAME in names and not server:
            raise CertificateError(f"{MANAGER_SERVER_NAME!r} is reserved for managers' own certificates")
        expiry = max(expiry, MIN_EXPIRY)
        now = _now()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.cluster_id),
            ]
        )
        san: list[x509.GeneralName] = [x509.DNSName(node_id)]
        for name in dict.fromkeys(names):
            try:
                general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
            except ValueError:
                general = x509.DNSName(name)
            if general not in san:
                san.append(general)
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
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                    if server
                    else [ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
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

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    role = one(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return NodeIdentity(
        node_id=one(NameOID.COMMON_NAME),
        role=role,
        cluster_id=one(NameOID.ORGANIZATION_NAME),
        not_after=cert.not_valid_after_utc,
        server=role == ROLE_MANAGER and MANAGER_SERVER_NAME in dns_names,
    )


def load_public_key(pem: str | bytes) -> ec.EllipticCurvePublicKey:
    """A node's public key from PEM; raises CertificateError unless it is an ECDSA P-256 key."""
    try:
        key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"not a PEM public key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CertificateError("the public key must be ECDSA P-256")
    return key


def cert_pem(cert: x509.Certificate) -> str:
    """A certificate as PEM text."""
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def new_node_key() -> ec.EllipticCurvePrivateKey:
    """A fresh node key (kept on the node; only its public half travels)."""
    return ec.generate_private_key(ec.SECP256R1())


def renewal_time(cert: x509.Certificate) -> dt.datetime:
    """When to renew: once less than half of the lifetime, or less than 30 minutes, is left."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - max(lifetime / 2, dt.timedelta(minutes=30))


def needs_renewal(cert: x509.Certificate, now: dt.datetime | None = None) -> bool:
    """Renew when less than half of the lifetime, or less than 30 minutes, is left."""
    return (now or _now()) > renewal_time(cert)


def write_private(path: Path, data: bytes) -> None:
    """Write a key or credential readable by root only (mode 0600 from the start, never wider).

    The file is replaced atomically (written beside it, then renamed), so a reader — or a crash — never
    sees half of it.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an old temporary file may have been created wider
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
