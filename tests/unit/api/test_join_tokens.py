"""Join tokens: Docker's shape, the CA digest they pin, and readable refusals of anything else."""

from __future__ import annotations

import pytest

from api.join import DIGEST_CHARS, SECRET_CHARS, InvalidJoinToken, JoinToken, ca_digest


def test_a_new_token_pins_the_digest_and_parses_back() -> None:
    digest = ca_digest(b"certificate bytes")
    assert len(digest) == DIGEST_CHARS
    token = JoinToken.new(digest)
    text = str(token)
    assert text.startswith(f"SWMTKN-1-{digest}-") and len(token.secret) == SECRET_CHARS
    assert JoinToken.parse(text) == token
    assert JoinToken.new(digest).secret != token.secret


def test_digests_differ_per_certificate_and_keep_leading_zeros() -> None:
    assert ca_digest(b"a") != ca_digest(b"b")
    assert all(len(ca_digest(bytes([i]))) == DIGEST_CHARS for i in range(64))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "does not start with SWMTKN-1-"),
        ("SWMTKN-2-" + "a" * 50 + "-" + "b" * 25, "does not start with"),
        ("SWMTKN-1-" + "a" * 49 + "-" + "b" * 25, "expected SWMTKN-1-<50 characters>-<25 characters>"),
        ("SWMTKN-1-" + "a" * 50 + "b" * 25, "expected"),
        ("SWMTKN-1-" + "A" * 50 + "-" + "b" * 25, "only digits and lower-case letters"),
    ],
)
def test_malformed_tokens_say_what_is_wrong(text: str, reason: str) -> None:
    with pytest.raises(InvalidJoinToken, match=reason):
        JoinToken.parse(text)
