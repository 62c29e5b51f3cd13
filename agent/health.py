"""Health checks as Docker runs them, on the agent: one :class:`HealthMonitor` per running task.

The check comes from the task's ``ContainerSpec.healthcheck``, or from the image's own ``HEALTHCHECK``
when the spec has no test (:func:`effective_config` merges them as Docker does; ``["NONE"]`` turns checks
off). The monitor then behaves like Docker's ``daemon/health.go``:

- the first probe runs one ``interval`` after the container started, each later one an ``interval`` after
  the previous probe ended;
- a probe is the test command run in the container through the executor (``["CMD", …]`` as is,
  ``["CMD-SHELL", "…"]`` under ``/bin/sh -c``); exit code 0 is a success, anything else a failure, and a
  probe still running after ``timeout`` is killed and counts as a failure (exit code -1, "Health check
  exceeded timeout (30s)");
- the status starts as ``starting``; one success makes it ``healthy`` (and ends the start period), and
  ``retries`` failures in a row make it ``unhealthy``. While the status is still ``starting``, failures of
  probes that began within ``start_period`` of the container's start are not counted;
- the last five probes are kept (start, end, exit code, the first 4 KiB of output) — Docker's
  ``State.Health`` of ``docker inspect``, which :meth:`Health.docker` renders.

The probe loop only runs while someone awaits :meth:`HealthMonitor.run_until` (the task controller does,
beside waiting for the exit), so it is cancelled together with the task's loop and never outlives it;
its state and schedule survive a cancellation and the next call resumes them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from agent.errors import ExecutorError
from api.objects import SECOND, HealthConfig, utcnow

log = logging.getLogger(__name__)

#: Docker keeps the last five probe results in ``State.Health.Log``.
MAX_LOG_ENTRIES = 5
#: Docker keeps at most this much of a probe's output (and appends "..." when it cut some).
MAX_OUTPUT = 4096
#: Docker's defaults for a zero interval, timeout or retries.
DEFAULT_INTERVAL_NS = 30 * SECOND
DEFAULT_TIMEOUT_NS = 30 * SECOND
DEFAULT_RETRIES = 3
#: The shell ``CMD-SHELL`` tests run under (Docker's default ``Config.Shell``).
SHELL = ("/bin/sh", "-c")
#: The task error SwarmKit reports for a task its agent stopped because it became unhealthy.
UNHEALTHY_ERROR = "unhealthy container"


class HealthState(enum.Enum):
    """Docker's ``State.Health.Status``."""

    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class CheckOutput:
    """What running a check command once gave: its exit code and (the start of) its combined output."""

    exit_code: int
    output: str = ""


@dataclass(frozen=True)
class ProbeResult:
    """One probe, as in ``State.Health.Log``."""

    start: datetime
    end: datetime
    exit_code: int
    output: str

    def docker(self) -> dict[str, Any]:
        return {
            "Start": self.start.isoformat(),
            "End": self.end.isoformat(),
            "ExitCode": self.exit_code,
            "Output": self.output,
        }


@dataclass(frozen=True)
class Health:
    """A container's health: status, consecutive failures and the last probes (oldest first)."""

    status: HealthState = HealthState.STARTING
    failing_streak: int = 0
    log: tuple[ProbeResult, ...] = field(default_factory=tuple)

    def docker(self) -> dict[str, Any]:
        """Docker's ``State.Health`` object."""
        return {
            "Status": self.status.value,
            "FailingStreak": self.failing_streak,
            "Log": [p.docker() for p in self.log],
        }


# --- the rules (pure) --------------------------------------------------------------------------------------
def record_probe(health: Health, result: ProbeResult, *, retries: int, in_start_period: bool) -> Health:
    """The health after one more probe (Docker's ``handleProbeResult``).

    ``in_start_period``: the probe began within the start period; its failure is not counted while the
    status is still ``starting``.
    """
    entries = (*health.log, result)[-MAX_LOG_ENTRIES:]
    if result.exit_code == 0:
        return Health(HealthState.HEALTHY, 0, entries)
    if health.status is HealthState.STARTING and in_start_period:
        return replace(health, log=entries)
    streak = health.failing_streak + 1
    status = HealthState.UNHEALTHY if streak >= max(1, retries) else health.status
    return Health(status, streak, entries)


def normalized(config: HealthConfig) -> HealthConfig:
    """``config`` with Docker's defaults for zero (unset) interval, timeout and retries."""
    return replace(
        config,
        interval_ns=config.interval_ns if config.interval_ns > 0 else DEFAULT_INTERVAL_NS,
        timeout_ns=config.timeout_ns if config.timeout_ns > 0 else DEFAULT_TIMEOUT_NS,
        retries=config.retries if config.retries > 0 else DEFAULT_RETRIES,
        start_period_ns=max(0, config.start_period_ns),
    )


def from_docker(config: Mapping[str, Any] | None) -> HealthConfig | None:
    """An image's ``Healthcheck`` (``{"Test": […], "Interval": ns, "Timeout": ns, "StartPeriod": ns,
    "Retries": n}``, zero meaning the default) as a HealthConfig; None when it has none."""
    if not config or not config.get("Test"):
        return None
    return normalized(
        HealthConfig(
            test=tuple(str(t) for t in config["Test"]),
            interval_ns=int(config.get("Interval") or 0),
            timeout_ns=int(config.get("Timeout") or 0),
            retries=int(config.get("Retries") or 0),
            start_period_ns=int(config.get("StartPeriod") or 0),
        )
    )


