"""Content-addressed blob storage in the OCI image layout (``blobs/<algorithm>/<hex>``).

Every write is verified before the blob becomes visible: bytes go to a private file under ``ingest/``, are
hashed on the way, and are renamed into place only when digest (and size, when known) match. Every read is
verified too: :meth:`BlobStore.read` hashes the whole blob before returning it and :meth:`BlobStore.open`
returns a reader that checks the digest when it reaches the end, so a blob damaged on disk is reported as
:class:`~agent.runtime.errors.BlobCorrupted` instead of being used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from agent.runtime.errors import BlobCorrupted, BlobNotFound
from agent.runtime.images.compression import Readable
from agent.runtime.images.reference import validate_digest

CHUNK = 1 << 20


def _hasher(digest: str) -> hashlib._Hash:
    return hashlib.new(digest.partition(":")[0])


class VerifyingReader:
    """A read-only file over a blob that raises :class:`BlobCorrupted` at end of file on a mismatch.

    Consumers that may stop early (a tar reader ignores the trailing zero blocks) call :meth:`drain` so
    the whole blob is hashed.
    """

    def __init__(self, file: BinaryIO, digest: str, size: int) -> None:
        self._file = file
        self.digest = digest
        self.size = size
        self._hash = _hasher(digest)
        self._read = 0
        self._checked = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(n)
        self._hash.update(data)
        self._read += len(data)
        if not data or n < 0:
            self._check()
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read (and hash) what is left, raising if the blob does not match its digest."""
        while self.read(CHUNK):
            pass
        self._check()

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        actual = f"{self.digest.partition(':')[0]}:{self._hash.hexdigest()}"
        if actual != self.digest:
            raise BlobCorrupted(self.digest, actual, "stored blob", self._read)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> VerifyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlobWriter:
    """Incremental write of one blob; :meth:`commit` verifies and publishes it, anything else discards it."""

    def __init__(self, store: BlobStore, expected: str | None, expected_size: int | None) -> None:
        self._store = store
        self.expected = validate_digest(expected) if expected else None
        self.expected_size = expected_size
        self._hash = _hasher(self.expected or "sha256:")
        self._tmp = store.ingest_dir / f"{secrets.token_hex(8)}.part"
        self._file: BinaryIO | None = open(self._tmp, "wb")  # noqa: SIM115 - closed by commit/abort
        self.written = 0
        self.digest: str | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._file is None:
            raise ValueError("blob writer is closed")
        self._hash.update(data)
        self.written += len(data)
        if self.expected_size is not None and self.written > self.expected_size:
            self.abort()
            raise BlobCorrupted(self.expected or "?", f"more than {self.expected_size} bytes", "write")
        return self._file.write(data)

    def commit(self) -> str:
        """Check the digest and size, then move the blob into place; returns its digest."""
        if self._file is None:
            raise ValueError("blob writer is closed")
        self._file.close()
        self._file = None
        algorithm = (self.expected or "sha256:").partition(":")[0]
        actual = f"{algorithm}:{self._hash.hexdigest()}"
        try:
            if self.expected is not None and actual != self.expected:
                raise BlobCorrupted(self.expected, actual, "write", self.written)
            if self.expected_size is not None and self.written != self.expected_size:
                raise BlobCorrupted(
                    self.expected or actual, f"{self.written} bytes instead of {self.expected_size}", "write"
                )
            target = self._store.path(actual)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()
        self.digest = actual
        return actual

    def abort(self) -> None:
        """Drop what was written."""
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None or self.digest is None:
            self.abort()


class BlobStore:
    """Blobs under ``root/blobs``; temporary files under ``root/ingest`` (same file system, atomic rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.ingest_dir = self.root / "ingest"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.ingest_dir.mkdir(parents=True, exist_ok=True)

    def remove_stale_ingests(self, max_age: float = 86400.0) -> int:
        """Delete partial writes a crashed process left behind (older than ``max_age`` seconds)."""
        removed = 0
        now = time.time()
        for partial in self.ingest_dir.iterdir():
            with contextlib.suppress(OSError):
                if now - partial.stat().st_mtime > max_age:
                    partial.unlink()
                    removed += 1
        return removed

    def path(self, digest: str) -> Path:
        algorithm, _, encoded = validate_digest(digest).partition(":")
        return self.blobs_dir / algorithm / encoded

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(digest) from None

    def writer(self, expected: str | None = None, expected_size: int | None = None) -> BlobWriter:
        """Start writing a blob; use as a context manager and call ``commit()`` at the end."""
        return BlobWriter(self, expected, expected_size)

    def write(self, data: bytes, expected: str | None = None) -> str:
        """Store ``data`` (verified against ``expected`` when given) and return its digest."""
        with self.writer(expected, len(data) if expected else None) as w:
            w.write(data)
            return w.commit()

    def write_from(
        self, source: Readable, expected: str | None = None, expected_size: int | None = None
    ) -> str:
        """Copy a file object into the store (verified) and return the digest."""
        with self.writer(expected, expected_size) as w:
            while chunk := source.read(CHUNK):
                w.write(chunk)
            return w.commit()

    def open(self, digest: str) -> VerifyingReader:
        """A reader that verifies the blob as it is read (see :class:`VerifyingReader`)."""
        path = self.path(digest)
        try:
            file = open(path, "rb")  # noqa: SIM115 - owned by the reader
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        return VerifyingReader(file, digest, os.fstat(file.fileno()).st_size)

    def read(self, digest: str) -> bytes:
        """The whole blob, after checking it against its digest."""
        with self.open(digest) as reader:
            data = reader.read()
        return data

    def verify(self, digest: str) -> None:
        """Hash the blob; raises :class:`BlobCorrupted` or :class:`BlobNotFound`."""
        with self.open(digest) as reader:
            reader.drain()

    def delete(self, digest: str) -> bool:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> Iterator[str]:
        for algorithm_dir in sorted(self.blobs_dir.iterdir()):
            if algorithm_dir.is_dir():
                for blob in sorted(algorithm_dir.iterdir()):
                    yield f"{algorithm_dir.name}:{blob.name}"

    def link_from(self, other: BlobStore, digest: str) -> None:
        """Copy a blob from another store, by hard link when both are on one file system (verified)."""
        if self.exists(digest):
            return
        source = other.path(digest)
        if not source.is_file():
            raise BlobNotFound(digest)
        other.verify(digest)
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp = self.ingest_dir / f"{secrets.token_hex(8)}.link"
            os.link(source, tmp)
            os.replace(tmp, target)
        except OSError:
            with other.open(digest) as reader:
                self.write_from(reader, digest)
