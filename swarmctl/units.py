"""Parsing and printing the values users type: durations, sizes, CPUs, ``key=value`` pairs, env files.

The syntaxes are Docker's, so commands copied from Docker docs work: durations as Go writes them
(``10s``, ``1m30s``, ``1.5h``, ``300ms``), memory as go-units' RAMInBytes (``512M``, ``1g``, ``2GiB``: binary
multiples), CPUs as a decimal number of cores (``0.5``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from swarmctl.errors import InvalidValue

_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9}
_NS["h"] = 60 * _NS["m"]
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_duration(text: str, what: str = "duration") -> int:
    """Nanoseconds in a Go duration string (``1m30s``); ``0`` is allowed without a unit."""
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0
    negative = s.startswith("-")
    body = s.lstrip("+-")
    pos, total = 0, Decimal(0)
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None:
            raise InvalidValue(what, text, "use a duration such as 10s, 1m30s or 500ms")
        total += Decimal(m.group(1)) * _NS[m.group(2)]
        pos = m.end()
    if not body:
        raise InvalidValue(what, text, "use a duration such as 10s, 1m30s or 500ms")
    ns = int(total)
    return -ns if negative else ns


def format_duration(ns: int) -> str:
    """A duration the way Go prints it (``1m30s``, ``500ms``, ``0s``)."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 10**9:
        for unit, size in (("ms", 10**6), ("µs", 10**3)):
            if ns >= size:
                return f"{sign}{_trim(Decimal(ns) / size)}{unit}"
        return f"{sign}{ns}ns"
    hours, rest = divmod(ns, _NS["h"])
    minutes, rest = divmod(rest, _NS["m"])
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{_trim(Decimal(rest) / 10**9)}s"


def _trim(d: Decimal) -> str:
    text = format(d.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def parse_bytes(text: str | int, what: str = "memory") -> int:
    """Bytes in a size such as ``512M``, ``1.5g`` or ``2GiB`` (multiples of 1024, as Docker's RAMInBytes)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise InvalidValue(what, text, "cannot be negative")
        return text
    m = _SIZE.match(str(text).strip())
    if m is None:
        raise InvalidValue(what, text, "use a size such as 512M, 1G or 1048576")
    number, unit = Decimal(m.group(1)), m.group(2).lower()
    return int(number * _SIZE_MULT[unit])


def format_bytes(n: int) -> str:
    """A byte count in binary units (``512MiB``), as ``docker service inspect --pretty`` prints them."""
    for unit, size in (
        ("PiB", 1 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ):
        if n >= size:
            return f"{_trim(round(Decimal(n) / size, 2))}{unit}"
    return f"{n}B"


def parse_cpus(text: str | float | int, what: str = "cpus") -> int:
    """Nano-CPUs in a decimal number of cores (``0.5`` → 500000000)."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise InvalidValue(what, text, "use a number of CPUs such as 0.5 or 2") from None
    if not value.is_finite() or value < 0:
        raise InvalidValue(what, text, "use a number of CPUs such as 0.5 or 2")
    nano = value * 10**9
    if nano != nano.to_integral_value():
        raise InvalidValue(what, text, "too precise (at most 9 decimal places)")
    return int(nano)


def format_cpus(nano: int) -> str:
    """A nano-CPU count as a number of cores."""
    return _trim(Decimal(nano) / 10**9)


def parse_kv(text: str, what: str, *, need_value: bool = True) -> tuple[str, str]:
    """``key=value`` → (key, value); with ``need_value=False`` a bare ``key`` gives (key, "")."""
    key, sep, value = text.partition("=")
    if not key or (need_value and not sep):
        raise InvalidValue(what, text, "use key=value")
    return key, value


def parse_csv_options(text: str, what: str) -> dict[str, str]:
    """Docker's long syntax ``type=volume,source=data,target=/data,readonly`` as a dict (bare keys: "")."""
    out: dict[str, str] = {}
    for part in _split_csv(text):
        if not part:
            continue
        key, _, value = part.partition("=")
        key = key.strip().lower()
        if not key:
            raise InvalidValue(what, text, f"empty key in {part!r}")
        out[key] = value.strip()
    return out


def _split_csv(text: str) -> list[str]:
    # Values may be quoted ("target=/a,b" is rare, but Docker's CSV reader allows it).
    parts, cur, quote = [], "", ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                cur += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ",":
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def parse_bool(text: str, what: str) -> bool:
    """``true``/``false``/``1``/``0``/``yes``/``no`` (and a bare flag in long syntax: "")."""
    lowered = text.strip().lower()
    if lowered in ("", "1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise InvalidValue(what, text, "use true or false")


def parse_int(text: str, what: str, *, minimum: int | None = 0) -> int:
    """An integer, refusing anything below ``minimum``."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise InvalidValue(what, text, "must be an integer") from None
    if minimum is not None and value < minimum:
        raise InvalidValue(what, text, f"must be at least {minimum}")
    return value


def read_env_file(path: str | Path) -> list[str]:
    """``KEY=VALUE`` lines of an env file (``#`` comments and blank lines skipped), as Docker reads them."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidValue("env file", str(path), e.strerror or str(e)) from None
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key = line.partition("=")[0]
        if not key or any(c.isspace() for c in key):
            raise InvalidValue("env file", f"{path}:{n}", f"bad line {raw!r}")
        out.append(line)
    return out


def merge_env(entries: Iterable[str]) -> tuple[str, ...]:
    """``KEY=VALUE`` entries with later ones replacing earlier ones of the same key, order kept."""
    merged: dict[str, str] = {}
    for e in entries:
        merged[e.partition("=")[0]] = e
    return tuple(merged.values())


def since(when: datetime, now: datetime | None = None) -> str:
    """How long ago ``when`` was, as Docker prints it (``3 seconds ago``, ``About a minute ago``)."""
    now = now or datetime.now(UTC)
    secs = max(int((now - when).total_seconds()), 0)
    if when.year <= 1970:
        return "never"
    if secs < 1:
        return "Less than a second ago"
    if secs < 60:
        return f"{secs} second{'s' if secs != 1 else ''} ago"
    minutes = secs // 60
    if minutes == 1:
        return "About a minute ago"
    if minutes < 60:
        return f"{minutes} minutes ago"
    hours = minutes // 60
    if hours == 1:
        return "About an hour ago"
    if hours < 48:
        return f"{hours} hours ago"
    days = hours // 24
    if days < 14:
        return f"{days} days ago"
    return f"{days // 7} weeks ago"
