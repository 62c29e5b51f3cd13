"""The playbooks pass ansible-lint (its production profile, set in ansible/.ansible-lint)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ANSIBLE_DIR = Path(__file__).resolve().parents[3] / "ansible"
ANSIBLE_LINT = Path(sys.executable).parent / "ansible-lint"


@pytest.mark.skipif(not ANSIBLE_LINT.exists(), reason="ansible-lint is not installed (make setup)")
def test_ansible_lint_passes() -> None:
    env = dict(os.environ, NO_COLOR="1", PATH=f"{ANSIBLE_LINT.parent}:{os.environ.get('PATH', '')}")
    done = subprocess.run(
        [str(ANSIBLE_LINT), "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Passed" in done.stdout + done.stderr
