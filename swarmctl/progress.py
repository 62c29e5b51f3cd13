"""Waiting for services to converge, with live progress, and explaining why when they do not.

A service has converged when as many tasks of its *current* spec run as it wants (its replicas, or one per
eligible node for a global service), no task of an older spec is still wanted, and no rolling update is in
progress. It has failed when an update it started paused or rolled back; and it has not converged when the
timeout passes, in which case the reason is what its tasks say (the scheduler's ``no suitable node (…)``,
an agent's error).

:func:`assess` is the pure judgement of one service from one snapshot; :func:`wait` polls the manager and
shows the result: a rich live table on a terminal, one line per change otherwise (logs, CI, tests).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Self, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from api import Node, Service, Task, TaskState
from api.objects import NodeAvailability, NodeState, ServiceMode, UpdateState
from scheduler import InvalidExpression
from scheduler.from_api import node_matches
from swarmctl.client import Client
from swarmctl.errors import APIError, NotConverged

_FAILED_UPDATE = (UpdateState.PAUSED, UpdateState.ROLLBACK_PAUSED)
_IN_PROGRESS = (UpdateState.UPDATING, UpdateState.ROLLBACK_STARTED)


@dataclass
class Target:
    """A service to wait for. ``baseline`` is its ``update_started_at`` before this command changed it, so
    an update state is only taken as ours when it started later; ``rollback`` marks a requested rollback."""

    service_id: str
    name: str
    baseline: datetime | None = None
    rollback: bool = False
    #: The reason an automatic rollback gave, kept because the message changes when it completes.
    rollback_reason: str = field(default="", compare=False)


@dataclass(frozen=True)
class Assessment:
    """One service at one moment."""

    name: str
    desired: int
    running: int
    converged: bool
    #: Set when the service will not converge by waiting (a paused or rolled-back update).
    failure: str = ""
    #: What the tasks not running say, most useful first ("web.2: no suitable node (…)").
    problems: tuple[str, ...] = ()
    update: str = ""

    def summary(self) -> str:
        text = f"{self.running}/{self.desired} running"
        if self.update:
            text += f", {self.update}"
        if self.converged:
            return text + ", converged"
        if self.problems:
            text += f" ({self.problems[0]})"
        return text


def eligible_nodes(service: Service, nodes: Sequence[Node]) -> int:
    """How many nodes a global service wants a task on: ready, active, and meeting its constraints."""
    placement = service.spec.task.placement
    count = 0
    for n in nodes:
        if n.status.state is not NodeState.READY or n.spec.availability is not NodeAvailability.ACTIVE:
            continue
        try:
            if node_matches(n, placement.constraints, placement.platforms):
                count += 1
        except InvalidExpression:
            return 0
    return count


def _task_name(t: Task) -> str:
    name = t.service_annotations.name or t.service_id[:12]
    return f"{name}.{t.slot}" if t.slot else f"{name}.{t.node_id[:12]}"


def assess(target: Target, service: Service, tasks: Sequence[Task], nodes: Sequence[Node]) -> Assessment:
    """Judge one service from its tasks (and the nodes, for global services)."""
    name = service.spec.annotations.name
    if service.spec.mode is ServiceMode.GLOBAL:
        desired = eligible_nodes(service, nodes)
    else:
        desired = service.spec.replicas
    current = [t for t in tasks if t.spec == service.spec.task]
    wanted = [t for t in current if t.desired_state is TaskState.RUNNING]
    running = sum(1 for t in wanted if t.status.state is TaskState.RUNNING)
    stale = [t for t in tasks if t.spec != service.spec.task and t.desired_state <= TaskState.RUNNING]

    st = service.status
    ours = st.update_started_at is not None and (
        target.baseline is None or st.update_started_at > target.baseline
    )
    state = st.update_state if ours else UpdateState.NONE
    failure = ""
    update = ""
    if state is UpdateState.ROLLBACK_STARTED and not target.rollback and not target.rollback_reason:
        target.rollback_reason = st.update_message or "the update failed"
    if state in _FAILED_UPDATE:
        failure = f"update paused: {st.update_message}"
    elif state is UpdateState.ROLLBACK_COMPLETED and not target.rollback:
        failure = f"update rolled back: {target.rollback_reason or st.update_message}"
    elif state in _IN_PROGRESS:
        update = "rolling back" if state is UpdateState.ROLLBACK_STARTED else "updating"

    problems = _problems(current, tasks)
    converged = not failure and state not in _IN_PROGRESS and running == desired and len(wanted) == desired
    converged = converged and not stale
    return Assessment(name, desired, running, converged, failure, problems, update)


def _problems(current: Sequence[Task], tasks: Sequence[Task]) -> tuple[str, ...]:
    """What the tasks that are not running say: pending reasons first, then the latest failures."""
    out: list[str] = []
    seen: set[str] = set()

    def add(text: str) -> None:
        if text and text not in seen:
            seen.add(text)
            out.append(text)

    for t in current:
        waiting = t.desired_state is TaskState.RUNNING and t.status.state < TaskState.ASSIGNED
        if waiting and t.status.message not in ("", "created", "allocated"):
            add(f"{_task_name(t)}: {t.status.message}")
    ended = [t for t in tasks if t.status.state in (TaskState.FAILED, TaskState.REJECTED)]
    ended.sort(key=lambda t: t.status.timestamp, reverse=True)
    for t in ended:
        add(f"{_task_name(t)} {t.status.state.value}: {t.status.err or t.status.message}")
    return tuple(out)


# --- display ------------------------------------------------------------------------------------------
class LiveDisplay:
    """Where progress shows: a rich live region when ``live`` (default: when the stream is a terminal),
    else plain lines the subclass prints; nothing when ``quiet``. Use it as a context manager."""

    def __init__(
        self, stream: TextIO | None = None, *, live: bool | None = None, quiet: bool = False
    ) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live_mode = not quiet and (self.stream.isatty() if live is None else live)
        self._live: Live | None = None

    def __enter__(self) -> Self:
        if self.live_mode:
            self._live = Live(console=Console(file=self.stream), refresh_per_second=8, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._last_frame(self._live)
            self._live.__exit__(None, None, None)
            self._live = None

    def _last_frame(self, live: Live) -> None:
        """Draw the final state before the live region stops (nothing to redraw by default)."""


class Display(LiveDisplay):
    """Shows assessments as they change."""

    def __init__(
        self, stream: TextIO | None = None, *, live: bool | None = None, quiet: bool = False
    ) -> None:
        super().__init__(stream, live=live, quiet=quiet)
        self._last: dict[str, str] = {}

    def show(self, items: Sequence[Assessment]) -> None:
        if self.quiet:
            return
        if self._live is not None:
            self._live.update(self._table(items))
            return
        for a in items:
            line = a.summary()
            if self._last.get(a.name) != line:
                self._last[a.name] = line
                print(f"{a.name}: {line}", file=self.stream, flush=True)

    @staticmethod
    def _table(items: Sequence[Assessment]) -> Table:
        table = Table(box=None, show_header=False, pad_edge=False)
        for _ in range(4):
            table.add_column(no_wrap=True)
        table.add_column(no_wrap=True, overflow="ellipsis")  # the full reason ends the command, if it fails
        for a in items:
            done = a.running / a.desired if a.desired else 1.0
            bar = "█" * int(done * 20) + "░" * (20 - int(done * 20))
            status = "converged" if a.converged else (a.update or "converging")
            detail = "" if a.converged else (a.problems[0] if a.problems else "")
            table.add_row(
                Text(a.name), Text(f"{a.running}/{a.desired}"), Text(bar), Text(status), Text(detail)
            )
        return table


def wait(
    client: Client,
    targets: Sequence[Target],
    *,
    timeout: float,
    what: str = "",
    interval: float = 0.2,
    display: Display | None = None,
) -> list[Assessment]:
    """Poll until every target converges; raises NotConverged with the reason on failure or timeout."""
    display = display or Display()
    deadline = time.monotonic() + timeout
    with display:
        while True:
            results = _poll(client, targets)
            display.show(results)
            failed = [a for a in results if a.failure]
            if failed:
                a = failed[0]
                raise NotConverged(what or f"service {a.name}", a.failure)
            if all(a.converged for a in results):
                return results
            if time.monotonic() >= deadline:
                waiting = [a for a in results if not a.converged]
                raise NotConverged(what or f"service {waiting[0].name}", _timeout_reason(waiting, timeout))
            time.sleep(interval)


def _poll(client: Client, targets: Sequence[Target]) -> list[Assessment]:
    nodes: list[Node] | None = None
    out = []
    for target in targets:
        try:
            svc = client.service(target.service_id)
        except APIError as e:
            if e.not_found:
                raise NotConverged(f"service {target.name}", "it was removed while waiting") from None
            raise
        if svc.spec.mode is ServiceMode.GLOBAL and nodes is None:
            nodes = client.nodes()
        out.append(assess(target, svc, client.tasks(service=svc.meta.id), nodes or []))
    return out


def _timeout_reason(waiting: Sequence[Assessment], timeout: float) -> str:
    parts = []
    for a in waiting:
        text = f"{a.name}: {a.running}/{a.desired} tasks running after {timeout:g}s"
        if a.problems:
            text += "; " + "; ".join(a.problems[:3])
        parts.append(text)
    return "; ".join(parts)
