"""Image references: parsing and Docker-style normalisation.

A reference names an image in a repository: ``[domain/]path[:tag][@digest]``. Shoal normalises it the way
Docker does, so that names look the same in ``images`` output, archives and registries:

* no domain → ``docker.io``; a single-component name on ``docker.io`` gets ``library/``
  (``busybox`` → ``docker.io/library/busybox``);
* the first component is a domain when it contains ``.`` or ``:`` or is ``localhost``
  (``127.0.0.1:5000/app``, ``registry.local/team/app``);
* no tag and no digest → ``:latest``; with a digest the tag is kept for display but the digest decides.

``familiar`` is the short form Docker prints (``busybox:latest``, ``127.0.0.1:5000/app:v1``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import NoReturn

from agent.runtime.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
# The host that actually serves docker.io's registry API.
DOCKER_HUB_REGISTRY = "registry-1.docker.io"

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?|\[[0-9a-fA-F:.]+\](?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_HEX_DIGEST = {"sha256": 64, "sha512": 128}
_NAME_MAX = 255


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is ``algorithm:hex`` with a supported algorithm and the right length."""
    algorithm, _, encoded = digest.partition(":")
    length = _HEX_DIGEST.get(algorithm)
    if length is None:
        raise InvalidReference(digest, f"unsupported digest algorithm {algorithm!r}")
    if len(encoded) != length or any(c not in "0123456789abcdef" for c in encoded):
        raise InvalidReference(digest, f"{algorithm} digest must be {length} lowercase hex characters")
    return digest


def is_digest(value: str) -> bool:
    """True when ``value`` is a well-formed digest."""
    try:
        validate_digest(value)
    except InvalidReference:
        return False
    return True


@dataclass(frozen=True)
class Reference:
    """A normalised image reference. ``tag`` and ``digest`` may both be set; ``digest`` wins on lookup."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The fully qualified repository name, ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def repository(self) -> str:
        """The repository path inside its registry (``library/busybox``), as the distribution API wants it."""
        return self.path

    @property
    def registry(self) -> str:
        """The ``host[:port]`` to talk to for this reference."""
        return DOCKER_HUB_REGISTRY if self.domain == DEFAULT_DOMAIN else self.domain

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def familiar_name(self) -> str:
        """The repository name as Docker prints it (``busybox``, ``user/app``, ``host:5000/app``)."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        if self.path.startswith(OFFICIAL_REPO_PREFIX) and "/" not in self.path[len(OFFICIAL_REPO_PREFIX) :]:
            return self.path[len(OFFICIAL_REPO_PREFIX) :]
        return self.path

    @property
    def familiar(self) -> str:
        """The whole reference in Docker's short form (``busybox:latest``)."""
        text = self.familiar_name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def with_tag(self, tag: str) -> Reference:
        """The same repository with ``tag`` and no digest."""
        if not _TAG.fullmatch(tag):
            raise InvalidReference(tag, "invalid tag")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to ``digest`` (no tag)."""
        return replace(self, tag=None, digest=validate_digest(digest))

    def tagged(self) -> Reference:
        """This reference without its digest (``name:tag``), or ``name:latest`` when it has no tag."""
        return replace(self, tag=self.tag or DEFAULT_TAG, digest=None)

    def by_digest(self) -> Reference:
        """This reference without its tag (``name@digest``); only valid when it has a digest."""
        return replace(self, tag=None)


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise ``text``; ``busybox`` → ``docker.io/library/busybox:latest``.

    With ``default_tag=False`` a reference without tag or digest keeps ``tag=None`` (a repository name,
    as ``images busybox`` or ``push --all-tags`` use it).
    """
    if not text or text != text.strip():
        raise InvalidReference(text, "empty or surrounded by whitespace")
    remainder, at, digest = text.partition("@")
    if at:
        if not _DIGEST.fullmatch(digest):
            _bad(text, "invalid digest")
        validate_digest(digest)
    # A colon after the last slash starts the tag; one before it belongs to the domain's port.
    tag: str | None = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        if not _TAG.fullmatch(tag):
            _bad(text, "invalid tag")
    if not remainder:
        _bad(text, "empty repository name")
    if remainder.lower() != remainder and "/" not in remainder:
        _bad(text, "repository name must be lowercase")
    domain, path = _split_domain(remainder)
    if not _DOMAIN.fullmatch(domain):
        _bad(text, f"invalid domain {domain!r}")
    for component in path.split("/"):
        if not _PATH_COMPONENT.fullmatch(component):
            reason = (
                "repository name must be lowercase"
                if component.lower() != component
                else (f"invalid repository name component {component!r}")
            )
            _bad(text, reason)
    if len(f"{domain}/{path}") > _NAME_MAX:
        _bad(text, f"repository name longer than {_NAME_MAX} characters")
    if tag is None and not at and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest if at else None)


def _bad(text: str, reason: str) -> NoReturn:
    raise InvalidReference(text, reason)


def parse_repository(text: str) -> Reference:
    """Parse a repository name without tag or digest (``busybox`` → ``docker.io/library/busybox``)."""
    ref = parse_reference(text, default_tag=False)
    if ref.tag is not None or ref.digest is not None:
        raise InvalidReference(text, "a repository name cannot have a tag or digest")
    return ref


def familiar(full: str) -> str:
    """The short form of a fully qualified reference string (used for display)."""
    return parse_reference(full, default_tag=False).familiar
