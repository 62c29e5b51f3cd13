"""``service logs`` and ``task logs``: read the manager's NDJSON log stream and print it as Docker does.

Each line is prefixed with its task's context, ``web.1.abc123def456@host1    | text`` (service name,
slot — or node id for a global service's task —, short task id, node hostname; names resolved once per
task and cached), stdout lines on stdout and stderr lines on stderr; ``--timestamps`` puts the time first,
``--raw`` prints the text alone. Errors in the stream (a node whose logs cannot be read) are printed as
they come, and the command fails at the end with "incomplete log stream", as Docker's does.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

import click

from api.errors import CodecError
from api.logs import parse_time
from swarmctl.client import Client
from swarmctl.errors import APIError, InvalidValue, SwarmctlError

F = TypeVar("F", bound=Callable[..., Any])

_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_since(text: str, now: float | None = None) -> str:
    """``--since`` as the manager takes it: a duration (``42m``, ``1h30m``) counts back from now; a UNIX
    timestamp or an RFC 3339 time passes as UNIX seconds. Raises InvalidValue."""
    text = text.strip()
    if _DURATION.match(text):
        seconds = sum(float(n) * _UNIT[unit] for n, unit in _PART.findall(text))
        ns = int(((time.time() if now is None else now) - seconds) * 1e9)
    else:
        try:
            ns = parse_time(text, "since")
        except CodecError:
            raise InvalidValue(
                "since", text, "use a duration (42m, 1h30m), UNIX seconds or an RFC 3339 time"
            ) from None
    whole, frac = divmod(max(ns, 0), 1_000_000_000)
    return f"{whole}.{frac:09d}"


def parse_tail(text: str) -> str:
    """``--tail`` as Docker takes it: a number of lines, or ``all`` (also for anything else)."""
    try:
        return str(int(text)) if int(text) >= 0 else "all"
    except ValueError:
        return "all"


@dataclass(frozen=True)
class LogFormat:
    """How lines are printed (the command's flags)."""

    timestamps: bool = False
    raw: bool = False
    no_task_ids: bool = False
    no_trunc: bool = False
    no_resolve: bool = False
    #: Width the slot numbers are padded to (the digits of the service's replica count).
    slot_width: int = 1


def task_context(service: str, slot: int, node_id: str, task_id: str, hostname: str, fmt: LogFormat) -> str:
    """A task's prefix: ``web.1.abc123def456@host1``, padded so that slots of different widths align."""
    name = f"{service}.{slot if slot else node_id}"
    if not fmt.no_task_ids:
        name += "." + (task_id if fmt.no_trunc else task_id[:12])
    padding = " " * max(fmt.slot_width - len(str(slot)), 0) if slot else ""
    return f"{name}@{hostname}{padding}"


def format_line(context: str, line: dict[str, Any], fmt: LogFormat) -> str:
    """One line as printed: ``[time ]context    | text``, or ``[time ]text`` when raw."""
    prefix = f"{line.get('time', '')} " if fmt.timestamps else ""
    if fmt.raw:
        return prefix + str(line.get("text", ""))
    return f"{prefix}{context}    | {line.get('text', '')}"


@dataclass
class LogPrinter:
    """Prints a log stream's objects; remembers the errors it saw."""

    client: Client
    fmt: LogFormat
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    errors: int = 0
    _contexts: dict[tuple[str, str], str] = field(default_factory=dict)
    _hosts: dict[str, str] = field(default_factory=dict)

    def print(self, obj: dict[str, Any]) -> None:
        task_id, node_id = str(obj.get("task", "")), str(obj.get("node", ""))
        if "error" in obj:
            self.errors += 1
            where = self.context(task_id, node_id) if task_id else f"node {self._host(node_id)}"
            print(f"error from {where}: {obj['error']}", file=self.err, flush=True)
            return
        text = format_line(self.context(task_id, node_id), obj, self.fmt)
        print(text, file=self.err if obj.get("stream") == "stderr" else self.out, flush=True)

    def context(self, task_id: str, node_id: str) -> str:
        key = (task_id, node_id)
        found = self._contexts.get(key)
        if found is None:
            found = self._contexts[key] = self._resolve(task_id, node_id)
        return found

    def _resolve(self, task_id: str, node_id: str) -> str:
        service, slot = "", 0
        try:
            task = self.client.task(task_id)
            service = task.service_id if self.fmt.no_resolve else task.service_annotations.name
            service, slot = service or task.service_id, task.slot
        except APIError:
            service = "?"  # removed meanwhile: its lines still show, with what is known
        return task_context(service, slot, node_id, task_id, self._host(node_id), self.fmt)

    def _host(self, node_id: str) -> str:
        if self.fmt.no_resolve or not node_id:
            return node_id
        if node_id not in self._hosts:
            try:
                self._hosts[node_id] = self.client.node(node_id).status.description.hostname or node_id
            except APIError:
                self._hosts[node_id] = node_id
        return self._hosts[node_id]


def log_options(f: F) -> F:
    """The options ``service logs`` and ``task logs`` share (Docker's)."""
    options = [
        click.option("-f", "--follow", is_flag=True, help="Follow log output."),
        click.option(
            "-n", "--tail", default="all", help='Number of lines to show from the end of the logs (or "all").'
        ),
        click.option(
            "--since",
            default="",
            help="Show logs since a timestamp (2013-01-02T13:23:37Z) or relative (42m).",
        ),
        click.option("-t", "--timestamps", is_flag=True, help="Show timestamps."),
        click.option("--raw", is_flag=True, help="Do not neatly format logs."),
        click.option("--no-task-ids", is_flag=True, help="Do not include task IDs in output."),
        click.option("--no-resolve", is_flag=True, help="Do not map IDs to names in output."),
        click.option("--no-trunc", is_flag=True, help="Do not truncate output."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def print_logs(client: Client, path: str, o: dict[str, Any], slot_width: int = 1) -> None:
    """Stream ``path`` with the options of :func:`log_options` and print it; fails at the end if some
    logs could not be read."""
    query = {
        "follow": "1" if o["follow"] else None,
        "tail": parse_tail(o["tail"]),
        "since": parse_since(o["since"]) if o["since"] else None,
        "timestamps": "1" if o["timestamps"] else None,
    }
    fmt = LogFormat(
        timestamps=o["timestamps"],
        raw=o["raw"],
        no_task_ids=o["no_task_ids"],
        no_trunc=o["no_trunc"],
        no_resolve=o["no_resolve"],
        slot_width=slot_width,
    )
    printer = LogPrinter(client, fmt)
    try:
        _print_all(printer, client.stream(path, query))
    except KeyboardInterrupt:
        if not o["follow"]:
            raise
        return  # the usual way to stop following
    if printer.errors:
        raise SwarmctlError("incomplete log stream: some logs could not be read (see above)")


def _print_all(printer: LogPrinter, objects: Iterable[dict[str, Any]]) -> None:
    for obj in objects:
        printer.print(obj)
