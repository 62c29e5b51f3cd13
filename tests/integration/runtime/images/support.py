"""A real registry (Debian's docker-registry) for image tests, with optional TLS, htpasswd or token auth.

The registry is one child process on a free loopback port with its storage in a temporary directory,
stopped by PID. TLS material and token-signing keys are generated per server with ``cryptography``;
the token service for Bearer auth is a small aiohttp app in the test's own event loop that signs JWTs the
way docker/distribution's token spec describes (ES256, ``kid`` in libtrust fingerprint form).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from agent.runtime.images.baseimages import make_busybox
from agent.runtime.images.store import ImageStore
from tests.servers import LOOPBACK, _Server, free_port

REGISTRY_BINARY = os.environ.get("SHOAL_TEST_REGISTRY", "/usr/bin/docker-registry")

requires_registry = pytest.mark.skipif(
    not os.access(REGISTRY_BINARY, os.X_OK), reason="needs docker-registry (Debian package)"
)


# --- keys and certificates ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path
    private_key: ec.EllipticCurvePrivateKey


def make_cert(directory: Path, name: str, *, ca: CertPair | None = None, is_ca: bool = False) -> CertPair:
    """An EC key and certificate for 127.0.0.1, self-signed or signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"shoal-test-{name}")])
    issuer = subject
    signing_key: ec.EllipticCurvePrivateKey = key
    if ca is not None:
        issuer = x509.load_pem_x509_certificate(ca.cert.read_bytes()).subject
        signing_key = ca.private_key
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    cert = builder.sign(signing_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return CertPair(cert_path, key_path, key)


def libtrust_kid(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key id docker/distribution expects in a token's header: base32 of a truncated SHA-256, in 4s."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def sign_jwt(claims: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> str:
    header = {"typ": "JWT", "alg": "ES256", "kid": libtrust_kid(key.public_key())}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


# --- the registry ------------------------------------------------------------------------------------------
@dataclass
class TokenAuth:
    """What the registry needs to check tokens: the realm URL, names and the signing certificate."""

    realm: str
    signer: CertPair
    service: str = "shoal-test-registry"
    issuer: str = "shoal-test-issuer"


class RegistryServer(_Server):
    """docker-registry serving from a temp dir on 127.0.0.1; optional TLS and basic or token auth."""

    kind = "registry"
    scheme = "http"

    def __init__(
        self,
        base_dir: Path | str | None = None,
        *,
        tls: bool = False,
        users: dict[str, str] | None = None,
        token: TokenAuth | None = None,
    ) -> None:
        super().__init__(base_dir)
        self.tls = tls
        self.users = users or {}
        self.token = token
        self.ca: CertPair | None = None

    @property
    def host(self) -> str:
        return self.endpoint

    @property
    def config_path(self) -> Path:
        return self.dir / "config.yml"

    def _prepare(self) -> None:
        lines = [
            "version: 0.1",
            "log:",
            "  level: error",
            "  accesslog:",
            "    disabled: true",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.data_dir}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {LOOPBACK}:{self.port}",
            f"  secret: {secrets.token_hex(16)}",
        ]
        if self.tls:
            if self.ca is None:
                self.ca = make_cert(self.dir, "ca", is_ca=True)
                self.server_cert = make_cert(self.dir, "server", ca=self.ca)
            lines += [
                "  tls:",
                f"    certificate: {self.server_cert.cert}",
                f"    key: {self.server_cert.key}",
            ]
        if self.users:
            htpasswd = self.dir / "htpasswd"
            htpasswd.write_text(
                "".join(
                    f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode()}\n"
                    for u, p in self.users.items()
                )
            )
            lines += ["auth:", "  htpasswd:", "    realm: shoal-test", f"    path: {htpasswd}"]
        elif self.token is not None:
            lines += [
                "auth:",
                "  token:",
                f"    realm: {self.token.realm}",
                f"    service: {self.token.service}",
                f"    issuer: {self.token.issuer}",
                f"    rootcertbundle: {self.token.signer.cert}",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [REGISTRY_BINARY, "serve", str(self.config_path)]

    def _is_ready(self) -> bool:
        scheme = "https" if self.tls else "http"
        context = ssl._create_unverified_context() if self.tls else None
        try:
            with urllib.request.urlopen(
                f"{scheme}://{self.endpoint}/v2/", timeout=1, context=context
            ) as resp:
                return resp.status == 200
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except OSError:
            return False

    def blob_data(self, digest: str) -> Path:
        """The file the registry serves a blob from (for corrupting it on purpose)."""
        hex_ = digest.partition(":")[2]
        return self.data_dir / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


@dataclass
class TokenService:
    """A token endpoint for Bearer auth: checks Basic credentials, grants what ``grants`` allows."""

    signer: CertPair
    users: dict[str, str]
    service: str = "shoal-test-registry"
    issuer: str = "shoal-test-issuer"
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        subject = ""
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(user) != password:
                return web.json_response({"details": "bad credentials"}, status=401)
            subject = user
        scopes = request.query.getall("scope", [])
        self.requests.append({"user": subject, "scopes": scopes, "service": request.query.get("service")})
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            # Anonymous users may only pull; authenticated ones get what they asked for.
            allowed = [a for a in actions.split(",") if subject or a == "pull"]
            access.append({"type": kind, "name": name, "actions": allowed})
        now = int(dt.datetime.now(dt.UTC).timestamp())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        return web.json_response({"token": sign_jwt(claims, self.signer.private_key), "expires_in": 300})


@contextlib.asynccontextmanager
async def token_service(directory: Path, users: dict[str, str]) -> AsyncIterator[TokenService]:
    """Run a :class:`TokenService` on a free loopback port for the duration of the block."""
    service = TokenService(make_cert(directory, "token-signer"), users)
    app = web.Application()
    app.router.add_get("/token", service.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, LOOPBACK, port)
    await site.start()
    service.url = f"http://{LOOPBACK}:{port}/token"
    try:
        yield service
    finally:
        await runner.cleanup()


# --- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def busybox_store(tmp_path_factory: pytest.TempPathFactory) -> ImageStore:
    """A store with busybox:latest built once per session; tests copy from it (hard links)."""
    store = ImageStore(tmp_path_factory.mktemp("base-images"))
    make_busybox(store)
    return store


@pytest.fixture
def image_store(tmp_path: Path, busybox_store: ImageStore) -> ImageStore:
    """A fresh store of this test's own, holding busybox:latest."""
    store = ImageStore(tmp_path / "images")
    store.copy_from(busybox_store, "busybox:latest")
    return store


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """One plain-HTTP registry for the session; tests use repository names of their own."""
    server = RegistryServer(tmp_path_factory.mktemp("registry"))
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def unique_repo(label: str) -> str:
    return f"{label}-{secrets.token_hex(3)}"


def flip_byte(path: Path, offset: int = 1000) -> None:
    """Damage a file (one byte inverted); written as a new file, so hard links to it stay intact."""
    data = bytearray(path.read_bytes())
    data[min(offset, len(data) - 1)] ^= 0xFF
    tmp = path.with_name(path.name + ".damaged")
    tmp.write_bytes(bytes(data))
    os.replace(tmp, path)


__all__ = ["busybox_store", "image_store", "registry"]
