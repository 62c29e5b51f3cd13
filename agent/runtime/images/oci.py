"""OCI and Docker image formats: media types, descriptors, manifests, indexes, image configs, platforms.

Manifests and configs are content-addressed, so the exact bytes matter: every parsed object keeps ``raw``
(the bytes its digest was computed on) and new ones are serialised once, canonically (sorted keys, no
spaces). Docker manifest v2 schema 2 and OCI image manifests are both understood; schema 1 is refused.
"""

from __future__ import annotations

import hashlib
import json
import platform as _platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.runtime.errors import InvalidImage, InvalidReference
from agent.runtime.images.reference import validate_digest

# --- media types -------------------------------------------------------------------------------------------
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
LAYER_TYPES = frozenset(
    {OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_ND, OCI_LAYER_ND_GZIP, DOCKER_LAYER_GZIP,
     DOCKER_LAYER_FOREIGN}
)  # fmt: skip
# What a client accepts when fetching a manifest, most preferred first.
MANIFEST_ACCEPT = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"


def layer_compression(media_type: str) -> str:
    """``gzip``, ``zstd`` or ``""`` (plain tar) for a layer media type."""
    if media_type.endswith("gzip"):
        return "gzip"
    if media_type.endswith("zstd"):
        return "zstd"
    return ""


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """The one serialisation Shoal writes for content it creates (sorted keys, compact, UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _load_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidImage(what, f"not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InvalidImage(what, "not a JSON object")
    return value


# --- platforms ---------------------------------------------------------------------------------------------
_MACHINE_TO_ARCH = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i386": ("386", ""), "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
}  # fmt: skip


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]``, as in OCI indexes."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    @classmethod
    def host(cls) -> Platform:
        """The platform of this machine."""
        arch, variant = _MACHINE_TO_ARCH.get(_platform.machine(), (_platform.machine(), ""))
        return cls("linux", arch, variant)

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``linux/arm64/v8`` → Platform; the variant is optional."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidImage("platform", f"{text!r} is not os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Platform:
        return cls(
            str(value.get("os", "")), str(value.get("architecture", "")), str(value.get("variant", ""))
        )

    def to_json(self) -> dict[str, str]:
        out = {"os": self.os, "architecture": self.architecture}
        if self.variant:
            out["variant"] = self.variant
        return out

    def matches(self, other: Platform) -> bool:
        """True when ``other`` (an index entry) can run here; an empty variant on either side matches."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return not self.variant or not other.variant or self.variant == other.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


# --- descriptors, manifests, indexes -----------------------------------------------------------------------
@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: media type, digest and size (plus optional platform and annotations)."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: Any, what: str) -> Descriptor:
        if not isinstance(value, dict):
            raise InvalidImage(what, "descriptor is not an object")
        try:
            digest = validate_digest(str(value["digest"]))
            size = int(value["size"])
        except (KeyError, TypeError, ValueError, InvalidReference) as exc:
            raise InvalidImage(what, f"bad descriptor ({exc})") from None
        if size < 0:
            raise InvalidImage(what, "negative size")
        plat = value.get("platform")
        return cls(
            media_type=str(value.get("mediaType", "")),
            digest=digest,
            size=size,
            platform=Platform.from_json(plat) if isinstance(plat, dict) else None,
            annotations={str(k): str(v) for k, v in (value.get("annotations") or {}).items()},
            urls=tuple(str(u) for u in value.get("urls") or ()),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.urls:
            out["urls"] = list(self.urls)
        return out


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema 2): one config and the layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: bytes
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256_digest(self.raw)

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw))

    @classmethod
    def build(
        cls,
        config: Descriptor,
        layers: Sequence[Descriptor],
        media_type: str = OCI_MANIFEST,
        annotations: Mapping[str, str] | None = None,
    ) -> Manifest:
        """A new manifest, serialised canonically."""
        body: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
        if annotations:
            body["annotations"] = dict(annotations)
        return cls(media_type, config, tuple(layers), canonical_json(body), dict(annotations or {}))


