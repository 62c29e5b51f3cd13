"""Applying layers with whiteouts (the vfs form), confinement of entries, docker diff, the vfs snapshotter.

The overlay form (character-device whiteouts, trusted.* xattrs, mounts) needs root: see
tests/integration/runtime/test_snapshots.py.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from agent.runtime.errors import BlobCorrupted, SnapshotExists, UnsafeLayer
from agent.runtime.images.store import ImageStore
from agent.runtime.snapshots import VfsSnapshotter
from agent.runtime.snapshots.diff import tree_changes
from agent.runtime.snapshots.layers import Mode, extract_layer
from tests.unit.runtime.imagebuild import OPQ, D, F, H, L, W, build_image, make_tar, sha256

LOWER = make_tar(
    [
        D("etc"),
        F("etc/keep", "k"),
        F("etc/gone", "g"),
        D("etc/conf.d"),
        F("etc/conf.d/a", "a"),
        D("opq"),
        F("opq/old1", "1"),
        D("opq/olddir"),
        F("opq/olddir/x", "x"),
        D("var"),
        D("var/lib"),
        F("var/lib/db", "db"),
        F("top", "t"),
    ]
)
UPPER = make_tar(
    [
        W("etc/gone"),
        W("etc/conf.d"),
        D("opq"),
        F("opq/new", "n"),
        OPQ("opq"),
        W("var/lib"),
        F("added", "new"),
        F("top", "T", mode=0o600),
    ]
)


def apply(root: Path, *layers: bytes) -> None:
    for layer in layers:
        assert extract_layer(io.BytesIO(layer), root, Mode.APPLY) == sha256(layer)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_whiteouts_and_opaque_directories(tmp_path: Path) -> None:
    apply(tmp_path, LOWER, UPPER)
    assert tree(tmp_path) == {"etc", "etc/keep", "opq", "opq/new", "var", "top", "added"}
    assert (tmp_path / "top").read_text() == "T"
    assert stat.S_IMODE((tmp_path / "top").stat().st_mode) == 0o600


def test_opaque_marker_keeps_entries_of_its_own_layer_whatever_the_order(tmp_path: Path) -> None:
    upper = make_tar([OPQ("opq"), F("opq/after", "a")])
    apply(tmp_path, LOWER, make_tar([F("opq/before", "b"), OPQ("opq")]), upper)
    assert sorted(os.listdir(tmp_path / "opq")) == ["after"]


def test_attributes_are_kept(tmp_path: Path) -> None:
    layer = make_tar(
        [
            D("d", mode=0o750, mtime=1_600_000_000),
            F("d/f", "x", mode=0o4755, mtime=1_500_000_000),
            L("d/link", "f"),
            H("d/hard", "d/f"),
            F("d/x", "1", xattrs={"user.note": "hello"}),
        ]
    )
    apply(tmp_path, layer)
    info = os.lstat(tmp_path / "d/f")
    assert stat.S_IMODE(info.st_mode) == 0o4755
    assert info.st_mtime == 1_500_000_000
    assert os.lstat(tmp_path / "d").st_mtime == 1_600_000_000, "directory times are set after their entries"
    assert os.readlink(tmp_path / "d/link") == "f"
    assert os.lstat(tmp_path / "d/hard").st_ino == info.st_ino
    try:
        assert os.getxattr(tmp_path / "d/x", "user.note") == b"hello"
    except OSError:
        pytest.skip("user xattrs not supported here")


def test_replacing_types(tmp_path: Path) -> None:
    apply(
        tmp_path,
        make_tar([D("a"), F("a/inner", "x"), F("b", "file")]),
        make_tar([F("a", "now a file"), D("b"), F("b/c", "c")]),
    )
    assert (tmp_path / "a").read_text() == "now a file"
    assert (tmp_path / "b/c").read_text() == "c"


def test_entries_cannot_escape_through_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    evil = make_tar(
        [L("etc", str(outside)), F("etc/passwd", "pwned"), L("rel", "../../outside"), F("rel/x", "x")]
    )
    apply(root, evil)
    assert list(outside.iterdir()) == [], "nothing was written outside the layer"
    # Resolved inside the root, as a chroot would.
    assert (root / str(outside).lstrip("/") / "passwd").read_text() == "pwned"
    assert (root / "outside/x").read_text() == "x"


def test_dot_dot_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsafeLayer):
        apply(tmp_path, make_tar([F("../escape", "x")]))
    assert not (tmp_path.parent / "escape").exists()


def test_tree_changes_like_docker_diff(tmp_path: Path) -> None:
    base, current = tmp_path / "base", tmp_path / "current"
    for root in (base, current):
        root.mkdir()
        apply(root, LOWER)
    (current / "etc/keep").write_text("changed")
    (current / "etc/new").write_text("n")
    os.unlink(current / "top")
    import shutil

    shutil.rmtree(current / "var/lib")
    (current / "newdir").mkdir()
    (current / "newdir/f").write_text("f")
    os.chmod(current / "opq/old1", 0o600)
    assert [str(c) for c in tree_changes(base, current)] == [
        "C /etc",
        "C /etc/keep",
        "A /etc/new",
        "A /newdir",
        "A /newdir/f",
        "C /opq",
        "C /opq/old1",
        "D /top",
        "C /var",
        "D /var/lib",
    ]


def test_vfs_snapshotter(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    image = build_image(store, [LOWER, UPPER], "app", compress=True)
    snap = VfsSnapshotter(tmp_path / "snap", store)
    rootfs = snap.prepare("c1", "app")
    assert tree(rootfs) == {"etc", "etc/keep", "opq", "opq/new", "var", "top", "added"}
    assert snap.prepare("c1", image.id) == rootfs, "prepare is idempotent for the same image"
    other = build_image(store, [LOWER], "other")
    with pytest.raises(SnapshotExists):
        snap.prepare("c1", other.id)
    (rootfs / "etc/keep").write_text("changed!")
    os.unlink(rootfs / "added")
    (rootfs / "opq/more").write_text("m")
    assert [str(c) for c in snap.diff("c1")] == ["D /added", "C /etc", "C /etc/keep", "C /opq", "A /opq/more"]
    # export → a layer that, applied on the image, gives the container's tree.
    out = io.BytesIO()
    snap.export("c1", out)
    replay = tmp_path / "replay"
    replay.mkdir()
    apply(replay, LOWER, UPPER)
    extract_layer(io.BytesIO(out.getvalue()), replay, Mode.APPLY)
    assert tree(replay) == tree(rootfs)
    assert (replay / "etc/keep").read_text() == "changed!"
    snap.remove("c1")
    snap.remove("c1")
    assert snap.containers() == []
    store.remove("app")
    assert snap.prune_layers() == 1
    assert [p.name for p in snap.images_dir.iterdir()] == []


def test_vfs_prepare_failure_leaves_nothing(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    image = build_image(store, [LOWER, UPPER], "app")
    layer = store.blobs.path(image.manifest.layers[1].digest)
    layer.write_bytes(layer.read_bytes().replace(b"new", b"NEW"))
    snap = VfsSnapshotter(tmp_path / "snap", store)
    with pytest.raises(BlobCorrupted):
        snap.prepare("c1", "app")
    assert list(snap.containers_dir.iterdir()) == []
    assert list(snap.images_dir.iterdir()) == []
