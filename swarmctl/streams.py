"""The Docker Engine streams the container and image commands read, and how they are shown.

- Output of containers and execs: Docker's multiplexed stream (no TTY here), frames of an 8-byte header
  (stream type, three zero bytes, big-endian payload size) and the payload. :class:`Demuxer` splits it
  however the bytes arrive; :func:`copy_output` writes stdout frames to stdout and stderr frames to stderr.
- Image pulls, pushes and loads: JSON lines (``{"status", "id", "progressDetail"}``, ``{"stream"}``,
  ``{"error"}``). :class:`Job` is one node's job as its lines tell it; :class:`JobsDisplay` shows several
  nodes' jobs at once: a rich live table on a terminal, one line per change otherwise (logs, CI, tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TextIO

from rich.console import Group
from rich.live import Live
from rich.text import Text

from swarmctl.errors import SwarmctlError
from swarmctl.progress import LiveDisplay

STDIN, STDOUT, STDERR, SYSTEM_ERR = 0, 1, 2, 3
HEADER_SIZE = 8
RAW_STREAM = "application/vnd.docker.raw-stream"


class StreamError(SwarmctlError):
    """A multiplexed stream that does not parse, or an error the engine sent in it (stream 3)."""


class Demuxer:
    """Splits Docker's multiplexed stream into (stream, payload) frames, fed in pieces of any size."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The frames completed by ``data``; a partial frame waits for the next call."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER_SIZE:
            header = bytes(self._buffer[:HEADER_SIZE])
            stream = header[0]
            if stream > SYSTEM_ERR or header[1:4] != b"\0\0\0":
                raise StreamError(f"malformed output stream (frame header {header.hex()})")
            end = HEADER_SIZE + int.from_bytes(header[4:], "big")
            if len(self._buffer) < end:
                break
            frames.append((stream, bytes(self._buffer[HEADER_SIZE:end])))
            del self._buffer[:end]
        return frames

    def close(self) -> None:
        """The stream ended: raises when it ended inside a frame."""
        if self._buffer:
            raise StreamError(f"output stream cut inside a frame ({len(self._buffer)} bytes left)")


