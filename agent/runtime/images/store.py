"""The local image store: an OCI image layout on disk plus Docker's naming and removal rules.

Layout under ``root`` (a valid OCI image layout, so tools that read OCI layouts can read it)::

    oci-layout                {"imageLayoutVersion": "1.0.0"}
    index.json                one manifest descriptor per reference; the reference (fully qualified,
                              "docker.io/library/busybox:latest" or "…/busybox@sha256:…") is in the
                              "org.opencontainers.image.ref.name" annotation; an entry without it is a
                              dangling image (kept until pruned, as Docker keeps "<none>:<none>")
    blobs/sha256/<hex>        manifests, configs and layers, verified on write and on read
    sources.json              registry repositories each blob was pulled from or pushed to (blob mounts)
    ingest/                   partial writes

Writers take a lock (a thread lock plus ``flock`` on ``.lock``) so several processes can share a store;
``index.json`` is replaced atomically, so readers need no lock.

Lookups accept what Docker accepts: ``name[:tag]``, ``name@sha256:…``, a full image id (``sha256:…``), an
id prefix of any length that is unique, or a manifest digest. Removal follows ``docker rmi``: removing a
reference of an image that has others only untags it; removing the last reference, or removing by id,
deletes the image unless a container uses it (``in_use``) or, by id, it is referenced from several
repositories — both refused unless forced. Blobs no other image needs are deleted with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.runtime.errors import (
    AmbiguousImage,
    BlobNotFound,
    ImageInUse,
    ImageNotFound,
    InvalidImage,
    InvalidReference,
)
from agent.runtime.images.blobs import BlobStore
from agent.runtime.images.image import HistoryItem, Image, check_filters, history, matches
from agent.runtime.images.oci import (
    ANNOTATION_REF_NAME,
    OCI_INDEX,
    ImageConfig,
    Manifest,
    canonical_json,
    parse_manifest,
)
from agent.runtime.images.reference import Reference, familiar, is_digest, parse_reference

InUse = Callable[[str], Collection[str]]
"""``in_use(image_id)`` → ids of the containers that use the image (empty when none)."""

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Removal:
    """One line of ``rmi`` output: ``Untagged: busybox:latest`` or ``Deleted: sha256:…``."""

    kind: str
    value: str

    def docker(self) -> dict[str, str]:
        return {self.kind: self.value}

    def __str__(self) -> str:
        return f"{self.kind}: {self.value}"


@dataclass(frozen=True)
class _Entry:
    ref: str | None
    digest: str
    media_type: str
    size: int

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.ref is not None:
            out["annotations"] = {ANNOTATION_REF_NAME: self.ref}
        return out


class ImageStore:
    """Images on this host (see the module docstring for the layout and the rules)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.root)
        self.blobs.remove_stale_ingests()
        self._thread_lock = threading.RLock()
        self._index_path = self.root / "index.json"
        self._sources_path = self.root / "sources.json"
        layout = self.root / "oci-layout"
        if not layout.exists():
            _atomic_write(layout, b'{"imageLayoutVersion":"1.0.0"}')
        if not self._index_path.exists():
            with self._locked():
                if not self._index_path.exists():
                    self._write_entries([])
        # Manifests and configs are immutable once verified; parse each once per process.
        self._manifests: dict[str, Manifest] = {}
        self._configs: dict[str, ImageConfig] = {}

    # --- locking and index.json ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, open(self.root / ".lock", "a+b") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _read_entries(self) -> list[_Entry]:
        try:
            body = json.loads(self._index_path.read_bytes())
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise InvalidImage("index.json", f"not valid JSON ({exc})") from None
        entries = []
        for item in body.get("manifests") or ():
            ref = (item.get("annotations") or {}).get(ANNOTATION_REF_NAME)
            entries.append(_Entry(ref, item["digest"], item.get("mediaType", ""), int(item.get("size", 0))))
        return entries

    def _write_entries(self, entries: Sequence[_Entry]) -> None:
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [e.to_json() for e in entries]}
        _atomic_write(self._index_path, json.dumps(body, indent=1, sort_keys=True).encode())

    # --- content -----------------------------------------------------------------------------------------
    def manifest(self, digest: str) -> Manifest:
        """The manifest stored under ``digest`` (verified on first read)."""
        cached = self._manifests.get(digest)
        if cached is not None:
            return cached
        parsed = parse_manifest(self.blobs.read(digest))
        if not isinstance(parsed, Manifest):
            raise InvalidImage(digest, "is an index, not an image manifest")
        self._manifests[digest] = parsed
        return parsed

    def config(self, digest: str) -> ImageConfig:
        """The image config stored under ``digest`` (verified on first read)."""
        cached = self._configs.get(digest)
        if cached is None:
            cached = ImageConfig.parse(self.blobs.read(digest))
            self._configs[digest] = cached
        return cached

    def _image(self, digest: str, entries: Sequence[_Entry]) -> Image:
        manifest = self.manifest(digest)
        refs = [e.ref for e in entries if e.digest == digest and e.ref is not None]
        tags = tuple(sorted(r for r in refs if "@" not in r))
        digests = tuple(sorted(r for r in refs if "@" in r))
        return Image(manifest, self.config(manifest.config.digest), tags, digests)

    # --- lookups -----------------------------------------------------------------------------------------
    def _resolve(self, name: str, entries: Sequence[_Entry]) -> str:
        """The manifest digest ``name`` designates (see the module docstring for what is accepted)."""
        digests = list(dict.fromkeys(e.digest for e in entries))
        if is_digest(name):
            for digest in digests:
                if digest == name or self.manifest(digest).config.digest == name:
                    return digest
            raise ImageNotFound(name)
        ref: Reference | None = None
        with contextlib.suppress(InvalidReference):
            ref = parse_reference(name)
        if ref is not None:
            if ref.digest is not None:
                wanted = str(ref.by_digest())
                for entry in entries:
                    if entry.ref == wanted:
                        return entry.digest
                for entry in entries:
                    if entry.digest == ref.digest and entry.ref and _repo_of(entry.ref) == ref.name:
                        return entry.digest
            else:
                wanted = str(ref)
                for entry in entries:
                    if entry.ref == wanted:
                        return entry.digest
        bare = name.removeprefix("sha256:")
        if bare and len(bare) <= 64 and set(bare) <= _HEX:
            found = {
                d for d in digests if self.manifest(d).config.digest.removeprefix("sha256:").startswith(bare)
            }
            if len(found) == 1:
                return found.pop()
            if found:
                raise AmbiguousImage(name, sorted(self.manifest(d).config.digest for d in found))
        raise ImageNotFound(name)

    def get(self, name: str) -> Image:
        """The image ``name`` designates; raises :class:`ImageNotFound`."""
        entries = self._read_entries()
        return self._image(self._resolve(name, entries), entries)

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
        except (ImageNotFound, AmbiguousImage):
            return False
        return True

    def images(self, filters: Mapping[str, Sequence[str]] | None = None) -> list[Image]:
        """All images (newest first), narrowed by Docker's list filters (see :mod:`.image`)."""
        filters = filters or {}
        check_filters(filters)
        entries = self._read_entries()
        result = [self._image(d, entries) for d in dict.fromkeys(e.digest for e in entries)]
        anchors: dict[str, datetime | None] = {}
        for key in ("before", "since"):
            for value in filters.get(key, ()):
                anchors[value] = self._image(self._resolve(value, entries), entries).created
        result = [image for image in result if matches(image, filters, anchors)]
        result.sort(key=lambda i: (i.config.created, i.id), reverse=True)
        return result

    def history(self, name: str) -> list[HistoryItem]:
        """``image history``: the build steps of an image, newest first."""
        return history(self.get(name))

    def diff_ids(self) -> set[str]:
        """Every layer (by diff id) some image in the store needs; snapshotters keep these."""
        entries = self._read_entries()
        out: set[str] = set()
        for digest in dict.fromkeys(e.digest for e in entries):
            out.update(self.config(self.manifest(digest).config.digest).diff_ids)
        return out

    # --- writes ------------------------------------------------------------------------------------------
    def add(self, manifest: Manifest, refs: Sequence[str | Reference] = ()) -> Image:
        """Record an image whose config and layers are already stored; store the manifest; set ``refs``.

        A reference that pointed to another image moves; that image stays as a dangling one.
        """
        for descriptor in (manifest.config, *manifest.layers):
            if not self.blobs.exists(descriptor.digest):
                raise BlobNotFound(descriptor.digest)
        config = self.config(manifest.config.digest)
        if len(config.diff_ids) != len(manifest.layers):
            raise InvalidImage(
                "manifest", f"{len(manifest.layers)} layers but {len(config.diff_ids)} diff ids"
            )
        self.blobs.write(manifest.raw, manifest.digest)
        names = [str(_normal(r)) for r in refs]
        with self._locked():
            entries = self._read_entries()
            entries.append(_Entry(None, manifest.digest, manifest.media_type, len(manifest.raw)))
            for name in names:
                entries = _point(entries, name, manifest)
            self._write_entries(_tidy(entries))
            return self._image(manifest.digest, self._read_entries())

    def copy_from(self, other: ImageStore, name: str) -> Image:
        """Copy an image and its references from ``other`` (blobs verified, hard-linked when possible)."""
        image = other.get(name)
        for digest in (image.id, *(layer.digest for layer in image.manifest.layers)):
            self.blobs.link_from(other.blobs, digest)
        return self.add(image.manifest, [*image.repo_tags, *image.repo_digests])

    def tag(self, source: str, target: str) -> Reference:
        """Point ``target`` (a ``name[:tag]``) at the image ``source`` designates."""
        ref = parse_reference(target)
        if ref.digest is not None:
            raise InvalidReference(target, "cannot tag with a digest")
        with self._locked():
            entries = self._read_entries()
            manifest = self.manifest(self._resolve(source, entries))
            self._write_entries(_tidy(_point(entries, str(ref), manifest)))
        return ref

    def remove(
        self,
        name: str,
        *,
        force: bool = False,
        in_use: InUse | None = None,
        running: InUse | None = None,
    ) -> list[Removal]:
        """``docker rmi NAME``; see the module docstring for the rules. Returns what was done. ``running``
        names the running containers of an image: deleting it is refused even when forced (untagging one
        of several references never is)."""
        with self._locked():
            entries = self._read_entries()
            digest = self._resolve(name, entries)
            image = self._image(digest, entries)
            by_reference = self._names_reference(name, entries, digest)
            refs = [*image.repo_tags, *image.repo_digests]
            out: list[Removal] = []
            if by_reference is not None:
                ref_repo = _repo_of(by_reference)
                others = [r for r in refs if r != by_reference and not ("@" in r and _repo_of(r) == ref_repo)]
                if any("@" not in r for r in others):
                    entries = [e for e in entries if e.ref != by_reference]
                    self._write_entries(_tidy(entries))
                    return [Removal("Untagged", familiar(by_reference))]
                if self._twins(digest, image.id, entries):
                    # Another manifest of the same image (a pull and a load of one image) keeps it alive: as
                    # for Docker, whose images are their config, this only removes a name.
                    remaining = [e for e in entries if e.digest != digest]
                    self._write_entries(_tidy(remaining))
                    self._collect(image.manifest, remaining)
                    return [Removal("Untagged", familiar(r)) for r in refs]
            elif not force and len({_repo_of(r) for r in refs}) > 1:
                raise ImageInUse(name, image.id, "image is referenced in multiple repositories")
            busy = list(running(image.id)) if running is not None and force else []
            if busy:
                reason = f"image is being used by running container {busy[0][:12]} (cannot be forced)"
                raise ImageInUse(name, image.id, reason, busy)
            users = list(in_use(image.id)) if in_use is not None else []
            if users and not force:
                short = image.short_id
                reason = f"container {users[0][:12]} is using its referenced image {short}"
                raise ImageInUse(name, image.id, reason, users)
            out.extend(Removal("Untagged", familiar(r)) for r in refs)
            remaining = [e for e in entries if e.digest != digest]
            self._write_entries(remaining)
            out.append(Removal("Deleted", image.id))
            self._collect(image.manifest, remaining)
            return out

    def _twins(self, digest: str, image_id: str, entries: Sequence[_Entry]) -> bool:
        """Whether another manifest with a name is of the same image (its config) as ``digest``."""
        others = {e.digest for e in entries if e.digest != digest and e.ref is not None}
        return any(self.manifest(d).config.digest == image_id for d in others)

    def _names_reference(self, name: str, entries: Sequence[_Entry], digest: str) -> str | None:
        """The index reference ``name`` was resolved through, or None when it was an id or digest."""
        if is_digest(name):
            return None
        with contextlib.suppress(InvalidReference):
            ref = parse_reference(name)
            wanted = str(ref.by_digest()) if ref.digest else str(ref)
            for entry in entries:
                if entry.ref == wanted and entry.digest == digest:
                    return wanted
        return None

    def prune(self, *, all_unused: bool = False, in_use: InUse | None = None) -> list[Removal]:
        """``image prune``: delete dangling images (all unused ones with ``all_unused``) no container uses."""
        out: list[Removal] = []
        for image in self.images():
            if not (image.dangling or all_unused):
                continue
            if in_use is not None and list(in_use(image.id)):
                continue
            with contextlib.suppress(ImageNotFound):
                out.extend(self.remove(image.id, force=True, in_use=None))
        return out

    def _collect(self, removed: Manifest, remaining: Sequence[_Entry]) -> None:
        """Delete the removed image's blobs that no remaining image uses (called with the lock held)."""
        keep: set[str] = set()
        for digest in {e.digest for e in remaining}:
            manifest = self.manifest(digest)
            keep.add(digest)
            keep.add(manifest.config.digest)
            keep.update(layer.digest for layer in manifest.layers)
        for digest in (removed.digest, removed.config.digest, *(layer.digest for layer in removed.layers)):
            if digest not in keep:
                self.blobs.delete(digest)
                self._manifests.pop(digest, None)
                self._configs.pop(digest, None)

    # --- where blobs came from (cross-repository mounts on push) ------------------------------------------
    def record_source(self, digests: Sequence[str], registry: str, repository: str) -> None:
        """Remember that ``registry`` has these blobs in ``repository``."""
        with self._locked():
            sources = self._read_sources()
            for digest in digests:
                known = sources.setdefault(digest, [])
                if [registry, repository] not in known:
                    known.append([registry, repository])
            _atomic_write(self._sources_path, canonical_json(sources))

    def sources(self, digest: str, registry: str) -> list[str]:
        """Repositories on ``registry`` known to hold ``digest``."""
        return [repo for reg, repo in self._read_sources().get(digest, []) if reg == registry]

    def _read_sources(self) -> dict[str, list[list[str]]]:
        try:
            value = json.loads(self._sources_path.read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}


def _normal(ref: str | Reference) -> Reference:
    return ref if isinstance(ref, Reference) else parse_reference(ref)


def _repo_of(ref: str) -> str:
    return ref.partition("@")[0] if "@" in ref else ref.rpartition(":")[0]


def _point(entries: list[_Entry], name: str, manifest: Manifest) -> list[_Entry]:
    """Entries with ``name`` pointing at ``manifest``; the image it left keeps a dangling entry."""
    out = []
    for entry in entries:
        if entry.ref == name:
            out.append(_Entry(None, entry.digest, entry.media_type, entry.size))
        else:
            out.append(entry)
    out.append(_Entry(name, manifest.digest, manifest.media_type, len(manifest.raw)))
    return out


def _tidy(entries: Sequence[_Entry]) -> list[_Entry]:
    """Drop duplicate entries and the dangling marker of every image that has a reference."""
    referenced = {e.digest for e in entries if e.ref is not None}
    seen: set[tuple[str | None, str]] = set()
    out = []
    for entry in entries:
        key = (entry.ref, entry.digest)
        if key in seen or (entry.ref is None and entry.digest in referenced):
            continue
        seen.add(key)
        out.append(entry)
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
