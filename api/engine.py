"""Engine calls: a node's Docker Engine API, reached by a manager through the node's agent session.

Classic Swarm reached every engine directly; here the agent's session is the only way into a node, so a
manager tunnels HTTP requests through it. One call:

- manager → agent ``engine_request``: method, path with its query, headers, and the first piece of the
  body (``more``: further ``engine_data`` frames follow, the last one with ``end``);
- agent → manager ``engine_response``: the status and headers of the agent's own engine API
  (agent/engine.py relays to it), then ``engine_data`` frames with the body, the last one with ``end``
  (and ``error`` when the response broke off);
- either side returns credit for ``engine_data`` frames it consumed with ``engine_ack``: a sender never has
  more than ``window`` unacknowledged, so an image upload or a followed log moves at the pace of its
  slowest end and nothing piles up in between;
- manager → agent ``engine_cancel``: the client went away; the agent stops the call silently.

No I/O here: api/session.py registers the frames, the agent (agent/engine.py) and the manager
(manager/engine.py) move them. docs/ARCHITECTURE.md ("Engine calls") has the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Body bytes in one ``engine_data`` frame at most.
CHUNK = 256 * 1024
#: ``engine_data`` frames a side may have unacknowledged.
DEFAULT_WINDOW = 16


@dataclass(frozen=True)
class EngineRequest:
    """manager → agent: one HTTP request for the node's engine API."""

    call_id: str = ""
    method: str = "GET"
    #: Path and query as the engine sees them (``/containers/json?all=1``).
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: More of the body follows in ``engine_data`` frames.
    more: bool = False
    window: int = DEFAULT_WINDOW


@dataclass(frozen=True)
class EngineResponse:
    """agent → manager: the engine's status and headers; the body follows in ``engine_data`` frames."""

    call_id: str = ""
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineData:
    """Either way: a piece of a body. ``end``: the last one; ``error``: the body broke off (agent only)."""

    call_id: str = ""
    data: bytes = b""
    end: bool = False
    error: str = ""


@dataclass(frozen=True)
class EngineAck:
    """Either way: ``frames`` more ``engine_data`` frames of the call were consumed (credit)."""

    call_id: str = ""
    frames: int = 0


@dataclass(frozen=True)
class EngineCancel:
    """manager → agent: stop the call now; nothing more is sent for it."""

    call_id: str = ""


#: The engine frames' type names, for api/session.py.
ENGINE_FRAME_TYPES: dict[str, type[Any]] = {
    "engine_request": EngineRequest,
    "engine_response": EngineResponse,
    "engine_data": EngineData,
    "engine_ack": EngineAck,
    "engine_cancel": EngineCancel,
}

#: Request and response headers worth carrying (the rest are hop-by-hop or meaningless past the tunnel).
FORWARDED_HEADERS = frozenset(
    {"content-type", "x-registry-auth", "x-registry-config", "api-version", "docker-experimental", "ostype"}
)


def carried_headers(headers: Any) -> dict[str, str]:
    """The headers of ``headers`` (any mapping) that travel through the tunnel, lower-cased."""
    return {k.lower(): str(v) for k, v in headers.items() if k.lower() in FORWARDED_HEADERS}
