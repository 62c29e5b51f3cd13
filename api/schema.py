"""JSON Schema for the object model, derived from the same type hints the codec uses.

The manager's OpenAPI document is built from these, so the published schema and what the API accepts
cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from datetime import datetime
from typing import Any


def json_schema(tp: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of ``tp`` in the API's JSON spelling; dataclasses go into ``definitions`` by name
    and are referred to as ``#/components/schemas/<Name>``."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        name = tp.__name__
        if name not in definitions:
            definitions[name] = {}  # placeholder first: a type may refer to itself
            hints = typing.get_type_hints(tp)
            props = {f.name: json_schema(hints[f.name], definitions) for f in dataclasses.fields(tp)}
            doc = (tp.__doc__ or "").strip().split("\n\n")[0]
            definitions[name] = {
                "type": "object",
                "properties": props,
                "additionalProperties": False,
                **({"description": doc} if doc and not doc.startswith(name + "(") else {}),
            }
        return {"$ref": f"#/components/schemas/{name}"}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is bytes:
        return {"type": "string", "format": "byte"}
    if tp is datetime:
        return {"type": "string", "format": "date-time"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = json_schema(next(a for a in args if a is not type(None)), definitions)
        return {"anyOf": [inner, {"type": "null"}]}
    if origin is tuple:
        return {"type": "array", "items": json_schema(args[0], definitions)}
    if origin is dict:
        return {"type": "object", "additionalProperties": json_schema(args[1], definitions)}
    raise TypeError(f"no JSON schema for {tp!r}")
