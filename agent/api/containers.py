"""``/containers/…``: create, list, inspect, lifecycle, wait, rename, remove, top, stats, changes.

Logs are in :mod:`agent.api.logs`, exec in :mod:`agent.api.execs`. Starting a running container and
stopping a stopped one answer 304, as Docker does.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from agent.api.common import json_response, runtime_of, start_stream, write_json_line
from agent.api.create import parse_create
from agent.api.errors import BadParameter
from agent.api.networking import networks_of
from agent.api.params import filters, flag, integer, json_body
from agent.api.shapes import StatsSampler, container_inspect, container_summary
from agent.runtime.containers.cgroups import CgroupStats

_RUNNING = ("running", "paused", "restarting")


def _id(request: web.Request) -> str:
    return request.match_info["id"]


async def list_containers(request: web.Request) -> web.Response:
    """``GET /containers/json`` (``all``, ``limit``, ``filters``: label, status, name, ancestor, id)."""
    wanted = filters(request)
    # As in Docker, asking for a status lists stopped containers too.
    records = runtime_of(request).list_containers(
        all=flag(request, "all") or bool(wanted.get("status")), filters=wanted
    )
    limit = integer(request, "limit", 0) or 0
    if limit > 0:
        records = records[:limit]
    now = time.time_ns()
    networks = networks_of(request)
    out = []
    for record in records:
        summary = container_summary(record, now)
        if networks is not None:
            networks.summary(record, summary)
        out.append(summary)
    return json_response(out)


async def create_container(request: web.Request) -> web.Response:
    """``POST /containers/create?name=``: 201 with the new container's ``Id``."""
    networks = networks_of(request)
    parsed = parse_create(await json_body(request), networking=networks is not None)
    name = request.query.get("name") or None
    if networks is not None:
        record = await networks.create(parsed, name)
    else:
        record = await runtime_of(request).create(
            parsed.config,
            name,
            mounts=parsed.mounts,
            volumes=parsed.volumes,
            volumes_from=parsed.volumes_from,
        )
    return json_response({"Id": record.id, "Warnings": list(parsed.warnings)}, status=201)


async def inspect_container(request: web.Request) -> web.Response:
    """``GET /containers/{id}/json``."""
    rt = runtime_of(request)
    record = rt.containers.inspect(_id(request))
    log_path = str(rt.containers.log_path(record.id))
    data = container_inspect(record, rt.snapshots.driver, log_path)
    networks = networks_of(request)
    if networks is not None:
        networks.inspect(record, data)
    return json_response(data)


async def start_container(request: web.Request) -> web.Response:
    """``POST /containers/{id}/start``: 204, or 304 when it already runs."""
    containers = runtime_of(request).containers
    if containers.inspect(_id(request)).state.status in ("running", "restarting"):
        return web.Response(status=304)
    await containers.start(_id(request))
    return web.Response(status=204)


def _timeout(request: web.Request) -> int | None:
    return integer(request, "t", integer(request, "timeout"))


async def stop_container(request: web.Request) -> web.Response:
    """``POST /containers/{id}/stop?t=``: 204, or 304 when it is not running."""
    containers = runtime_of(request).containers
    timeout = _timeout(request)
    if containers.inspect(_id(request)).state.status not in _RUNNING:
        return web.Response(status=304)
    await containers.stop(_id(request), timeout)
    return web.Response(status=204)


async def kill_container(request: web.Request) -> web.Response:
    """``POST /containers/{id}/kill?signal=`` (SIGKILL by default)."""
    await runtime_of(request).containers.kill(_id(request), request.query.get("signal") or "SIGKILL")
    return web.Response(status=204)


async def restart_container(request: web.Request) -> web.Response:
    """``POST /containers/{id}/restart?t=``."""
    await runtime_of(request).containers.restart(_id(request), _timeout(request))
    return web.Response(status=204)


async def pause_container(request: web.Request) -> web.Response:
    """``POST /containers/{id}/pause``."""
    await runtime_of(request).containers.pause(_id(request))
    return web.Response(status=204)


async def unpause_container(request: web.Request) -> web.Response:
    """``POST /containers/{id}/unpause``."""
    await runtime_of(request).containers.unpause(_id(request))
    return web.Response(status=204)


