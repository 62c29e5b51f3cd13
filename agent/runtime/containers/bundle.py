"""One run's bundle: the files runc and conmon use, written from a container's record.

``<state>/containers/<id>/`` holds ``hostname`` and ``hosts`` (bound into the container, unless its config
names an ``etc_dir`` with its network sandbox's files) and ``bundle/`` with ``config.json`` (the OCI spec)
and the pid and OOM files conmon writes, which a new run must not mistake for its own.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from agent.runtime.containers import cgroups
from agent.runtime.containers.oci import ConmonPaths
from agent.runtime.containers.spec import SpecPaths, build_spec, plan_process
from agent.runtime.containers.state import ContainerRecord
from agent.runtime.containers.users import ensure_workdir

HOSTS = (
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
)
_INIT_CANDIDATES = ("tini-static", "docker-init", "catatonit")


def find_init() -> Path | None:
    """A static init for ``--init`` (Debian's tini-static), if the host has one."""
    for name in _INIT_CANDIDATES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def write_bundle(
    record: ContainerRecord, container_dir: Path, exit_dir: Path, init_binary: Path | None
) -> ConmonPaths:
    """Write the run's files and clear the last run's; raises ContainerRuntimeError on a bad config."""
    cid = record.id
    bundle = container_dir / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    rootfs = Path(record.rootfs)
    plan = plan_process(cid, record.config, record.image_config)
    if record.config.etc_dir:
        # The network sandbox's files: they name the container's addresses and its resolver.
        etc = Path(record.config.etc_dir)
        spec_paths = SpecPaths(rootfs, etc / "hostname", etc / "hosts", etc / "resolv.conf", init_binary)
    else:
        (container_dir / "hostname").write_text(plan.hostname + "\n")
        (container_dir / "hosts").write_text(HOSTS)
        spec_paths = SpecPaths(rootfs, container_dir / "hostname", container_dir / "hosts", None, init_binary)
    spec = build_spec(
        cid,
        record.config,
        record.image_config,
        spec_paths,
        record.cgroups_path,
        cgroups.is_v2(),
        annotations={"org.shoal.container.name": record.name},
    )
    user = record.config.user if record.config.user is not None else record.image_config.user
    ensure_workdir(rootfs, plan.cwd, user)
    (bundle / "config.json").write_text(json.dumps(spec))
    paths = ConmonPaths(
        bundle=bundle,
        container_pidfile=bundle / "pidfile",
        conmon_pidfile=bundle / "conmon.pid",
        log_path=container_dir / "ctr.log",
        exit_dir=exit_dir,
    )
    for stale in (exit_dir / cid, paths.container_pidfile, paths.conmon_pidfile, bundle / "oom"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    return paths
