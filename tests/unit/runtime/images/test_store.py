"""The content-addressed image store: verification, references, tags, removal rules, filters, history."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from agent.runtime.errors import (
    AmbiguousImage,
    BlobCorrupted,
    BlobNotFound,
    ImageInUse,
    ImageNotFound,
    InvalidFilter,
)
from agent.runtime.images.image import parse_filters
from agent.runtime.images.oci import HistoryEntry
from agent.runtime.images.store import ImageStore
from tests.unit.runtime.imagebuild import D, F, build_image, make_tar, sha256

BASE = make_tar([D("etc"), F("etc/os-release", "base\n")])
APP = make_tar([D("app"), F("app/run", "#!/bin/sh\n", mode=0o755)])


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def test_layout_is_an_oci_image_layout(store: ImageStore) -> None:
    image = build_image(store, [BASE], "busybox")
    assert json.loads((store.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store.root / "index.json").read_text())
    [entry] = index["manifests"]
    assert entry["digest"] == image.manifest_digest
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "docker.io/library/busybox:latest"
    for digest in (image.manifest_digest, image.id, image.manifest.layers[0].digest):
        assert (store.root / "blobs" / "sha256" / digest.partition(":")[2]).is_file()


def test_blob_write_is_verified(store: ImageStore) -> None:
    with pytest.raises(BlobCorrupted):
        store.blobs.write(b"hello", expected=sha256(b"other"))
    assert not store.blobs.exists(sha256(b"hello"))
    assert not list(store.blobs.ingest_dir.iterdir()), "a refused write leaves no partial file"
    with store.blobs.writer(sha256(b"hello"), expected_size=5) as writer, pytest.raises(BlobCorrupted):
        writer.write(b"hello!")


def test_corrupted_blob_is_detected_on_read(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    image = build_image(store, [BASE], "busybox")
    layer = store.blobs.path(image.manifest.layers[0].digest)
    data = bytearray(layer.read_bytes())
    data[600] ^= 0xFF
    layer.write_bytes(bytes(data))
    with pytest.raises(BlobCorrupted) as info:
        store.blobs.read(image.manifest.layers[0].digest)
    assert info.value.expected == image.manifest.layers[0].digest
    # A config damaged on disk: a fresh store (nothing cached) refuses to use it.
    config = store.blobs.path(image.id)
    config.write_bytes(config.read_bytes().replace(b"sh", b"zz"))
    with pytest.raises(BlobCorrupted):
        ImageStore(tmp_path / "images").get("busybox")


def test_lookup_by_reference_id_prefix_and_digest(store: ImageStore) -> None:
    image = build_image(store, [BASE], "busybox:1")
    for name in (
        "busybox:1",
        "docker.io/library/busybox:1",
        image.id,
        image.id.partition(":")[2],
        image.short_id,
        image.id[7:10],
        image.manifest_digest,
    ):
        assert store.get(name).id == image.id
    with pytest.raises(ImageNotFound):
        store.get("busybox")  # :latest does not exist
    with pytest.raises(ImageNotFound):
        store.get("0" * 12 if not image.id[7:].startswith("0") else "f" * 12)


def test_ambiguous_id_prefix(store: ImageStore) -> None:
    ids = set()
    n = 0
    while True:
        image = build_image(store, [make_tar([F(f"f{n}", str(n))])], f"img:{n}")
        n += 1
        first = image.id[7]
        if first in ids:
            break
        ids.add(first)
    with pytest.raises(AmbiguousImage):
        store.get(first)


def test_add_requires_all_blobs(store: ImageStore) -> None:
    image = build_image(store, [BASE], "a")
    other = ImageStore(store.root.parent / "other")
    with pytest.raises(BlobNotFound):
        other.add(image.manifest, ["a"])


def test_tag_and_moving_a_tag_leaves_a_dangling_image(store: ImageStore) -> None:
    old = build_image(store, [BASE], "app:latest")
    store.tag("app", "registry.local/team/app:v1")
    assert store.get("registry.local/team/app:v1").id == old.id
    assert set(store.get("app").familiar_tags) == {"app:latest", "registry.local/team/app:v1"}
    new = build_image(store, [BASE, APP], "app:latest")
    assert store.get("app:latest").id == new.id
    assert not store.get(old.id).dangling  # still tagged registry.local/team/app:v1
    store.remove("registry.local/team/app:v1")
    with pytest.raises(ImageNotFound):
        store.get(old.id)
    rebuilt = build_image(store, [BASE, make_tar([F("x", "1")])], "app:latest")
    dangling = [i for i in store.images() if i.dangling]
    assert [i.id for i in dangling] == [new.id]
    assert [i.id for i in store.images({"dangling": ["false"]})] == [rebuilt.id]


def test_remove_rules(store: ImageStore) -> None:
    image = build_image(store, [BASE], "busybox:latest")
    store.tag("busybox", "mybox:1")
    # Removing one of several references only untags.
    assert [str(r) for r in store.remove("mybox:1")] == ["Untagged: mybox:1"]
    store.tag("busybox", "other/box:2")

    def users(image_id: str) -> list[str]:
        return ["c0ffee1234567890"] if image_id == image.id else []

    # By id with references in several repositories: refused unless forced.
    with pytest.raises(ImageInUse) as info:
        store.remove(image.short_id)
    assert "multiple repositories" in str(info.value)
    store.remove("other/box:2")
    # The last reference of an image a container uses: refused unless forced.
    with pytest.raises(ImageInUse) as info:
        store.remove("busybox", in_use=users)
    assert info.value.containers == ["c0ffee1234567890"]
    assert store.exists("busybox")
    result = [str(r) for r in store.remove("busybox", in_use=users, force=True)]
    assert result == ["Untagged: busybox:latest", f"Deleted: {image.id}"]
    assert not store.exists(image.id)
    assert list(store.blobs.digests()) == [], "every blob of the removed image is gone"


def test_remove_keeps_shared_blobs(store: ImageStore) -> None:
    base = build_image(store, [BASE], "base")
    app = build_image(store, [BASE, APP], "app")
    store.remove("app")
    assert store.blobs.exists(base.manifest.layers[0].digest)
    assert not store.blobs.exists(app.manifest.layers[1].digest)
    assert not store.blobs.exists(app.id)


def test_prune_removes_unused_dangling_images(store: ImageStore) -> None:
    used = build_image(store, [BASE], None)
    unused = build_image(store, [APP], None)
    tagged = build_image(store, [BASE, APP], "keep")
    removed = store.prune(in_use=lambda image_id: ["c1"] if image_id == used.id else [])
    assert [r.value for r in removed if r.kind == "Deleted"] == [unused.id]
    assert {i.id for i in store.images()} == {used.id, tagged.id}


def test_list_filters(store: ImageStore) -> None:
    a = build_image(
        store, [BASE], "a", container={"Labels": {"tier": "web", "x": ""}}, created="2024-01-01T00:00:00Z"
    )
    b = build_image(store, [APP], "b", container={"Labels": {"tier": "db"}}, created="2024-02-01T00:00:00Z")
    c = build_image(store, [BASE, APP], "team/c", created="2024-03-01T00:00:00.123456789Z")

    def ids(*items: str) -> list[str]:
        return [i.id for i in store.images(parse_filters(items))]

    assert ids() == [c.id, b.id, a.id]
    assert ids("label=tier") == [b.id, a.id]
    assert ids("label=tier=web") == [a.id]
    assert ids("label=tier", "label=x") == [a.id]
    assert ids("reference=team/*") == [c.id]
    assert ids("reference=a", "reference=b") == [b.id, a.id]
    assert ids("before=b") == [a.id]
    assert ids("since=a") == [c.id, b.id]
    assert ids("dangling=true") == []
    with pytest.raises(InvalidFilter):
        ids("colour=red")
    with pytest.raises(InvalidFilter):
        ids("dangling=maybe")


def test_inspect_and_history(store: ImageStore) -> None:
    history = [
        HistoryEntry(created="2024-01-01T00:00:00Z", created_by="ADD base"),
        HistoryEntry(created="2024-01-02T00:00:00Z", created_by="ENV A=1", empty_layer=True),
        HistoryEntry(created="2024-01-03T00:00:00Z", created_by="COPY app", comment="build"),
    ]
    image = build_image(
        store, [BASE, APP], "app:1", container={"Env": ["A=1"], "Cmd": ["run"]}, history=history
    )
    inspect = store.get("app:1").docker_inspect()
    assert inspect["Id"] == image.id
    assert inspect["RepoTags"] == ["app:1"]
    assert inspect["Config"] == {"Env": ["A=1"], "Cmd": ["run"]}
    assert inspect["RootFS"]["Layers"] == [sha256(BASE), sha256(APP)]
    assert inspect["Size"] == len(BASE) + len(APP)
    lines = store.history("app:1")
    assert [(h.created_by, h.size, h.empty_layer) for h in lines] == [
        ("COPY app", len(APP), False),
        ("ENV A=1", 0, True),
        ("ADD base", len(BASE), False),
    ]
    assert lines[0].id == image.id and lines[1].id == "<missing>"


def test_concurrent_tagging_keeps_every_reference(tmp_path: Path) -> None:
    # Two store objects (as two processes would have) tagging at once: the file lock serialises them.
    first, second = ImageStore(tmp_path / "s"), ImageStore(tmp_path / "s")
    build_image(first, [BASE], "base")

    def tag(store: ImageStore, prefix: str) -> None:
        for i in range(25):
            store.tag("base", f"{prefix}:{i}")

    threads = [threading.Thread(target=tag, args=(s, p)) for s, p in ((first, "x"), (second, "y"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ImageStore(tmp_path / "s").get("base").repo_tags) == 51


def test_copy_from_another_store(tmp_path: Path) -> None:
    source = ImageStore(tmp_path / "a")
    image = build_image(source, [BASE, APP], "app", compress=True)
    target = ImageStore(tmp_path / "b")
    copied = target.copy_from(source, "app")
    assert (copied.id, copied.manifest_digest, copied.repo_tags) == (
        image.id,
        image.manifest_digest,
        image.repo_tags,
    )
