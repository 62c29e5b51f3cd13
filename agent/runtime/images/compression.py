"""Streaming helpers for layers: detect compression, decompress on the fly, hash what passes through.

Layers travel compressed (their blob digest) but are identified by the digest of the plain tar (their diff
id). These readers let one pass over a blob check both: the blob reader verifies the compressed bytes,
:class:`DecompressingReader` inflates them and :class:`HashingReader` hashes the tar as it is consumed.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import zlib
from typing import Any, Protocol

from agent.runtime.errors import ArchiveError

CHUNK = 1 << 20


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def sniff(head: bytes) -> str:
    """``gzip``, ``bzip2``, ``xz``, ``zstd`` or ``""`` from the first bytes of a stream."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return ""


class PeekReader:
    """A reader that can look at its first bytes without consuming them (for :func:`sniff`)."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._buffer = b""

    def peek(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self._source.read(n - len(self._buffer))
            if not chunk:
                break
            self._buffer += chunk
        return self._buffer[:n]

    def read(self, n: int = -1) -> bytes:
        if self._buffer:
            if n < 0:
                data, self._buffer = self._buffer + self._source.read(), b""
                return data
            data, self._buffer = self._buffer[:n], self._buffer[n:]
            if len(data) < n:
                data += self._source.read(n - len(data))
            return data
        return self._source.read(n)


def _decompressor(kind: str) -> Any:
    if kind == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    if kind == "xz":
        return lzma.LZMADecompressor()
    raise ArchiveError(f"{kind} compression is not supported")


class DecompressingReader:
    """Inflate a gzip/bzip2/xz stream on the fly (concatenated gzip members included)."""

    def __init__(self, source: Readable, kind: str) -> None:
        self._source = source
        self._kind = kind
        self._decomp = _decompressor(kind)
        self._pending = b""
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        want = CHUNK if n is None or n < 0 else n
        out = bytearray()
        while len(out) < want or (n is not None and n < 0):
            if self._pending:
                take = self._pending if n < 0 else self._pending[: want - len(out)]
                self._pending = self._pending[len(take) :]
                out += take
                continue
            if self._eof:
                break
            self._fill()
        return bytes(out)

    def _fill(self) -> None:
        chunk = self._source.read(CHUNK)
        try:
            if not chunk:
                if not getattr(self._decomp, "eof", True):
                    raise ArchiveError(f"truncated {self._kind} stream")
                self._eof = True
                return
            data = self._decomp.decompress(chunk)
            # A new gzip member may start right after the previous one ended.
            while getattr(self._decomp, "eof", False) and self._decomp.unused_data:
                rest = self._decomp.unused_data
                self._decomp = _decompressor(self._kind)
                data += self._decomp.decompress(rest)
        except (zlib.error, OSError, lzma.LZMAError, EOFError) as exc:
            raise ArchiveError(f"corrupt {self._kind} stream ({exc})") from None
        self._pending += data


class HashingReader:
    """Pass-through reader that hashes (and counts) what is read."""

    def __init__(self, source: Readable, algorithm: str = "sha256") -> None:
        self._source = source
        self._algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self._hash.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return f"{self._algorithm}:{self._hash.hexdigest()}"


def open_layer(source: Readable) -> tuple[HashingReader, str]:
    """The plain tar inside ``source`` (compressed or not) behind a hasher, and the compression found."""
    peek = PeekReader(source)
    kind = sniff(peek.peek(6))
    stream: Readable = DecompressingReader(peek, kind) if kind else peek
    return HashingReader(stream), kind
