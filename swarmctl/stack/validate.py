"""Checking one Compose file against the schema, with errors a person can act on.

Ignored keys go first (with a warning, as ``docker stack deploy`` prints them). Then every schema error
becomes one :class:`Problem` naming the file, line and key path, worded for the user: ``must be an
integer``, ``unsupported key 'imgae' (did you mean 'image'?)``, ``must be one of: vip, dnsrr``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

from swarmctl.stack.errors import Problem, StackFileError
from swarmctl.stack.schema import IGNORED_SERVICE_KEYS, SCHEMA, UNSUPPORTED
from swarmctl.stack.source import KeyPath, SourceFile

_VALIDATOR = Draft7Validator(SCHEMA)

_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "object": "a mapping",
    "array": "a list",
    "boolean": "a boolean (true or false)",
    "null": "empty",
}


def strip_ignored(source: SourceFile) -> tuple[SourceFile, list[str]]:
    """The file without the service keys Swarm ignores, and a warning per service that had some."""
    services = source.data.get("services")
    if not isinstance(services, dict):
        return source, []
    warnings = []
    cleaned = {}
    for name, svc in services.items():
        if isinstance(svc, dict):
            ignored = sorted(k for k in svc if k in IGNORED_SERVICE_KEYS)
            if ignored:
                warnings.append(
                    f"{source.name}: service {name}: ignoring unsupported options: {', '.join(ignored)}"
                )
                svc = {k: v for k, v in svc.items() if k not in IGNORED_SERVICE_KEYS}
        cleaned[name] = svc
    data = {**source.data, "services": cleaned}
    if "name" in data:
        warnings.append(
            f"{source.name}: ignoring the top-level name (the stack's name is given on the command line)"
        )
    return SourceFile(source.name, source.directory, data, source.lines), warnings


def check(source: SourceFile) -> None:
    """Raise StackFileError listing every schema violation in ``source``."""
    problems: list[Problem] = []
    for error in _VALIDATOR.iter_errors(source.data):
        problems += describe(error, source)
    version = source.data.get("version")
    if isinstance(version, int | float) and not isinstance(version, bool) and not 3 <= version < 4:
        problems.append(source.problem(("version",), "must be 3 or 3.x (Compose file format 3)"))
    if problems:
        raise StackFileError(sorted(set(problems)))


def describe(error: ValidationError, source: SourceFile) -> list[Problem]:
    """One jsonschema error as the problems a user reads."""
    path: KeyPath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    v = error.validator
    if "propertyNames" in error.schema_path:
        key = str(error.instance)
        return [source.problem((*path, key), schema.get("x-message", "is not a valid name"))]
    if v == "additionalProperties":
        return [
            source.problem((*path, key), _unknown_key(key, schema))
            for key in _extra_keys(error.instance, schema)
        ]
    if v in ("pattern", "enum") and "x-message" in schema:
        return [source.problem(path, f"{schema['x-message']} (got {_show(error.instance)})")]
    if v == "type":
        what = schema.get("x-message") or f"must be {_types(error.validator_value)}"
        return [source.problem(path, f"{what} (got {_show(error.instance)})")]
    if v == "enum":
        choices = ", ".join(str(c) for c in error.validator_value)
        return [source.problem(path, f"must be one of: {choices} (got {_show(error.instance)})")]
    if v == "required":
        missing = re.match(r"'(.+?)' is a required property", error.message)
        key = missing.group(1) if missing else "?"
        return [source.problem(path, f"missing required key {key!r}")]
    if v == "minimum":
        return [
            source.problem(path, f"must be at least {error.validator_value} (got {_show(error.instance)})")
        ]
    if v == "maximum":
        return [
            source.problem(path, f"must be at most {error.validator_value} (got {_show(error.instance)})")
        ]
    if v == "minLength":
        return [source.problem(path, "must not be empty")]
    return [source.problem(path, error.message)]


def _extra_keys(instance: Any, schema: dict[str, Any]) -> list[str]:
    if not isinstance(instance, dict):
        return []
    known = set(schema.get("properties", {}))
    patterns = [re.compile(p) for p in schema.get("patternProperties", {})]
    return sorted(str(k) for k in instance if k not in known and not any(p.search(str(k)) for p in patterns))


def _unknown_key(key: str, schema: dict[str, Any]) -> str:
    if key in UNSUPPORTED:
        return UNSUPPORTED[key]
    close = difflib.get_close_matches(key, list(schema.get("properties", {})), n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unsupported key {key!r}{hint}"


def _types(types: str | Iterable[str]) -> str:
    names = [types] if isinstance(types, str) else list(types)
    words = [_TYPE_WORDS.get(t, t) for t in names if t != "null"] or ["empty"]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
