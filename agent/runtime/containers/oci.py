"""Driving runc and conmon: async wrappers around their command lines.

conmon (``--api-version 1``) runs ``runc create`` with the container's stdio on pipes it owns, double-forks
so that it outlives us, writes the container's output as CRI log lines and, when the container exits, its exit
code to ``<exit-dir>/<id>``. It reports the outcome of ``runc create`` on a "sync pipe" whose descriptor we
pass in ``_OCI_SYNCPIPE``: ``{"data": <pid>}`` or ``{"data": -1, "message": "<runc's error>"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.runtime.errors import OCIRuntimeError

_NOT_FOUND = re.compile(r"executable file not found|no such file or directory|not found in \$PATH", re.I)
_NOT_EXECUTABLE = re.compile(r"permission denied|exec format error|is a directory", re.I)


def classify_start_error(message: str) -> int:
    """Docker's exit code for a failed start: 127 command not found, 126 not executable, else 125."""
    # Only the part about exec'ing the user's command decides 126/127; other failures are the runtime's.
    exec_part = message.split("exec:", 1)[1] if "exec:" in message else ""
    if exec_part and _NOT_FOUND.search(exec_part):
        return 127
    if exec_part and _NOT_EXECUTABLE.search(exec_part):
        return 126
    return 125


def clean_runc_message(message: str) -> str:
    """runc's logrus line (``time=… level=error msg="…"``) or JSON log record → just the message."""
    message = message.strip()
    lines = []
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                line = str(json.loads(line).get("msg", line))
        else:
            match = re.search(r'msg="((?:[^"\\]|\\.)*)"', line)
            if match:
                line = match.group(1).encode().decode("unicode_escape")
        if line:
            lines.append(line)
    return "; ".join(lines) or message


@dataclass(frozen=True)
class CommandResult:
    """Exit code and output of one command."""

    returncode: int
    stdout: bytes
    stderr: bytes


