"""The agent's local runtime: images, snapshots, volumes and containers behind one facade.

``LocalRuntime(root)`` keeps everything under one state directory::

    images/       the OCI image store          snapshots/   container root file systems (overlay | vfs)
    volumes/      named and anonymous volumes  containers/  one record, bundle and log per container
    exits/, runc/ exit codes conmon writes, runc's private state root

Creating a container from an image reference resolves the image, takes its config (Cmd, Entrypoint, Env,
WorkingDir, User, ExposedPorts, Volumes, Labels, StopSignal), plans the mounts (volumes-from, binds and
volumes, anonymous volumes for the image's ``VOLUME``), prepares the rootfs through the snapshotter and
fills empty volumes with the image's content at their mount point. Removing a container removes its
snapshot (and, with ``volumes=True`` or auto-remove, its anonymous volumes); removing an image is refused
while a container uses it. The agent's worker and its local API both drive the host through this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from agent.runtime.containers.config import ContainerConfig, ImageConfig, Mount
from agent.runtime.containers.runtime import ContainerRuntime
from agent.runtime.containers.state import ContainerRecord
from agent.runtime.errors import (
    ContainerNotFound,
    ImageError,
    InvalidContainerConfig,
    InvalidFilter,
    InvalidVolume,
    VolumeError,
)
from agent.runtime.images.archive import import_rootfs, load_archive, save_archive
from agent.runtime.images.auth import Credentials, RegistryOptions
from agent.runtime.images.image import Image
from agent.runtime.images.reference import parse_reference
from agent.runtime.images.registry import ProgressCallback, RegistryClient
from agent.runtime.images.store import ImageStore, Removal
from agent.runtime.snapshots import open_snapshotter
from agent.runtime.volumes.spec import MountRequest, PlannedMount, VolumeSource, plan_mounts
from agent.runtime.volumes.store import VolumeStore, copy_image_content

log = logging.getLogger("shoal.agent.runtime")

#: Docker always treats registries on the loopback network as insecure (plain HTTP allowed).
DEFAULT_INSECURE = frozenset({"127.0.0.0/8"})
_CREATING = "(a container being created)"
CONTAINER_FILTERS = frozenset({"label", "status", "name", "ancestor", "id"})


def default_registry_options() -> RegistryOptions:
    """Registry settings with Docker's defaults (loopback registries may use plain HTTP)."""
    return RegistryOptions(insecure=DEFAULT_INSECURE)


@dataclass(frozen=True)
class LocalRuntimeOptions:
    """How the local runtime runs: storage driver, cgroup parent, binaries, registry access."""

    storage_driver: str = "auto"
    cgroup_parent: str = "/shoal"
    runc_binary: str = "runc"
    conmon_binary: str = "conmon"
    registry: RegistryOptions = field(default_factory=default_registry_options)


