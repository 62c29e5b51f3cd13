"""The cluster's PKI on a manager: the root CA kept in the store, the cluster object, this manager's own
certificate and the TLS context its listener serves with.

The first manager to start creates the root CA and stores it at ``ca/root``: the certificate in clear,
the key sealed with the managers' secrets key (manager/secretbox.py), exactly as secrets are. So every
manager that shares the store and the secrets key — and only those — can issue and renew certificates,
and a joining or renewing agent may reach any of them; the store and its backups never hold the key in
clear. (Keeping the key only in the first manager's state dir would make that manager the one place
where nodes can join or renew, and copying it to the others would be one more secret to distribute
besides the secrets key every manager needs anyway.)

Each manager issues itself a fresh server certificate at start (its id as CN, ``swarm-manager`` and its
addresses as names) and renews it before it expires; it lives in the manager's state dir, mode 0600,
because ``ssl`` loads certificates from files only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import msgpack
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from api import Cluster, new_id
from api.errors import CodecError
from api.join import CertificateReply, InvalidJoinToken, JoinToken
from api.objects import ClusterSpec, ClusterStatus, JoinTokens, Meta, NodeRole
from kvstore_adapters import Compare, KVStore, Put
from manager.ca import (
    MIN_EXPIRY,
    ROLE_MANAGER,
    CertificateError,
    NodeIdentity,
    RootCA,
    cert_pem,
    load_public_key,
    new_node_key,
    private_key_pem,
    renewal_time,
    write_private,
)
from manager.errors import AlreadyExists, Conflict, ManagerError
from manager.secretbox import SecretBox, SecretSealError
from manager.store import ObjectStore

log = logging.getLogger(__name__)

CLUSTER_ID = "default"
#: Where the root CA lives in the store (not an object: the cache ignores it).
CA_KEY = "ca/root"
#: Associated data the CA key is sealed with, so the sealed key cannot pass for a secret's data.
_SEAL_ID = "cluster-root-ca-key"
RETRIES = 10
#: Verified certificates remembered (a connection's certificate is checked once, its expiry each time).
_VERIFIED_CACHE = 10_000


class CAUnavailable(ManagerError):
    """The root CA cannot be loaded: its record is unreadable, or its key does not open with this
    manager's secrets key (the managers' ``secrets.key`` files differ)."""


def _cluster_id_of(record: dict[str, object]) -> str:
    value = record.get("cluster_id")
    return value if isinstance(value, str) else ""


async def load_or_create_ca(kv: KVStore, box: SecretBox) -> RootCA:
    """The cluster's root CA, with its key; created (create-only, so once) if the store has none."""
    for _ in range(RETRIES):
        stored = await kv.get(CA_KEY)
        if stored is None:
            ca = RootCA.create(new_id())
            record = {
                "cluster_id": ca.cluster_id,
                "cert": ca.cert_pem,
                "key": box.seal(_SEAL_ID, ca.key_pem),
            }
            result = await kv.txn([Compare.absent(CA_KEY)], [Put(CA_KEY, msgpack.packb(record))])
            if result.succeeded:
                log.info("created the cluster root CA (cluster %s)", ca.cluster_id)
                return ca
            continue  # another manager created it first: load theirs
        try:
            record = msgpack.unpackb(stored.value, raw=False)
            key_pem = box.open(_SEAL_ID, record["key"])
            return RootCA.from_pem(record["cert"], key_pem, _cluster_id_of(record))
        except SecretSealError:
            raise CAUnavailable(
                "the cluster CA key does not open with this manager's secrets key: every manager needs "
                "the same secrets.key in its state dir (copy it from the first manager)"
            ) from None
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
            raise CAUnavailable(f"the root CA record at {CA_KEY} is unreadable: {e}") from None
    raise CAUnavailable("the root CA record keeps changing")


def new_tokens(ca: RootCA) -> JoinTokens:
    """A fresh pair of join tokens pinning ``ca``."""
    return JoinTokens(worker=str(JoinToken.new(ca.digest)), manager=str(JoinToken.new(ca.digest)))


def _pins(token: str, ca: RootCA) -> bool:
    try:
        return JoinToken.parse(token).digest == ca.digest
    except InvalidJoinToken:
        return False


