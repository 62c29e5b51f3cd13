"""``/containers/{id}/exec``, ``/exec/{id}/start``, ``/exec/{id}/json``: non-interactive exec.

The command runs to completion inside the container; its output comes back multiplexed (stdout frames,
then stderr frames), and its exit code through ``/exec/{id}/json``. A client that asks to upgrade the
connection (Docker's CLI does) gets ``101 Switching Protocols`` and the same frames on the raw
connection; ``Detach`` runs the command in the background.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from agent.api.common import (
    EXECS,
    STDERR,
    STDOUT,
    ExecInstance,
    frame,
    json_response,
    output_stream,
    runtime_of,
)
from agent.api.errors import BadParameter, NotSupported
from agent.api.params import json_body
from agent.runtime.containers.introspect import ExecResult
from agent.runtime.errors import ContainerStateConflict
from agent.runtime.local import LocalRuntime


async def create_exec(request: web.Request) -> web.Response:
    """``POST /containers/{id}/exec``: 201 with the exec instance's ``Id``."""
    rt = runtime_of(request)
    record = rt.containers.inspect(request.match_info["id"])
    body = await json_body(request)
    cmd = body.get("Cmd")
    if isinstance(cmd, str):
        cmd = [cmd]
    if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
        raise BadParameter("Cmd", "a command (list of strings) is required")
    if body.get("Tty") or body.get("AttachStdin"):
        raise NotSupported("an interactive exec (Tty or AttachStdin)")
    if record.state.status != "running":
        raise ContainerStateConflict(record.id, record.state.status, "exec")
    registry = request.app[EXECS]
    registry.prune({r.id for r in rt.containers.list(all=True)})
    instance = registry.add(
        ExecInstance(
            id=registry.new_id(),
            container_id=record.id,
            cmd=tuple(cmd),
            env=tuple(str(e) for e in body.get("Env") or ()),
            user=str(body["User"]) if body.get("User") else None,
            workdir=str(body["WorkingDir"]) if body.get("WorkingDir") else None,
            privileged=bool(body.get("Privileged")),
            attach_stdout=bool(body.get("AttachStdout", True)),
            attach_stderr=bool(body.get("AttachStderr", True)),
        )
    )
    return json_response({"Id": instance.id}, status=201)


async def _run(rt: LocalRuntime, instance: ExecInstance) -> ExecResult:
    instance.running = True
    try:
        result = await rt.containers.exec(
            instance.container_id, instance.cmd, instance.env, instance.user, instance.workdir
        )
    except BaseException:
        instance.exit_code = 126
        raise
    finally:
        instance.running = False
    instance.exit_code = result.exit_code
    return result


async def start_exec(request: web.Request) -> web.StreamResponse:
    """``POST /exec/{id}/start``: run the command; stream its output unless ``Detach``."""
    rt = runtime_of(request)
    instance = request.app[EXECS].get(request.match_info["id"])
    body = await json_body(request, required=False)
    if body.get("Tty"):
        raise NotSupported("an exec with a TTY")
    if instance.started:
        raise ContainerStateConflict(instance.container_id, "running", "start an exec twice")
    state = rt.containers.inspect(instance.container_id).state.status
    if state != "running":
        raise ContainerStateConflict(instance.container_id, state, "exec")
    instance.started = True
    if body.get("Detach"):
        instance.task = asyncio.ensure_future(_run(rt, instance))
        # A detached exec's failure is already recorded in its exit code; nobody awaits the task.
        instance.task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return web.Response(status=200)
    result = await _run(rt, instance)
    response, _ = await output_stream(request)
    out = b""
    if instance.attach_stdout and result.stdout:
        out += frame(STDOUT, result.stdout)
    if instance.attach_stderr and (result.stderr or result.error):
        out += frame(STDERR, result.stderr or (result.error + "\n").encode())
    if out:
        await response.write(out)
    await response.write_eof()
    return response


async def inspect_exec(request: web.Request) -> web.Response:
    """``GET /exec/{id}/json``: running or not, and the exit code once it ended."""
    return json_response(request.app[EXECS].get(request.match_info["id"]).docker())


ROUTES = [
    ("POST", "/containers/{id}/exec", create_exec),
    ("POST", "/exec/{id}/start", start_exec),
    ("GET", "/exec/{id}/json", inspect_exec),
]
