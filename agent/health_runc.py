"""Health checks of runc containers: the image's own ``HEALTHCHECK`` and one check command run in a container.

A check runs as ``runc exec`` of the container's own process (its user, environment and working
directory) with the check's command, without a terminal and with stdin closed; stdout and stderr are
captured together, of which Docker keeps the first 4 KiB. The runtime's ``exec`` waits for the command
however long it takes, so checks use their own: cancelling one (the check's timeout) kills the command
— through the PID runc writes to ``--pid-file`` — and then runc, leaving nothing behind in the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from agent.health import MAX_OUTPUT, CheckOutput, from_docker, limit_output
from agent.runtime.containers import oci
from agent.runtime.containers.introspect import exec_process
from agent.runtime.errors import ImageNotFound
from agent.runtime.local import LocalRuntime
from api.objects import HealthConfig

_CHUNK = 65536


def image_healthcheck(runtime: LocalRuntime, image: str) -> HealthConfig | None:
    """The ``Healthcheck`` of a local image's config (Dockerfile ``HEALTHCHECK``), or None."""
    try:
        config = runtime.image(image).config.container
    except ImageNotFound:
        return None
    return from_docker(config.get("Healthcheck"))


async def exec_check(runtime: LocalRuntime, container_id: str, command: Sequence[str]) -> CheckOutput:
    """Run ``command`` once in the running container; its exit code and output (module docstring).

    A command that cannot be started gets Docker's codes (127 not found, 126 otherwise) with runc's
    message as the output.
    """
    containers = runtime.containers
    record = containers.inspect(container_id)
    if record.state.status != "running":
        return CheckOutput(-1, f"container {record.short_id} is not running")
    bundle = containers.store.container_dir(record.id) / "bundle"
    base = json.loads((bundle / "config.json").read_text())["process"]
    process = exec_process(base, Path(record.rootfs), command)
    token = os.urandom(6).hex()
    process_file = bundle / f"health-{token}.json"
    log_file = bundle / f"health-{token}.log"
    pid_file = bundle / f"health-{token}.pid"
    process_file.write_text(json.dumps(process))
    try:
        code, output, truncated = await _run(containers.runc, record.id, process_file, log_file, pid_file)
        runc_log = log_file.read_text() if log_file.exists() else ""
    finally:
        for path in (process_file, log_file, pid_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    errors = [line for line in runc_log.splitlines() if '"level":"error"' in line]
    if code != 0 and errors:
        message = oci.clean_runc_message("\n".join(errors))
        started = oci.classify_start_error(message)
        return CheckOutput(126 if started == 125 else started, message)
    return CheckOutput(code, limit_output(output, truncated))


async def _run(
    runc: oci.Runc, container_id: str, process_file: Path, log_file: Path, pid_file: Path
) -> tuple[int, bytes, bool]:
    proc = await asyncio.create_subprocess_exec(
        runc.binary,
        *runc.global_args,
        "--log",
        str(log_file),
        "--log-format",
        "json",
        "exec",
        "--process",
        str(process_file),
        "--pid-file",
        str(pid_file),
        container_id,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        output, truncated = await _read_limited(proc.stdout)
        return await proc.wait(), output, truncated
    except BaseException:
        # Timed out (cancelled): the command first — runc exec cannot forward SIGKILL —, then runc. Only
        # while runc still runs: it reaps the command, and a PID read after that may be someone else's.
        if proc.returncode is None:
            _kill_pid_in(pid_file)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(proc.wait())
        raise


async def _read_limited(stream: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Everything the stream gives until EOF, keeping only the first MAX_OUTPUT bytes."""
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(_CHUNK):
        room = MAX_OUTPUT - len(kept)
        if room > 0:
            kept += chunk[:room]
        if len(chunk) > room:
            truncated = True
    return bytes(kept), truncated


def _kill_pid_in(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
