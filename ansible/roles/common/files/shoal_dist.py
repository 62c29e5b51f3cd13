"""Shoal's distribution files, made on the machine that runs Ansible.

    shoal_dist.py wheel SOURCE OUTDIR        build Shoal's wheel from a source tree
    shoal_dist.py wheelhouse WHEELDIR OUTDIR pack a directory of wheels into one tar file

Both print one JSON object: ``{"path": PATH, "changed": BOOL}``, and leave an existing output file alone when
the new one would hold the same thing, so hosts see an unchanged file and Ansible reports no change.

Wheel: the source is copied to a scratch directory first (the build writes ``build/`` and
``*.egg-info`` into the tree it builds, and the source may be someone's working copy). File times in the
wheel are pinned with ``SOURCE_DATE_EPOCH``, and when the new wheel holds exactly what the wheel already in
OUTDIR holds, the old file is kept.

Wheelhouse: one tar file is copied (and checked) much faster than many wheels one by one. Its members are
written in name order with fixed owners and times, so the same wheels give the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", "tests", "ansible",
)  # fmt: skip
# 1980-01-01, the earliest time a zip entry can carry.
EPOCH = "315532800"


def _contents(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def build(source: Path, outdir: Path) -> tuple[Path, bool]:
    """Build the wheel of ``source`` into ``outdir``; returns its path and whether it differs from before."""
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="shoal-wheel-") as scratch:
        tree = Path(scratch) / "src"
        shutil.copytree(source, tree, ignore=IGNORE, symlinks=True)
        fresh = Path(scratch) / "out"
        env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(fresh),
            str(tree),
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"building the wheel of {source} failed (exit {done.returncode})")
        (new,) = fresh.glob("*.whl")
        target = outdir / new.name
        if target.exists() and _contents(target) == _contents(new):
            return target, False
        for old in outdir.glob("*.whl"):
            old.unlink()
        shutil.move(new, target)
        return target, True


WHEELHOUSE_TAR = "wheelhouse.tar"


def pack(wheeldir: Path, outdir: Path) -> tuple[Path, bool]:
    """Pack the wheels in ``wheeldir`` into ``outdir/wheelhouse.tar``; returns its path and if it changed."""
    outdir.mkdir(parents=True, exist_ok=True)
    target = outdir / WHEELHOUSE_TAR
    fresh = outdir / (WHEELHOUSE_TAR + ".new")
    with tarfile.open(fresh, "w", format=tarfile.GNU_FORMAT) as tar:
        for wheel in sorted(wheeldir.glob("*.whl")):
            info = tarfile.TarInfo(wheel.name)
            info.size = wheel.stat().st_size
            info.mode = 0o644
            info.mtime = int(EPOCH)
            with wheel.open("rb") as f:
                tar.addfile(info, f)
    if target.exists() and target.read_bytes() == fresh.read_bytes():
        fresh.unlink()
        return target, False
    fresh.replace(target)
    return target, True


def main() -> None:
    """Command-line entry point."""
    if len(sys.argv) != 4 or sys.argv[1] not in ("wheel", "wheelhouse"):
        raise SystemExit(f"usage: {sys.argv[0]} wheel SOURCE OUTDIR | wheelhouse WHEELDIR OUTDIR")
    make = build if sys.argv[1] == "wheel" else pack
    path, changed = make(Path(sys.argv[2]).resolve(), Path(sys.argv[3]))
    print(json.dumps({"path": str(path), "changed": changed}))


if __name__ == "__main__":
    main()
