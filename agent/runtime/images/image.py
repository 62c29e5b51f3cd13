"""What the image store hands out: :class:`Image`, its history, list filters and Docker API shapes.

An image is identified like Docker does it: its id is the digest of its config (``sha256:…``), its
references are fully qualified (``docker.io/library/busybox:latest``) and printed in the familiar form
(``busybox:latest``). ``size`` is the sum of the layer blobs as stored (compressed when the layers are),
which is also what a registry transfers.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.runtime.errors import InvalidFilter
from agent.runtime.images.oci import ImageConfig, Manifest
from agent.runtime.images.reference import familiar, parse_reference

MISSING = "<missing>"
_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def parse_created(text: str) -> datetime | None:
    """RFC 3339 time as images carry it (nanoseconds allowed) → aware datetime, or None."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00")))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Image:
    """One local image: its manifest, its config and the references that point to it."""

    manifest: Manifest
    config: ImageConfig
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.manifest.config.digest

    @property
    def short_id(self) -> str:
        return self.id.partition(":")[2][:12]

    @property
    def manifest_digest(self) -> str:
        return self.manifest.digest

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.manifest.layers)

    @property
    def labels(self) -> Mapping[str, str]:
        return self.config.labels

    @property
    def created(self) -> datetime | None:
        return parse_created(self.config.created)

    @property
    def dangling(self) -> bool:
        return not self.repo_tags

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return self.config.diff_ids

    @property
    def familiar_tags(self) -> list[str]:
        return [familiar(t) for t in self.repo_tags]

    @property
    def familiar_digests(self) -> list[str]:
        return [familiar(d) for d in self.repo_digests]

    def docker_summary(self) -> dict[str, Any]:
        """The object ``GET /images/json`` returns for this image."""
        created = self.created
        return {
            "Id": self.id,
            "ParentId": "",
            "RepoTags": self.familiar_tags,
            "RepoDigests": self.familiar_digests,
            "Created": int(created.timestamp()) if created else 0,
            "Size": self.size,
            "VirtualSize": self.size,
            "SharedSize": -1,
            "Labels": dict(self.labels),
            "Containers": -1,
        }

    def docker_inspect(self) -> dict[str, Any]:
        """The object ``GET /images/{name}/json`` returns for this image."""
        return {
            "Id": self.id,
            "RepoTags": self.familiar_tags,
            "RepoDigests": self.familiar_digests,
            "Parent": "",
            "Comment": self.config.history[-1].comment if self.config.history else "",
            "Created": self.config.created,
            "DockerVersion": "",
            "Author": self.config.author,
            "Config": dict(self.config.container),
            "Architecture": self.config.architecture,
            "Variant": self.config.variant or None,
            "Os": self.config.os,
            "Size": self.size,
            "VirtualSize": self.size,
            "RootFS": {"Type": "layers", "Layers": list(self.config.diff_ids)},
            "Metadata": {"LastTagTime": ""},
            "Descriptor": self.manifest.descriptor.to_json(),
        }


@dataclass(frozen=True)
class HistoryItem:
    """One line of ``image history``, newest first; ``id`` is the image id on the top line only."""

    id: str
    created: str
    created_by: str
    size: int
    comment: str
    empty_layer: bool

    def docker(self) -> dict[str, Any]:
        created = parse_created(self.created)
        return {
            "Id": self.id,
            "Created": int(created.timestamp()) if created else 0,
            "CreatedBy": self.created_by,
            "Tags": None,
            "Size": self.size,
            "Comment": self.comment,
        }


def history(image: Image) -> list[HistoryItem]:
    """The image's build steps, newest first, with each layer's size next to the step that made it."""
    layers = list(image.manifest.layers)
    entries = list(image.config.history)
    if sum(1 for e in entries if not e.empty_layer) != len(layers):
        # No usable history (or one that does not line up): one line per layer, as Docker shows it.
        entries = []
    items: list[HistoryItem] = []
    index = 0
    if entries:
        for entry in entries:
            size = 0
            if not entry.empty_layer:
                size = layers[index].size
                index += 1
            items.append(
                HistoryItem(MISSING, entry.created, entry.created_by, size, entry.comment, entry.empty_layer)
            )
    else:
        items = [HistoryItem(MISSING, image.config.created, "", layer.size, "", False) for layer in layers]
    items.reverse()
    if items:
        top = items[0]
        items[0] = HistoryItem(image.id, top.created, top.created_by, top.size, top.comment, top.empty_layer)
    return items


# --- list filters ------------------------------------------------------------------------------------------
FILTER_KEYS = frozenset({"dangling", "label", "reference", "before", "since"})


def parse_filters(items: Iterable[str]) -> dict[str, list[str]]:
    """CLI ``--filter`` values → a filter map: ``["label=a"]`` → ``{"label": ["a"]}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidFilter(item, "expected key=value")
        out.setdefault(key.strip().lower(), []).append(value)
    return out


def check_filters(filters: Mapping[str, Sequence[str]]) -> None:
    """Reject unknown keys and malformed values before listing."""
    for key, values in filters.items():
        if key not in FILTER_KEYS:
            raise InvalidFilter(key, f"unknown filter (known: {', '.join(sorted(FILTER_KEYS))})")
        if key == "dangling":
            for value in values:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise InvalidFilter(f"dangling={value}", "expected true or false")
        if key == "label":
            for value in values:
                if not value.partition("=")[0]:
                    raise InvalidFilter(f"label={value}", "empty label key")


def _matches_reference(image: Image, pattern: str) -> bool:
    for tag in image.repo_tags:
        short = familiar(tag)
        ref = parse_reference(tag)
        name_only = ref.familiar_name
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in (short, name_only, tag, ref.name)):
            return True
    return False


def matches(
    image: Image, filters: Mapping[str, Sequence[str]], anchors: Mapping[str, datetime | None]
) -> bool:
    """True when ``image`` passes every filter; ``anchors`` holds the creation times for before/since."""
    for value in filters.get("dangling", ()):
        if image.dangling != (value.lower() in ("true", "1")):
            return False
    for value in filters.get("label", ()):
        key, sep, wanted = value.partition("=")
        if key not in image.labels or (sep and image.labels[key] != wanted):
            return False
    patterns = filters.get("reference", ())
    if patterns and not any(_matches_reference(image, p) for p in patterns):
        return False
    created = image.created
    for key in ("before", "since"):
        for value in filters.get(key, ()):
            anchor = anchors.get(value)
            if anchor is None or created is None:
                return False
            if (key == "before" and not created < anchor) or (key == "since" and not created > anchor):
                return False
    return True
