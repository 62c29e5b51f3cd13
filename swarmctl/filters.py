"""``--filter key=value`` as Docker reads it: values of one key are OR-ed, different keys AND-ed.

Each list command names its keys and how each matches an object; :func:`apply` keeps what matches.
Matching follows Docker: ``id`` and ``name`` are prefixes, ``label`` is ``key`` or ``key=value``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from swarmctl.errors import InvalidValue

T = TypeVar("T")

Matcher = Callable[[T, str], bool]


def parse(filters: Iterable[str], allowed: Iterable[str]) -> dict[str, list[str]]:
    """``["name=web", "label=a=b"]`` → ``{"name": ["web"], "label": ["a=b"]}``; unknown keys are errors."""
    allowed = sorted(allowed)
    out: dict[str, list[str]] = {}
    for f in filters:
        key, sep, value = f.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise InvalidValue("filter", f, "use key=value")
        if key not in allowed:
            raise InvalidValue("filter", f, f"unknown key {key!r} (use one of: {', '.join(allowed)})")
        out.setdefault(key, []).append(value)
    return out


def apply(items: Sequence[T], parsed: Mapping[str, list[str]], matchers: Mapping[str, Matcher[T]]) -> list[T]:
    """The items every filter key matches (any of its values)."""
    return [item for item in items if all(any(matchers[k](item, v) for v in vs) for k, vs in parsed.items())]


def label_matches(labels: Mapping[str, str], wanted: str) -> bool:
    """``key`` (present) or ``key=value`` (equal)."""
    key, sep, value = wanted.partition("=")
    if key not in labels:
        return False
    return not sep or labels[key] == value


def prefix(value: str, wanted: str) -> bool:
    return value.startswith(wanted)
