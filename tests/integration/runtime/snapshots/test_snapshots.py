"""The overlay snapshotter on real overlayfs mounts (root), compared with vfs on the same images.

Every test removes its snapshots; a final check per test asserts no mount is left below its directory.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.errors import BlobCorrupted, MountError, UnsafeLayer
from agent.runtime.images.baseimages import DEBIAN_REF, debian_rootfs_tar, make_debian
from agent.runtime.images.image import Image
from agent.runtime.images.oci import OCI_CONFIG, OCI_LAYER, Descriptor, ImageConfig, Manifest, canonical_json
from agent.runtime.images.store import ImageStore
from agent.runtime.snapshots import OverlaySnapshotter, Snapshotter, VfsSnapshotter, open_snapshotter
from agent.runtime.snapshots.layers import OVERLAY_OPAQUE_XATTR, Mode, extract_layer
from agent.runtime.snapshots.mounts import mounts_under, overlay_supported, unmount_all
from tests.integration.runtime.images.support import flip_byte
from tests.unit.runtime.imagebuild import OPQ, D, F, L, W, build_image, make_tar, sha256

pytestmark = pytest.mark.skipif(not overlay_supported(), reason="needs root and overlayfs")

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
        F("top", "t"),
    ]
)
UPPER = make_tar([W("etc/gone"), W("etc/conf.d"), D("opq"), F("opq/new", "n"), OPQ("opq"), F("added", "new")])
EXPECTED = {"etc", "etc/keep", "opq", "opq/new", "top", "added"}


@pytest.fixture
def snap_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "snapshots"
    root.mkdir()
    try:
        yield root
    finally:
        leftover = mounts_under(root)
        unmount_all(root)
        assert leftover == [], f"mounts left behind: {leftover}"


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_overlay_layer_form_of_whiteouts(tmp_path: Path) -> None:
    layer_dir = tmp_path / "layer"
    layer_dir.mkdir()
    extract_layer(io.BytesIO(UPPER), layer_dir, Mode.OVERLAY)
    gone = os.lstat(layer_dir / "etc/gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert stat.S_ISCHR(os.lstat(layer_dir / "etc/conf.d").st_mode)
    assert os.getxattr(layer_dir / "opq", OVERLAY_OPAQUE_XATTR) == b"y"
    assert (layer_dir / "opq/new").read_text() == "n"
    assert not any(".wh." in name for name in tree(layer_dir))


@pytest.mark.parametrize("driver", ["overlay", "vfs"])
def test_whiteouts_opaque_dirs_and_diff(image_store: ImageStore, snap_root: Path, driver: str) -> None:
    build_image(image_store, [LOWER, UPPER], "layered", compress=True)
    snap = open_snapshotter(snap_root, image_store, driver)
    rootfs = snap.prepare("c1", "layered")
    try:
        assert tree(rootfs) == EXPECTED
        (rootfs / "etc/keep").write_text("changed")
        (rootfs / "etc/new").write_text("new")
        os.unlink(rootfs / "top")
        os.unlink(rootfs / "opq/new")
        shutil.rmtree(rootfs / "etc")
        (rootfs / "etc").mkdir()
        (rootfs / "etc/fresh").write_text("f")
        changes = [str(c) for c in snap.diff("c1")]
        assert changes == ["C /etc", "A /etc/fresh", "D /etc/keep", "C /opq", "D /opq/new", "D /top"]
    finally:
        snap.remove("c1")
    assert not (snap.containers_dir / "c1").exists()


def _stacked_on_busybox(store: ImageStore, extra: bytes, name: str) -> Image:
    """An image made of busybox's layer (the same blob) plus ``extra``."""
    base = store.get("busybox")
    extra_digest = store.blobs.write(extra)
    body = json.loads(base.config.raw)
    body["rootfs"]["diff_ids"].append(sha256(extra))
    config = ImageConfig.parse(canonical_json(body))
    store.blobs.write(config.raw)
    manifest = Manifest.build(
        Descriptor(OCI_CONFIG, config.digest, len(config.raw)),
        [*base.manifest.layers, Descriptor(OCI_LAYER, extra_digest, len(extra))],
    )
    return store.add(manifest, [name])


def test_overlay_mount_shares_layers_and_leaves_nothing(image_store: ImageStore, snap_root: Path) -> None:
    snap = OverlaySnapshotter(snap_root, image_store)
    base = image_store.get("busybox")
    app = _stacked_on_busybox(image_store, make_tar([D("app"), F("app/x", "x")]), "app")
    rootfs1 = snap.prepare("one", "busybox")
    rootfs2 = snap.prepare("two", "app")
    try:
        assert (rootfs1 / "bin/busybox").is_file()
        assert (rootfs2 / "bin/busybox").is_file() and (rootfs2 / "app/x").read_text() == "x"
        out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", str(rootfs1)], capture_output=True, text=True)
        assert out.stdout.strip() == "overlay"
        layers = sorted(p.name for p in snap.layers_dir.iterdir() if not p.name.startswith("."))
        assert layers == sorted(d.partition(":")[2] for d in app.diff_ids), "busybox's layer is unpacked once"
        # Writes in one container are invisible in the other and never reach the shared layer.
        (rootfs1 / "etc/hostname").write_text("one\n")
        assert not (rootfs2 / "etc/hostname").exists()
        assert not (snap.layer_dir(base.diff_ids[0]) / "etc/hostname").exists()
        assert snap.usage("one") > 0 and snap.usage("two") == 0
        # Unmounted (say, after a reboot), the snapshot comes back with its changes.
        snap.unmount("one")
        assert not mounts_under(rootfs1)
        assert snap.rootfs("one") == rootfs1
        assert (rootfs1 / "etc/hostname").read_text() == "one\n"
        assert snap.prepare("one", base.id) == rootfs1
        # A process holding the mount busy does not stop removal (lazy unmount).
        holder = subprocess.Popen(["sleep", "30"], cwd=rootfs2)
        try:
            snap.remove("two")
        finally:
            holder.kill()
            holder.wait()
        assert not (snap.containers_dir / "two").exists()
    finally:
        snap.remove("one")
        snap.remove("two")
    assert mounts_under(snap_root) == []
    image_store.remove("app")
    assert snap.prune_layers() == 1, "app's own layer goes; busybox's stays while busybox is in the store"
    image_store.remove("busybox")
    assert snap.prune_layers() == 1
    assert not snap.layer_dir(base.diff_ids[0]).exists()
    assert list(snap.links_dir.iterdir()) == []


