"""The local API's aiohttp application: routes (with and without ``/v1.NN``), errors, the unix socket.

Every route is reachable as Docker's clients call it, bare (``/containers/json``) or with an API version
prefix (``/v1.43/containers/json``). One middleware turns every error into Docker's ``{"message": …}``
with Docker's status (see :mod:`agent.api.errors`); every response carries ``Api-Version`` and
``Ostype`` headers, which Docker's clients use to negotiate the version.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from agent.api import containers, execs, images, logs, system, volumes
from agent.api.common import API_VERSION, EXECS, RUNTIME, STREAM, ExecRegistry, json_response
from agent.api.errors import docker_error
from agent.api.networking import NETWORKS, ContainerNetworks
from agent.network.controller import NetworkController
from agent.runtime.local import LocalRuntime

log = logging.getLogger("shoal.agent.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_VERSION_PREFIX = r"/v{version:[0-9]+\.[0-9]+}"


def add_route(app: web.Application, method: str, path: str, handler: Handler) -> None:
    """Register ``path`` bare and behind the version prefix."""
    app.router.add_route(method, path, handler)
    app.router.add_route(method, _VERSION_PREFIX + path, handler)


def _error_response(status: int, message: str) -> web.Response:
    return json_response({"message": message}, status=status)


@web.middleware
async def docker_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure the way Docker does; errors after a stream began can only be logged."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = "page not found" if exc.status == 404 else exc.reason
        return _error_response(exc.status, message)
    except ConnectionResetError:
        # The client went away while a stream was being written: nothing left to tell it.
        if STREAM in request:
            return request[STREAM]
        raise
    except Exception as exc:
        status, message = docker_error(exc)
        if status >= 500:
            log.warning("%s %s failed: %s", request.method, request.path, message, exc_info=exc)
        if STREAM in request:
            return request[STREAM]  # the status is sent already; the stream just ends
        return _error_response(status, message)


async def _add_headers(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Api-Version", API_VERSION)
    response.headers.setdefault("Ostype", "linux")
    response.headers.setdefault("Docker-Experimental", "false")
    response.headers.setdefault("Server", "Shoal")


def create_app(runtime: LocalRuntime, network: NetworkController | None = None) -> web.Application:
    """The application serving ``runtime``; the caller opens and closes the runtime (and ``network``).

    With a started ``network`` controller, containers get bridge networking and published ports (see
    :mod:`agent.api.networking`); without one they get ``none`` or ``host`` only.
    """
    app = web.Application(middlewares=[docker_errors], client_max_size=0)
    app[RUNTIME] = runtime
    app[EXECS] = ExecRegistry()
    if network is not None:
        networks = ContainerNetworks(runtime, network)
        app[NETWORKS] = networks

        async def follow_removals(_app: web.Application) -> AsyncIterator[None]:
            await networks.start()
            yield
            await networks.stop()

        app.cleanup_ctx.append(follow_removals)
    app.on_response_prepare.append(_add_headers)
    for module in (system, containers, logs, execs, images, volumes):
        for method, path, handler in module.ROUTES:
            add_route(app, method, path, handler)
    return app


async def serve_unix(
    runtime: LocalRuntime,
    socket_path: Path | str,
    mode: int = 0o660,
    access_log: bool = False,
    network: NetworkController | None = None,
) -> web.AppRunner:
    """Serve ``runtime`` (and ``network``, see :func:`create_app`) on a unix socket (a stale socket file
    is replaced); call ``cleanup()`` to stop."""
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.is_socket():
            path.unlink()
    runner = web.AppRunner(
        create_app(runtime, network),
        handle_signals=False,
        access_log=logging.getLogger("shoal.agent.api.access") if access_log else None,
        shutdown_timeout=2,
    )
    await runner.setup()
    site = web.UnixSite(runner, str(path))
    await site.start()
    os.chmod(path, mode)
    return runner