async def wait_container(request: web.Request) -> web.StreamResponse:
    """``POST /containers/{id}/wait?condition=``: ``{"StatusCode": …}`` once the condition is met.

    As Docker does, the headers go out at once and the body when the condition is met: Docker's client
    waits for the headers before it starts the container (``docker run`` asks for ``next-exit`` first).
    """
    rt = runtime_of(request)
    condition = request.query.get("condition") or "not-running"
    if condition not in ("not-running", "next-exit", "removed"):
        raise BadParameter("condition", f"unknown condition {condition!r}")
    cid = rt.containers.inspect(_id(request)).id
    waiting = asyncio.ensure_future(rt.wait(cid, condition))
    try:
        await asyncio.sleep(0)  # registered before the headers tell the client it may start the container
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await start_stream(request, response)
        try:
            result: dict[str, object] = {"StatusCode": await waiting, "Error": None}
        except Exception as exc:
            result = {"StatusCode": -1, "Error": {"Message": str(exc)}}
    finally:
        waiting.cancel()
    await write_json_line(response, result)
    await response.write_eof()
    return response


async def rename_container(request: web.Request) -> web.Response:
    """``POST /containers/{id}/rename?name=``."""
    name = request.query.get("name")
    if not name:
        raise BadParameter("name", "a new name is required")
    await runtime_of(request).containers.rename(_id(request), name)
    return web.Response(status=204)


async def remove_container(request: web.Request) -> web.Response:
    """``DELETE /containers/{id}?force=&v=``."""
    rt = runtime_of(request)
    await rt.remove(_id(request), force=flag(request, "force"), volumes=flag(request, "v"))
    return web.Response(status=204)


async def top_container(request: web.Request) -> web.Response:
    """``GET /containers/{id}/top?ps_args=``."""
    result = await runtime_of(request).containers.top(_id(request), request.query.get("ps_args") or "-ef")
    return json_response(
        {"Titles": list(result.titles), "Processes": [list(row) for row in result.processes]}
    )


async def container_changes(request: web.Request) -> web.Response:
    """``GET /containers/{id}/changes``: what the container changed in its image's file system."""
    rt = runtime_of(request)
    record = rt.containers.inspect(_id(request))
    changes = await asyncio.to_thread(rt.snapshots.diff, record.id)
    return json_response([c.docker() for c in changes] or None)


async def container_stats(request: web.Request) -> web.StreamResponse:
    """``GET /containers/{id}/stats``: one sample (``stream=false``) or one a second until it stops."""
    rt = runtime_of(request)
    record = rt.containers.inspect(_id(request))
    sampler = StatsSampler()

    async def sample() -> dict[str, object]:
        current = rt.containers.inspect(record.id)
        if current.state.status not in ("running", "paused"):
            return sampler.sample(current, CgroupStats())
        return sampler.sample(current, await rt.containers.stats(record.id))

    if not flag(request, "stream", True):
        first = await sample()
        if flag(request, "one-shot") or record.state.status not in ("running", "paused"):
            return json_response(first)
        await asyncio.sleep(1.0)  # Docker fills precpu_stats from a sample one second earlier
        return json_response(await sample())
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await start_stream(request, response)
    while True:
        await write_json_line(response, await sample())
        if rt.containers.inspect(record.id).state.status not in ("running", "paused"):
            break
        await asyncio.sleep(1.0)
    await response.write_eof()
    return response


ROUTES = [
    ("GET", "/containers/json", list_containers),
    ("POST", "/containers/create", create_container),
    ("GET", "/containers/{id}/json", inspect_container),
    ("POST", "/containers/{id}/start", start_container),
    ("POST", "/containers/{id}/stop", stop_container),
    ("POST", "/containers/{id}/kill", kill_container),
    ("POST", "/containers/{id}/restart", restart_container),
    ("POST", "/containers/{id}/pause", pause_container),
    ("POST", "/containers/{id}/unpause", unpause_container),
    ("POST", "/containers/{id}/wait", wait_container),
    ("POST", "/containers/{id}/rename", rename_container),
    ("DELETE", "/containers/{id}", remove_container),
    ("GET", "/containers/{id}/top", top_container),
    ("GET", "/containers/{id}/changes", container_changes),
    ("GET", "/containers/{id}/stats", container_stats),
]
