"""Health checks' rules and schedule as Docker has them: start period, retries, timeouts, the log.

The monitor runs on a fake clock here (its sleeps move the clock, probes take the time they say), so
the schedule is checked exactly; only the timeout, which runs on the event loop's clock, uses tiny real
durations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from agent.errors import ExecutorError
from agent.health import (
    MAX_OUTPUT,
    CheckOutput,
    Health,
    HealthMonitor,
    HealthState,
    ProbeResult,
    check_command,
    effective_config,
    from_docker,
    go_duration,
    limit_output,
    record_probe,
)
from api.objects import SECOND, HealthConfig

HEALTHY, UNHEALTHY, STARTING = HealthState.HEALTHY, HealthState.UNHEALTHY, HealthState.STARTING
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def probe(code: int, output: str = "") -> ProbeResult:
    return ProbeResult(T0, T0, code, output)


class FakeClock:
    """Time that moves only when the monitor sleeps or a probe takes time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class Script:
    """A check whose probes answer from a list (the last answer repeats), each taking ``duration``."""

    def __init__(self, clock: FakeClock, codes: Sequence[int], duration: float = 0.0) -> None:
        self.clock = clock
        self.codes = list(codes)
        self.duration = duration
        self.starts: list[float] = []
        self.commands: list[tuple[str, ...]] = []

    async def __call__(self, command: Sequence[str]) -> CheckOutput:
        self.starts.append(self.clock.now)
        self.commands.append(tuple(command))
        self.clock.now += self.duration
        code = self.codes[min(len(self.starts), len(self.codes)) - 1]
        return CheckOutput(code, f"probe {len(self.starts)}")


def config(
    interval: float = 10, retries: int = 3, start_period: float = 0, timeout: float = 30
) -> HealthConfig:
    return HealthConfig(
        test=("CMD-SHELL", "test -f /tmp/ok"),
        interval_ns=int(interval * SECOND),
        timeout_ns=int(timeout * SECOND),
        retries=retries,
        start_period_ns=int(start_period * SECOND),
    )


def monitor(clock: FakeClock, script: Script, cfg: HealthConfig) -> HealthMonitor:
    return HealthMonitor(cfg, script, started_at=0.0, clock=clock, sleep=clock.sleep)


# --- the rules ------------------------------------------------------------------------------------------
def test_retries_consecutive_failures_make_the_task_unhealthy() -> None:
    h = Health()
    for expected_streak in (1, 2):
        h = record_probe(h, probe(1), retries=3, in_start_period=False)
        assert (h.status, h.failing_streak) == (STARTING, expected_streak)
    h = record_probe(h, probe(1), retries=3, in_start_period=False)
    assert (h.status, h.failing_streak) == (UNHEALTHY, 3)


def test_a_success_resets_the_failing_streak() -> None:
    h = Health(HEALTHY)
    for code in (1, 1, 0, 1, 1):
        h = record_probe(h, probe(code), retries=3, in_start_period=False)
    assert (h.status, h.failing_streak) == (HEALTHY, 2)
    h = record_probe(h, probe(2), retries=3, in_start_period=False)
    assert h.status is UNHEALTHY, "any non-zero exit code is a failure"


def test_failures_in_the_start_period_do_not_count_until_the_first_success() -> None:
    h = Health()
    for _ in range(5):
        h = record_probe(h, probe(1), retries=1, in_start_period=True)
    assert (h.status, h.failing_streak) == (STARTING, 0)
    h = record_probe(h, probe(0), retries=1, in_start_period=True)
    assert h.status is HEALTHY
    h = record_probe(h, probe(1), retries=1, in_start_period=True)
    assert h.status is UNHEALTHY, "once healthy, the start period is over"


def test_the_log_keeps_the_last_five_probes() -> None:
    h = Health()
    for i in range(7):
        h = record_probe(h, probe(0, f"run {i}"), retries=3, in_start_period=False)
    assert [p.output for p in h.log] == [f"run {i}" for i in range(2, 7)]
    shown = h.docker()
    assert shown["Status"] == "healthy" and shown["FailingStreak"] == 0
    assert shown["Log"][-1] == {
        "Start": T0.isoformat(),
        "End": T0.isoformat(),
        "ExitCode": 0,
        "Output": "run 6",
    }


def test_which_check_a_task_runs() -> None:
    image = HealthConfig(test=("CMD", "/bin/check"), interval_ns=5 * SECOND, retries=7)
    assert effective_config(None) is None
    assert effective_config(HealthConfig(test=("NONE",)), image) is None, "NONE turns off the image's"
    assert effective_config(None, image) == image
    spec = HealthConfig(test=("CMD-SHELL", "true"), interval_ns=SECOND)
    assert effective_config(spec, image) == spec
    # No test in the spec: the image's test, with the spec's settings where they are not the defaults.
    merged = effective_config(HealthConfig(timeout_ns=2 * SECOND), image)
    assert merged == HealthConfig(
        test=("CMD", "/bin/check"), interval_ns=5 * SECOND, timeout_ns=2 * SECOND, retries=7
    )
    assert effective_config(HealthConfig(test=("curl", "x"))) is None, "neither CMD nor CMD-SHELL"
    zeros = effective_config(HealthConfig(test=("CMD", "x"), interval_ns=0, timeout_ns=0, retries=0))
    assert zeros == HealthConfig(test=("CMD", "x")), "zero means Docker's default"