async def run_command(*args: str, input_data: bytes | None = None) -> CommandResult:
    """Run a command to completion, capturing its output."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if input_data is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await proc.communicate(input_data)
    assert proc.returncode is not None
    return CommandResult(proc.returncode, stdout, stderr)


class Runc:
    """The ``runc`` CLI with a private state root (``--root``), so several runtimes never see each other."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @property
    def global_args(self) -> list[str]:
        """Options that go before the subcommand."""
        return ["--root", str(self.root)]

    async def _run(self, *args: str) -> CommandResult:
        return await run_command(self.binary, *self.global_args, *args)

    async def _check(self, container_id: str, *args: str) -> CommandResult:
        result = await self._run(*args)
        if result.returncode != 0:
            message = clean_runc_message(result.stderr.decode(errors="replace"))
            raise OCIRuntimeError(container_id, f"runc {args[0]}: {message}")
        return result

    async def start(self, container_id: str) -> None:
        """Start the process of a created container (runc only exec's the user's command now)."""
        if not await release_init(self.root / container_id):
            await self._check(container_id, "start", container_id)

    async def kill(self, container_id: str, sig: signal.Signals, all_processes: bool = False) -> bool:
        """Send a signal; False when the container is not running any more."""
        args = ["kill", *(["--all"] if all_processes else []), container_id, str(int(sig))]
        result = await self._run(*args)
        if result.returncode == 0:
            return True
        text = result.stderr.decode(errors="replace")
        if "not running" in text or "does not exist" in text or "process already finished" in text:
            return False
        raise OCIRuntimeError(container_id, f"runc kill: {clean_runc_message(text)}")

    async def pause(self, container_id: str) -> None:
        """Freeze every process of the container."""
        await self._check(container_id, "pause", container_id)

    async def resume(self, container_id: str) -> None:
        """Thaw a paused container."""
        await self._check(container_id, "resume", container_id)

    async def delete(self, container_id: str, force: bool = False) -> None:
        """Remove runc's state and the container's cgroups; missing containers are fine."""
        result = await self._run("delete", *(["--force"] if force else []), container_id)
        text = result.stderr.decode(errors="replace")
        if result.returncode != 0 and "does not exist" not in text:
            raise OCIRuntimeError(container_id, f"runc delete: {clean_runc_message(text)}")

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """runc's view of the container (``status``: created/running/paused/stopped), None if unknown."""
        result = await self._run("state", container_id)
        if result.returncode != 0:
            return None
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    async def ps(self, container_id: str) -> list[int]:
        """Host PIDs of every process in the container."""
        result = await self._check(container_id, "ps", "--format", "json", container_id)
        pids = json.loads(result.stdout or b"[]") or []
        return [int(p) for p in pids]

    async def list(self) -> list[dict[str, Any]]:
        """Every container under this root."""
        result = await self._run("list", "--format", "json")
        if result.returncode != 0:
            return []
        data: list[dict[str, Any]] = json.loads(result.stdout or b"[]") or []
        return data

    async def exec(self, container_id: str, process_file: Path, log_file: Path) -> CommandResult:
        """Run a process described by an OCI process JSON in the container, waiting for it to finish.

        runc's own errors go to ``log_file`` (JSON), so the process's stderr stays the process's.
        """
        proc = await asyncio.create_subprocess_exec(
            self.binary,
            *self.global_args,
            "--log",
            str(log_file),
            "--log-format",
            "json",
            "exec",
            "--process",
            str(process_file),
            container_id,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await proc.communicate()
        assert proc.returncode is not None
        return CommandResult(proc.returncode, stdout, stderr)


EXEC_FIFO = "exec.fifo"


async def release_init(state_dir: Path, timeout: float = 10.0) -> bool:
    """Do what ``runc start`` does, without running runc: let a created container exec its process.

    A created container's init waits in ``open(<state>/exec.fifo, O_WRONLY)``; ``runc start`` opens the
    FIFO for reading, reads the byte init writes, and removes the FIFO (runc then sees the container as
    running). Doing the same here saves starting a runc process (several milliseconds per start). The
    FIFO is watched with the event loop, so a dead init cannot block it; False means "not done, use
    ``runc start``" (no FIFO, no byte, or no answer within ``timeout``), which then reports the error.
    """
    fifo = state_dir / EXEC_FIFO
    try:
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    # Linux reports a FIFO readable when the writer wrote or hung up, not before a writer ever opened it.
    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(readable, timeout)
        data = os.read(fd, 16)
    except (TimeoutError, BlockingIOError):
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    if not data:
        return False
    with contextlib.suppress(FileNotFoundError):
        fifo.unlink()
    return True


@dataclass(frozen=True)
class ConmonPaths:
    """Files one run of a container uses."""

    bundle: Path
    container_pidfile: Path
    conmon_pidfile: Path
    log_path: Path
    exit_dir: Path


@dataclass(frozen=True)
class Launched:
    """A container created under conmon: its init PID (not yet exec'd) and conmon's PID."""

    pid: int
    conmon_pid: int


async def _read_sync_pipe(fd: int) -> bytes:
    """Read the first line conmon writes to the sync pipe (or everything until EOF)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
    try:
        return await reader.readline()
    finally:
        transport.close()


async def launch_conmon(
    conmon: str, runc: Runc, container_id: str, name: str, paths: ConmonPaths
) -> Launched:
    """Create the container under a new conmon; raise :class:`OCIRuntimeError` with Docker's exit code."""
    read_fd, write_fd = os.pipe()
    args = [
        conmon,
        "--api-version",
        "1",
        "-c",
        container_id,
        "-u",
        container_id[:12],
        "-n",
        name,
        "-r",
        runc.binary,
        "-b",
        str(paths.bundle),
        "-p",
        str(paths.container_pidfile),
        "-P",
        str(paths.conmon_pidfile),
        "-l",
        f"k8s-file:{paths.log_path}",
        "--exit-dir",
        str(paths.exit_dir),
        # conmon binds its attach socket at <dir>/<cuuid>/attach; relative to its working directory (the
        # bundle) that path stays short whatever the state directory, and goes away with the bundle.
        "--socket-dir-path",
        ".",
        "--log-level",
        "error",
    ]
    for arg in runc.global_args:
        args += ["--runtime-arg", arg]
    env = {k: v for k, v in os.environ.items() if not k.startswith("_OCI_")}
    env["_OCI_SYNCPIPE"] = str(write_fd)
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            env=env,
            pass_fds=(write_fd,),
            cwd=str(paths.bundle),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        os.close(read_fd)
        os.close(write_fd)
        raise OCIRuntimeError(container_id, f"cannot run conmon: {exc}") from exc
    os.close(write_fd)
    line = await _read_sync_pipe(read_fd)
    # conmon's first process exits as soon as it has forked the monitor; its output is only early errors.
    _, err = await proc.communicate()
    if not line:
        raise OCIRuntimeError(container_id, f"conmon failed: {err.decode(errors='replace').strip()}")
    message = json.loads(line)
    pid = int(message.get("data", -1))
    if pid <= 0:
        text = clean_runc_message(str(message.get("message", "unknown error")))
        raise OCIRuntimeError(container_id, text, classify_start_error(text))
    conmon_pid = int(paths.conmon_pidfile.read_text().strip())
    return Launched(pid=pid, conmon_pid=conmon_pid)


def process_alive(pid: int, expect_in_cmdline: str = "") -> bool:
    """True when ``pid`` exists and (if given) its command line contains the text (guards PID reuse)."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return not expect_in_cmdline or expect_in_cmdline.encode() in cmdline


async def wait_for_exit(pid: int) -> None:
    """Wait until a process (not necessarily our child) has exited, without polling."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