def effective_config(spec: HealthConfig | None, image: HealthConfig | None = None) -> HealthConfig | None:
    """The check a task runs: the spec's, completed from the image's as Docker merges them; None for none.

    A spec without a test takes the image's test, and each of its settings left at the default takes the
    image's (Docker does this for unset, zero, fields; Shoal's spec has no "unset", so the default stands
    for it). ``["NONE"]`` in the spec turns off the image's check; a test that is neither ``CMD`` nor
    ``CMD-SHELL`` is ignored, as Docker ignores it.
    """
    if spec is not None and spec.test[:1] == ("NONE",):
        return None
    if spec is not None and spec.test:
        config = spec
    elif image is not None and image.test:
        config = image
        if spec is not None:
            default = HealthConfig()
            config = replace(
                image,
                **{
                    name: getattr(spec, name)
                    for name in ("interval_ns", "timeout_ns", "retries", "start_period_ns")
                    if getattr(spec, name) != getattr(default, name)
                },
            )
    else:
        return None
    if config.test[0] not in ("CMD", "CMD-SHELL") or len(config.test) < 2:
        if config.test[0] != "NONE":
            log.warning("ignoring health check %r: the test must start with CMD or CMD-SHELL", config.test)
        return None
    return normalized(config)


def check_command(test: Sequence[str]) -> tuple[str, ...]:
    """The command a test runs: ``["CMD", a, b]`` → ``(a, b)``; ``["CMD-SHELL", s]`` → ``/bin/sh -c s``."""
    kind, *rest = test
    return (*SHELL, *rest) if kind == "CMD-SHELL" else tuple(rest)


def limit_output(data: bytes, truncated: bool = False) -> str:
    """A probe's output as Docker keeps it: the first 4 KiB, then "..." when there was more."""
    cut = truncated or len(data) > MAX_OUTPUT
    text = data[:MAX_OUTPUT].decode("utf-8", errors="replace")
    return text + "..." if cut else text


def go_duration(ns: int) -> str:
    """A duration as Go prints one ("30s", "1.5s", "500ms", "1m30s"), for Docker's messages."""
    if ns == 0:
        return "0s"
    sign, ns = ("-" if ns < 0 else ""), abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fraction(ns, 1_000)}µs"
    if ns < SECOND:
        return f"{sign}{_fraction(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3600 * SECOND)
    minutes, rest = divmod(rest, 60 * SECOND)
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{sign}{out}{_fraction(rest, SECOND)}s"


def _fraction(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    digits = str(frac).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


# --- the monitor ---------------------------------------------------------------------------------------
#: Runs a check command in the task's container once; cancelling it must stop the command.
CheckRunner = Callable[[Sequence[str]], Awaitable[CheckOutput]]


class HealthMonitor:
    """Probes one running task on Docker's schedule and keeps its :class:`Health` (module docstring).

    ``started_at`` is when the container started, on ``clock``; the start period and the first probe
    count from it. ``clock`` and ``sleep`` are ``time.monotonic`` and ``asyncio.sleep`` unless a test
    gives a fake pair (the check's timeout always runs on the event loop's clock).
    """

    def __init__(
        self,
        config: HealthConfig,
        run: CheckRunner,
        *,
        started_at: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        name: str = "",
        on_change: Callable[[Health], None] | None = None,
    ) -> None:
        self.config = normalized(config)
        self.command = check_command(self.config.test)
        self.name = name
        self.health = Health()
        self._run = run
        self._clock = clock
        self._sleep = sleep
        self._on_change = on_change
        self.started_at = clock() if started_at is None else started_at
        self._next = self.started_at + self.interval

    @property
    def interval(self) -> float:
        return self.config.interval_ns / SECOND

    @property
    def timeout(self) -> float:
        return self.config.timeout_ns / SECOND

    @property
    def start_period(self) -> float:
        return self.config.start_period_ns / SECOND

    def seconds_to_next_probe(self) -> float:
        """How long until the next probe is due (0 when it is due now)."""
        return max(0.0, self._next - self._clock())

    async def run_until(self, states: Collection[HealthState]) -> Health:
        """Probe on schedule until the status is one of ``states`` (at once if it already is)."""
        while self.health.status not in states:
            delay = self.seconds_to_next_probe()
            if delay > 0:
                await self._sleep(delay)
            await self.probe()
        return self.health

    async def probe(self) -> Health:
        """Run one probe now and record it; a cancelled probe is not recorded and stays due."""
        began = self._clock()
        start = utcnow()
        try:
            async with asyncio.timeout(self.timeout):
                out = await self._run(self.command)
        except TimeoutError:
            out = CheckOutput(-1, f"Health check exceeded timeout ({go_duration(self.config.timeout_ns)})")
        except ExecutorError as e:
            out = CheckOutput(-1, e.message)
        result = ProbeResult(start, utcnow(), out.exit_code, out.output)
        self._next = self._clock() + self.interval
        return self.record(result, began)

    def record(self, result: ProbeResult, began: float) -> Health:
        """Record a probe that began at ``began`` (on the monitor's clock)."""
        before = self.health.status
        self.health = record_probe(
            self.health,
            result,
            retries=self.config.retries,
            in_start_period=began - self.started_at < self.start_period,
        )
        if self.health.status is not before:
            log.info(
                "task %s: health %s → %s (exit code %d: %s)",
                self.name,
                before.value,
                self.health.status.value,
                result.exit_code,
                result.output.strip()[:200],
            )
            if self._on_change is not None:
                self._on_change(self.health)
        return self.health
