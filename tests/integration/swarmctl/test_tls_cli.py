"""swarmctl over TCP: mutual TLS with a client certificate got from the manager's unix socket; token
rotation from the command line."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.integration.swarmctl.conftest import Cluster, one_error_line


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A manager of this module's own (its tokens get rotated) with one simulated node."""
    c = Cluster(tmp_path_factory.mktemp("swarmctl-tls"), agents=1)
    try:
        c.start()
        yield c
    finally:
        c.stop()


def tcp(cluster: Cluster) -> str:
    return f"tcp://127.0.0.1:{cluster.port}"


def test_root_on_the_manager_host_gets_a_client_certificate_and_uses_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    certs = tmp_path / "shoal"
    out = cluster.ok("--config", str(certs), "cluster", "client-cert").out
    assert "cert.pem" in out
    assert stat.S_IMODE((certs / "key.pem").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((certs / "cert.pem").read_bytes())
    assert (
        cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "swarm-admin"
    )
    # Not overwritten by accident.
    one_error_line(cluster.run("--config", str(certs), "cluster", "client-cert"), "exist already")

    # Over TCP with the certificate (from --config), verifying the manager against the cluster CA.
    r = cluster.run("--config", str(certs), "--tlsverify", "-H", tcp(cluster), "node", "ls", "-q")
    assert r.code == 0, r.err
    assert len(r.lines()) == 1
    # The same with the files named one by one.
    r = cluster.run(
        "-H",
        f"https://127.0.0.1:{cluster.port}",
        "--tlscacert",
        str(certs / "ca.pem"),
        "--tlscert",
        str(certs / "cert.pem"),
        "--tlskey",
        str(certs / "key.pem"),
        "service",
        "ls",
    )
    assert r.code == 0, r.err


def test_without_a_client_certificate_tcp_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    certs = tmp_path / "shoal"
    cluster.ok("--config", str(certs), "cluster", "client-cert")
    (certs / "cert.pem").unlink()
    (certs / "key.pem").unlink()
    r = cluster.run("--config", str(certs), "--tlsverify", "-H", tcp(cluster), "node", "ls")
    one_error_line(r, "needs a client certificate")
    # Plain HTTP on the TLS port gets nowhere either.
    r = cluster.run("-H", f"http://127.0.0.1:{cluster.port}", "node", "ls")
    assert r.code != 0


def test_join_tokens_rotate_from_the_command_line(cluster: Cluster) -> None:
    before = cluster.ok("cluster", "join-token", "-q", "worker").out.strip()
    manager_before = cluster.ok("cluster", "join-token", "-q", "manager").out.strip()
    out = cluster.ok("cluster", "join-token", "--rotate", "worker").out
    assert "Successfully rotated worker join token." in out
    after = cluster.ok("cluster", "join-token", "-q", "worker").out.strip()
    assert after != before and after in out
    assert after.split("-")[2] == before.split("-")[2], "the CA digest stays"
    assert cluster.ok("cluster", "join-token", "-q", "manager").out.strip() == manager_before
    # The node that joined before the rotation is still there and ready.
    assert len(cluster.ready_nodes()) == 1