def test_an_image_healthcheck_in_dockers_json() -> None:
    parsed = from_docker({"Test": ["CMD-SHELL", "exit 0"], "Interval": 2 * SECOND, "Retries": 4})
    assert parsed == HealthConfig(test=("CMD-SHELL", "exit 0"), interval_ns=2 * SECOND, retries=4)
    assert from_docker(None) is None and from_docker({"Test": []}) is None


def test_commands_and_output_as_docker_runs_them() -> None:
    assert check_command(("CMD", "/bin/check", "-v")) == ("/bin/check", "-v")
    assert check_command(("CMD-SHELL", "test -f /x || exit 1")) == ("/bin/sh", "-c", "test -f /x || exit 1")
    assert limit_output(b"ok\n") == "ok\n"
    long = limit_output(b"x" * (MAX_OUTPUT + 10))
    assert len(long) == MAX_OUTPUT + 3 and long.endswith("...")
    assert [
        go_duration(n) for n in (0, 30 * SECOND, 1_500_000_000, 50_000_000, 90 * SECOND, 3600 * SECOND)
    ] == [
        "0s",
        "30s",
        "1.5s",
        "50ms",
        "1m30s",
        "1h0m0s",
    ]


# --- the schedule ---------------------------------------------------------------------------------------
async def test_probes_run_an_interval_after_the_previous_one_ended() -> None:
    clock = FakeClock()
    script = Script(clock, [0, 1], duration=2.0)
    m = monitor(clock, script, config(interval=10, retries=3))
    assert (await m.run_until({HEALTHY})).status is HEALTHY
    health = await m.run_until({UNHEALTHY})
    # First probe one interval after the start; each next one an interval after the previous ended.
    assert script.starts == [10.0, 22.0, 34.0, 46.0]
    assert health.failing_streak == 3 and len(health.log) == 4
    assert script.commands[0] == ("/bin/sh", "-c", "test -f /tmp/ok")


async def test_the_start_period_hides_failures_until_it_ends() -> None:
    clock = FakeClock()
    script = Script(clock, [1])
    m = monitor(clock, script, config(interval=10, retries=2, start_period=25))
    health = await m.run_until({UNHEALTHY})
    # Probes at 10 and 20 began within the start period; those at 30 and 40 count.
    assert script.starts == [10.0, 20.0, 30.0, 40.0]
    assert health.failing_streak == 2


async def test_a_success_in_the_start_period_ends_it() -> None:
    clock = FakeClock()
    script = Script(clock, [1, 0, 1, 1])
    m = monitor(clock, script, config(interval=1, retries=2, start_period=100))
    assert (await m.run_until({HEALTHY})).status is HEALTHY
    health = await m.run_until({UNHEALTHY})
    assert script.starts == [1.0, 2.0, 3.0, 4.0], "failures count at once after the first success"
    assert health.failing_streak == 2


async def test_a_probe_cancelled_midway_is_not_recorded_and_runs_again_at_once() -> None:
    clock = FakeClock()
    release = asyncio.Event()
    starts: list[float] = []

    async def check(command: Sequence[str]) -> CheckOutput:
        starts.append(clock.now)
        if len(starts) == 2:
            await release.wait()
        return CheckOutput(1)

    m = HealthMonitor(config(interval=10, retries=3), check, started_at=0.0, clock=clock, sleep=clock.sleep)
    waiting = asyncio.ensure_future(m.run_until({UNHEALTHY}))
    while len(starts) < 2:
        await asyncio.sleep(0)
    waiting.cancel()  # the task changed while its second probe ran
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (m.health.failing_streak, len(m.health.log)) == (1, 1)
    assert m.seconds_to_next_probe() == 0, "the interrupted probe is still due"
    release.set()
    health = await m.run_until({UNHEALTHY})
    assert starts == [10.0, 20.0, 20.0, 30.0]
    assert health.failing_streak == 3


async def test_a_probe_past_its_timeout_is_stopped_and_counts_as_a_failure() -> None:
    stopped = asyncio.Event()

    async def hangs(command: Sequence[str]) -> CheckOutput:
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()
        return CheckOutput(0)

    m = HealthMonitor(config(interval=0.01, retries=2, timeout=0.05), hangs)
    health = await asyncio.wait_for(m.run_until({UNHEALTHY}), 5)
    assert stopped.is_set(), "the hanging check was cancelled"
    assert [p.exit_code for p in health.log] == [-1, -1]
    assert health.log[0].output == "Health check exceeded timeout (50ms)"
    assert health.log[0].end > health.log[0].start


async def test_a_check_that_cannot_run_is_a_failure_with_the_reason() -> None:
    async def broken(command: Sequence[str]) -> CheckOutput:
        raise ExecutorError("t1", "container is not running")

    m = HealthMonitor(config(interval=0.001, retries=1), broken)
    health = await asyncio.wait_for(m.run_until({UNHEALTHY}), 5)
    assert (health.log[0].exit_code, health.log[0].output) == (-1, "container is not running")


async def test_status_changes_are_announced() -> None:
    clock = FakeClock()
    seen: list[HealthState] = []
    m = HealthMonitor(
        config(interval=1, retries=1),
        Script(clock, [0, 0, 1]),
        started_at=0.0,
        clock=clock,
        sleep=clock.sleep,
        on_change=lambda h: seen.append(h.status),
    )
    await m.run_until({UNHEALTHY})
    assert seen == [HEALTHY, UNHEALTHY]