def with_ca(cluster: Cluster, ca: RootCA) -> Cluster:
    """``cluster`` naming ``ca`` as its root and with tokens that pin it (older clusters had neither)."""
    tokens = cluster.status.join_tokens
    fixed = JoinTokens(
        worker=tokens.worker if _pins(tokens.worker, ca) else str(JoinToken.new(ca.digest)),
        manager=tokens.manager if _pins(tokens.manager, ca) else str(JoinToken.new(ca.digest)),
    )
    status = replace(cluster.status, root_ca_cert=ca.cert_pem.decode(), join_tokens=fixed)
    return cluster if status == cluster.status else replace(cluster, status=status)


def rotated(cluster: Cluster, role: NodeRole, ca: RootCA) -> Cluster:
    """``cluster`` with a new token for ``role``: the old one admits nobody any more."""
    tokens = cluster.status.join_tokens
    new = str(JoinToken.new(ca.digest))
    tokens = replace(tokens, worker=new) if role is NodeRole.WORKER else replace(tokens, manager=new)
    return replace(cluster, status=replace(cluster.status, join_tokens=tokens))


async def ensure_cluster(store: ObjectStore, ca: RootCA, spec: ClusterSpec | None = None) -> Cluster:
    """The cluster object, created (with ``spec``) if missing, naming ``ca`` and with pinning tokens."""
    for _ in range(RETRIES):
        cluster = await store.fetch(Cluster, CLUSTER_ID)  # not the cache: it may lag behind a conflict
        try:
            if cluster is None:
                status = ClusterStatus(join_tokens=new_tokens(ca), root_ca_cert=ca.cert_pem.decode())
                cluster = Cluster(meta=Meta(id=CLUSTER_ID), spec=spec or ClusterSpec(), status=status)
                cluster = await store.create(cluster)
                log.info("initialised a new cluster")
            elif (fixed := with_ca(cluster, ca)) is not cluster:
                cluster = await store.update(fixed)
        except (AlreadyExists, Conflict):
            continue  # another manager got there first: look again
        await store.wait_for(cluster.meta.version)
        return cluster
    raise CAUnavailable("the cluster object keeps changing")


