"""Registry access settings and authentication (Basic, and Bearer tokens from a token service).

:class:`RegistryOptions` is what an operator configures: credentials per registry host, which registries
may be reached over plain HTTP (``insecure``, like Docker's ``insecure-registries``, entries are
``host[:port]`` or CIDRs), and CA files, either given per host or found the way Docker finds them
(``<certs_dir>/<host:port>/ca.crt``, with ``client.cert``/``client.key`` for client certificates).

:class:`Authorizer` answers the registry's ``WWW-Authenticate`` challenge: ``Basic`` sends the credentials,
``Bearer`` fetches a token from the realm for the scopes of the request (``repository:NAME:pull,push``),
authenticating to the token service with the credentials when there are some, and caches it until it
expires.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from agent.runtime.errors import RegistryError, RegistryUnauthorized

DEFAULT_CERTS_DIR = Path("/etc/shoal/certs.d")
_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or a registry token as the password) for one registry."""

    username: str = ""
    password: str = ""

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries: credentials, insecure hosts, CAs, transfer sizes."""

    credentials: Mapping[str, Credentials] = field(default_factory=dict)
    insecure: frozenset[str] = frozenset()
    ca_files: Mapping[str, str] = field(default_factory=dict)
    certs_dir: Path | None = DEFAULT_CERTS_DIR
    chunk_size: int = 8 << 20
    max_concurrent: int = 3
    user_agent: str = "shoal/0.1"

    def is_insecure(self, host: str) -> bool:
        """True when ``host`` (``name[:port]``) is listed, by name or by an address range."""
        if host in self.insecure:
            return True
        name = host
        if host.startswith("[") and "]" in host:
            name = host[1 : host.index("]")]
        elif host.count(":") == 1:
            name = host.partition(":")[0]
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return name in self.insecure
        for entry in self.insecure:
            if "/" in entry:
                try:
                    if address in ipaddress.ip_network(entry, strict=False):
                        return True
                except ValueError:
                    continue
        return False

    def ssl_context(self, host: str) -> ssl.SSLContext:
        """The TLS settings for ``host``: the system CAs plus the host's own CA and client certificate."""
        context = ssl.create_default_context()
        ca_file = self.ca_files.get(host)
        host_dir = self.certs_dir / host if self.certs_dir is not None else None
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
        if host_dir is not None and host_dir.is_dir():
            for ca in sorted(host_dir.glob("*.crt")):
                context.load_verify_locations(cafile=str(ca))
            cert, key = host_dir / "client.cert", host_dir / "client.key"
            if cert.is_file() and key.is_file():
                context.load_cert_chain(str(cert), str(key))
        return context

    def credentials_for(self, host: str) -> Credentials | None:
        return self.credentials.get(host)


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: a scheme (lowercase) and its parameters."""

    scheme: str
    params: Mapping[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """``Bearer realm="…",service="…",scope="…"`` (possibly several challenges) → challenges."""
    out: list[Challenge] = []
    rest = header.strip()
    while rest:
        match = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", rest)
        if not match:
            break
        scheme = match.group(1).lower()
        rest = rest[match.end() :]
        params: dict[str, str] = {}
        while True:
            param = _PARAM.match(rest)
            if not param:
                break
            value = param.group(2) if param.group(2) is not None else param.group(3)
            params[param.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            rest = rest[param.end() :]
        out.append(Challenge(scheme, params))
        rest = rest.lstrip(", ")
    return out


class Authorizer:
    """The ``Authorization`` header for one registry, from its last challenge."""

    def __init__(
        self,
        registry: str,
        session: aiohttp.ClientSession,
        credentials: Credentials | None,
        ssl_setting: ssl.SSLContext | bool,
    ) -> None:
        self.registry = registry
        self.session = session
        self.credentials = credentials
        self.ssl = ssl_setting
        self.challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}

    def update(self, header: str | None) -> None:
        """Remember the challenge of a 401 response (Bearer preferred over Basic)."""
        challenges = parse_challenges(header or "")
        for scheme in ("bearer", "basic"):
            for challenge in challenges:
                if challenge.scheme == scheme:
                    self.challenge = challenge
                    return

    async def header(self, scopes: Sequence[str], *, refresh: bool = False) -> str | None:
        """The header value to send, or None when the registry asked for nothing."""
        challenge = self.challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            if self.credentials is None:
                raise RegistryUnauthorized(
                    self.registry,
                    "authentication required and no credentials configured",
                    401,
                    "UNAUTHORIZED",
                )
            return self.credentials.basic()
        if challenge.scheme != "bearer":
            raise RegistryError(self.registry, f"unsupported authentication scheme {challenge.scheme!r}")
        key = " ".join(sorted(scopes))
        cached = self._tokens.get(key)
        if cached is not None and not refresh and cached[1] > time.monotonic():
            return f"Bearer {cached[0]}"
        token, expires_in = await self._fetch_token(challenge, scopes)
        # Renew a little early so a token never expires between check and use.
        self._tokens[key] = (token, time.monotonic() + max(expires_in - 10, 5))
        return f"Bearer {token}"

    async def _fetch_token(self, challenge: Challenge, scopes: Sequence[str]) -> tuple[str, int]:
        realm = challenge.params.get("realm")
        if not realm:
            raise RegistryError(self.registry, "bearer challenge without a realm")
        query: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            query.append(("service", challenge.params["service"]))
        query.extend(("scope", scope) for scope in scopes)
        headers = {"Authorization": self.credentials.basic()} if self.credentials is not None else {}
        try:
            async with self.session.get(realm, params=query, headers=headers, ssl=self.ssl) as resp:
                if resp.status == 401:
                    raise RegistryUnauthorized(
                        self.registry, "the token service refused the credentials", 401, "UNAUTHORIZED"
                    )
                if resp.status != 200:
                    raise RegistryError(self.registry, f"token service answered {resp.status}", resp.status)
                body: Any = await resp.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise RegistryError(self.registry, f"token service {realm} unreachable: {exc}") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise RegistryError(self.registry, "the token service returned no token")
        return str(token), int(body.get("expires_in") or 60)
