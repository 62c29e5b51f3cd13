"""``/images/…``: list, pull and import, inspect, history, tag, remove, prune, load, save, push.

Pull and push stream progress as JSON lines, Docker's way: the response starts with the first real
progress message, so a failure before any (no such repository, refused credentials) is an ordinary HTTP
error; a failure later is one last ``{"errorDetail": …, "error": …}`` line.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.api.common import json_lines, json_response, runtime_of, start_stream, write_json_line
from agent.api.errors import BadParameter, NotSupported, docker_error
from agent.api.params import filters, flag, registry_auth
from agent.runtime.images.reference import parse_reference
from agent.runtime.images.registry import Progress, ProgressCallback
from agent.runtime.local import LocalRuntime

_CHUNK = 1 << 20
_GREETINGS = ("Pulling from", "The push refers to")
Job = Callable[[ProgressCallback], Awaitable[Any]]


def _name(request: web.Request) -> str:
    return request.match_info["name"]


def _scratch(rt: LocalRuntime) -> Path:
    path = rt.root / "tmp"
    path.mkdir(exist_ok=True)
    return path


async def _spool_body(request: web.Request, directory: Path) -> Any:
    """The request body in a temporary file (deleted when closed), rewound."""
    spool = tempfile.NamedTemporaryFile(dir=directory, suffix=".tar")  # noqa: SIM115 - the caller closes it
    try:
        while chunk := await request.content.read(_CHUNK):
            await asyncio.to_thread(spool.write, chunk)
        spool.flush()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


async def _stream_progress(request: web.Request, job: Job) -> web.StreamResponse:
    """Run ``job`` and stream its progress (see the module docstring for when errors are HTTP errors)."""
    queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()

    def report(progress: Progress) -> None:
        queue.put_nowait(progress.docker())

    async def run() -> None:
        try:
            await job(report)
        except Exception as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    task = asyncio.ensure_future(run())
    held: list[dict[str, Any]] = []
    response: web.StreamResponse | None = None
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                if response is None:
                    raise item
                message = docker_error(item if isinstance(item, Exception) else RuntimeError(item))[1]
                await write_json_line(response, {"errorDetail": {"message": message}, "error": message})
                continue
            held.append(item)
            # A greeting alone does not start the response: the image or the repository may be missing.
            if response is None and (len(held) > 1 or not str(item.get("status", "")).startswith(_GREETINGS)):
                response = await json_lines(request)
            if response is not None:
                for line in held:
                    await write_json_line(response, line)
                held.clear()
    finally:
        if not task.done():
            task.cancel()
    if response is None:
        response = await json_lines(request)
        for line in held:
            await write_json_line(response, line)
    await response.write_eof()
    return response


async def list_images(request: web.Request) -> web.Response:
    """``GET /images/json?filters=`` (dangling, label, reference, before, since)."""
    images = await asyncio.to_thread(runtime_of(request).images.images, filters(request))
    return json_response([image.docker_summary() for image in images])


async def create_image(request: web.Request) -> web.StreamResponse:
    """``POST /images/create``: pull (``fromImage``, ``tag``) or import a tarball body (``fromSrc=-``)."""
    rt = runtime_of(request)
    from_image, from_src = request.query.get("fromImage", ""), request.query.get("fromSrc", "")
    tag = request.query.get("tag", "")
    if from_image:
        reference = from_image
        if tag:
            reference += ("@" if tag.startswith("sha256:") else ":") + tag
        parse_reference(reference)  # a bad reference is a 400 before anything starts
        credentials = registry_auth(request)
        return await _stream_progress(
            request, lambda report: rt.pull(reference, progress=report, credentials=credentials)
        )
    if not from_src:
        raise BadParameter("fromImage", "fromImage or fromSrc is required")
    if from_src != "-":
        raise NotSupported("importing from a URL (fromSrc other than '-')")
    repo = request.query.get("repo", "")
    target = f"{repo}:{tag}" if repo and tag else repo or None
    if target:
        parse_reference(target)
    with await _spool_body(request, _scratch(rt)) as spool:
        image = await rt.import_image(
            Path(spool.name), target, request.query.getall("changes", []), request.query.get("message", "")
        )
    response = await json_lines(request)
    await write_json_line(response, {"status": image.id})
    await response.write_eof()
    return response


async def inspect_image(request: web.Request) -> web.Response:
    """``GET /images/{name}/json``."""
    data = runtime_of(request).image(_name(request)).docker_inspect()
    metadata = data.setdefault("Metadata", {})
    metadata["LastTagTime"] = metadata.get("LastTagTime") or "0001-01-01T00:00:00Z"  # clients parse it
    return json_response(data)


async def image_history(request: web.Request) -> web.Response:
    """``GET /images/{name}/history``: build steps, newest first."""
    items = runtime_of(request).images.history(_name(request))
    return json_response([item.docker() for item in items])


async def tag_image(request: web.Request) -> web.Response:
    """``POST /images/{name}/tag?repo=&tag=``: 201."""
    repo, tag = request.query.get("repo", ""), request.query.get("tag", "")
    if not repo:
        raise BadParameter("repo", "a repository is required")
    await asyncio.to_thread(runtime_of(request).images.tag, _name(request), f"{repo}:{tag}" if tag else repo)
    return web.Response(status=201)


async def remove_image(request: web.Request) -> web.Response:
    """``DELETE /images/{name}?force=&noprune=``: what was untagged and deleted."""
    removals = await runtime_of(request).remove_image(
        _name(request), force=flag(request, "force"), prune=not flag(request, "noprune")
    )
    return json_response([r.docker() for r in removals])


async def prune_images(request: web.Request) -> web.Response:
    """``POST /images/prune``: dangling images no container uses (all unused with ``dangling=false``)."""
    rt = runtime_of(request)
    wanted = filters(request)
    all_unused = any(v.lower() in ("false", "0") for v in wanted.get("dangling", ()))
    removals = await asyncio.to_thread(rt.images.prune, all_unused=all_unused, in_use=rt.image_users)
    if removals:
        await asyncio.to_thread(rt.snapshots.prune_layers)
    return json_response({"ImagesDeleted": [r.docker() for r in removals] or None, "SpaceReclaimed": 0})


async def load_images(request: web.Request) -> web.StreamResponse:
    """``POST /images/load``: a ``docker save`` or OCI archive body; ``{"stream": "Loaded image: …"}``."""
    rt = runtime_of(request)
    with await _spool_body(request, _scratch(rt)) as spool:
        lines = await rt.load(Path(spool.name))
    response = await json_lines(request)
    for line in lines:
        await write_json_line(response, {"stream": line + "\n"})
    await response.write_eof()
    return response


async def _save(request: web.Request, names: list[str]) -> web.StreamResponse:
    rt = runtime_of(request)
    if not names:
        raise BadParameter("names", "at least one image is required")
    with tempfile.NamedTemporaryFile(dir=_scratch(rt), suffix=".tar") as spool:
        await rt.save(names, Path(spool.name))
        response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        await start_stream(request, response)
        with open(spool.name, "rb") as source:
            while chunk := await asyncio.to_thread(source.read, _CHUNK):
                await response.write(chunk)
    await response.write_eof()
    return response


async def save_images(request: web.Request) -> web.StreamResponse:
    """``GET /images/get?names=…``: a ``docker save`` tarball of several images."""
    return await _save(request, request.query.getall("names", []))


async def save_image(request: web.Request) -> web.StreamResponse:
    """``GET /images/{name}/get``: a ``docker save`` tarball of one image."""
    return await _save(request, [_name(request)])


async def push_image(request: web.Request) -> web.StreamResponse:
    """``POST /images/{name}/push?tag=``: progress lines, then the pushed digest."""
    rt = runtime_of(request)
    tag = request.query.get("tag", "")
    reference = f"{_name(request)}:{tag}" if tag else _name(request)
    parse_reference(reference)
    credentials = registry_auth(request)
    return await _stream_progress(
        request, lambda report: rt.push(reference, progress=report, credentials=credentials)
    )


ROUTES = [
    ("GET", "/images/json", list_images),
    ("POST", "/images/create", create_image),
    ("POST", "/images/load", load_images),
    ("POST", "/images/prune", prune_images),
    ("GET", "/images/get", save_images),
    ("GET", "/images/{name:.+}/json", inspect_image),
    ("GET", "/images/{name:.+}/history", image_history),
    ("GET", "/images/{name:.+}/get", save_image),
    ("POST", "/images/{name:.+}/tag", tag_image),
    ("POST", "/images/{name:.+}/push", push_image),
    ("DELETE", "/images/{name:.+}", remove_image),
]
