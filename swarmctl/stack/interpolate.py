"""Variable substitution in Compose values: ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` ….

Values come from the environment, then from a ``.env`` file beside the first stack file (the environment
wins, as in Compose). ``$$`` is a literal ``$``. An unset variable without a default becomes the empty
string with a warning; ``${VAR:?message}`` makes it an error. A value that was substituted into a field
that wants a number or a boolean (``replicas: ${N:-2}``) is converted, as Docker's loader does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swarmctl.stack.errors import Problem, StackFileError
from swarmctl.stack.source import KeyPath, SourceFile

_PATTERN = re.compile(
    r"""\$(?:
        (?P<escaped>\$)
      | (?P<named>[_a-zA-Z][_a-zA-Z0-9]*)
      | \{(?P<braced>[^{}]*)\}
      | (?P<invalid>)
    )""",
    re.VERBOSE,
)
_BRACED = re.compile(
    r"^(?P<name>[_a-zA-Z][_a-zA-Z0-9]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$", re.DOTALL
)

# Where a substituted string is converted, as Docker's loader does (``*`` is any key or list index).
_CASTS: list[tuple[tuple[str, ...], type]] = [
    (("services", "*", "deploy", "replicas"), int),
    (("services", "*", "deploy", "placement", "max_replicas_per_node"), int),
    (("services", "*", "deploy", "restart_policy", "max_attempts"), int),
    (("services", "*", "deploy", "update_config", "parallelism"), int),
    (("services", "*", "deploy", "update_config", "max_failure_ratio"), float),
    (("services", "*", "deploy", "rollback_config", "parallelism"), int),
    (("services", "*", "deploy", "rollback_config", "max_failure_ratio"), float),
    (("services", "*", "healthcheck", "retries"), int),
    (("services", "*", "healthcheck", "disable"), bool),
    (("services", "*", "ports", "*", "target"), int),
    (("services", "*", "ports", "*", "published"), int),
    (("services", "*", "volumes", "*", "read_only"), bool),
    (("services", "*", "read_only"), bool),
    (("services", "*", "init"), bool),
    (("networks", "*", "external"), bool),
    (("networks", "*", "attachable"), bool),
    (("networks", "*", "internal"), bool),
    (("volumes", "*", "external"), bool),
    (("secrets", "*", "external"), bool),
]
_TRUE = {"y", "yes", "true", "on", "1"}
_FALSE = {"n", "no", "false", "off", "0"}


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``.env`` file (quotes around values removed); {} if there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise StackFileError([Problem(str(path), 0, "", f"cannot read: {e.strerror or e}")]) from None
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise StackFileError([Problem(str(path), n, "", f"bad line {raw!r} (use KEY=VALUE)")])
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key.strip()] = value
    return out


class Interpolator:
    """Substitutes variables through one file's data, collecting problems and warnings."""

    def __init__(self, env: Mapping[str, str], source: SourceFile) -> None:
        self.env = env
        self.source = source
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self._warned: set[str] = set()

    def run(self) -> dict[str, Any]:
        """The file's data with every string value substituted; raises StackFileError on problems."""
        result = self._value(self.source.data, ())
        if self.problems:
            raise StackFileError(sorted(self.problems))
        return result  # type: ignore[no-any-return]

    def _value(self, value: Any, path: KeyPath) -> Any:
        if isinstance(value, dict):
            return {k: self._value(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self._value(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            text = self._substitute(value, path)
            return _cast(text, path) if text != value else text
        return value

    def _substitute(self, text: str, path: KeyPath) -> str:
        def replace(m: re.Match[str]) -> str:
            if m.group("escaped") is not None:
                return "$"
            if m.group("named") is not None:
                return self._lookup(m.group("named"), None, "", path)
            braced = m.group("braced")
            parsed = _BRACED.match(braced) if braced is not None else None
            if parsed is None:
                raise _Invalid()
            return self._lookup(parsed.group("name"), parsed.group("op"), parsed.group("arg") or "", path)

        try:
            return _PATTERN.sub(replace, text)
        except _Invalid:
            self.problems.append(self.source.problem(path, f"invalid interpolation format in {text!r}"))
        except _Missing as e:
            message = f"required variable {e.name} is missing a value"
            if e.detail:
                message += f": {e.detail}"
            self.problems.append(self.source.problem(path, message))
        return text

    def _lookup(self, name: str, op: str | None, arg: str, path: KeyPath) -> str:
        value = self.env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op == ":?":
            if not value:
                raise _Missing(name, arg)
            return value
        if op == "?":
            if value is None:
                raise _Missing(name, arg)
            return value
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return arg if value is not None else ""
        if value is None:
            if name not in self._warned:
                self._warned.add(name)
                self.warnings.append(f"The {name} variable is not set. Defaulting to a blank string.")
            return ""
        return value


class _Invalid(Exception):
    pass


class _Missing(Exception):
    def __init__(self, name: str, detail: str) -> None:
        super().__init__(name)
        self.name = name
        self.detail = detail


def _matches(pattern: tuple[str, ...], path: KeyPath) -> bool:
    return len(pattern) == len(path) and all(
        p == "*" or p == str(k) for p, k in zip(pattern, path, strict=True)
    )


def _cast(text: str, path: KeyPath) -> Any:
    for pattern, tp in _CASTS:
        if not _matches(pattern, path):
            continue
        stripped = text.strip()
        if tp is bool:
            if stripped.lower() in _TRUE:
                return True
            if stripped.lower() in _FALSE:
                return False
        else:
            try:
                return tp(stripped)
            except ValueError:
                pass
        break  # leave it a string: validation then says what type was expected
    return text


def interpolate(source: SourceFile, env: Mapping[str, str]) -> tuple[SourceFile, list[str]]:
    """The file with its values substituted, and the warnings (unset variables)."""
    it = Interpolator(env, source)
    data = it.run()
    return SourceFile(source.name, source.directory, data, source.lines), it.warnings
