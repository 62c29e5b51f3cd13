"""Image archives: ``docker save`` / ``docker load`` tarballs, OCI layout tarballs, and rootfs import.

Formats read by :func:`load_archive`:

* OCI image layout (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``) — also what Docker 25+ saves.
  Names come from the ``io.containerd.image.name`` annotation, or from ``org.opencontainers.image.ref.name``
  when that is a whole reference, or from ``manifest.json``'s ``RepoTags`` when the archive has one.
  Blobs are verified against their digests as they are copied in.
* The classic ``docker save`` layout: ``manifest.json`` (``Config``, ``RepoTags``, ``Layers``),
  ``repositories``, ``<config-hex>.json`` and ``<layer-id>/layer.tar``. Layers (plain or compressed) are
  checked against the config's ``rootfs.diff_ids`` before the image is recorded.

:func:`save_archive` writes either format (``docker``: classic, plain layer tars, readable by any Docker;
``oci``: blobs as stored plus a ``manifest.json`` so ``docker load`` reads it too). :func:`import_rootfs`
turns a root file system tarball into a one-layer image, like ``docker import``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from agent.runtime.errors import ArchiveError, BlobCorrupted, ImageError, InvalidReference
from agent.runtime.images.changes import apply_changes
from agent.runtime.images.compression import CHUNK, PeekReader, open_layer, sniff
from agent.runtime.images.image import Image
from agent.runtime.images.oci import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    Descriptor,
    HistoryEntry,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    canonical_json,
    layer_compression,
    parse_manifest,
)
from agent.runtime.images.reference import Reference, familiar, parse_reference
from agent.runtime.images.store import ImageStore

Source = Path | str | BinaryIO


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- import ------------------------------------------------------------------------------------------------
def import_rootfs(
    store: ImageStore,
    source: Source,
    *,
    reference: str | None = None,
    changes: Sequence[str] = (),
    message: str = "",
    created: str | None = None,
    platform: Platform | None = None,
    compress: bool = True,
    compress_level: int = 6,
) -> Image:
    """``docker import``: a tarball of a root file system (plain, gzip, bzip2 or xz) → a one-layer image.

    The layer is stored gzip-compressed (``compress``) or as the plain tar; ``changes`` are Dockerfile
    lines (see :mod:`.changes`). ``created`` pins the creation time, which makes the image id reproducible.
    """
    with _open_source(source) as raw:
        tar_stream, _ = open_layer(raw)
        head = tar_stream.read(512)
        if not _looks_like_tar(head):
            raise ArchiveError("not a tar archive (after decompression)")
        with store.blobs.writer() as writer:
            # BlobWriter is a write-only file object; GzipFile only calls write() on it.
            sink: Any = (
                gzip.GzipFile(fileobj=cast(Any, writer), mode="wb", mtime=0, compresslevel=compress_level)
                if compress
                else writer
            )
            sink.write(head)
            while chunk := tar_stream.read(CHUNK):
                sink.write(chunk)
            if compress:
                sink.close()
            blob_digest = writer.commit()
            blob_size = writer.written
    diff_id = tar_stream.digest
    when = created or now_rfc3339()
    container = apply_changes({}, changes)
    label = source if isinstance(source, (str, Path)) else "-"
    config = ImageConfig.build(
        diff_ids=[diff_id],
        container=container,
        created=when,
        history=[HistoryEntry(created=when, comment=message or f"Imported from {label}")],
        platform=platform,
    )
    config_digest = store.blobs.write(config.raw)
    manifest = Manifest.build(
        Descriptor(OCI_CONFIG, config_digest, len(config.raw)),
        [Descriptor(OCI_LAYER_GZIP if compress else OCI_LAYER, blob_digest, blob_size)],
    )
    return store.add(manifest, [reference] if reference else [])


def _looks_like_tar(block: bytes) -> bool:
    # An empty archive is all zero blocks; otherwise the ustar (POSIX) or GNU magic sits at offset 257.
    return len(block) == 512 and (block[257:262] == b"ustar" or block == bytes(512))


@contextlib.contextmanager
def _open_source(source: Source) -> Iterator[BinaryIO]:
    if isinstance(source, (str, Path)):
        try:
            with open(source, "rb") as file:
                yield file
        except FileNotFoundError:
            raise ArchiveError(f"{source}: no such file") from None
    else:
        yield source


# --- load --------------------------------------------------------------------------------------------------
class _Archive:
    """Random access to the members of an image archive (spooled to disk first when read from a pipe)."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members = {m.name.removeprefix("./").rstrip("/"): m for m in tar.getmembers()}

    def has(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str) -> IO[bytes]:
        member = self.members.get(name.removeprefix("./"))
        if member is None:
            raise ArchiveError(f"{name} missing from the archive")
        while member.issym() or member.islnk():
            # docker save links identical layers to each other.
            target = member.linkname
            if member.issym():
                target = str(Path(member.name).parent / target)
            target = str(Path(target)).removeprefix("./")
            resolved = self.members.get(target)
            if resolved is None or resolved is member:
                raise ArchiveError(f"{name}: dangling link")
            member = resolved
        file = self.tar.extractfile(member)
        if file is None:
            raise ArchiveError(f"{name} is not a regular file")
        return file

    def read(self, name: str, limit: int = 16 << 20) -> bytes:
        with self.open(name) as file:
            data = file.read(limit + 1)
        if len(data) > limit:
            raise ArchiveError(f"{name} is larger than {limit} bytes")
        return data

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except ValueError as exc:
            raise ArchiveError(f"{name}: not valid JSON ({exc})") from None


