"""The container runtime: lifecycle of runc containers under conmon, restart policies, adoption.

Each run of a container is one runc container created by its own conmon, which holds the container's pipes
and outlives this process. The runtime keeps one record per container in its state directory and watches
each conmon through a pidfd; when a conmon exits, the exit code is in the exit file it wrote. A new runtime on
the same state directory adopts running containers (their conmon is still there) and records the exit of
those that ended while no runtime was watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.runtime.containers import cgroups, oci, restart
from agent.runtime.containers.bundle import find_init, write_bundle
from agent.runtime.containers.config import DEFAULT_STOP_TIMEOUT, ContainerConfig, ImageConfig, parse_signal
from agent.runtime.containers.inside import ContainerInsight
from agent.runtime.containers.introspect import matches_filters, random_name, validate_name
from agent.runtime.containers.rootfs import RootfsProvider
from agent.runtime.containers.spec import plan_process
from agent.runtime.containers.state import ContainerRecord, StateStore, now_ns
from agent.runtime.errors import (
    AmbiguousContainer,
    ContainerNotFound,
    ContainerRuntimeError,
    ContainerStateConflict,
    InvalidContainerConfig,
    NameConflict,
    OCIRuntimeError,
)

log = logging.getLogger("shoal.agent.runtime")


def new_container_id() -> str:
    """A new container id: 64 hex digits, as Docker's."""
    return os.urandom(32).hex()


@dataclass(eq=False)
class _Live:
    """In-memory companion of a record: its lock, exit notifications and background tasks."""

    record: ContainerRecord
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    exits: asyncio.Condition = field(default_factory=asyncio.Condition)
    exit_seq: int = 0
    monitor: asyncio.Task[None] | None = None
    restart_task: asyncio.Task[None] | None = None
    restart_delay: float = 0.0
    cleanup: asyncio.Task[None] | None = None  # runc state and cgroups of the last run, going away