class LocalRuntime:
    """One host's images, snapshots, volumes and containers (see the module docstring)."""

    def __init__(self, root: Path | str, options: LocalRuntimeOptions | None = None) -> None:
        self.root = Path(root)
        self.options = options or LocalRuntimeOptions()
        self.images = ImageStore(self.root / "images")
        self.snapshots = open_snapshotter(self.root / "snapshots", self.images, self.options.storage_driver)
        self.volumes = VolumeStore(self.root / "volumes", users=self.volume_users)
        self.containers = ContainerRuntime(
            self.root,
            self.snapshots,
            runc_binary=self.options.runc_binary,
            conmon_binary=self.options.conmon_binary,
            cgroup_parent=self.options.cgroup_parent,
            on_removed=self._released,
        )
        self._held: dict[str, int] = {}  # volumes a create in progress has planned but not yet recorded
        self._purge: set[str] = set()  # containers whose anonymous volumes go with them
        #: Called with the record of every container once it is gone (``rm``, auto-remove, a failed
        #: create): what others attached to a container (the local API: its network sandbox) goes too.
        self.removal_hooks: list[Callable[[ContainerRecord], Awaitable[None]]] = []

    async def open(self) -> None:
        """Adopt the containers of a previous run and tidy what a crash left half-made."""
        await asyncio.to_thread(self.volumes.remove_stale)
        await self.containers.open()

    async def close(self) -> None:
        """Stop watching; containers keep running under their monitors."""
        await self.containers.close()

    async def __aenter__(self) -> LocalRuntime:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- who uses what ------------------------------------------------------------------------------------
    def image_users(self, image_id: str) -> list[str]:
        """Ids of the containers (any state) created from the image."""
        return [r.id for r in self.containers.list(all=True) if r.config.image_id == image_id]

    def volume_users(self, name: str) -> list[str]:
        """Ids of the containers (any state) that mount the volume."""
        users = [
            r.id
            for r in self.containers.list(all=True)
            if any(m.type == "volume" and m.source == name for m in r.config.mounts)
        ]
        return users + ([_CREATING] if self._held.get(name) else [])

    # --- images -------------------------------------------------------------------------------------------
    def image(self, name: str) -> Image:
        """The local image ``name`` designates (reference, id or id prefix)."""
        return self.images.get(name)

    async def remove_image(self, name: str, *, force: bool = False, prune: bool = True) -> list[Removal]:
        """``docker rmi``: refused while a container uses the image; never forced past a running one (but
        untagging one of an image's several names always works, as in Docker)."""

        def running(image_id: str) -> list[str]:
            return [r.id for r in self.containers.list() if r.config.image_id == image_id and r.state.running]

        removals = await asyncio.to_thread(
            self.images.remove, name, force=force, in_use=self.image_users, running=running
        )
        if prune and any(r.kind == "Deleted" for r in removals):
            await asyncio.to_thread(self.snapshots.prune_layers)
        return removals

    def _registry_options(self, reference: str, credentials: Credentials | None) -> RegistryOptions:
        options = self.options.registry
        if credentials is not None and (credentials.username or credentials.password):
            registry = parse_reference(reference).registry
            options = replace(options, credentials={**options.credentials, registry: credentials})
        return options

    async def pull(
        self,
        reference: str,
        *,
        progress: ProgressCallback | None = None,
        credentials: Credentials | None = None,
    ) -> Image:
        """Pull an image from its registry (layers already here are not downloaded again)."""
        async with RegistryClient(self.images, self._registry_options(reference, credentials)) as client:
            return await client.pull(reference, progress=progress)

    async def push(
        self,
        reference: str,
        *,
        progress: ProgressCallback | None = None,
        credentials: Credentials | None = None,
    ) -> str:
        """Push a local image; returns the manifest digest."""
        async with RegistryClient(self.images, self._registry_options(reference, credentials)) as client:
            return await client.push(reference, progress=progress)

    async def load(self, source: Path | BinaryIO) -> list[str]:
        """``docker load``: returns Docker's lines (``Loaded image: …``)."""
        return await asyncio.to_thread(load_archive, self.images, source)

    async def save(self, names: Sequence[str], dest: Path | BinaryIO) -> None:
        """``docker save`` of the named images."""
        await asyncio.to_thread(save_archive, self.images, list(names), dest)

    async def import_image(
        self, source: Path | BinaryIO, reference: str | None, changes: Sequence[str] = (), message: str = ""
    ) -> Image:
        """``docker import``: a root file system tarball as a one-layer image."""
        return await asyncio.to_thread(
            import_rootfs, self.images, source, reference=reference, changes=changes, message=message
        )

    # --- containers ---------------------------------------------------------------------------------------
    def list_containers(
        self, all: bool = False, filters: Mapping[str, Sequence[str]] | None = None
    ) -> list[ContainerRecord]:
        """``docker ps``; an ``ancestor`` filter matches every reference of the image, as in Docker."""
        for key in filters or {}:
            if key not in CONTAINER_FILTERS:
                raise InvalidFilter(key, f"unknown filter (known: {', '.join(sorted(CONTAINER_FILTERS))})")
        if filters and filters.get("ancestor"):
            ancestors = list(filters["ancestor"])
            for value in filters["ancestor"]:
                with contextlib.suppress(ImageError):
                    ancestors.append(self.images.get(value).id)
            filters = {**filters, "ancestor": ancestors}
        return self.containers.list(all=all, filters=filters)

    async def create(
        self,
        config: ContainerConfig,
        name: str | None = None,
        *,
        mounts: Sequence[MountRequest] = (),
        volumes: Sequence[str] = (),
        volumes_from: Sequence[str] = (),
        container_id: str | None = None,
    ) -> ContainerRecord:
        """``docker create``: ``config.image`` must be a local image; ``mounts`` are binds and volumes,
        ``volumes`` extra anonymous volume paths, ``volumes_from`` ``container[:ro|:rw]`` references;
        ``container_id`` and ``name`` may come from :meth:`ContainerRuntime.reserve`.
        """
        image = self.images.get(config.image)
        image_config = ImageConfig.from_oci(image.config.container)
        config = replace(config, image_id=image.id)
        config.validate()
        for req in mounts:
            if req.type == "bind":
                _ensure_host_path(req)
        anonymous: list[str] = []
        held: list[str] = []

        def volume_path(volume_name: str | None, is_anonymous: bool) -> tuple[str, str]:
            volume = self.volumes.create(volume_name, anonymous=is_anonymous)
            if is_anonymous:
                anonymous.append(volume.name)
            self._held[volume.name] = self._held.get(volume.name, 0) + 1
            held.append(volume.name)
            return volume.name, str(volume.mountpoint)

        try:
            planned = plan_mounts(
                mounts,
                (*image_config.volumes, *volumes),
                volumes_from,
                VolumeSource(volume_path, self._container_mounts),
                config.tmpfs,
            )
            config = replace(config, mounts=tuple(p.mount for p in planned))
            record = await self.containers.create(config, image_config, name, container_id=container_id)
            try:
                await asyncio.to_thread(self._copy_content, Path(record.rootfs), planned)
            except BaseException:
                self._purge.add(record.id)
                await self.containers.remove(record.id, force=True)
                raise
            return record
        except BaseException:
            for volume_name in anonymous:
                self._release_hold(volume_name)
                with contextlib.suppress(VolumeError):
                    self.volumes.remove(volume_name, force=True)
            raise
        finally:
            for volume_name in held:
                self._release_hold(volume_name)

    def _release_hold(self, name: str) -> None:
        count = self._held.get(name, 0) - 1
        if count > 0:
            self._held[name] = count
        else:
            self._held.pop(name, None)

    def _container_mounts(self, ref: str) -> Sequence[Mount]:
        return self.containers.inspect(ref).config.mounts

    def _copy_content(self, rootfs: Path, planned: Sequence[PlannedMount]) -> None:
        for item in planned:
            if item.copy:
                copy_image_content(rootfs, item.mount.target, self.volumes.get(item.mount.source))

    async def remove(self, ref: str, *, force: bool = False, volumes: bool = False) -> None:
        """``docker rm [-f] [-v]``: the container, its snapshot, with ``volumes`` its anonymous volumes."""
        record = self.containers.inspect(ref)
        if volumes:
            self._purge.add(record.id)
        try:
            await self.containers.remove(record.id, force=force)
        finally:
            self._purge.discard(record.id)

    async def _released(self, record: ContainerRecord) -> None:
        """Called by the container runtime once a container is gone."""
        for hook in list(self.removal_hooks):
            try:
                await hook(record)
            except Exception:
                # The container is gone whatever a hook says; what it failed to release is logged.
                log.exception("releasing what container %s held", record.id[:12])
        if record.id not in self._purge and not record.config.auto_remove:
            return
        for mount in record.config.mounts:
            if mount.type == "volume" and not mount.named:
                # Another container may still use it (volumes-from): then it stays, as in Docker.
                with contextlib.suppress(VolumeError):
                    await asyncio.to_thread(self.volumes.remove, mount.source, force=True)

    async def wait(self, ref: str, condition: str = "not-running") -> int:
        """``docker wait``: ``not-running``, ``next-exit`` or ``removed``; returns the exit code."""
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidContainerConfig("condition", f"invalid condition {condition!r}")
        if condition != "removed":
            return await self.containers.wait(ref, condition)
        cid = self.containers.inspect(ref).id
        code = self.containers.inspect(cid).state.exit_code
        while True:
            try:
                code = self.containers.inspect(cid).state.exit_code
                code = await self.containers.wait(cid, "next-exit")
            except ContainerNotFound:
                return code


def _ensure_host_path(req: MountRequest) -> None:
    """``-v /host:/ctr`` creates a missing host directory; ``--mount type=bind`` refuses it."""
    path = Path(req.source)
    if path.exists():
        return
    if not req.create_host_path:
        raise InvalidVolume(req.source, f"bind source path does not exist: {req.source}")
    path.mkdir(parents=True, exist_ok=True)