@contextlib.contextmanager
def _open_archive(store: ImageStore, source: Source) -> Iterator[_Archive]:
    with contextlib.ExitStack() as stack:
        if isinstance(source, (str, Path)):
            path = Path(source)
        elif hasattr(source, "seekable") and source.seekable():
            path = None
        else:
            spool = stack.enter_context(
                tempfile.NamedTemporaryFile(dir=store.blobs.ingest_dir, suffix=".tar")
            )
            shutil.copyfileobj(source, spool, CHUNK)
            spool.flush()
            path = Path(spool.name)
        try:
            if path is not None:
                tar = stack.enter_context(tarfile.open(path, "r:*"))
            else:
                tar = stack.enter_context(tarfile.open(fileobj=source, mode="r:*"))  # type: ignore[call-overload]
        except FileNotFoundError:
            raise ArchiveError(f"{source}: no such file") from None
        except tarfile.TarError as exc:
            raise ArchiveError(f"not a tar archive ({exc})") from None
        yield _Archive(tar)


def load_archive(store: ImageStore, source: Source, *, platform: Platform | None = None) -> list[str]:
    """``docker load``: import every image of an archive; returns Docker's lines ("Loaded image: …")."""
    with _open_archive(store, source) as archive:
        if archive.has("index.json") and archive.has("oci-layout"):
            return _load_oci(store, archive, platform or Platform.host())
        if archive.has("manifest.json"):
            return _load_docker(store, archive)
    raise ArchiveError("neither manifest.json (docker save) nor oci-layout/index.json (OCI) found")


def _loaded(image: Image, refs: Sequence[str]) -> list[str]:
    if refs:
        return [f"Loaded image: {familiar(str(parse_reference(r)))}" for r in refs]
    return [f"Loaded image ID: {image.id}"]


def _load_docker(store: ImageStore, archive: _Archive) -> list[str]:
    items = archive.json("manifest.json")
    if not isinstance(items, list):
        raise ArchiveError("manifest.json is not a list")
    lines: list[str] = []
    for item in items:
        config_raw = archive.read(str(item.get("Config", "")))
        config = ImageConfig.parse(config_raw)
        config_digest = store.blobs.write(config_raw)
        layer_paths = list(item.get("Layers") or [])
        if len(layer_paths) != len(config.diff_ids):
            raise ArchiveError(f"{len(layer_paths)} layers listed but the config has {len(config.diff_ids)}")
        layers = []
        for path, diff_id in zip(layer_paths, config.diff_ids, strict=True):
            layers.append(_copy_layer(store, archive, str(path), diff_id))
        manifest = Manifest.build(Descriptor(OCI_CONFIG, config_digest, len(config_raw)), layers)
        refs = _valid_refs(item.get("RepoTags") or [])
        lines += _loaded(store.add(manifest, refs), refs)
    return lines