def server_context(ca_pem: bytes, cert_file: Path) -> ssl.SSLContext:
    """The listener's TLS: this manager's certificate; a client certificate of the cluster is asked for
    (checked by OpenSSL when given) but not required, since joining nodes have none yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=ca_pem.decode())
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_cert_chain(cert_file)
    return ctx


class ClusterPKI:
    """One manager's view of the cluster PKI. Build it with :meth:`setup`; ``start``/``stop`` run the
    renewal of this manager's own certificate."""

    def __init__(
        self, store: ObjectStore, ca: RootCA, state_dir: Path, manager_id: str, names: Iterable[str] = ()
    ) -> None:
        self.store = store
        self.ca = ca
        self.state_dir = state_dir
        self.manager_id = manager_id
        self.names = tuple(dict.fromkeys(n for n in names if n))
        self.cert_file = state_dir / "manager.pem"
        self.ca_file = state_dir / "ca.pem"
        self._verified: OrderedDict[bytes, tuple[x509.Certificate, NodeIdentity]] = OrderedDict()
        self.certificate: x509.Certificate | None = None
        self.server_context: ssl.SSLContext | None = None
        self._client_context: ssl.SSLContext | None = None
        self._renewer: asyncio.Task[None] | None = None

    @classmethod
    async def setup(
        cls,
        store: ObjectStore,
        state_dir: Path | str,
        manager_id: str,
        names: Iterable[str] = (),
        spec: ClusterSpec | None = None,
    ) -> ClusterPKI:
        """Load (or create) the root CA and the cluster, and issue this manager its certificate."""
        if store.secret_box is None:
            raise CAUnavailable("a manager needs its secrets key to hold the cluster CA")
        ca = await load_or_create_ca(store.kv, store.secret_box)
        await ensure_cluster(store, ca, spec)
        pki = cls(store, ca, Path(state_dir), manager_id, names)
        pki.refresh_own_certificate()
        return pki

    # --- identities ---------------------------------------------------------------------------------------
    def identify(self, der: bytes, now: dt.datetime | None = None) -> NodeIdentity:
        """Who a peer's certificate (DER) says it is; raises CertificateError if this cluster's CA did not
        issue it, or it has expired."""
        hit = self._verified.get(der)
        if hit is None:
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError as e:
                raise CertificateError(f"unreadable certificate: {e}") from None
            hit = (cert, self.ca.verify(cert, now))
            self._verified[der] = hit
            if len(self._verified) > _VERIFIED_CACHE:
                self._verified.popitem(last=False)
        cert, identity = hit
        now = now or dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateError(f"certificate expired at {cert.not_valid_after_utc.isoformat()}")
        return identity

    # --- issuing --------------------------------------------------------------------------------------------
    def node_cert_expiry(self) -> dt.timedelta:
        """The lifetime of node certificates: the cluster's ``ca_config`` setting, at least an hour."""
        cluster = self.store.get(Cluster, CLUSTER_ID)
        ns = cluster.spec.ca_config.node_cert_expiry_ns if cluster is not None else 0
        expiry = dt.timedelta(microseconds=ns // 1000) if ns > 0 else dt.timedelta(days=90)
        return max(expiry, MIN_EXPIRY)

    def issue(self, subject: str, role: str, public_key_pem: str) -> CertificateReply:
        """A certificate for ``subject`` (a node id, or an administrator's name) in ``role``."""
        cert = self.ca.issue(subject, role, load_public_key(public_key_pem), self.node_cert_expiry())
        return CertificateReply(
            node_id=subject,
            role=role.removeprefix("swarm-"),
            certificate=cert_pem(cert),
            ca_certificate=self.ca.cert_pem.decode(),
        )

    def tokens(self) -> JoinTokens:
        """The cluster's current join tokens."""
        cluster = self.store.get(Cluster, CLUSTER_ID)
        return cluster.status.join_tokens if cluster is not None else JoinTokens()

    async def rotate_token(self, role: NodeRole) -> str:
        """Replace the join token of ``role``; the new token."""
        for _ in range(RETRIES):
            cluster = self.store.must_get(Cluster, CLUSTER_ID)
            try:
                written = await self.store.update(rotated(cluster, role, self.ca))
            except Conflict:
                await self.store.wait_for(await self.store.kv.revision())
                continue
            await self.store.wait_for(written.meta.version)
            tokens = written.status.join_tokens
            log.info("rotated the %s join token", role.value)
            return tokens.worker if role is NodeRole.WORKER else tokens.manager
        raise Conflict("clusters", CLUSTER_ID, 0)

    # --- this manager's own certificate ------------------------------------------------------------------
    def refresh_own_certificate(self) -> x509.Certificate:
        """Issue this manager a new server certificate (a new key) and serve with it from now on."""
        key = new_node_key()
        cert = self.ca.issue(
            self.manager_id, ROLE_MANAGER, key.public_key(), self.node_cert_expiry(), self.names, server=True
        )
        pem = cert.public_bytes(serialization.Encoding.PEM) + private_key_pem(key)
        write_private(self.cert_file, pem)
        self.ca_file.write_bytes(self.ca.cert_pem)
        self.certificate = cert
        if self.server_context is None:
            self.server_context = server_context(self.ca.cert_pem, self.cert_file)
        else:
            # New handshakes present the new certificate; established connections are not touched.
            self.server_context.load_cert_chain(self.cert_file)
        if self._client_context is not None:
            self._client_context.load_cert_chain(self.cert_file)
        return cert

    def client_context(self) -> ssl.SSLContext:
        """TLS for this manager's calls to other managers: its own certificate, the cluster CA, and the
        other side must be a manager (``swarm-manager`` as server name)."""
        if self._client_context is None:
            ctx = ssl.create_default_context(cadata=self.ca.cert_pem.decode())
            ctx.load_cert_chain(self.cert_file)
            self._client_context = ctx
        return self._client_context

    def start(self) -> None:
        """Renew this manager's certificate before it expires, for as long as it runs."""
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew(), name="manager-cert")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None

    async def _renew(self) -> None:
        while True:
            assert self.certificate is not None
            wait = (renewal_time(self.certificate) - dt.datetime.now(dt.UTC)).total_seconds()
            await asyncio.sleep(min(max(wait, 1.0), 3600.0))
            if dt.datetime.now(dt.UTC) >= renewal_time(self.certificate):
                try:
                    self.refresh_own_certificate()
                    log.info("renewed this manager's certificate")
                except (OSError, CertificateError, CodecError) as e:
                    log.error("renewing this manager's certificate failed: %s", e)
