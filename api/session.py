"""The frames of an agent session (manager/dispatcher ↔ agent); docs/ARCHITECTURE.md "Agent sessions".

Each frame is one binary WebSocket message: a msgpack map whose ``type`` names the frame and whose other
keys are the frame's fields in the codec's msgpack spelling (api.codec), so tasks, networks and secrets
travel exactly as the store holds them. Decoding is strict and raises :class:`~api.errors.CodecError`
naming the bad field; an unknown ``type`` is a CodecError too.

No I/O happens here: the dispatcher and the agent's session own the sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from api.codec import from_plain, to_plain
from api.engine import ENGINE_FRAME_TYPES, EngineAck, EngineCancel, EngineData, EngineRequest, EngineResponse
from api.errors import CodecError
from api.logs import LOG_FRAME_TYPES, LogsAck, LogsBatch, LogsCancel, LogsEnd, LogsSubscribe
from api.objects import Network, NodeDescription, Secret, Task, TaskStatus
from api.peers import Peers

#: The HTTP path a manager serves sessions on.
SESSION_PATH = "/agent/session"


class ErrorCode:
    """Why a manager refused or ended a session (the ``code`` of an :class:`Error` frame)."""

    #: The connection carries no node certificate of this cluster (an administrator's, or none). Fatal.
    UNAUTHENTICATED = "unauthenticated"
    #: The node id the agent presented is not (or no longer) a node of this cluster. Fatal.
    NODE_REMOVED = "node_removed"
    #: The manager cannot serve sessions right now (store unreachable, cluster not initialised): try another.
    UNAVAILABLE = "unavailable"
    #: The agent sent something the manager does not understand. Fatal.
    PROTOCOL = "protocol"

    #: Codes after which an agent must stop rather than retry.
    FATAL = frozenset({UNAUTHENTICATED, NODE_REMOVED, PROTOCOL})


@dataclass(frozen=True)
class Register:
    """agent → manager, first frame of every session. Who the node is comes from its certificate."""

    hostname: str = ""
    #: The node's cluster address; empty: the manager uses the address the connection comes from.
    addr: str = ""
    description: NodeDescription = field(default_factory=NodeDescription)
    #: The role the agent expects (informative: its certificate and Node object decide).
    role: str = ""


@dataclass(frozen=True)
class Registered:
    """manager → agent, the answer to :class:`Register`."""

    node_id: str = ""
    heartbeat_period_ns: int = 0
    #: Addresses of every manager serving sessions, for failover.
    managers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Heartbeat:
    """agent → manager every heartbeat period; manager → agent as the answer (with the current period)."""

    heartbeat_period_ns: int = 0


@dataclass(frozen=True)
class Assignments:
    """manager → agent: the tasks assigned to the node, and the networks and secrets they use."""

    #: True: ``tasks`` is the whole set and replaces everything the agent had.
    full: bool = False
    tasks: tuple[Task, ...] = ()
    #: Ids of tasks no longer assigned to the node (incremental frames only).
    removed: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()
    secrets: tuple[Secret, ...] = ()


@dataclass(frozen=True)
class StatusUpdate:
    """One task's observed status, as the agent saw it change."""

    task_id: str = ""
    status: TaskStatus = field(default_factory=TaskStatus)


@dataclass(frozen=True)
class StatusReport:
    """agent → manager: task status changes, batched (the frame's type is ``status``)."""

    updates: tuple[StatusUpdate, ...] = ()


@dataclass(frozen=True)
class Error:
    """manager → agent: why the session is refused or ended; the manager closes it right after."""

    message: str = ""
    code: str = ""

    @property
    def fatal(self) -> bool:
        """Whether the agent should stop instead of retrying (no node certificate, removed node)."""
        return self.code in ErrorCode.FATAL


Frame = (
    Register
    | Registered
    | Heartbeat
    | Assignments
    | StatusReport
    | Error
    | Peers
    | LogsSubscribe
    | LogsBatch
    | LogsEnd
    | LogsAck
    | LogsCancel
    | EngineRequest
    | EngineResponse
    | EngineData
    | EngineAck
    | EngineCancel
)

#: Frame type name ↔ class.
FRAME_TYPES: dict[str, type[Any]] = {
    "register": Register,
    "registered": Registered,
    "heartbeat": Heartbeat,
    "assignments": Assignments,
    "status": StatusReport,
    "error": Error,
    "peers": Peers,
    **LOG_FRAME_TYPES,  # api/logs.py
    **ENGINE_FRAME_TYPES,  # api/engine.py
}
_TYPE_NAMES: dict[type[Any], str] = {tp: name for name, tp in FRAME_TYPES.items()}


def encode_frame(frame: Frame) -> bytes:
    """One frame as the bytes of a binary WebSocket message."""
    body: dict[str, Any] = to_plain(frame, binary=True)
    body["type"] = _TYPE_NAMES[type(frame)]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def decode_frame(data: bytes) -> Frame:
    """Read a frame :func:`encode_frame` wrote; raises CodecError on anything else."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        raise CodecError("", f"not a valid msgpack frame: {e}") from None
    if not isinstance(body, dict):
        raise CodecError("", "a session frame must be a map")
    name = body.pop("type", None)
    tp = FRAME_TYPES.get(name) if isinstance(name, str) else None
    if tp is None:
        raise CodecError("type", f"unknown session frame type {name!r}")
    frame: Frame = from_plain(tp, body, binary=True, path=name)
    return frame