def _copy_layer(store: ImageStore, archive: _Archive, path: str, diff_id: str) -> Descriptor:
    """Store one layer file of a docker archive as a blob, checking its content against ``diff_id``."""
    with archive.open(path) as file, store.blobs.writer() as writer:
        peek = PeekReader(file)
        kind = sniff(peek.peek(6))
        tee = _Tee(peek, writer)
        tar_stream, _ = open_layer(tee)
        tar_stream.drain()
        if tar_stream.digest != diff_id:
            raise BlobCorrupted(diff_id, tar_stream.digest, f"layer {path}")
        digest = writer.commit()
        size = writer.written
    if kind not in ("", "gzip"):
        raise ArchiveError(f"layer {path}: {kind} layers are not supported")
    return Descriptor(OCI_LAYER_GZIP if kind == "gzip" else OCI_LAYER, digest, size)


class _Tee:
    def __init__(self, source: Any, sink: Any) -> None:
        self._source = source
        self._sink = sink

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._source.read(n)
        self._sink.write(data)
        return data


def _valid_refs(names: Sequence[Any]) -> list[str]:
    out = []
    for name in names:
        with contextlib.suppress(InvalidReference):
            out.append(str(parse_reference(str(name))))
    return out


def _load_oci(store: ImageStore, archive: _Archive, platform: Platform) -> list[str]:
    index = parse_manifest(archive.read("index.json"))
    if not isinstance(index, Index):
        raise ArchiveError("index.json is not an image index")
    repo_tags: dict[str, list[str]] = {}
    if archive.has("manifest.json"):
        with contextlib.suppress(ArchiveError):
            for item in archive.json("manifest.json") or []:
                repo_tags.setdefault(str(item.get("Config", "")).rpartition("/")[2], []).extend(
                    _valid_refs(item.get("RepoTags") or [])
                )
    lines: list[str] = []
    for entry in index.manifests:
        manifest = _oci_manifest(store, archive, entry, platform)
        for blob in (manifest.config, *manifest.layers):
            _copy_blob(store, archive, blob)
        refs = _oci_names(entry) or repo_tags.get(manifest.config.digest.partition(":")[2], [])
        lines += _loaded(store.add(manifest, refs), refs)
    return lines


def _blob_path(digest: str) -> str:
    algorithm, _, encoded = digest.partition(":")
    return f"blobs/{algorithm}/{encoded}"


def _copy_blob(store: ImageStore, archive: _Archive, blob: Descriptor) -> None:
    if store.blobs.exists(blob.digest):
        return
    with archive.open(_blob_path(blob.digest)) as file:
        store.blobs.write_from(file, blob.digest, blob.size)


def _oci_manifest(store: ImageStore, archive: _Archive, entry: Descriptor, platform: Platform) -> Manifest:
    raw = archive.read(_blob_path(entry.digest))
    if hashlib.sha256(raw).hexdigest() != entry.digest.partition(":")[2]:
        raise BlobCorrupted(entry.digest, "sha256:" + hashlib.sha256(raw).hexdigest(), "archive manifest")
    parsed = parse_manifest(raw)
    if isinstance(parsed, Index):
        chosen = parsed.select(platform)
        if chosen is None:
            raise ArchiveError(f"no manifest for {platform} in {entry.digest}")
        return _oci_manifest(store, archive, chosen, platform)
    return parsed


def _oci_names(entry: Descriptor) -> list[str]:
    for key in (ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME):
        name = entry.annotations.get(key, "")
        # A bare tag ("latest") names nothing by itself; a reference with a repository does.
        if name and ("/" in name or ":" in name or "@" in name):
            with contextlib.suppress(InvalidReference):
                return [str(parse_reference(name))]
    return []


# --- save --------------------------------------------------------------------------------------------------
def save_archive(
    store: ImageStore, names: Sequence[str], dest: Path | str | BinaryIO, *, fmt: str = "docker"
) -> None:
    """``docker save``: write the named images (and their tags) to ``dest`` as ``docker`` or ``oci``."""
    if fmt not in ("docker", "oci"):
        raise ImageError(f"unknown archive format {fmt!r} (docker or oci)")
    selected: list[tuple[Image, list[str]]] = []
    for name in names:
        image = store.get(name)
        selected.append((image, _requested_tags(image, name)))
    with contextlib.ExitStack() as stack:
        if isinstance(dest, (str, Path)):
            tar = stack.enter_context(tarfile.open(dest, "w", format=tarfile.PAX_FORMAT))
        else:
            tar = stack.enter_context(tarfile.open(fileobj=dest, mode="w|", format=tarfile.PAX_FORMAT))
        if fmt == "docker":
            _save_docker(store, tar, selected)
        else:
            _save_oci(store, tar, selected)