def demux(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """The frames of a multiplexed stream given as chunks."""
    demuxer = Demuxer()
    for chunk in chunks:
        yield from demuxer.feed(chunk)
    demuxer.close()


def copy_output(chunks: Iterable[bytes], out: BinaryIO, err: BinaryIO, *, multiplexed: bool = True) -> None:
    """Write a container's output as it comes: stdout frames to ``out``, stderr frames to ``err``; a raw
    (TTY) stream goes to ``out`` whole. An error frame (stream 3) ends it with :class:`StreamError`."""
    if not multiplexed:
        for chunk in chunks:
            out.write(chunk)
            out.flush()
        return
    for stream, payload in demux(chunks):
        if stream == SYSTEM_ERR:
            raise StreamError(payload.decode(errors="replace").strip() or "the engine reported an error")
        target = err if stream == STDERR else out
        target.write(payload)
        target.flush()


# --- image jobs ---------------------------------------------------------------------------------------
#: Statuses that end a layer's part of a pull or push.
LAYER_DONE = ("Pull complete", "Already exists", "Pushed", "Layer already exists", "Mounted from")
#: Statuses with an ``id`` that are about the whole image, not a layer.
_GREETINGS = ("Pulling from", "The push refers to")


def human_size(n: float) -> str:
    """Bytes as Docker prints sizes: decimal units, three significant digits (``4.26MB``)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000.0
        i += 1
    return f"{n:.3g}{units[i]}"


def one_line(text: str) -> str:
    """A message on one line (an engine's error may span several)."""
    return " ".join(text.split())


@dataclass
class Layer:
    status: str = ""
    current: int = 0
    total: int = 0

    @property
    def done(self) -> bool:
        return self.status.startswith(LAYER_DONE)


@dataclass
class Job:
    """One node's image job (pull, push, load) as its JSON lines tell it."""

    node: str
    state: str = "waiting"  # waiting, running, done, failed, skipped
    layers: dict[str, Layer] = field(default_factory=dict)
    #: Messages about the whole image, in order ("Digest: …", "Status: Downloaded newer image for …").
    messages: list[str] = field(default_factory=list)
    error: str = ""

    def feed(self, obj: Any) -> list[str]:
        """Take one JSON line; the lines worth printing on their own (byte counts are not)."""
        if self.state == "waiting":
            self.state = "running"
        if not isinstance(obj, dict):
            return []
        if obj.get("error") or obj.get("errorDetail"):
            detail = obj.get("errorDetail") or {}
            self.fail(str(obj.get("error") or (detail.get("message") if isinstance(detail, dict) else "")))
            return []  # the command's error line says it, with the other nodes' failures
        if "stream" in obj:
            text = str(obj["stream"]).strip()
            if text:
                self.messages.append(text)
            return text.splitlines()
        status, ident = str(obj.get("status", "")), str(obj.get("id", "") or "")
        if not status:
            return []
        if not ident or status.startswith(_GREETINGS):
            text = f"{ident}: {status}" if ident else status
            self.messages.append(text)
            return [text]
        layer = self.layers.setdefault(ident, Layer())
        detail = obj.get("progressDetail") or {}
        if isinstance(detail, dict):
            layer.current = int(detail.get("current") or 0)
            layer.total = int(detail.get("total") or 0)
        changed = status != layer.status
        layer.status = status
        if layer.done:
            layer.current = layer.total
        return [f"{ident}: {status}"] if changed else []

    def finish(self) -> None:
        if self.state in ("waiting", "running"):
            self.state = "done"

    def fail(self, message: str) -> None:
        self.error, self.state = one_line(message), "failed"

    def skip(self, reason: str) -> None:
        self.error, self.state = one_line(reason), "skipped"

    def fraction(self) -> float | None:
        """How far the layers are, in bytes where known; None before anything is known."""
        if not self.layers:
            return 1.0 if self.state == "done" else None
        total = sum(layer.total for layer in self.layers.values())
        if total:
            return sum(min(layer.current, layer.total) for layer in self.layers.values()) / total
        return sum(1 for layer in self.layers.values() if layer.done) / len(self.layers)

    def result(self) -> str:
        """How the job ended, in one phrase: its last message ("Downloaded newer image for …")."""
        if self.state == "failed":
            return f"failed: {self.error}"
        if self.state == "skipped":
            return f"skipped: {self.error}"
        last = self.messages[-1] if self.messages else "done"
        return last.removeprefix("Status: ")

    def summary(self) -> str:
        """One line for the live table."""
        if self.state != "running":
            return self.result() if self.state != "waiting" else "waiting"
        if not self.layers:
            return self.messages[-1] if self.messages else "started"
        done = sum(1 for layer in self.layers.values() if layer.done)
        text = f"{done}/{len(self.layers)} layers"
        active = [layer for layer in self.layers.values() if not layer.done and layer.total]
        if active:
            current = sum(layer.current for layer in active)
            total = sum(layer.total for layer in active)
            text += f", {human_size(current)}/{human_size(total)}"
        busy = [layer.status for layer in self.layers.values() if not layer.done]
        return f"{text} ({busy[-1].lower()})" if busy else text


class JobsDisplay(LiveDisplay):
    """Shows several nodes' jobs as they change; nothing when ``quiet``. ``plain=False``: no lines when not
    live (for a job whose lines are all its result, which the command prints anyway)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        live: bool | None = None,
        quiet: bool = False,
        plain: bool = True,
    ) -> None:
        super().__init__(stream, live=live, quiet=quiet)
        self.plain = plain
        self._jobs: Sequence[Job] = ()

    def _last_frame(self, live: Live) -> None:
        live.update(self._table(self._jobs))

    def show(self, jobs: Sequence[Job], job: Job | None = None, lines: Sequence[str] = ()) -> None:
        """``job`` changed and said ``lines`` (printed one by one when not live)."""
        self._jobs = jobs
        if self.quiet:
            return
        if self._live is not None:
            self._live.update(self._table(jobs))
            return
        if job is not None and self.plain:
            for line in lines:
                print(f"{job.node}: {line}", file=self.stream, flush=True)

    @staticmethod
    def _table(jobs: Sequence[Job]) -> Group:
        # One line per node, cut at the terminal's edge: the node and the bar keep their place.
        width = max([len(j.node) for j in jobs] or [1])
        lines = []
        for job in jobs:
            done = job.fraction()
            if done is None:
                bar = "·" * 20
            else:
                filled = int(max(0.0, min(done, 1.0)) * 20)
                bar = "█" * filled + "░" * (20 - filled)
            text = f"{job.node:<{width}}  {bar}  {job.summary()}"
            lines.append(Text(text, no_wrap=True, overflow="ellipsis"))
        return Group(*lines)
