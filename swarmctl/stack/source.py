"""Reading one Compose file: its YAML as plain data, plus the line of every key (for error messages).

PyYAML's safe loader gives the data (anchors, merge keys and YAML 1.1 scalars included); composing the
same text into nodes gives the line each key and list item starts on. Duplicate keys, which the safe
loader would silently collapse, are reported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from swarmctl.stack.errors import Problem, StackFileError

#: A key path inside a file: ("services", "web", "ports", 0).
KeyPath = tuple[str | int, ...]


def dotted(path: KeyPath) -> str:
    """``services.web.ports[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class SourceFile:
    """One parsed file: ``name`` as given by the user, its directory, its data and key lines."""

    name: str
    directory: Path
    data: dict[str, Any]
    lines: Mapping[KeyPath, int]

    def line(self, path: KeyPath) -> int:
        """The line of ``path``, or of its nearest ancestor that has one (0: unknown)."""
        for n in range(len(path), 0, -1):
            found = self.lines.get(path[:n])
            if found:
                return found
        return 0

    def problem(self, path: KeyPath, message: str) -> Problem:
        return Problem(self.name, self.line(path), dotted(path), message)


def read(name: str, text: str, directory: Path) -> SourceFile:
    """Parse ``text`` (the contents of ``name``); raises StackFileError on malformed YAML."""
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        line = mark.line + 1 if mark is not None else 0
        raise StackFileError([Problem(name, line, "", f"invalid YAML: {problem}")]) from None
    if data is None:
        raise StackFileError([Problem(name, 0, "", "the file is empty")])
    if not isinstance(data, dict):
        raise StackFileError(
            [Problem(name, 1, "", "the top level must be a mapping (services:, networks: …)")]
        )
    lines: dict[KeyPath, int] = {}
    problems: list[Problem] = []
    if node is not None:
        _walk(node, (), lines, problems, name)
    bad_keys = list(_non_string_keys(data, ()))
    problems += [Problem(name, _nearest(lines, p), dotted(p), "keys must be strings") for p in bad_keys]
    if problems:
        raise StackFileError(sorted(problems))
    return SourceFile(name, directory, data, lines)


def _nearest(lines: Mapping[KeyPath, int], path: KeyPath) -> int:
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return 0


def _walk(
    node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], problems: list[Problem], name: str
) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(Problem(name, line, dotted((*path, key)), "duplicate key"))
            seen.add(key)
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, problems, name)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _walk(item, (*path, i), lines, problems, name)


def _non_string_keys(data: Any, path: KeyPath) -> Any:
    if isinstance(data, dict):
        for k, v in data.items():
            if not isinstance(k, str):
                yield (*path, str(k))
            else:
                yield from _non_string_keys(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _non_string_keys(v, (*path, i))
