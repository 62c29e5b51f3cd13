"""Looking into running containers: top, logs, exec, stats (mixed into :class:`ContainerRuntime`)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from agent.runtime.containers import cgroups, oci
from agent.runtime.containers.introspect import ExecResult, TopResult, exec_process, parse_ps
from agent.runtime.containers.logs import LogEntry, LogFilter, follow_logs, read_logs
from agent.runtime.containers.state import ContainerRecord, StateStore
from agent.runtime.errors import ContainerError, ContainerNotFound, ContainerStateConflict

ALL_LOGS = LogFilter()


class ContainerInsight:
    """Read-mostly operations on containers; the runtime provides ``runc``, ``store`` and ``inspect``."""

    runc: oci.Runc
    store: StateStore

    def inspect(self, ref: str) -> ContainerRecord:
        """The container's record (implemented by the runtime)."""
        raise NotImplementedError

    def _running(self, ref: str, operation: str, allow_paused: bool = False) -> ContainerRecord:
        record = self.inspect(ref)
        ok = ("running", "paused") if allow_paused else ("running",)
        if record.state.status not in ok:
            raise ContainerStateConflict(record.id, record.state.status, operation)
        return record

    async def top(self, ref: str, ps_args: str = "-ef") -> TopResult:
        """The container's processes as ``ps`` shows them (``docker top``)."""
        record = self._running(ref, "top", allow_paused=True)
        pids = await self.runc.ps(record.id)
        result = await oci.run_command("ps", *ps_args.split())
        if result.returncode != 0:
            raise ContainerError(record.id, f"ps failed: {result.stderr.decode(errors='replace').strip()}")
        return parse_ps(result.stdout.decode(errors="replace"), pids)

    def log_path(self, ref: str) -> Path:
        """The CRI log file conmon writes for this container."""
        return self.store.container_dir(self.inspect(ref).id) / "ctr.log"

    def logs(self, ref: str, log_filter: LogFilter = ALL_LOGS) -> list[LogEntry]:
        """What the container wrote so far (every run since it was created)."""
        return read_logs([self.log_path(ref)], log_filter)

    async def follow(self, ref: str, log_filter: LogFilter = ALL_LOGS) -> AsyncIterator[LogEntry]:
        """Existing lines, then new ones as they come, until the container stops (``--follow``)."""
        cid = self.inspect(ref).id

        def done() -> bool:
            try:
                return self.inspect(cid).state.status not in ("running", "paused", "restarting")
            except ContainerNotFound:
                return True

        async for entry in follow_logs(self.log_path(cid), log_filter, done):
            yield entry

    async def exec(
        self,
        ref: str,
        cmd: Sequence[str],
        env: Sequence[str] = (),
        user: str | None = None,
        workdir: str | None = None,
    ) -> ExecResult:
        """Run a command in the running container and wait for it; its exit code is propagated.

        A command that cannot be started gets Docker's codes: 127 not found, 126 not executable (or any
        other failure of runc to start it), with runc's message in ``error``.
        """
        record = self._running(ref, "exec")
        bundle = self.store.container_dir(record.id) / "bundle"
        base = json.loads((bundle / "config.json").read_text())["process"]
        process = exec_process(base, Path(record.rootfs), cmd, env, user, workdir)
        token = os.urandom(6).hex()
        process_file, log_file = bundle / f"exec-{token}.json", bundle / f"exec-{token}.log"
        process_file.write_text(json.dumps(process))
        try:
            result = await self.runc.exec(record.id, process_file, log_file)
            runc_log = log_file.read_text() if log_file.exists() else ""
        finally:
            for path in (process_file, log_file):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        errors = [line for line in runc_log.splitlines() if '"level":"error"' in line]
        if result.returncode != 0 and errors:
            message = oci.clean_runc_message("\n".join(errors))
            code = oci.classify_start_error(message)
            # runc also echoes its error on stderr: the process never ran, so it had no output of its own.
            return ExecResult(126 if code == 125 else code, result.stdout, b"", error=message)
        return ExecResult(result.returncode, result.stdout, result.stderr)

    async def stats(self, ref: str) -> cgroups.CgroupStats:
        """One sample of CPU, memory and pids use from the container's cgroups."""
        record = self._running(ref, "stats", allow_paused=True)
        return cgroups.read_stats(record.cgroups_path)