def _requested_tags(image: Image, name: str) -> list[str]:
    with contextlib.suppress(InvalidReference):
        ref = parse_reference(name)
        full = str(ref.tagged()) if ref.digest is None else None
        if full in image.repo_tags:
            return [full]
    return []


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def _add_blob(store: ImageStore, tar: tarfile.TarFile, name: str, digest: str) -> None:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    with store.blobs.open(digest) as reader:
        info.size = reader.size
        tar.addfile(info, reader)
        reader.drain()


def _save_docker(
    store: ImageStore, tar: tarfile.TarFile, selected: Sequence[tuple[Image, list[str]]]
) -> None:
    manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    for image, tags in selected:
        config_name = image.id.partition(":")[2] + ".json"
        if config_name not in written:
            _add_bytes(tar, config_name, store.blobs.read(image.id))
            written.add(config_name)
        parent = ""
        layer_paths = []
        for layer, diff_id in zip(image.manifest.layers, image.diff_ids, strict=True):
            layer_id = hashlib.sha256(f"{parent}\n{diff_id}".encode()).hexdigest()
            if layer_id not in written:
                _add_dir(tar, layer_id)
                _add_bytes(tar, f"{layer_id}/VERSION", b"1.0")
                v1: dict[str, Any] = {
                    "id": layer_id,
                    "created": "1970-01-01T00:00:00Z",
                    "container_config": {},
                }
                if parent:
                    v1["parent"] = parent
                _add_bytes(tar, f"{layer_id}/json", canonical_json(v1))
                _add_plain_layer(store, tar, f"{layer_id}/layer.tar", layer, diff_id)
                written.add(layer_id)
            layer_paths.append(f"{layer_id}/layer.tar")
            parent = layer_id
        familiar_tags = [familiar(t) for t in tags]
        manifest.append({"Config": config_name, "RepoTags": familiar_tags or None, "Layers": layer_paths})
        for tag in tags:
            ref = parse_reference(tag)
            repositories.setdefault(ref.familiar_name, {})[ref.tag or "latest"] = parent
    _add_bytes(tar, "manifest.json", canonical_json(manifest))
    if repositories:
        _add_bytes(tar, "repositories", canonical_json(repositories))


def _add_plain_layer(
    store: ImageStore, tar: tarfile.TarFile, name: str, layer: Descriptor, diff_id: str
) -> None:
    """Add a layer as a plain tar, inflating it first when it is stored compressed (checked on the way)."""
    if not layer_compression(layer.media_type):
        _add_blob(store, tar, name, layer.digest)
        return
    with tempfile.TemporaryFile(dir=store.blobs.ingest_dir) as plain:
        with store.blobs.open(layer.digest) as reader:
            stream, _ = open_layer(reader)
            while chunk := stream.read(CHUNK):
                plain.write(chunk)
            reader.drain()
        if stream.digest != diff_id:
            raise BlobCorrupted(diff_id, stream.digest, f"layer {layer.digest}")
        info = tarfile.TarInfo(name)
        info.mode = 0o644
        info.size = plain.tell()
        plain.seek(0)
        tar.addfile(info, plain)


def _save_oci(store: ImageStore, tar: tarfile.TarFile, selected: Sequence[tuple[Image, list[str]]]) -> None:
    _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    _add_dir(tar, "blobs")
    _add_dir(tar, "blobs/sha256")
    written: set[str] = set()
    entries: list[dict[str, Any]] = []
    docker_manifest: list[dict[str, Any]] = []
    for image, tags in selected:
        for digest in (image.manifest_digest, image.id, *(layer.digest for layer in image.manifest.layers)):
            if digest not in written:
                _add_blob(store, tar, _blob_path(digest), digest)
                written.add(digest)
        tag_list: list[str | None] = [*tags] if tags else [None]
        for tag in tag_list:
            descriptor = image.manifest.descriptor.to_json()
            if tag is not None:
                ref: Reference = parse_reference(tag)
                descriptor["annotations"] = {
                    ANNOTATION_CONTAINERD_NAME: tag,
                    ANNOTATION_REF_NAME: ref.tag or "latest",
                }
            entries.append(descriptor)
        docker_manifest.append(
            {
                "Config": _blob_path(image.id),
                "RepoTags": [familiar(t) for t in tags] or None,
                "Layers": [_blob_path(layer.digest) for layer in image.manifest.layers],
            }
        )
    _add_bytes(
        tar, "index.json", canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    )
    _add_bytes(tar, "manifest.json", canonical_json(docker_manifest))
