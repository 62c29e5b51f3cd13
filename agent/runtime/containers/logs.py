"""Container logs: conmon writes CRI-format lines, ``TIMESTAMP STREAM TAG MESSAGE``.

``TAG`` is ``F`` for a full line and ``P`` for a partial one (a long line split by the monitor, or output
without a trailing newline); partial pieces are joined with the ``F`` piece that ends them, so a reader sees
the lines the program wrote, stdout and stderr kept apart.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_TS_RE = re.compile(rb"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:?\d\d)$")
STREAMS = ("stdout", "stderr")


def parse_timestamp(raw: bytes) -> int:
    """RFC 3339 (with nanoseconds) → nanoseconds since the epoch."""
    match = _TS_RE.match(raw)
    if match is None:
        raise ValueError(f"bad timestamp {raw!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    frac = (match.group(7) or b"").ljust(9, b"0")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    zone = match.group(8)
    if zone != b"Z":
        sign = -1 if zone[:1] == b"-" else 1
        digits = zone[1:].replace(b":", b"")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return seconds * 1_000_000_000 + int(frac)


def format_timestamp(ns: int) -> str:
    """Nanoseconds since the epoch → Docker's ``--timestamps`` form (RFC 3339, nanoseconds, UTC)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


@dataclass(frozen=True)
class LogEntry:
    """One line a container wrote (``message`` keeps its newline, if it had one)."""

    time_ns: int
    stream: str
    message: bytes

    def render(self, timestamps: bool = False) -> bytes:
        """The line as ``docker logs`` prints it."""
        if timestamps:
            return format_timestamp(self.time_ns).encode() + b" " + self.message
        return self.message


class _Assembler:
    """Joins partial (P) records per stream into whole lines."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[int, bytearray]] = {}

    def feed(self, raw_line: bytes) -> LogEntry | None:
        parts = raw_line.split(b" ", 3)
        if len(parts) < 3:
            return None
        try:
            ts = parse_timestamp(parts[0])
        except ValueError:
            return None
        stream = parts[1].decode(errors="replace")
        tags = parts[2].split(b":")
        message = parts[3] if len(parts) > 3 else b""
        first_ts, buf = self._pending.pop(stream, (ts, bytearray()))
        buf += message
        if b"P" in tags:
            self._pending[stream] = (first_ts, buf)
            return None
        return LogEntry(first_ts, stream, bytes(buf) + b"\n")

    def flush(self) -> list[LogEntry]:
        """Partial output still pending when the container is gone (written without a final newline)."""
        entries = [LogEntry(ts, stream, bytes(buf)) for stream, (ts, buf) in self._pending.items()]
        self._pending.clear()
        return sorted(entries, key=lambda e: e.time_ns)


@dataclass(frozen=True)
class LogFilter:
    """``docker logs`` options: which streams, a time window in ns, and ``--tail`` (None: all)."""

    stdout: bool = True
    stderr: bool = True
    since_ns: int = 0
    until_ns: int = 0
    tail: int | None = None

    def accepts(self, entry: LogEntry) -> bool:
        """True when the entry is within the window and of a wanted stream."""
        if entry.stream == "stdout" and not self.stdout:
            return False
        if entry.stream == "stderr" and not self.stderr:
            return False
        if self.since_ns and entry.time_ns < self.since_ns:
            return False
        return not (self.until_ns and entry.time_ns > self.until_ns)


def parse_lines(lines: Iterable[bytes], final: bool = True) -> Iterator[LogEntry]:
    """Turn raw CRI lines into entries (``final``: also yield a trailing partial line)."""
    assembler = _Assembler()
    for line in lines:
        entry = assembler.feed(line.rstrip(b"\n"))
        if entry is not None:
            yield entry
    if final:
        yield from assembler.flush()


def read_logs(paths: Iterable[Path], log_filter: LogFilter = LogFilter()) -> list[LogEntry]:
    """Every entry in the log files (oldest first) that passes the filter, honouring ``tail``."""
    result: deque[LogEntry] | list[LogEntry]
    result = deque(maxlen=log_filter.tail) if log_filter.tail is not None else []
    if log_filter.tail == 0:
        return []
    for path in paths:
        try:
            with open(path, "rb") as f:
                for entry in parse_lines(f):
                    if log_filter.accepts(entry):
                        result.append(entry)
        except FileNotFoundError:
            continue
    return list(result)


async def follow_logs(
    path: Path,
    log_filter: LogFilter,
    is_done: Callable[[], bool],
    poll_interval: float = 0.05,
) -> AsyncIterator[LogEntry]:
    """Yield existing entries (with ``tail``), then new ones as they are written, until ``is_done()``.

    The file is read through one handle, opened as soon as it exists and kept open: lines written just
    before the container was removed (its log file with it) are still read, and nothing written between
    reading the existing lines and following new ones is lost.
    """
    assembler = _Assembler()
    handle: BinaryIO | None = None
    buffer = b""
    first = True
    live_filter = LogFilter(log_filter.stdout, log_filter.stderr, log_filter.since_ns, log_filter.until_ns)
    try:
        while True:
            done = is_done()  # sampled before reading, so the lines written before the exit are not missed
            if handle is None:
                with contextlib.suppress(FileNotFoundError):
                    handle = open(path, "rb")  # noqa: SIM115 - kept open across iterations, closed below
            chunk = b""
            if handle is not None:
                if os.fstat(handle.fileno()).st_size < handle.tell():
                    handle.seek(0)  # truncated
                chunk = handle.read()
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            entries = [e for e in (assembler.feed(line) for line in complete) if e is not None]
            if done:
                entries += assembler.flush()
            if first:
                # What was there already: honour tail, as ``docker logs --follow --tail N`` does.
                first = False
                kept = [e for e in entries if log_filter.accepts(e)]
                if log_filter.tail is not None:
                    kept = kept[len(kept) - log_filter.tail :] if log_filter.tail else []
            else:
                kept = [e for e in entries if live_filter.accepts(e)]
            for entry in kept:
                yield entry
            if done:
                return
            await asyncio.sleep(poll_interval)
    finally:
        if handle is not None:
            handle.close()
