"""Small helpers for image tests: layer tarballs from a list of entries, and images from such layers."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.runtime.images.image import Image
from agent.runtime.images.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    Descriptor,
    HistoryEntry,
    ImageConfig,
    Manifest,
    Platform,
)
from agent.runtime.images.store import ImageStore


@dataclass(frozen=True)
class Entry:
    """One tar entry: ``kind`` is file, dir, symlink, hardlink, fifo or chardev."""

    name: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000
    xattrs: Mapping[str, str] = field(default_factory=dict)


def F(name: str, data: bytes | str = b"", mode: int = 0o644, **kw: Any) -> Entry:
    return Entry(name, "file", data.encode() if isinstance(data, str) else data, mode=mode, **kw)


def D(name: str, mode: int = 0o755, **kw: Any) -> Entry:
    return Entry(name, "dir", mode=mode, **kw)


def L(name: str, target: str) -> Entry:
    return Entry(name, "symlink", target=target, mode=0o777)


def H(name: str, target: str) -> Entry:
    return Entry(name, "hardlink", target=target)


def W(name: str) -> Entry:
    """A whiteout for ``name`` (``dir/.wh.file``)."""
    parent, _, base = name.rpartition("/")
    return F(f"{parent}/.wh.{base}" if parent else f".wh.{base}")


def OPQ(directory: str) -> Entry:
    """The opaque marker of ``directory``."""
    return F(f"{directory}/.wh..wh..opq")


def make_tar(entries: Sequence[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, entry.mtime
            if entry.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in entry.xattrs.items()}
            body = None
            if entry.kind == "file":
                info.size = len(entry.data)
                body = io.BytesIO(entry.data)
            elif entry.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
            elif entry.kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, entry.target
            elif entry.kind == "fifo":
                info.type = tarfile.FIFOTYPE
            else:
                raise ValueError(entry.kind)
            tar.addfile(info, body)
    return out.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_image(
    store: ImageStore,
    layers: Sequence[bytes],
    reference: str | None = None,
    *,
    compress: bool = False,
    container: Mapping[str, Any] | None = None,
    created: str = "2024-01-02T03:04:05Z",
    platform: Platform | None = None,
    history: Sequence[HistoryEntry] | None = None,
) -> Image:
    """Store ``layers`` (plain tars) as an image and return it."""
    descriptors = []
    for tar in layers:
        blob = gzip.compress(tar, mtime=0) if compress else tar
        digest = store.blobs.write(blob)
        descriptors.append(Descriptor(OCI_LAYER_GZIP if compress else OCI_LAYER, digest, len(blob)))
    config = ImageConfig.build(
        diff_ids=[sha256(t) for t in layers],
        container=container or {"Cmd": ["sh"]},
        created=created,
        history=history
        or [HistoryEntry(created=created, created_by=f"layer {i}") for i in range(len(layers))],
        platform=platform,
    )
    store.blobs.write(config.raw)
    manifest = Manifest.build(Descriptor(OCI_CONFIG, config.digest, len(config.raw)), descriptors)
    return store.add(manifest, [reference] if reference else [])
