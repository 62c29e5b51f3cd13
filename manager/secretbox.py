"""Encryption at rest for secrets in the KV store.

A secret's data is sealed with AES-256-GCM before it is written and opened after it is read, so the KV
store (and its backups, and anyone who can read it) never holds a secret in clear. The key lives in a file
on each manager, readable by root only; it is not in the store. The sealed form is
``b"shoal-aead-1" + nonce(12) + ciphertext``; the secret's id is the associated data, so a sealed value
cannot be moved onto another secret.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from manager.ca import write_private
from manager.errors import ManagerError

MAGIC = b"shoal-aead-1"
KEY_BYTES = 32


class SecretSealError(ManagerError):
    """A sealed secret that does not open with this manager's key (a different key, or tampering)."""


class SecretBox:
    """Seals and opens secret data with one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a secrets key has {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path, *, create: bool = True) -> SecretBox:
        """The key in ``path``; a new one is written there (mode 0600) if it is missing and ``create``."""
        if not path.exists():
            if not create:
                raise SecretSealError(f"secrets key file {path} does not exist")
            write_private(path, os.urandom(KEY_BYTES))
        return cls(path.read_bytes())

    def seal(self, secret_id: str, data: bytes) -> bytes:
        """``data`` encrypted for the secret ``secret_id``."""
        nonce = os.urandom(12)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, secret_id.encode())

    def open(self, secret_id: str, sealed: bytes) -> bytes:
        """The data of a sealed secret; raises SecretSealError if it does not open."""
        if not sealed.startswith(MAGIC):
            raise SecretSealError(f"secret {secret_id} is not sealed (refusing to read it in clear)")
        body = sealed[len(MAGIC) :]
        try:
            return self._aead.decrypt(body[:12], body[12:], secret_id.encode())
        except InvalidTag:
            raise SecretSealError(f"secret {secret_id} does not open with this manager's key") from None
