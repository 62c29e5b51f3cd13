"""The cluster CA: node certificates carry id and role, and foreign or expired ones are refused."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509

from manager.ca import (
    MIN_EXPIRY,
    ROLE_ADMIN,
    ROLE_MANAGER,
    ROLE_WORKER,
    CertificateError,
    RootCA,
    identity_of,
    needs_renewal,
    new_node_key,
    write_private,
)


def test_issued_certificates_name_the_node_and_role() -> None:
    ca = RootCA.create("cluster-a")
    cert = ca.issue("node1", ROLE_WORKER, new_node_key().public_key())
    who = ca.verify(cert)
    assert (who.node_id, who.role, who.cluster_id) == ("node1", ROLE_WORKER, "cluster-a")
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=89) < lifetime < dt.timedelta(days=91)


def test_another_clusters_certificate_is_refused() -> None:
    ours, theirs = RootCA.create("a"), RootCA.create("b")
    foreign = theirs.issue("intruder", ROLE_MANAGER, new_node_key().public_key())
    with pytest.raises(CertificateError, match="not issued by this cluster's CA"):
        ours.verify(foreign)


def test_expired_certificates_are_refused_and_short_ones_renewed_early() -> None:
    ca = RootCA.create("a")
    cert = ca.issue("n", ROLE_WORKER, new_node_key().public_key(), expiry=dt.timedelta(minutes=1))
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= MIN_EXPIRY  # raised to the minimum
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    with pytest.raises(CertificateError, match="expired"):
        ca.verify(cert, now=later)
    assert not needs_renewal(cert)
    assert needs_renewal(cert, now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=40))


def test_a_ca_without_its_key_verifies_but_cannot_sign(tmp_path: Path) -> None:
    ca = RootCA.create("a")
    copy = RootCA.from_pem(ca.cert_pem, None, "a")
    cert = ca.issue("n", ROLE_WORKER, new_node_key().public_key())
    assert copy.verify(cert).node_id == "n"
    with pytest.raises(CertificateError, match="holding the CA key"):
        copy.issue("m", ROLE_WORKER, new_node_key().public_key())
    key_file = tmp_path / "ca" / "key.pem"
    write_private(key_file, ca.key_pem)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert RootCA.from_pem(ca.cert_pem, key_file.read_bytes(), "a").issue(
        "m", ROLE_WORKER, new_node_key().public_key()
    )


def test_only_managers_own_certificates_carry_the_manager_name() -> None:
    ca = RootCA.create("a")
    server = ca.issue(
        "m1", ROLE_MANAGER, new_node_key().public_key(), names=["10.0.0.5", "mgr.example"], server=True
    )
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"m1", "swarm-manager", "mgr.example"} <= set(san.get_values_for_type(x509.DNSName))
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert identity_of(server).server and identity_of(server).kind == "manager process"
    node = ca.issue("n1", ROLE_MANAGER, new_node_key().public_key())
    assert not identity_of(node).server and identity_of(node).kind == "manager"
    with pytest.raises(CertificateError, match="reserved"):
        ca.issue("n2", ROLE_WORKER, new_node_key().public_key(), names=["swarm-manager"])
    with pytest.raises(CertificateError, match="only managers"):
        ca.issue("n3", ROLE_ADMIN, new_node_key().public_key(), server=True)
    assert identity_of(ca.issue("admin-x", ROLE_ADMIN, new_node_key().public_key())).kind == "admin"
