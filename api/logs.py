"""Task logs: what a log request asks for, the lines it gets, and the session frames that carry them.

A manager asks an agent for the logs of some of its tasks with ``logs_subscribe``; the agent answers with
``logs`` frames (one task's lines each, batched) and ends with ``logs_end``. Flow control is by credit:
the subscription grants a ``window`` of frames, the agent never has more than that many unacknowledged,
and the manager returns credit with ``logs_ack`` as its client consumes them — so a slow client stalls
the agent's reading of the log file instead of filling memory on either side. ``logs_cancel`` ends a
subscription early (the client went away). docs/ARCHITECTURE.md ("Agent sessions") has the table.

No I/O here: api/session.py registers these frames with the others, the agent (agent/logs.py) and the
manager (manager/logs.py) move them.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass, field
from typing import Any

from api.errors import CodecError

STREAMS = ("stdout", "stderr")
#: Frames an agent may send on one subscription before the manager acknowledges some.
DEFAULT_WINDOW = 16


@dataclass(frozen=True)
class LogOptions:
    """What a log request asks for, as Docker's ``logs`` options: ``tail`` lines per task (-1: all)."""

    follow: bool = False
    tail: int = -1
    #: Only lines written at or after this time (nanoseconds since the epoch; 0: from the start).
    since_ns: int = 0
    stdout: bool = True
    stderr: bool = True

    def accepts(self, line: LogLine) -> bool:
        """Whether ``line`` is of a wanted stream and within the time window (``tail`` is the reader's)."""
        if line.stream == "stderr":
            if not self.stderr:
                return False
        elif not self.stdout:
            return False
        return line.time_ns >= self.since_ns


@dataclass(frozen=True)
class LogLine:
    """One line a task wrote, without its newline."""

    stream: str = "stdout"
    time_ns: int = 0
    text: str = ""


@dataclass(frozen=True)
class LogsSubscribe:
    """manager → agent: send the logs of ``task_ids`` (tasks of this node)."""

    subscription_id: str = ""
    task_ids: tuple[str, ...] = ()
    options: LogOptions = field(default_factory=LogOptions)
    #: Frames the agent may send before the manager acknowledges them (``logs_ack``).
    window: int = DEFAULT_WINDOW


@dataclass(frozen=True)
class LogsBatch:
    """agent → manager: lines of one task, oldest first (the frame's type is ``logs``)."""

    subscription_id: str = ""
    task_id: str = ""
    lines: tuple[LogLine, ...] = ()


@dataclass(frozen=True)
class LogsEnd:
    """agent → manager: with ``task_id``, that task's logs could not be read (``error`` says why) and the
    others go on; without, the whole subscription is over (every task read, or followed to its end)."""

    subscription_id: str = ""
    task_id: str = ""
    error: str = ""


@dataclass(frozen=True)
class LogsAck:
    """manager → agent: ``frames`` more ``logs`` frames of the subscription were consumed (credit)."""

    subscription_id: str = ""
    frames: int = 0


@dataclass(frozen=True)
class LogsCancel:
    """manager → agent: stop the subscription now; no ``logs_end`` follows."""

    subscription_id: str = ""


#: The log frames' type names, for api/session.py.
LOG_FRAME_TYPES: dict[str, type[Any]] = {
    "logs_subscribe": LogsSubscribe,
    "logs": LogsBatch,
    "logs_end": LogsEnd,
    "logs_ack": LogsAck,
    "logs_cancel": LogsCancel,
}


# --- times ------------------------------------------------------------------------------------------------
_RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)(?:[Tt ](\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,9}))?)?(Z|z|[+-]\d\d:?\d\d)?)?$"
)
_UNIX = re.compile(r"^(\d+)(?:\.(\d{0,9}))?$")


def format_time(ns: int) -> str:
    """Nanoseconds since the epoch as Docker's ``--timestamps`` show them (RFC 3339, nanoseconds, UTC)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


def parse_time(text: str, what: str = "since") -> int:
    """A point in time as Docker's ``since`` takes it — UNIX seconds (``1700000000.5``) or RFC 3339
    (``2024-05-01T10:00:00Z``; a date alone is midnight UTC) — in nanoseconds since the epoch.
    Raises CodecError naming ``what``."""
    text = text.strip()
    m = _UNIX.match(text)
    if m:
        return int(m.group(1)) * 1_000_000_000 + int((m.group(2) or "").ljust(9, "0"))
    m = _RFC3339.match(text)
    if m is None:
        raise CodecError(what, f"expected UNIX seconds or an RFC 3339 time, got {text!r}")
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    hour, minute, second = (int(g or 0) for g in m.group(4, 5, 6))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise CodecError(what, f"not a valid time: {text!r}")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    zone = m.group(8) or "Z"
    if zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return seconds * 1_000_000_000 + int((m.group(7) or "").ljust(9, "0"))
