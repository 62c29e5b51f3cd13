"""scripts/make-base-images: busybox from busybox-static, reproducible, idempotent, and actually runnable."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from agent.runtime.images.baseimages import find_busybox
from agent.runtime.images.store import ImageStore
from agent.runtime.snapshots import VfsSnapshotter

CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
SCRIPT = Path(__file__).resolve().parents[4] / "scripts" / "make-base-images"

pytestmark = pytest.mark.skipif(not os.access("/bin/busybox", os.X_OK), reason="needs busybox-static")


def run_script(*args: str) -> str:
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_busybox_image_is_reproducible_and_idempotent(tmp_path: Path) -> None:
    first = run_script(str(tmp_path / "a"), "--no-debian")
    again = run_script(str(tmp_path / "a"), "--no-debian")
    elsewhere = run_script("--store", str(tmp_path / "b"), "--no-debian")
    assert first == again == elsewhere
    assert first.startswith("busybox:latest\tsha256:")
    store = ImageStore(tmp_path / "a")
    assert len(store.images()) == 1
    image = store.get("busybox")
    assert image.config.container["Cmd"] == ["sh"]
    assert any(e.startswith("PATH=") for e in image.config.container["Env"])
    [layer] = image.manifest.layers
    with store.blobs.open(layer.digest) as reader, tarfile.open(fileobj=reader, mode="r|*") as tar:  # type: ignore[call-overload]
        entries = {m.name: m for m in tar}
    assert entries["bin/busybox"].isreg() and entries["bin/busybox"].uid == 0
    applets = subprocess.run(
        [str(find_busybox()), "--list-full"], capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "bin/busybox":
            assert entries[applet].issym() and entries[applet].linkname == "/bin/busybox", applet


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_busybox_image_runs(tmp_path: Path) -> None:
    run_script(str(tmp_path / "images"), "--no-debian")
    store = ImageStore(tmp_path / "images")
    snap = VfsSnapshotter(tmp_path / "snap", store)
    rootfs = snap.prepare("run", "busybox")
    try:
        out = subprocess.run(
            [CHROOT, str(rootfs), "/bin/sh", "-c", "ls /bin | wc -l; id -u; echo ok"],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": "/bin:/usr/bin"},
        )
        lines = out.stdout.split()
        assert out.returncode == 0, out.stderr
        assert int(lines[0]) > 50 and lines[1:] == ["0", "ok"]
    finally:
        snap.remove("run")
