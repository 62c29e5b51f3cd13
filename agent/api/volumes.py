"""``/volumes…``: list, create, inspect, remove (refused while in use), prune."""

from __future__ import annotations

import asyncio

from aiohttp import web

from agent.api.common import json_response, runtime_of
from agent.api.errors import BadParameter
from agent.api.params import filters, flag, json_body


async def list_volumes(request: web.Request) -> web.Response:
    """``GET /volumes?filters=`` (name, label, dangling, driver)."""
    volumes = runtime_of(request).volumes.list(filters(request))
    return json_response({"Volumes": [v.docker() for v in volumes], "Warnings": []})


async def create_volume(request: web.Request) -> web.Response:
    """``POST /volumes/create``: 201 with the volume (an existing name answers with that volume)."""
    body = await json_body(request, required=False)
    labels = body.get("Labels") or {}
    options = body.get("DriverOpts") or {}
    if not isinstance(labels, dict) or not isinstance(options, dict):
        raise BadParameter("Labels", "Labels and DriverOpts must be objects")
    volume = runtime_of(request).volumes.create(
        str(body.get("Name") or "") or None,
        driver=str(body.get("Driver") or "local"),
        labels={str(k): str(v) for k, v in labels.items()},
        options={str(k): str(v) for k, v in options.items()},
    )
    return json_response(volume.docker(), status=201)


async def inspect_volume(request: web.Request) -> web.Response:
    """``GET /volumes/{name}``."""
    volumes = runtime_of(request).volumes
    volume = volumes.get(request.match_info["name"])
    usage = await asyncio.to_thread(volumes.usage, volume)
    return json_response(volume.docker(usage))


async def remove_volume(request: web.Request) -> web.Response:
    """``DELETE /volumes/{name}?force=``: 204; 409 while a container uses it."""
    volumes = runtime_of(request).volumes
    await asyncio.to_thread(volumes.remove, request.match_info["name"], force=flag(request, "force"))
    return web.Response(status=204)


async def prune_volumes(request: web.Request) -> web.Response:
    """``POST /volumes/prune``: unused anonymous volumes (every unused one with ``all=true``)."""
    deleted, reclaimed = await asyncio.to_thread(runtime_of(request).volumes.prune, filters(request))
    return json_response({"VolumesDeleted": deleted or None, "SpaceReclaimed": reclaimed})


ROUTES = [
    ("GET", "/volumes", list_volumes),
    ("POST", "/volumes/create", create_volume),
    ("POST", "/volumes/prune", prune_volumes),
    ("GET", "/volumes/{name}", inspect_volume),
    ("DELETE", "/volumes/{name}", remove_volume),
]