class ContainerRuntime(ContainerInsight):
    """Creates and runs containers from a state directory; see the module docstring."""

    def __init__(
        self,
        state_dir: Path,
        rootfs_provider: RootfsProvider,
        *,
        runc_binary: str = "runc",
        conmon_binary: str = "conmon",
        cgroup_parent: str = "/shoal",
        runc_root: Path | None = None,
        init_binary: Path | None = None,
        on_removed: Callable[[ContainerRecord], Awaitable[None]] | None = None,
    ) -> None:
        self.store = StateStore(Path(state_dir))
        self.provider = rootfs_provider
        self.runc = oci.Runc(shutil.which(runc_binary) or runc_binary, runc_root or self.store.root / "runc")
        self.conmon = shutil.which(conmon_binary) or conmon_binary
        self.cgroup_parent = "/" + cgroup_parent.strip("/")
        self.init_binary = init_binary or find_init()
        # Called once a container is gone (also after auto-remove): the owner releases what it attached.
        self.on_removed = on_removed
        self._containers: dict[str, _Live] = {}
        self._reserved: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._opened = False

    # --- opening, adoption, closing ---------------------------------------------------------------------

    async def open(self) -> None:
        """Load every record and adopt running containers (their conmon kept them going)."""
        if self._opened:
            return
        self._opened = True
        known = {str(c.get("id")) for c in await self.runc.list()}
        for record in self.store.load_all():
            live = _Live(record)
            self._containers[record.id] = live
            await self._adopt(live, record.id in known)

    async def close(self) -> None:
        """Stop watching; the containers keep running under their conmon."""
        # Cleanups after exits are short and leave runc's state consistent: let them finish.
        cleanups = [
            live.cleanup for live in self._containers.values() if live.cleanup and not live.cleanup.done()
        ]
        if cleanups:
            await asyncio.wait(cleanups, timeout=10)
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._containers.clear()
        self._opened = False

    async def __aenter__(self) -> ContainerRuntime:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _adopt(self, live: _Live, runc_knows: bool) -> None:
        state = live.record.state
        cid = live.record.id
        if state.status in ("running", "paused"):
            if oci.process_alive(state.conmon_pid, cid):
                runc_state = await self.runc.state(cid)
                status = (runc_state or {}).get("status")
                if status in ("running", "paused") and status != state.status:
                    self._save(live, live.record.with_state(status=status))
                live.stopped.clear()
                live.monitor = self._spawn(self._monitor(live, state.conmon_pid))
            else:
                live.stopped.clear()
                if self.store.read_exit_code(cid) is not None:
                    await self._handle_exit(live)  # it ended while nobody watched: record it now
                else:
                    self._spawn(self._handle_exit(live))  # conmon is gone: find out through runc
        elif state.status == "restarting":
            live.stopped.set()
            live.restart_task = self._spawn(
                self._restart_after(live, live.restart_delay or restart.INITIAL_DELAY)
            )
        elif state.status == "removing":
            live.stopped.set()
            self._spawn(self._finish_remove(live))
        else:
            live.stopped.set()
            if runc_knows:
                # A start interrupted half-way (conmon launched, state not yet saved): undo it.
                await self.runc.delete(cid, force=True)
                cgroups.remove(live.record.cgroups_path)

    # --- lookup -------------------------------------------------------------------------------------------

    def _live(self, ref: str) -> _Live:
        ref = ref.lstrip("/") if ref.startswith("/") else ref
        if ref in self._containers:
            return self._containers[ref]
        for live in self._containers.values():
            if live.record.name == ref:
                return live
        matches = [live for cid, live in self._containers.items() if ref and cid.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise AmbiguousContainer(ref, sorted(live.record.id for live in matches))
        raise ContainerNotFound(ref)

    def inspect(self, ref: str) -> ContainerRecord:
        """The container's record (config, resolved command, state)."""
        return self._live(ref).record

    def list(
        self, all: bool = False, filters: Mapping[str, Sequence[str]] | None = None
    ) -> list[ContainerRecord]:
        """Containers, newest first; without ``all`` only running ones (filters: see ``matches_filters``)."""
        result = []
        for live in self._containers.values():
            record = live.record
            if not all and record.state.status not in ("running", "paused", "restarting"):
                continue
            if filters and not matches_filters(record, filters):
                continue
            result.append(record)
        return sorted(result, key=lambda r: r.created, reverse=True)

    def _save(self, live: _Live, record: ContainerRecord) -> None:
        live.record = record
        self.store.save(record)

    # --- create -------------------------------------------------------------------------------------------

    def _name_for(self, name: str | None, container_id: str) -> str:
        """``name`` checked (or a random free one), refusing names held by anyone but ``container_id``."""
        taken = {live.record.name: cid for cid, live in self._containers.items()}
        taken |= {n: cid for n, cid in self._reserved.items() if cid != container_id}
        if not name:
            return random_name(taken)
        name = validate_name(name)
        if name in taken:
            raise NameConflict(name, taken[name])
        return name

    @contextlib.contextmanager
    def reserve(self, name: str | None = None) -> Iterator[tuple[str, str]]:
        """A new container's ``(id, name)``, the name held until the block ends, for callers that make
        something keyed by the container first (the local API: its network sandbox, whose namespace is
        part of the config); they pass both to :meth:`create` inside the block."""
        container_id = new_container_id()
        name = self._name_for(name, container_id)
        self._reserved[name] = container_id
        try:
            yield container_id, name
        finally:
            if self._reserved.get(name) == container_id:
                del self._reserved[name]

    async def create(
        self,
        config: ContainerConfig,
        image_config: ImageConfig | None = None,
        name: str | None = None,
        *,
        container_id: str | None = None,
    ) -> ContainerRecord:
        """Create a container (rootfs prepared, nothing running yet), as ``docker create``; the id is
        new unless given (from :meth:`reserve`)."""
        config.validate()
        image_config = image_config or ImageConfig()
        container_id = container_id or new_container_id()
        if container_id in self._containers:
            raise InvalidContainerConfig("id", f"container {container_id} already exists")
        name = self._name_for(name, container_id)
        plan = plan_process(container_id, config, image_config)
        # Hold the name while the rootfs is prepared, so a concurrent create cannot take it.
        held = self._reserved.get(name) == container_id  # by the caller, through reserve()
        self._reserved[name] = container_id
        try:
            rootfs = await asyncio.to_thread(
                self.provider.prepare, container_id, config.image_id or config.image
            )
        finally:
            if not held:
                del self._reserved[name]
        record = ContainerRecord(
            id=container_id,
            name=name,
            created=now_ns(),
            config=config,
            image_config=image_config,
            rootfs=str(rootfs),
            path=plan.args[0],
            args=plan.args[1:],
            cgroups_path=f"{self.cgroup_parent}/{container_id}",
        )
        live = _Live(record)
        live.stopped.set()
        try:
            self._save(live, record)
        except OSError:
            await asyncio.to_thread(self.provider.remove, container_id)
            raise
        self._containers[container_id] = live
        return record

    # --- start --------------------------------------------------------------------------------------------

    async def start(self, ref: str) -> ContainerRecord:
        """Start a created or exited container; a running one is left alone (Docker answers 304)."""
        live = self._live(ref)
        async with live.lock:
            status = live.record.state.status
            if status in ("running", "restarting"):
                return live.record
            if status == "paused":
                raise ContainerStateConflict(live.record.id, status, "start")
            if status == "removing":
                raise ContainerStateConflict(live.record.id, status, "start")
            # An explicit start resets the restart manager, as in Docker.
            if live.record.state.restart_count or live.record.state.manually_stopped:
                self._save(live, live.record.with_state(restart_count=0, manually_stopped=False))
            live.restart_delay = 0.0
            await self._start_locked(live)
            return live.record

    def _bundle(self, cid: str) -> Path:
        return self.store.container_dir(cid) / "bundle"

    async def _start_locked(self, live: _Live) -> None:
        await self._cleaned(live)
        record = live.record
        cid = record.id
        try:
            paths = write_bundle(record, self.store.container_dir(cid), self.store.exits, self.init_binary)
        except ContainerRuntimeError as exc:
            await self._record_start_failure(live, str(exc), 125)
            raise OCIRuntimeError(cid, str(exc), 125) from exc
        if (self.runc.root / cid).exists():  # a run that ended while nobody watched
            await self.runc.delete(cid, force=True)
        try:
            launched = await oci.launch_conmon(self.conmon, self.runc, cid, record.name, paths)
        except OCIRuntimeError as exc:
            await self._cleanup_run(cid, record.cgroups_path)
            await self._record_start_failure(live, exc.message, exc.exit_code)
            raise
        try:
            await self.runc.start(cid)
        except OCIRuntimeError as exc:
            await self.runc.kill(cid, signal.SIGKILL, all_processes=True)
            await oci.wait_for_exit(launched.conmon_pid)
            await self._cleanup_run(cid, record.cgroups_path)
            await self._record_start_failure(live, exc.message, exc.exit_code)
            raise
        started = record.with_state(
            status="running",
            pid=launched.pid,
            conmon_pid=launched.conmon_pid,
            started_at=now_ns(),
            exit_code=0,
            error="",
            oom_killed=False,
        )
        self._save(live, started)
        live.stopped.clear()
        live.monitor = self._spawn(self._monitor(live, launched.conmon_pid))

    async def _record_start_failure(self, live: _Live, message: str, exit_code: int) -> None:
        now = now_ns()
        self._save(
            live,
            live.record.with_state(
                status="exited" if live.record.state.started_at else "created",
                pid=0,
                conmon_pid=0,
                exit_code=exit_code,
                error=message,
                finished_at=now,
            ),
        )
        live.stopped.set()
        await self._notify_exit(live)

    async def _cleanup_run(self, cid: str, cgroups_path: str) -> None:
        if (self.runc.root / cid).exists():
            await self.runc.delete(cid, force=True)
        cgroups.remove(cgroups_path)

    async def _cleanup_quietly(self, cid: str, cgroups_path: str) -> None:
        try:
            await self._cleanup_run(cid, cgroups_path)
        except ContainerRuntimeError as exc:
            # The next start or the removal deletes what is left; nobody awaits this task to hear of it.
            log.warning("cleaning up after container %s: %s", cid[:12], exc)

    async def _cleaned(self, live: _Live) -> None:
        """Wait until the last run's runc state and cgroups are gone."""
        task = live.cleanup
        if task is not None and not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        live.cleanup = None

    # --- exits and restarts -------------------------------------------------------------------------------

    async def _monitor(self, live: _Live, conmon_pid: int) -> None:
        await oci.wait_for_exit(conmon_pid)
        await self._handle_exit(live)

    async def _handle_exit(self, live: _Live) -> None:
        record = live.record
        cid = record.id
        code = self.store.read_exit_code(cid)
        error = ""
        if code is None:
            runc_state = await self.runc.state(cid)
            if runc_state and runc_state.get("status") in ("running", "paused"):
                # The monitor died but the container did not: watch it through runc until it ends.
                while (await self.runc.state(cid) or {}).get("status") in ("running", "paused"):
                    await asyncio.sleep(0.5)
            code, error = 255, "container monitor exited without recording an exit code"
        oom = cgroups.oom_kill_count(record.cgroups_path) > 0 or (self._bundle(cid) / "oom").exists()
        finished = now_ns()
        record = live.record  # re-read: a stop or rename may have changed it meanwhile
        state = record.state
        ran_for = (finished - state.started_at) / 1e9 if state.started_at else 0.0
        decision = restart.decide(
            record.config.restart_policy,
            code,
            state.manually_stopped,
            state.restart_count,
            ran_for,
            live.restart_delay,
        )
        live.restart_delay = decision.delay
        self._save(
            live,
            record.with_state(
                status="restarting" if decision.restart else "exited",
                pid=0,
                conmon_pid=0,
                exit_code=code,
                error=error,
                finished_at=finished,
                oom_killed=oom,
            ),
        )
        live.stopped.set()
        # runc's state and the cgroup go in the background: whoever waits for the exit need not wait for
        # that too (a new run of the container, or its removal, waits for it in ``_cleaned``).
        await self._notify_exit(live)
        live.cleanup = self._spawn(self._cleanup_quietly(cid, record.cgroups_path))
        if decision.restart:
            live.restart_task = self._spawn(self._restart_after(live, decision.delay))
        elif record.config.auto_remove and not state.manually_stopped:
            self._spawn(self._auto_remove(cid))

    async def _notify_exit(self, live: _Live) -> None:
        async with live.exits:
            live.exit_seq += 1
            live.exits.notify_all()

    async def _restart_after(self, live: _Live, delay: float) -> None:
        await asyncio.sleep(delay)
        async with live.lock:
            state = live.record.state
            if state.status != "restarting" or state.manually_stopped:
                return
            self._save(live, live.record.with_state(restart_count=state.restart_count + 1))
            try:
                await self._start_locked(live)
            except OCIRuntimeError as exc:
                decision = restart.decide(
                    live.record.config.restart_policy,
                    exc.exit_code,
                    False,
                    live.record.state.restart_count,
                    0.0,
                    live.restart_delay,
                )
                live.restart_delay = decision.delay
                if decision.restart:
                    self._save(live, live.record.with_state(status="restarting"))
                    live.restart_task = self._spawn(self._restart_after(live, decision.delay))

    async def _auto_remove(self, cid: str) -> None:
        with contextlib.suppress(ContainerRuntimeError):
            await self.remove(cid, force=True)

    async def wait(self, ref: str, condition: str = "not-running") -> int:
        """Wait for the container to stop (``not-running``) or for its next exit (``next-exit``)."""
        live = self._live(ref)
        async with live.exits:
            if condition == "not-running" and live.record.state.status not in ("running", "paused"):
                return live.record.state.exit_code
            seq = live.exit_seq
            await live.exits.wait_for(lambda: live.exit_seq != seq)
            return live.record.state.exit_code

    # --- stop, kill, restart, pause -----------------------------------------------------------------------

    async def stop(self, ref: str, timeout: int | None = None) -> ContainerRecord:
        """Send the stop signal, wait ``timeout`` seconds (-1: forever), then SIGKILL."""
        live = self._live(ref)
        async with live.lock:
            await self._stop_locked(live, timeout)
            return live.record

    async def _stop_locked(self, live: _Live, timeout: int | None) -> None:
        record = live.record
        status = record.state.status
        if status == "restarting":
            if live.restart_task is not None:
                live.restart_task.cancel()
            self._save(live, record.with_state(status="exited", manually_stopped=True))
            return
        if status not in ("running", "paused"):
            return
        self._save(live, record.with_state(manually_stopped=True))
        cfg = record.config
        if timeout is None:
            timeout = cfg.stop_timeout if cfg.stop_timeout is not None else DEFAULT_STOP_TIMEOUT
        stop_signal = plan_process(record.id, cfg, record.image_config).stop_signal
        if status == "paused":
            await self.runc.resume(record.id)
            self._save(live, live.record.with_state(status="running"))
        sent = await self.runc.kill(record.id, stop_signal)
        if sent and not await self._wait_stopped(live, None if timeout < 0 else float(timeout)):
            await self.runc.kill(record.id, signal.SIGKILL, all_processes=True)
        await self._wait_stopped(live, None)

    async def _wait_stopped(self, live: _Live, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(live.stopped.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def kill(self, ref: str, sig: str | int = "SIGKILL") -> None:
        """Send a signal to the container's main process; SIGKILL also stops any restart policy.

        As in Docker, a paused container must be unpaused first (its processes could not act on it).
        """
        live = self._live(ref)
        parsed = parse_signal(sig)
        async with live.lock:
            if live.record.state.status != "running":
                raise ContainerStateConflict(live.record.id, live.record.state.status, "kill")
            if parsed == signal.SIGKILL:
                self._save(live, live.record.with_state(manually_stopped=True))
            await self.runc.kill(live.record.id, parsed)

    async def restart(self, ref: str, timeout: int | None = None) -> ContainerRecord:
        """Stop (if running) and start again; like an explicit start, it resets the restart count."""
        live = self._live(ref)
        async with live.lock:
            await self._stop_locked(live, timeout)
            self._save(live, live.record.with_state(manually_stopped=False, restart_count=0))
            live.restart_delay = 0.0
            await self._start_locked(live)
            return live.record

    async def pause(self, ref: str) -> None:
        """Freeze every process of a running container."""
        live = self._live(ref)
        async with live.lock:
            if live.record.state.status != "running":
                raise ContainerStateConflict(live.record.id, live.record.state.status, "pause")
            await self.runc.pause(live.record.id)
            self._save(live, live.record.with_state(status="paused"))

    async def unpause(self, ref: str) -> None:
        """Thaw a paused container."""
        live = self._live(ref)
        async with live.lock:
            if live.record.state.status != "paused":
                raise ContainerStateConflict(live.record.id, live.record.state.status, "unpause")
            await self.runc.resume(live.record.id)
            self._save(live, live.record.with_state(status="running"))

    # --- remove, rename -----------------------------------------------------------------------------------

    async def remove(self, ref: str, force: bool = False) -> None:
        """Remove a container: its runc state, cgroups, rootfs, logs and state directory."""
        live = self._live(ref)
        async with live.lock:
            status = live.record.state.status
            if status in ("running", "paused", "restarting"):
                if not force:
                    raise ContainerStateConflict(
                        live.record.id, status, "remove (stop the container first or force the removal)"
                    )
                if live.restart_task is not None:
                    live.restart_task.cancel()
                self._save(live, live.record.with_state(manually_stopped=True))
                if status == "paused":
                    await self.runc.resume(live.record.id)
                if status != "restarting":
                    await self.runc.kill(live.record.id, signal.SIGKILL, all_processes=True)
                    await self._wait_stopped(live, None)
            self._save(live, live.record.with_state(status="removing"))
            await self._finish_remove(live)

    async def _finish_remove(self, live: _Live) -> None:
        cid = live.record.id
        await self._cleaned(live)
        await self._cleanup_run(cid, live.record.cgroups_path)
        await asyncio.to_thread(self.provider.remove, cid)
        with contextlib.suppress(FileNotFoundError):
            self.store.exit_file(cid).unlink()
        await asyncio.to_thread(shutil.rmtree, self.store.container_dir(cid), True)
        self._containers.pop(cid, None)
        if self.on_removed is not None:
            await self.on_removed(live.record)
        async with live.exits:
            live.exit_seq += 1
            live.exits.notify_all()

    async def rename(self, ref: str, new_name: str) -> None:
        """Give the container another name."""
        live = self._live(ref)
        new_name = validate_name(new_name)
        if new_name in self._reserved:
            raise NameConflict(new_name, self._reserved[new_name])
        for cid, other in self._containers.items():
            if other.record.name == new_name and cid != live.record.id:
                raise NameConflict(new_name, cid)
        self._save(live, replace(live.record, name=new_name))
