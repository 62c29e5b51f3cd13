"""Shoal's cluster object model: objects split into spec and status, the task lifecycle, and codecs.

No I/O happens here; everything above (store, API, scheduler, agent) speaks these types.
"""

from api.codec import decode_json, decode_msgpack, encode_json, encode_msgpack, from_plain, to_plain
from api.errors import CodecError, InvalidTransition, ModelError, ShoalError
from api.objects import (
    OBJECT_KINDS,
    Annotations,
    Cluster,
    Meta,
    Network,
    Node,
    Secret,
    Service,
    Task,
    Volume,
    new_id,
    utcnow,
)
from api.states import TERMINAL_STATES, TRANSITIONS, TaskState, can_transition, check_transition

__all__ = [
    "OBJECT_KINDS",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "Annotations",
    "Cluster",
    "CodecError",
    "InvalidTransition",
    "Meta",
    "ModelError",
    "Network",
    "Node",
    "Secret",
    "Service",
    "ShoalError",
    "Task",
    "TaskState",
    "Volume",
    "can_transition",
    "check_transition",
    "decode_json",
    "decode_msgpack",
    "encode_json",
    "encode_msgpack",
    "from_plain",
    "new_id",
    "to_plain",
    "utcnow",
]