@dataclass(frozen=True)
class Index:
    """A manifest list / OCI index: one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    raw: bytes

    @property
    def digest(self) -> str:
        return sha256_digest(self.raw)

    def select(self, wanted: Platform) -> Descriptor | None:
        """The first entry whose platform matches ``wanted`` (entries without a platform never match)."""
        candidates = [d for d in self.manifests if d.platform is not None and wanted.matches(d.platform)]
        # An exact variant beats an unspecified one (arm64 with "v8" vs "").
        candidates.sort(
            key=lambda d: 0 if d.platform is not None and d.platform.variant == wanted.variant else 1
        )
        return candidates[0] if candidates else None


def parse_manifest(raw: bytes, content_type: str = "") -> Manifest | Index:
    """Parse manifest or index bytes; the ``mediaType`` field wins over the HTTP content type."""
    body = _load_json(raw, "manifest")
    if body.get("schemaVersion") == 1 or content_type in (DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED):
        raise InvalidImage("manifest", "Docker image manifest schema 1 is not supported")
    media_type = str(body.get("mediaType") or content_type.split(";")[0].strip())
    if not media_type:
        media_type = OCI_INDEX if "manifests" in body else OCI_MANIFEST
    if media_type in INDEX_TYPES:
        entries = body.get("manifests")
        if not isinstance(entries, list):
            raise InvalidImage("index", "'manifests' is not a list")
        return Index(media_type, tuple(Descriptor.from_json(e, "index entry") for e in entries), raw)
    if media_type not in MANIFEST_TYPES:
        raise InvalidImage("manifest", f"unsupported media type {media_type!r}")
    layers = body.get("layers")
    if not isinstance(layers, list):
        raise InvalidImage("manifest", "'layers' is not a list")
    parsed_layers = tuple(Descriptor.from_json(layer, "layer") for layer in layers)
    for layer in parsed_layers:
        if layer.media_type not in LAYER_TYPES:
            raise InvalidImage("manifest", f"unsupported layer media type {layer.media_type!r}")
    annotations = {str(k): str(v) for k, v in (body.get("annotations") or {}).items()}
    return Manifest(
        media_type, Descriptor.from_json(body.get("config"), "config"), parsed_layers, raw, annotations
    )


# --- image config ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryEntry:
    """One step of how the image was built; ``empty_layer`` steps did not add a layer."""

    created: str = ""
    created_by: str = ""
    comment: str = ""
    author: str = ""
    empty_layer: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (
            ("created", self.created),
            ("created_by", self.created_by),
            ("comment", self.comment),
            ("author", self.author),
        ):
            if value:
                out[key] = value
        if self.empty_layer:
            out["empty_layer"] = True
        return out


@dataclass(frozen=True)
class ImageConfig:
    """The parsed image configuration. ``container`` is the runtime defaults block (``config`` in JSON)."""

    raw: bytes
    architecture: str
    os: str
    variant: str
    created: str
    author: str
    container: Mapping[str, Any]
    diff_ids: tuple[str, ...]
    history: tuple[HistoryEntry, ...]

    @property
    def digest(self) -> str:
        """The image id (Docker's ``Id``): the config's digest."""
        return sha256_digest(self.raw)

    @property
    def labels(self) -> Mapping[str, str]:
        return dict(self.container.get("Labels") or {})

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        body = _load_json(raw, "image config")
        rootfs = body.get("rootfs") or {}
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list):
            raise InvalidImage("image config", "rootfs.diff_ids missing")
        history = tuple(
            HistoryEntry(
                created=str(h.get("created", "")),
                created_by=str(h.get("created_by", "")),
                comment=str(h.get("comment", "")),
                author=str(h.get("author", "")),
                empty_layer=bool(h.get("empty_layer", False)),
            )
            for h in body.get("history") or ()
            if isinstance(h, dict)
        )
        container = body.get("config") or {}
        try:
            checked_diff_ids = tuple(validate_digest(str(d)) for d in diff_ids)
        except InvalidReference as exc:
            raise InvalidImage("image config", f"bad diff_id ({exc})") from None
        return cls(
            raw=raw,
            architecture=str(body.get("architecture", "")),
            os=str(body.get("os", "")),
            variant=str(body.get("variant", "")),
            created=str(body.get("created", "")),
            author=str(body.get("author", "")),
            container=container if isinstance(container, dict) else {},
            diff_ids=checked_diff_ids,
            history=history,
        )

    @classmethod
    def build(
        cls,
        *,
        diff_ids: Sequence[str],
        container: Mapping[str, Any],
        created: str,
        history: Sequence[HistoryEntry],
        platform: Platform | None = None,
        author: str = "",
    ) -> ImageConfig:
        """A new config, serialised canonically."""
        plat = platform or Platform.host()
        body: dict[str, Any] = {
            "architecture": plat.architecture,
            "os": plat.os,
            "created": created,
            "config": dict(container),
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
            "history": [h.to_json() for h in history],
        }
        if plat.variant:
            body["variant"] = plat.variant
        if author:
            body["author"] = author
        return cls.parse(canonical_json(body))
