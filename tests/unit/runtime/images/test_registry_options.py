"""Registry settings: WWW-Authenticate parsing, insecure registries by name or address range, platforms."""

from __future__ import annotations

import pytest

from agent.runtime.images.auth import Credentials, RegistryOptions, parse_challenges
from agent.runtime.images.oci import Descriptor, Index, Platform
from agent.runtime.images.registry import Progress


def test_bearer_challenge() -> None:
    [challenge] = parse_challenges(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    )
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }


def test_several_challenges_and_escapes() -> None:
    challenges = parse_challenges(
        'Basic realm="say \\"hi\\"", Bearer realm=https://t/x,error=insufficient_scope'
    )
    assert [(c.scheme, dict(c.params)) for c in challenges] == [
        ("basic", {"realm": 'say "hi"'}),
        ("bearer", {"realm": "https://t/x", "error": "insufficient_scope"}),
    ]


@pytest.mark.parametrize(
    ("entries", "host", "expected"),
    [
        ({"127.0.0.1:5000"}, "127.0.0.1:5000", True),
        ({"127.0.0.1:5000"}, "127.0.0.1:5001", False),
        ({"127.0.0.0/8"}, "127.0.0.1:5000", True),
        ({"10.0.0.0/8"}, "127.0.0.1:5000", False),
        ({"registry.local"}, "registry.local:443", True),
        ({"::1/128"}, "[::1]:5000", True),
        (set(), "localhost:5000", False),
    ],
)
def test_insecure_matching(entries: set[str], host: str, expected: bool) -> None:
    assert RegistryOptions(insecure=frozenset(entries)).is_insecure(host) is expected


def test_basic_header() -> None:
    assert Credentials("user", "pa:ss").basic() == "Basic dXNlcjpwYTpzcw=="


def test_index_platform_selection() -> None:
    def entry(arch: str, variant: str = "") -> Descriptor:
        return Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + arch[0] * 64, 1,
                          Platform("linux", arch, variant))  # fmt: skip

    index = Index("application/vnd.oci.image.index.v1+json", (entry("arm", "v7"), entry("amd64"),
                                                              entry("arm64", "v8")), b"{}")  # fmt: skip
    assert index.select(Platform("linux", "amd64")) == entry("amd64")
    assert index.select(Platform("linux", "arm64", "v8")) == entry("arm64", "v8")
    assert index.select(Platform("linux", "arm", "v6")) is None
    assert index.select(Platform.parse("windows/amd64")) is None


def test_progress_in_docker_shape() -> None:
    assert Progress("abc", "Downloading", 5, 10).docker() == {
        "status": "Downloading",
        "id": "abc",
        "progressDetail": {"current": 5, "total": 10},
    }
