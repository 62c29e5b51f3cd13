"""Restart policies with Docker's back-off, and adoption of running containers by a new runtime."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agent.runtime.containers.config import ContainerConfig, ImageConfig, RestartPolicy
from agent.runtime.containers.logs import LogFilter
from agent.runtime.containers.runtime import ContainerRuntime
from tests.integration.runtime import containers_support as support
from tests.integration.runtime.containers_support import RuntimeEnv, requires_runc

pytestmark = [pytest.mark.root, requires_runc]

# The fixtures this module uses (defined with their finalisers in containers_support).
busybox_template = support.busybox_template
runtime_env = support.runtime_env
runtime = support.runtime
REPO = Path(__file__).resolve().parents[3]


def sh(script: str, restart: str = "no", **kwargs: object) -> ContainerConfig:
    return ContainerConfig(
        image="busybox",
        cmd=("sh", "-c", script),
        restart_policy=RestartPolicy.parse(restart),
        **kwargs,  # type: ignore[arg-type]
    )


async def wait_until(predicate: object, timeout: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def run_lines(rt: ContainerRuntime, cid: str) -> list[int]:
    """Timestamps (ns) of the "run" line each run of the container printed."""
    return [e.time_ns for e in rt.logs(cid, LogFilter(stderr=False)) if e.message == b"run\n"]


async def test_on_failure_3_stops_after_3_restarts_with_growing_backoff(runtime: ContainerRuntime) -> None:
    record = await runtime.create(sh("echo run; exit 1", "on-failure:3"), ImageConfig())
    await runtime.start(record.id)
    await wait_until(
        lambda: (
            runtime.inspect(record.id).state.restart_count == 3
            and runtime.inspect(record.id).state.status == "exited"
        )
    )
    await asyncio.sleep(0.5)  # no fourth restart comes
    state = runtime.inspect(record.id).state
    assert (state.status, state.restart_count, state.exit_code) == ("exited", 3, 1)
    starts = run_lines(runtime, record.id)
    assert len(starts) == 4
    gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4  # 100 ms, doubling


async def test_on_failure_does_not_restart_success_and_no_never_restarts(runtime: ContainerRuntime) -> None:
    ok = await runtime.create(sh("echo run; exit 0", "on-failure"), ImageConfig())
    never = await runtime.create(sh("echo run; exit 3"), ImageConfig())
    for record in (ok, never):
        await runtime.start(record.id)
        await runtime.wait(record.id)
    await asyncio.sleep(0.4)
    assert runtime.inspect(ok.id).state.restart_count == 0 and len(run_lines(runtime, ok.id)) == 1
    assert runtime.inspect(never.id).state.restart_count == 0 and len(run_lines(runtime, never.id)) == 1


@pytest.mark.parametrize("policy", ["always", "unless-stopped"])
async def test_always_restarts_until_stopped(runtime: ContainerRuntime, policy: str) -> None:
    record = await runtime.create(sh("echo run; sleep 0.05; exit 0", policy), ImageConfig())
    await runtime.start(record.id)
    await wait_until(lambda: runtime.inspect(record.id).state.restart_count >= 2)
    await runtime.stop(record.id, timeout=1)
    count = runtime.inspect(record.id).state.restart_count
    await asyncio.sleep(0.6)
    state = runtime.inspect(record.id).state
    assert state.status == "exited" and state.restart_count == count and state.manually_stopped


async def test_adoption_after_clean_close(runtime_env: RuntimeEnv) -> None:
    first = runtime_env.runtime()
    await first.open()
    looping = await first.create(
        sh("echo started; trap 'exit 9' TERM; while true; do sleep 0.05; done"), ImageConfig(), name="looping"
    )
    brief = await first.create(sh("echo started; sleep 0.3; exit 5"), ImageConfig(), name="brief")
    again = await first.create(sh("echo run; sleep 0.3; exit 1", "on-failure:1"), ImageConfig(), name="again")
    frozen = await first.create(sh("sleep 30"), ImageConfig(), name="frozen")
    for record in (looping, brief, again, frozen):
        await first.start(record.id)
    await first.pause("frozen")
    await first.close()  # the runtime goes away; the containers do not

    await asyncio.sleep(0.6)  # meanwhile "brief" and "again" exit with nobody watching
    second = runtime_env.runtime()
    await second.open()
    try:
        assert second.inspect("looping").state.status == "running"
        assert second.inspect("brief").state.exit_code == 5
        assert second.inspect("brief").state.status == "exited"
        # The exit seen at adoption still counts for the restart policy.
        await wait_until(
            lambda: (
                second.inspect("again").state.restart_count == 1
                and second.inspect("again").state.status == "exited"
            )
        )
        assert second.inspect("again").state.exit_code == 1
        await second.stop("looping", timeout=5)
        assert second.inspect("looping").state.exit_code == 9
        assert [e.message for e in second.logs("looping")] == [b"started\n"]
        assert second.inspect("frozen").state.status == "paused"
        await second.unpause("frozen")
        await second.kill("frozen")
        assert await second.wait("frozen") == 137
    finally:
        await second.close()


async def test_adoption_after_the_runtime_is_killed(runtime_env: RuntimeEnv) -> None:
    # A separate process runs a runtime, starts two containers, and is then killed with SIGKILL.
    plan = {
        "state_dir": str(runtime_env.state_dir),
        "template": str(runtime_env.provider.template),
        "base": str(runtime_env.provider.base),
        "cgroup_parent": runtime_env.cgroup_parent,
        "runc_root": str(runtime_env.runc_root),
        "containers": [["long", "echo up; sleep 1.5; exit 7"], ["short", "echo up; exit 3"]],
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.runtime.containers_support", json.dumps(plan)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)  # type: ignore[union-attr]
        long_id, short_id = json.loads(line)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    await asyncio.sleep(0.2)
    rt = runtime_env.runtime()
    await rt.open()
    try:
        assert rt.inspect(long_id).state.status == "running"
        assert [r.name for r in rt.list()] == ["long"]
        assert rt.inspect("short").state.exit_code == 3
        assert await asyncio.wait_for(rt.wait("long"), 10) == 7  # the real exit code, via conmon's exit file
        assert [e.message for e in rt.logs("long")] == [b"up\n"]
        for cid in (long_id, short_id):
            await rt.remove(cid)
        assert runtime_env.runc_list() == [] and runtime_env.cgroup_dirs() == []
    finally:
        await rt.close()
