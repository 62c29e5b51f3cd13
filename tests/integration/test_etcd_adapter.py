"""What the etcd adapter does beyond the shared contract: several endpoints with failover, failing fast
when none answers, a quiet watch while etcd is down, TLS with client certificates and user authentication.

Every etcd here is a real process on loopback ports, stopped by PID even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvstore_adapters import Compare, KVError, KVStore, Put, StoreUnavailable, open_store
from kvstore_adapters.etcd_channel import EtcdError
from tests.contract.helpers import assert_quiet, collect
from tests.servers import LOOPBACK, EtcdServer, free_port, unique_prefix

ETCDCTL = os.environ.get("SHOAL_TEST_ETCDCTL", "/usr/bin/etcdctl")


# --- a three-member cluster -------------------------------------------------------------------------------


class EtcdMember(EtcdServer):
    """One member of a static cluster (the initial cluster names every member)."""

    def __init__(self, base_dir: Path, name: str) -> None:
        super().__init__(base_dir)
        self.name = name
        self.initial_cluster = ""

    def _command(self) -> list[str]:
        cmd = super()._command()
        cmd[cmd.index("--initial-cluster") + 1] = self.initial_cluster
        cmd[cmd.index("--initial-cluster-token") + 1] = "shoal-test-cluster"
        return cmd


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[list[EtcdMember]]:
    members = [EtcdMember(tmp_path / f"m{i}", f"m{i}") for i in range(3)]
    initial = ",".join(f"{m.name}=http://{LOOPBACK}:{m.peer_port}" for m in members)
    for m in members:
        m.initial_cluster = initial
    try:
        # A member is healthy only once a quorum is up, so start them all before waiting for any.
        procs = []
        for m in members:
            m.data_dir.mkdir(parents=True, exist_ok=True)
            with open(m.log_path, "ab") as log:
                m.proc = subprocess.Popen(
                    m._command(), stdout=log, stderr=subprocess.STDOUT, cwd=m.dir, start_new_session=True
                )
            procs.append(m.proc)
        for m in members:
            m._wait_ready()
        yield members
    finally:
        for m in members:
            m.cleanup()


async def test_failover_keeps_writes_and_the_watch_going(etcd_cluster: list[EtcdMember]) -> None:
    endpoints = ",".join(m.endpoint for m in etcd_cluster)
    prefix = unique_prefix("failover")
    store = await open_store(f"etcd://{endpoints}/{prefix}")
    watcher = await open_store(f"etcd://{endpoints}/{prefix}")
    try:
        watch = watcher.watch("f/", start_revision=await store.revision() + 1)

        async def create(i: int) -> None:
            # Create-only: a write retried after an ambiguous failure cannot produce a second event.
            for _ in range(100):
                try:
                    await store.txn([Compare.absent(f"f/{i:03d}")], [Put(f"f/{i:03d}", b"x")])
                    return
                except StoreUnavailable:
                    await asyncio.sleep(0.1)
            raise AssertionError(f"f/{i:03d} never written")

        for i in range(20):
            await create(i)
        got = await collect(watch, 20)
        used = watcher.info().extra["active"]
        member = next(m for m in etcd_cluster if m.endpoint == used)
        await asyncio.to_thread(member.kill)

        for i in range(20, 40):
            await create(i)
        got += await collect(watch, 20, timeout=30)
        assert [e.key for e in got] == [f"f/{i:03d}" for i in range(40)]
        await assert_quiet(watch)
        assert watcher.info().extra["active"] != used
        # Reads go to a live member too.
        assert (await watcher.get("f/039")) is not None
    finally:
        await store.close()
        await watcher.close()


# --- reachability -----------------------------------------------------------------------------------------


async def test_connect_fails_fast_naming_every_endpoint() -> None:
    refused = free_port()
    with socket.socket() as silent:
        # Accepts connections (the kernel's backlog) but never speaks: a hung host.
        silent.bind((LOOPBACK, 0))
        silent.listen(8)
        hung = silent.getsockname()[1]
        url = f"etcd://{LOOPBACK}:{refused},{LOOPBACK}:{hung}/p?connect_timeout=1"
        start = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            await open_store(url)
        elapsed = time.monotonic() - start
    assert elapsed < 2.5
    message = str(info.value)
    assert f"{LOOPBACK}:{refused}" in message and f"{LOOPBACK}:{hung}" in message
    assert "no answer within 1s" in message


async def test_watch_waits_quietly_while_etcd_is_down_and_resumes(tmp_path: Path) -> None:
    with EtcdServer(tmp_path / "etcd") as server:
        writer = await open_store(server.url)
        watcher = await open_store(server.url)
        try:
            watch = watcher.watch("d/", start_revision=await writer.revision() + 1)
            for i in range(3):
                await writer.put(f"d/{i}", b"before")
            got = await collect(watch, 3)

            await asyncio.to_thread(server.kill)
            pending = asyncio.ensure_future(anext(watch))
            cpu = time.process_time()
            await asyncio.sleep(2.0)
            # Retrying with backoff, not spinning: a small fraction of one core.
            assert time.process_time() - cpu < 0.4
            assert not pending.done()

            await asyncio.to_thread(server.restart)
            for i in range(3, 6):
                for _ in range(100):
                    try:
                        await writer.txn([Compare.absent(f"d/{i}")], [Put(f"d/{i}", b"after")])
                        break
                    except StoreUnavailable:
                        await asyncio.sleep(0.1)
            got.append(await asyncio.wait_for(pending, 30))
            got += await collect(watch, 2, timeout=30)
            assert [(e.key, e.value) for e in got] == [
                (f"d/{i}", b"before" if i < 3 else b"after") for i in range(6)
            ]
            await assert_quiet(watch)
            await watch.close()
        finally:
            await writer.close()
            await watcher.close()


# --- TLS and authentication ---------------------------------------------------------------------------------


def _write_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 / etcd.test and a client certificate."""
    now = datetime.datetime.now(datetime.UTC)
    files: dict[str, Path] = {}

    def save(name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        files[name] = directory / f"{name}.pem"
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}-key"] = directory / f"{name}-key.pem"
        files[f"{name}-key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal-test-ca")])
    ca = (
        builder("shoal-test-ca", ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    save("ca", ca_key, ca)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        builder("etcd.test", ca_name, server_key)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("etcd.test")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    save("server", server_key, server)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (
        builder("shoal-client", ca_name, client_key)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    save("client", client_key, client)
    return files


class TLSEtcdServer(EtcdServer):
    """etcd serving clients over TLS only, requiring a client certificate; auth tokens live 1 s."""

    def __init__(self, base_dir: Path, pki: dict[str, Path]) -> None:
        super().__init__(base_dir)
        self.pki = pki

    def _command(self) -> list[str]:
        plain = f"http://{LOOPBACK}:{self.port}"
        cmd = [f"https://{LOOPBACK}:{self.port}" if arg == plain else arg for arg in super()._command()]
        return [
            *cmd,
            "--cert-file", str(self.pki["server"]),
            "--key-file", str(self.pki["server-key"]),
            "--trusted-ca-file", str(self.pki["ca"]),
            "--client-cert-auth",
            "--auth-token", "simple",
            "--auth-token-ttl", "1",
        ]  # fmt: skip

    def _is_ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki["ca"]))
        context.load_cert_chain(str(self.pki["client"]), str(self.pki["client-key"]))
        try:
            with urllib.request.urlopen(
                f"https://{self.endpoint}/health", timeout=1, context=context
            ) as resp:
                return b"true" in resp.read()
        except OSError:
            return False

    def etcdctl(self, *args: str, user: str | None = None) -> None:
        cmd = [
            ETCDCTL,
            f"--endpoints=https://{self.endpoint}",
            f"--cacert={self.pki['ca']}",
            f"--cert={self.pki['client']}",
            f"--key={self.pki['client-key']}",
        ]
        if user:
            cmd.append(f"--user={user}")
        subprocess.run([*cmd, *args], check=True, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"})


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[TLSEtcdServer]:
    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    server = TLSEtcdServer(tmp_path / "etcd", _write_pki(pki_dir))
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


async def test_tls_with_client_certificate_and_user_authentication(tls_etcd: TLSEtcdServer) -> None:
    pki = tls_etcd.pki
    base = f"etcd://{tls_etcd.endpoint}"
    certs = f"cacert={pki['ca']}&cert={pki['client']}&key={pki['client-key']}"
    opened: list[KVStore] = []

    async def open_(url: str) -> KVStore:
        store = await open_store(url)
        opened.append(store)
        return store

    try:
        store = await open_(f"{base}/tls?{certs}")
        assert store.info().extra["tls"] == "yes"
        rev = await store.put("k", b"secret")
        async with store.watch("k", start_revision=rev) as watch:
            assert (await collect(watch, 1))[0].value == b"secret"
        # By name, when the endpoint is an address the certificate does not cover by that name.
        named = await open_(f"{base}/tls?{certs}&servername=etcd.test")
        assert (kv := await named.get("k")) is not None and kv.value == b"secret"
        # No client certificate, or no TLS at all: the server does not talk to us.
        with pytest.raises(StoreUnavailable):
            await open_(f"{base}/tls?cacert={pki['ca']}&connect_timeout=1")
        with pytest.raises(StoreUnavailable):
            await open_(f"{base}/tls?connect_timeout=1")

        await asyncio.to_thread(tls_etcd.etcdctl, "user", "add", "root:rootpw")
        await asyncio.to_thread(tls_etcd.etcdctl, "user", "add", "shoal:pw")
        await asyncio.to_thread(tls_etcd.etcdctl, "role", "add", "shoal")
        await asyncio.to_thread(
            tls_etcd.etcdctl, "role", "grant-permission", "shoal", "--prefix=true", "readwrite", "/auth/"
        )
        await asyncio.to_thread(tls_etcd.etcdctl, "user", "grant-role", "shoal", "shoal")
        await asyncio.to_thread(tls_etcd.etcdctl, "auth", "enable")

        authed = await open_(f"{base}/auth?{certs}&user=shoal&password=pw")
        await authed.put("a", b"1")
        watch = authed.watch("a", start_revision=await authed.revision())
        assert (await collect(watch, 1))[0].key == "a"
        await watch.close()
        # Tokens live 1 s here: the adapter renews its token when etcd says it expired.
        await asyncio.sleep(2.5)
        await authed.put("a", b"2")
        assert (kv := await authed.get("a")) is not None and kv.value == b"2"

        # A member that answers "no" is not an unreachable one.
        with pytest.raises(EtcdError) as refused:
            await open_(f"{base}/auth?{certs}&user=shoal&password=wrong")
        assert not isinstance(refused.value, StoreUnavailable)
        outside = await open_(f"{base}/elsewhere?{certs}&user=shoal&password=pw")
        with pytest.raises(KVError, match="permission denied"):
            await outside.put("x", b"1")
    finally:
        for store in opened:
            with contextlib.suppress(Exception):
                await store.close()
