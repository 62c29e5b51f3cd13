"""Reading Docker API requests: query flags, integers, ``filters`` JSON, JSON bodies, registry auth."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from agent.api.errors import BadParameter
from agent.runtime.images.auth import Credentials

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def flag(request: web.Request, name: str, default: bool = False) -> bool:
    """A boolean query parameter (``1``/``true``/``0``/``false``, as Docker's clients send them)."""
    value = request.query.get(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise BadParameter(name, f"expected a boolean, got {value!r}")


def integer(request: web.Request, name: str, default: int | None = None) -> int | None:
    """An integer query parameter, or ``default`` when absent or empty."""
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BadParameter(name, f"expected an integer, got {value!r}") from None


def number(request: web.Request, name: str) -> float:
    """A (possibly fractional) number such as a UNIX timestamp; 0 when absent."""
    value = request.query.get(name)
    if not value:
        return 0.0
    try:
        return float(value)
    except ValueError:
        raise BadParameter(name, f"expected a number, got {value!r}") from None


def filters(request: web.Request) -> dict[str, list[str]]:
    """The ``filters`` parameter: ``{"label": ["a=b"]}`` or the older ``{"label": {"a=b": true}}``."""
    raw = request.query.get("filters")
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise BadParameter("filters", "not valid JSON") from None
    if not isinstance(value, dict):
        raise BadParameter("filters", "expected a JSON object")
    out: dict[str, list[str]] = {}
    for key, items in value.items():
        if isinstance(items, dict):
            out[str(key)] = [str(k) for k, on in items.items() if on]
        elif isinstance(items, list):
            out[str(key)] = [str(i) for i in items]
        else:
            raise BadParameter("filters", f"values of {key!r} must be a list or an object")
    return out


async def json_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The request's JSON object (an empty body is ``{}`` unless ``required``)."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise BadParameter("", "request body is empty; a JSON object is required")
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise BadParameter("", f"invalid JSON body: {exc}") from None
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise BadParameter("", "the body must be a JSON object")
    return value


def registry_auth(request: web.Request) -> Credentials | None:
    """Credentials from ``X-Registry-Auth`` (base64url JSON with ``username``/``password``), if any."""
    header = request.headers.get("X-Registry-Auth", "").strip()
    if not header:
        return None
    padded = header + "=" * (-len(header) % 4)
    try:
        data = json.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError):
        raise BadParameter("X-Registry-Auth", "not base64-encoded JSON") from None
    if not isinstance(data, Mapping):
        return None
    token = str(data.get("identitytoken") or data.get("registrytoken") or "")
    username = str(data.get("username") or "")
    password = str(data.get("password") or token)
    if not username and not password:
        return None
    return Credentials(username, password)