def test_failed_prepare_leaves_no_mount_and_no_directory(image_store: ImageStore, snap_root: Path) -> None:
    image = build_image(image_store, [LOWER, UPPER], "broken")
    flip_byte(image_store.blobs.path(image.manifest.layers[1].digest), 600)
    snap = OverlaySnapshotter(snap_root, image_store)
    with pytest.raises(BlobCorrupted):
        snap.prepare("c1", "broken")
    assert list(snap.containers_dir.iterdir()) == []
    assert [p.name for p in snap.layers_dir.iterdir()] == [image.diff_ids[0].partition(":")[2]]
    # A mount that fails (work dir removed underneath) is cleaned up the same way.
    good = build_image(image_store, [LOWER], "good")
    real_mount = snap._mount_new  # the mount a new snapshot gets

    def failing_mount(*args: object) -> None:
        raise MountError("c2", "simulated", 5)

    snap._mount_new = failing_mount  # type: ignore[method-assign,assignment]
    try:
        with pytest.raises(MountError):
            snap.prepare("c2", good.id)
    finally:
        snap._mount_new = real_mount  # type: ignore[method-assign]
    assert list(snap.containers_dir.iterdir()) == []


def test_many_layers_fit_in_one_mount(image_store: ImageStore, snap_root: Path) -> None:
    layers = [make_tar([F(f"f{i:03}", str(i))]) for i in range(120)]
    build_image(image_store, layers, "tall")
    snap = OverlaySnapshotter(snap_root, image_store)
    try:
        rootfs = snap.prepare("tall", "tall")
        assert len(os.listdir(rootfs)) == 120
    finally:
        snap.remove("tall")


def test_auto_driver_and_vfs_fallback(
    image_store: ImageStore, snap_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(open_snapshotter(snap_root, image_store), OverlaySnapshotter)
    import agent.runtime.snapshots as snapshots

    monkeypatch.setattr(snapshots, "overlay_supported", lambda: False)
    snap: Snapshotter = snapshots.open_snapshotter(snap_root, image_store)
    assert isinstance(snap, VfsSnapshotter)
    try:
        rootfs = snap.prepare("c1", "busybox")
        assert os.readlink(rootfs / "bin/sh") == "/bin/busybox"
        assert not mounts_under(rootfs)
    finally:
        snap.remove("c1")


def test_symlinked_parents_resolve_inside_the_layer(image_store: ImageStore, snap_root: Path) -> None:
    evil = make_tar(
        [
            L("escape", "/etc"),
            F("escape/shoal-escape-test", "x"),
            L("up", "../../../../etc"),
            F("up/shoal-escape-test-2", "y"),
        ]
    )
    build_image(image_store, [evil], "evil")
    snap = OverlaySnapshotter(snap_root, image_store)
    try:
        rootfs = snap.prepare("c1", "evil")
        assert not Path("/etc/shoal-escape-test").exists() and not Path("/etc/shoal-escape-test-2").exists()
        assert (rootfs / "etc/shoal-escape-test").read_text() == "x"
        assert (rootfs / "etc/shoal-escape-test-2").read_text() == "y"
    finally:
        snap.remove("c1")
    loop = make_tar([L("etc", "/etc"), F("etc/passwd", "x")])
    build_image(image_store, [loop], "loop")
    with pytest.raises(UnsafeLayer):
        snap.prepare("c2", "loop")
    assert list(snap.containers_dir.iterdir()) == []


@pytest.mark.slow
def test_debian_image_on_overlay(tmp_path: Path, snap_root: Path) -> None:
    if not (
        Path("/var/cache/shoal-test-images") / "debian-bookworm-minbase.tar"
    ).exists() and not os.environ.get("SHOAL_BUILD_BASE_IMAGES"):
        pytest.skip(
            "debian base image not built (scripts/make-base-images, or set SHOAL_BUILD_BASE_IMAGES=1)"
        )
    debian_rootfs_tar()
    store = ImageStore(tmp_path / "images")
    image = make_debian(store)
    assert image.familiar_tags == [DEBIAN_REF]
    snap = OverlaySnapshotter(snap_root, store)
    try:
        rootfs = snap.prepare("deb", DEBIAN_REF)
        assert (rootfs / "etc/debian_version").read_text().startswith("12")
        assert stat.S_ISCHR(os.lstat(rootfs / "dev/null").st_mode) or (rootfs / "dev").is_dir()
        os.unlink(rootfs / "etc/debian_version")
        assert "D /etc/debian_version" in [str(c) for c in snap.diff("deb")]
    finally:
        snap.remove("deb")
