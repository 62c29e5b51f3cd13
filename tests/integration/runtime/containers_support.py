"""Fixtures for the container runtime's integration tests (root, real runc and conmon).

Every fixture removes what it made even when the test fails: runc containers (under a private runc root),
conmon processes (by PID), cgroups (under a per-test cgroup parent), rootfs copies and temp dirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.containers import cgroups
from agent.runtime.containers.config import ContainerConfig, ImageConfig
from agent.runtime.containers.oci import process_alive
from agent.runtime.containers.runtime import ContainerRuntime

BUSYBOX = shutil.which("busybox")

requires_runc = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runc") or not shutil.which("conmon") or BUSYBOX is None,
    reason="needs root, runc, conmon and busybox-static",
)


def build_busybox_rootfs(target: Path) -> Path:
    """A minimal busybox root filesystem: the static binary, its applet links, passwd/group, empty dirs."""
    assert BUSYBOX is not None
    (target / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, target / "bin" / "busybox")
    applets = subprocess.run([BUSYBOX, "--list-full"], check=True, capture_output=True, text=True).stdout
    for applet in applets.split():
        link = target / applet
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    for directory in ("etc", "tmp", "proc", "sys", "dev", "root", "home/app"):
        (target / directory).mkdir(parents=True, exist_ok=True)
    (target / "tmp").chmod(0o1777)
    (target / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (target / "etc" / "group").write_text("root:x:0:\napp:x:1000:\nstaff:x:50:app\nnogroup:x:65534:\n")
    os.chown(target / "home" / "app", 1000, 1000)
    return target


class BusyboxProvider:
    """A rootfs provider for tests: a copy of a busybox template per container."""

    def __init__(self, template: Path, base: Path) -> None:
        self.template = template
        self.base = base
        self.prepared: set[str] = set()

    def prepare(self, container_id: str, image_id: str) -> Path:
        """Copy the template (symlinks kept) to a fresh directory."""
        target = self.base / container_id / "rootfs"
        if not target.exists():
            shutil.copytree(self.template, target, symlinks=True)
        self.prepared.add(container_id)
        return target

    def remove(self, container_id: str) -> None:
        """Delete the container's copy."""
        shutil.rmtree(self.base / container_id, ignore_errors=True)
        self.prepared.discard(container_id)


@pytest.fixture(scope="session")
def busybox_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One busybox rootfs per test session, copied for each container."""
    return build_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


class RuntimeEnv:
    """What a test needs to build runtimes on one state dir, and to check and clean leftovers."""

    def __init__(self, tmp: Path, template: Path) -> None:
        self.state_dir = tmp / "state"
        self.provider = BusyboxProvider(template, tmp / "rootfs")
        self.cgroup_parent = f"/shoal-test-{uuid.uuid4().hex[:10]}"
        self.runc_root = self.state_dir / "runc"

    def runtime(self) -> ContainerRuntime:
        """A new runtime instance on this environment's state dir."""
        return ContainerRuntime(
            self.state_dir, self.provider, cgroup_parent=self.cgroup_parent, runc_root=self.runc_root
        )

    def runc_list(self) -> list[dict[str, object]]:
        """``runc list`` under the runtime's root."""
        if not self.runc_root.exists():
            return []
        out = subprocess.run(
            ["runc", "--root", str(self.runc_root), "list", "--format", "json"],
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(out or "[]") or []

    def conmon_pids(self) -> list[int]:
        """PIDs of conmon processes this environment's containers started (from their pid files)."""
        pids = []
        for pidfile in (self.state_dir / "containers").glob("*/bundle/conmon.pid"):
            with contextlib.suppress(ValueError, OSError):
                pids.append(int(pidfile.read_text().strip()))
        return [p for p in pids if _is_conmon(p)]

    def cgroup_dirs(self) -> list[Path]:
        """Container cgroup directories left under this environment's parent, in every hierarchy."""
        found = []
        for parent in cgroups.container_paths(self.cgroup_parent).values():
            if parent.is_dir():
                found.extend(p for p in parent.iterdir() if p.is_dir())
        return found

    def cleanup(self) -> None:
        """Kill and delete every container, conmon and cgroup this environment made."""
        for container in self.runc_list():
            cid = str(container["id"])
            if container.get("status") == "paused":  # frozen processes cannot die until thawed
                subprocess.run(["runc", "--root", str(self.runc_root), "resume", cid], capture_output=True)
            subprocess.run(
                ["runc", "--root", str(self.runc_root), "kill", "--all", cid, "KILL"], capture_output=True
            )
        for pid in self.conmon_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while self.conmon_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        for container in self.runc_list():
            subprocess.run(
                ["runc", "--root", str(self.runc_root), "delete", "--force", str(container["id"])],
                capture_output=True,
            )
        for path in self.cgroup_dirs():
            for dirpath, _dirs, _files in sorted(os.walk(path, topdown=False), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        cgroups.remove_parent_if_empty(self.cgroup_parent)


def _is_conmon(pid: int) -> bool:
    """A live (not zombie) conmon: an exited one lingers as a zombie until init reaps it."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm == "conmon" and process_alive(pid)


@pytest.fixture
def runtime_env(tmp_path: Path, busybox_template: Path) -> Iterator[RuntimeEnv]:
    """A per-test environment, cleaned even on failure; asserts `runc list` is empty afterwards."""
    env = RuntimeEnv(tmp_path, busybox_template)
    try:
        yield env
    finally:
        env.cleanup()
        leftovers = env.runc_list()
        shutil.rmtree(env.state_dir, ignore_errors=True)
        shutil.rmtree(env.provider.base, ignore_errors=True)
    assert leftovers == [], "runc containers left behind"


@pytest.fixture
async def runtime(runtime_env: RuntimeEnv) -> AsyncIterator[ContainerRuntime]:
    """An opened runtime; closed after the test (the environment's finaliser removes the containers)."""
    rt = runtime_env.runtime()
    await rt.open()
    try:
        yield rt
    finally:
        await rt.close()


async def _child_runtime(plan: dict[str, Any]) -> None:
    """Run a runtime that starts the planned containers, prints their ids, then waits to be killed."""
    provider = BusyboxProvider(Path(plan["template"]), Path(plan["base"]))
    rt = ContainerRuntime(
        Path(plan["state_dir"]),
        provider,
        cgroup_parent=plan["cgroup_parent"],
        runc_root=Path(plan["runc_root"]),
    )
    await rt.open()
    ids = []
    for name, script in plan["containers"]:
        config = ContainerConfig(image="busybox", cmd=("sh", "-c", script))
        record = await rt.create(config, ImageConfig(), name=name)
        await rt.start(record.id)
        ids.append(record.id)
    print(json.dumps(ids), flush=True)
    await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(_child_runtime(json.loads(sys.argv[1])))
