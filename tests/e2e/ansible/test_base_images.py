"""The agent role's base_images.py: makes busybox in an image store once, reports a change only then, and
writes nothing in --check mode."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.images.store import ImageStore

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "ansible" / "roles" / "agent" / "files" / "base_images.py"

pytestmark = pytest.mark.skipif(
    not any(shutil.which(p) for p in ("/bin/busybox", "/usr/bin/busybox")), reason="needs busybox-static"
)


def base_images(*args: str) -> tuple[int, dict[str, Any] | None, str]:
    # Run as the role runs it: a script file, by a Python that has Shoal installed.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    out = json.loads(done.stdout) if done.returncode == 0 else None
    return done.returncode, out, done.stderr


def test_busybox_is_made_once_and_check_mode_writes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "agent" / "runtime" / "images"
    assert base_images(str(store), "busybox", "--check")[:2] == (0, {"changed": True, "made": ["busybox"]})
    assert not store.exists()

    assert base_images(str(store), "busybox")[:2] == (0, {"changed": True, "made": ["busybox"]})
    image = ImageStore(store).get("busybox:latest")
    assert image.config.container["Cmd"] == ["sh"]

    assert base_images(str(store), "busybox")[:2] == (0, {"changed": False, "made": []})
    assert base_images(str(store), "busybox", "--check")[:2] == (0, {"changed": False, "made": []})
    assert ImageStore(store).get("busybox:latest").id == image.id


def test_an_unknown_image_is_refused(tmp_path: Path) -> None:
    code, _, err = base_images(str(tmp_path), "alpine")
    assert code != 0 and "usage" in err
