"""A small subset of Go's text/template, enough for Docker-style ``--format`` strings.

Supported: literal text, ``{{.Field}}`` and ``{{.A.B}}`` paths, ``{{.}}``, functions ``json``, ``upper``,
``lower``, ``title``, ``len``, ``join LIST SEP``, ``index MAP KEY`` and ``println``, pipelines
(``{{.Name | upper}}``), and the ``table`` prefix that prints a header row and aligns columns at ``\\t``.

Field names are looked up the way Docker users write them against Shoal's JSON: exactly, then ignoring
case, then CamelCase as snake_case (``CreatedAt`` → ``created_at``), then inside ``meta`` and
``annotations`` (so ``{{.ID}}`` and ``{{.Spec.Name}}`` work on any object).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from swarmctl.errors import TemplateError

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.DOTALL)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@dataclass(frozen=True)
class _Call:
    func: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Template:
    """A parsed template; ``render(obj)`` gives one line of output."""

    source: str
    parts: tuple[str | tuple[_Call, ...], ...]
    table: bool

    def render(self, obj: Any) -> str:
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(_stringify(_run_pipeline(part, obj)))
        return "".join(out)

    def header(self) -> str:
        """The header row of a ``table`` template: each action's last field name, upper-cased."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name = ""
            for call in part:
                for arg in (call.func, *call.args):
                    if arg.startswith("."):
                        name = arg.rsplit(".", 1)[-1] or name
            out.append(_header_name(name))
        return "".join(out)


def _header_name(field: str) -> str:
    return _CAMEL.sub(" ", field).upper() if field else ""


def parse(source: str) -> Template:
    """Parse a ``--format`` string; raises TemplateError on a malformed one."""
    text = source
    table = False
    if text.startswith("table"):
        table = True
        text = text[len("table") :].lstrip()
    text = text.replace("\\t", "\t").replace("\\n", "\n")
    parts: list[str | tuple[_Call, ...]] = []
    pos = 0
    for m in _ACTION.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        parts.append(_parse_pipeline(m.group(1)))
        pos = m.end()
    rest = text[pos:]
    if "{{" in rest or "}}" in rest:
        raise TemplateError(f"unbalanced braces in {source!r}")
    if rest:
        parts.append(rest)
    return Template(source, tuple(parts), table)


def _parse_pipeline(body: str) -> tuple[_Call, ...]:
    if not body:
        raise TemplateError("empty action {{}}")
    calls = []
    for segment in body.split("|"):
        try:
            words = shlex.split(segment.strip())
        except ValueError as e:
            raise TemplateError(f"bad action {{{{{body}}}}}: {e}") from None
        if not words:
            raise TemplateError(f"empty pipeline segment in {{{{{body}}}}}")
        head, *args = words
        if not head.startswith(".") and head not in _FUNCS:
            raise TemplateError(f'function "{head}" not defined')
        calls.append(_Call(head, tuple(args)))
    return tuple(calls)


def _run_pipeline(calls: tuple[_Call, ...], obj: Any) -> Any:
    value: Any = None
    for i, call in enumerate(calls):
        args = [_arg(a, obj) for a in call.args]
        if i > 0:
            args.append(value)  # Go passes the previous value as the last argument
        if call.func.startswith("."):
            if args:
                raise TemplateError(f"{call.func} is a field, not a function")
            value = lookup(obj, call.func)
        else:
            try:
                value = _FUNCS[call.func](*args)
            except TypeError:
                raise TemplateError(f"wrong number of arguments for {call.func}") from None
    return value


def _arg(token: str, obj: Any) -> Any:
    if token.startswith("."):
        return lookup(obj, token)
    return token


def lookup(obj: Any, path: str) -> Any:
    """The value at ``.A.B`` in plain data, with Docker-friendly field matching."""
    value = obj
    if path == ".":
        return value
    for name in path.strip(".").split("."):
        value = _field(value, name, path)
    return value


def _field(value: Any, name: str, path: str) -> Any:
    if isinstance(value, Mapping):
        found = _match(value, name)
        if found is not _MISSING:
            return found
        for inner in ("meta", "annotations"):  # Docker's Spec.Name, ID and CreatedAt live there
            nested = value.get(inner)
            if isinstance(nested, Mapping):
                found = _match(nested, name)
                if found is not _MISSING:
                    return found
    raise TemplateError(f"can't evaluate field {name} in {path}")


_MISSING = object()


def _match(m: Mapping[str, Any], name: str) -> Any:
    if name in m:
        return m[name]
    snake = _CAMEL.sub("_", name).lower()
    for key, v in m.items():
        k = str(key)
        if k.lower() == name.lower() or k.lower() == snake or k.replace("-", "_").lower() == snake:
            return v
    return _MISSING


def _stringify(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{_stringify(v)}" for k, v in value.items()) + "]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(_stringify(v) for v in value) + "]"
    return str(value)


def _join(items: Sequence[Any], sep: str) -> str:
    return sep.join(_stringify(i) for i in items)


def _index(m: Any, key: str) -> Any:
    if isinstance(m, Mapping):
        return m.get(key)
    try:
        return m[int(key)]
    except (ValueError, IndexError, TypeError):
        raise TemplateError(f"cannot index {key!r}") from None


_FUNCS: dict[str, Callable[..., Any]] = {
    "json": lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False),
    "upper": lambda v: _stringify(v).upper(),
    "lower": lambda v: _stringify(v).lower(),
    "title": lambda v: _stringify(v).title(),
    "len": lambda v: len(v),
    "join": lambda items, sep: _join(items, sep),
    "index": _index,
    "println": lambda *v: " ".join(_stringify(x) for x in v) + "\n",
}
