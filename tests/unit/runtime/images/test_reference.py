"""Image references are normalised the way Docker normalises them."""

from __future__ import annotations

import pytest

from agent.runtime.errors import InvalidReference
from agent.runtime.images.reference import parse_reference, parse_repository

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "full", "familiar", "registry", "repository"),
    [
        (
            "busybox",
            "docker.io/library/busybox:latest",
            "busybox:latest",
            "registry-1.docker.io",
            "library/busybox",
        ),
        (
            "library/busybox:1.36",
            "docker.io/library/busybox:1.36",
            "busybox:1.36",
            "registry-1.docker.io",
            "library/busybox",
        ),
        (
            "index.docker.io/user/app",
            "docker.io/user/app:latest",
            "user/app:latest",
            "registry-1.docker.io",
            "user/app",
        ),
        ("127.0.0.1:5000/app:v1", "127.0.0.1:5000/app:v1", "127.0.0.1:5000/app:v1", "127.0.0.1:5000", "app"),
        ("localhost/a/b", "localhost/a/b:latest", "localhost/a/b:latest", "localhost", "a/b"),
        (
            "registry.example/team/app__x.y-z",
            "registry.example/team/app__x.y-z:latest",
            "registry.example/team/app__x.y-z:latest",
            "registry.example",
            "team/app__x.y-z",
        ),
        (
            f"busybox@{DIGEST}",
            f"docker.io/library/busybox@{DIGEST}",
            f"busybox@{DIGEST}",
            "registry-1.docker.io",
            "library/busybox",
        ),
    ],
)
def test_normalisation(text: str, full: str, familiar: str, registry: str, repository: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == full
    assert ref.familiar == familiar
    assert ref.registry == registry
    assert ref.repository == repository


def test_tag_and_digest_both_kept_digest_decides() -> None:
    ref = parse_reference(f"host:5000/app:v1@{DIGEST}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("host:5000", "app", "v1", DIGEST)
    assert str(ref.by_digest()) == f"host:5000/app@{DIGEST}"
    assert str(ref.tagged()) == "host:5000/app:v1"


@pytest.mark.parametrize(
    "text",
    [
        "",
        " busybox",
        "Busybox",
        "busybox:",
        "a:b:c",
        "a/-b",
        "a//b",
        "busybox@sha256:abc",
        "busybox@md5:" + "a" * 32,
        "a" * 256,
        "busybox:" + "t" * 129,
        "host:port/app",
    ],
)
def test_invalid_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse_reference(text)


def test_repository_without_tag() -> None:
    assert str(parse_repository("busybox")) == "docker.io/library/busybox"
    with pytest.raises(InvalidReference):
        parse_repository("busybox:1")
