"""The manager's HTTP API application: the app factory, error mapping and JSON helpers.

Paths follow the Docker Engine API's Swarm endpoints (``POST /services/create``, ``GET /tasks``,
``POST /nodes/{id}/update?version=N`` …); bodies are Shoal's object model in its JSON spelling
(api.codec). Every error leaves as ``{"message": "…"}`` with one status chosen in :func:`status_for`,
so handlers raise typed errors and never build error responses themselves.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from api import to_plain
from api.errors import CodecError, InvalidTransition, ShoalError
from kvstore_adapters import KVError, StoreUnavailable
from manager.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    InUse,
    InvalidSpec,
    NodeNotDown,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from manager.store import ObjectStore
from scheduler import SchedulerError

log = logging.getLogger(__name__)

STORE = web.AppKey("store", ObjectStore)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(ShoalError):
    """A request that is malformed at the HTTP level (a bad query parameter, a body that is not JSON)."""


#: Error type → HTTP status; the first match in order wins (subclasses before their roots).
STATUS_FOR: list[tuple[type[BaseException], int]] = [
    (Unauthenticated, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (AlreadyExists, 409),
    (Conflict, 409),
    (InUse, 409),
    (NodeNotDown, 409),
    (InvalidSpec, 400),
    (CodecError, 400),
    (BadRequest, 400),
    (SchedulerError, 400),
    (InvalidTransition, 409),
    (StoreUnavailable, 503),
    (Unavailable, 503),
    (KVError, 503),
]


def status_for(error: BaseException) -> int:
    """The HTTP status an error maps to (500 for anything unexpected); an error may carry its own
    (``http_status``: a node engine's answer relayed)."""
    own = getattr(error, "http_status", None)
    if isinstance(own, int):
        return own
    for tp, status in STATUS_FOR:
        if isinstance(error, tp):
            return status
    return 500


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON response of plain data or model objects."""
    return web.Response(
        text=json.dumps(_plain(data), separators=(",", ":"), ensure_ascii=False),
        status=status,
        content_type="application/json",
    )


def _plain(data: Any) -> Any:
    if isinstance(data, list):
        return [_plain(x) for x in data]
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if hasattr(data, "__dataclass_fields__"):
        return _plain_object(data)
    return data


#: Plain forms of model objects rendered lately, by identity. The store's cache hands out the same immutable
#: objects until they change, and a client that polls a list (a progress display, a benchmark waiting for its
#: tasks) would otherwise have every object encoded again on every request. An entry goes with its object.
_PLAIN: dict[int, tuple[weakref.ref[Any], Any]] = {}
#: Beyond this many entries objects are encoded each time (a bound on the memory the cache takes).
PLAIN_CACHE_LIMIT = 50_000


def _plain_object(obj: Any) -> Any:
    key = id(obj)
    entry = _PLAIN.get(key)
    if entry is not None and entry[0]() is obj:
        return entry[1]
    plain = to_plain(obj)
    if len(_PLAIN) < PLAIN_CACHE_LIMIT:

        def forget(_: weakref.ref[Any]) -> None:
            _PLAIN.pop(key, None)

        try:
            ref = weakref.ref(obj, forget)
        except TypeError:
            return plain  # not weakly referenceable: not cached
        _PLAIN[key] = (ref, plain)
    return plain


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every error a handler raises to one status and a ``{"message": …}`` body."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return json_response({"message": e.reason or str(e)}, e.status)
    except ShoalError as e:
        status = status_for(e)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.path, e)
        return json_response({"message": str(e)}, status)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return json_response({"message": "internal error (see the manager's log)"}, 500)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; BadRequest if it is not."""
    try:
        return await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None


def int_query(request: web.Request, name: str, default: int | None = None) -> int:
    """An integer query parameter; BadRequest names it when it is missing or not a number."""
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"missing query parameter {name!r}")
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer, got {raw!r}") from None


def make_app(store: ObjectStore) -> web.Application:
    """The API application over a started :class:`ObjectStore`."""
    from manager.api import engine, logs, openapi, routes  # the route modules import this one

    app = web.Application(middlewares=[error_middleware], client_max_size=4 * 1024 * 1024)
    app[STORE] = store
    app.add_routes(routes.table)
    app.add_routes(logs.table)
    app.add_routes(engine.table)
    app.router.add_get("/openapi.json", openapi.handler)
    return app
