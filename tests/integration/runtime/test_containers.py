"""Container lifecycle on real runc under conmon: run, logs, exit codes, top, inspect, stop/start/rm, exec."""

from __future__ import annotations

import asyncio

import pytest

from agent.runtime.containers.config import ContainerConfig, ImageConfig, Resources, parse_size
from agent.runtime.containers.introspect import docker_inspect
from agent.runtime.containers.logs import LogFilter
from agent.runtime.containers.runtime import ContainerRuntime
from agent.runtime.errors import ContainerNotFound, ContainerStateConflict, NameConflict, OCIRuntimeError
from tests.integration.runtime import containers_support as support
from tests.integration.runtime.containers_support import RuntimeEnv, requires_runc

pytestmark = [pytest.mark.root, requires_runc]

# The fixtures this module uses (defined with their finalisers in containers_support).
busybox_template = support.busybox_template
runtime_env = support.runtime_env
runtime = support.runtime

BUSYBOX_IMAGE = ImageConfig(
    cmd=("sh",), env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
)


def sh(script: str, **kwargs: object) -> ContainerConfig:
    """A busybox container running a shell script."""
    return ContainerConfig(image="busybox", cmd=("sh", "-c", script), **kwargs)  # type: ignore[arg-type]


async def run(rt: ContainerRuntime, config: ContainerConfig, name: str | None = None) -> tuple[str, int]:
    """create + start + wait, like ``docker run``; returns (id, exit code)."""
    record = await rt.create(config, BUSYBOX_IMAGE, name=name)
    await rt.start(record.id)
    return record.id, await asyncio.wait_for(rt.wait(record.id), 20)


def stdout_of(rt: ContainerRuntime, cid: str) -> str:
    return b"".join(e.message for e in rt.logs(cid, LogFilter(stderr=False))).decode()


async def test_hello_world(runtime: ContainerRuntime) -> None:
    cid, code = await run(runtime, ContainerConfig(image="busybox", cmd=("echo", "hello world")))
    assert code == 0
    assert stdout_of(runtime, cid) == "hello world\n"
    state = runtime.inspect(cid).state
    assert state.status == "exited" and state.pid == 0 and state.finished_at >= state.started_at > 0


@pytest.mark.parametrize("code", [0, 1, 42])
async def test_exit_code_of_the_process(runtime: ContainerRuntime, code: int) -> None:
    cid, got = await run(runtime, sh(f"exit {code}"))
    assert got == code
    assert runtime.inspect(cid).state.exit_code == code


@pytest.mark.parametrize(
    ("cmd", "code", "text"),
    [
        (("no-such-command",), 127, "executable file not found"),
        (("/no/such/file",), 127, "no such file"),
        (("/etc/passwd",), 126, "permission denied"),
    ],
)
async def test_start_failures_have_dockers_exit_codes(
    runtime: ContainerRuntime, cmd: tuple[str, ...], code: int, text: str
) -> None:
    record = await runtime.create(ContainerConfig(image="busybox", cmd=cmd), BUSYBOX_IMAGE)
    with pytest.raises(OCIRuntimeError) as info:
        await runtime.start(record.id)
    assert info.value.exit_code == code
    state = runtime.inspect(record.id).state
    assert state.exit_code == code and text in state.error and state.status == "created"
    assert await runtime.wait(record.id) == code


async def test_runtime_errors_are_125(runtime: ContainerRuntime) -> None:
    record = await runtime.create(sh("true", user="nosuchuser"), BUSYBOX_IMAGE)
    with pytest.raises(OCIRuntimeError) as info:
        await runtime.start(record.id)
    assert info.value.exit_code == 125
    assert "unable to find user nosuchuser" in runtime.inspect(record.id).state.error


async def test_daemonised_loop_logs_top_stop_start_and_rm(
    runtime: ContainerRuntime, runtime_env: RuntimeEnv
) -> None:
    record = await runtime.create(
        sh("while true; do echo hello world; sleep 0.1; done", stop_timeout=1), BUSYBOX_IMAGE, name="looper"
    )
    await runtime.start("looper")
    assert runtime.inspect("looper").state.status == "running"
    assert [r.name for r in runtime.list()] == ["looper"]

    lines = []
    async for entry in runtime.follow("looper", LogFilter(stderr=False)):
        lines.append(entry.message)
        if len(lines) == 3:
            break
    assert lines == [b"hello world\n"] * 3

    top = await runtime.top("looper")
    assert "PID" in top.titles and "CMD" in top.titles
    commands = [row[-1] for row in top.processes]
    assert any("while true" in c for c in commands)
    assert str(runtime.inspect("looper").state.pid) in [row[top.titles.index("PID")] for row in top.processes]

    # sh as PID 1 ignores SIGTERM: stop waits the timeout, then kills.
    await runtime.stop("looper")
    state = runtime.inspect("looper").state
    assert state.status == "exited" and state.exit_code == 137 and state.manually_stopped
    assert runtime.list() == [] and len(runtime.list(all=True)) == 1

    first_run_lines = len(stdout_of(runtime, "looper").splitlines())
    await runtime.start("looper")
    assert runtime.inspect("looper").state.status == "running"
    await asyncio.sleep(0.3)
    assert len(stdout_of(runtime, "looper").splitlines()) > first_run_lines  # logs of every run are kept

    with pytest.raises(ContainerStateConflict):
        await runtime.remove("looper")
    await runtime.remove("looper", force=True)
    with pytest.raises(ContainerNotFound):
        runtime.inspect("looper")
    # Nothing left: no state dir, no rootfs, no cgroup, no runc container, no conmon, no mount.
    assert not (runtime_env.state_dir / "containers" / record.id).exists()
    assert record.id not in runtime_env.provider.prepared
    assert runtime_env.cgroup_dirs() == []
    assert runtime_env.runc_list() == []
    assert runtime_env.conmon_pids() == []
    with open("/proc/self/mountinfo") as f:
        assert record.id not in f.read()


async def test_stop_signal_is_honoured(runtime: ContainerRuntime) -> None:
    record = await runtime.create(
        sh("trap 'echo got term; exit 0' TERM; echo ready; while true; do sleep 0.05; done"), BUSYBOX_IMAGE
    )
    await runtime.start(record.id)
    await _wait_for_output(runtime, record.id, "ready")
    await runtime.stop(record.id, timeout=5)
    assert runtime.inspect(record.id).state.exit_code == 0
    assert "got term" in stdout_of(runtime, record.id)


async def test_kill_with_signal_and_restart(runtime: ContainerRuntime) -> None:
    record = await runtime.create(
        sh("trap 'echo got usr1' USR1; echo ready; while true; do sleep 0.05; done"), BUSYBOX_IMAGE
    )
    await runtime.start(record.id)
    await _wait_for_output(runtime, record.id, "ready")
    await runtime.kill(record.id, "USR1")
    await _wait_for_output(runtime, record.id, "got usr1")
    first_pid = runtime.inspect(record.id).state.pid
    await runtime.restart(record.id, timeout=0)
    state = runtime.inspect(record.id).state
    assert state.status == "running" and state.pid != first_pid
    await runtime.kill(record.id)
    assert await runtime.wait(record.id) == 137


async def test_logs_streams_tail_since_timestamps(runtime: ContainerRuntime) -> None:
    # The two streams are separate pipes: short pauses make their relative order deterministic.
    script = (
        "echo out1; sleep 0.02; echo err1 >&2; sleep 0.02; echo out2; sleep 0.02; echo err2 >&2; sleep 0.02; "
    )
    cid, _ = await run(runtime, sh(script + "printf partial"))
    everything = runtime.logs(cid)
    assert [(e.stream, e.message) for e in everything] == [
        ("stdout", b"out1\n"),
        ("stderr", b"err1\n"),
        ("stdout", b"out2\n"),
        ("stderr", b"err2\n"),
        ("stdout", b"partial"),
    ]
    assert [e.message for e in runtime.logs(cid, LogFilter(stdout=False))] == [b"err1\n", b"err2\n"]
    assert [e.message for e in runtime.logs(cid, LogFilter(tail=2))] == [b"err2\n", b"partial"]
    since = everything[2].time_ns
    assert [e.message for e in runtime.logs(cid, LogFilter(since_ns=since))] == [
        b"out2\n",
        b"err2\n",
        b"partial",
    ]
    stamped = everything[0].render(timestamps=True).decode()
    assert stamped.endswith("Z out1\n") and stamped[:4].isdigit()


async def test_inspect_shows_config_and_state(runtime: ContainerRuntime) -> None:
    config = sh(
        "hostname; echo $HOSTNAME $FOO; pwd", env=("FOO=bar",), labels={"tier": "web"}, working_dir="/srv/app"
    )
    cid, code = await run(runtime, config, name="inspected")
    assert code == 0
    assert stdout_of(runtime, cid).split() == [cid[:12], cid[:12], "bar", "/srv/app"]
    data = docker_inspect(runtime.inspect(cid))
    assert data["Id"] == cid and data["Name"] == "/inspected"
    assert data["Path"] == "sh" and data["Args"][0] == "-c"
    assert data["State"]["Status"] == "exited" and data["State"]["ExitCode"] == 0
    assert data["Config"]["Labels"] == {"tier": "web"}
    assert "FOO=bar" in data["Config"]["Env"] and any(e.startswith("PATH=") for e in data["Config"]["Env"])
    assert data["Config"]["WorkingDir"] == "/srv/app"
    assert data["Config"]["StopSignal"] == "SIGTERM"
    assert runtime.list(all=True, filters={"label": ["tier=web"]})[0].id == cid
    assert runtime.list(all=True, filters={"label": ["tier=db"]}) == []
    assert runtime.list(all=True, filters={"status": ["exited"], "name": ["inspected"]})[0].id == cid


async def test_exec_propagates_exit_code_and_output(runtime: ContainerRuntime) -> None:
    record = await runtime.create(sh("sleep 30", stop_timeout=0), BUSYBOX_IMAGE)
    await runtime.start(record.id)
    result = await runtime.exec(
        record.id, ["sh", "-c", "echo out; echo err >&2; echo $X; exit 3"], env=["X=y"]
    )
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\ny\n", b"err\n")
    assert (await runtime.exec(record.id, ["id", "-u"], user="app")).stdout == b"1000\n"
    missing = await runtime.exec(record.id, ["no-such-command"])
    assert missing.exit_code == 127 and "executable file not found" in missing.error
    await runtime.pause(record.id)
    assert runtime.inspect(record.id).state.status == "paused"
    with pytest.raises(ContainerStateConflict):
        await runtime.exec(record.id, ["true"])
    await runtime.unpause(record.id)
    assert (await runtime.exec(record.id, ["true"])).exit_code == 0
    await runtime.stop(record.id)


async def test_stats_and_limits(runtime: ContainerRuntime) -> None:
    resources = Resources(memory=parse_size("64m"), pids_limit=50, nano_cpus=500_000_000, cpu_shares=512)
    record = await runtime.create(sh("sleep 30", resources=resources, stop_timeout=0), BUSYBOX_IMAGE)
    await runtime.start(record.id)
    stats = await runtime.stats(record.id)
    assert stats.memory_limit == 64 * 1024 * 1024
    assert stats.pids_limit == 50 and stats.pids_current >= 1
    assert stats.memory_usage > 0 and stats.cpu_usage_ns > 0
    cpu = await runtime.exec(
        record.id, ["cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.shares"]
    )
    if cpu.exit_code == 0:  # cgroup v1 layout inside the container
        assert cpu.stdout.split() == [b"50000", b"512"]
    await runtime.stop(record.id)


async def test_memory_limit_oom_is_reported(runtime: ContainerRuntime) -> None:
    # dd allocates its 128 MiB block and touches it: far over the 16 MiB limit.
    config = ContainerConfig(
        image="busybox",
        cmd=("dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"),
        resources=Resources(memory=parse_size("16m")),
    )
    cid, code = await run(runtime, config)
    state = runtime.inspect(cid).state
    assert code == 137 and state.oom_killed
    assert docker_inspect(runtime.inspect(cid))["State"]["OOMKilled"] is True
    # The same command with room enough is not reported as OOM killed.
    roomy = ContainerConfig(
        image="busybox",
        cmd=("dd", "if=/dev/zero", "of=/dev/null", "bs=1M", "count=1"),
        resources=Resources(memory=parse_size("64m")),
    )
    cid, code = await run(runtime, roomy)
    assert code == 0 and not runtime.inspect(cid).state.oom_killed


async def test_names_rename_and_conflicts(runtime: ContainerRuntime) -> None:
    a = await runtime.create(sh("true"), BUSYBOX_IMAGE, name="alpha")
    b = await runtime.create(sh("true"), BUSYBOX_IMAGE)
    assert b.name and b.name != "alpha"
    with pytest.raises(NameConflict):
        await runtime.create(sh("true"), BUSYBOX_IMAGE, name="alpha")
    with pytest.raises(NameConflict):
        await runtime.rename(b.id, "alpha")
    await runtime.rename("alpha", "beta")
    assert runtime.inspect("beta").id == a.id
    assert runtime.inspect(a.id[:10]).name == "beta"
    with pytest.raises(ContainerNotFound):
        runtime.inspect("alpha")


async def _wait_for_output(rt: ContainerRuntime, cid: str, text: str, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while text not in stdout_of(rt, cid):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{text!r} not in output: {stdout_of(rt, cid)!r}")
        await asyncio.sleep(0.02)


async def test_auto_remove_and_concurrent_creates(runtime: ContainerRuntime, runtime_env: RuntimeEnv) -> None:
    record = await runtime.create(sh("echo bye", auto_remove=True), BUSYBOX_IMAGE)
    await runtime.start(record.id)
    assert await runtime.wait(record.id) == 0
    for _ in range(100):
        if not runtime.list(all=True):
            break
        await asyncio.sleep(0.02)
    assert runtime.list(all=True) == []
    assert not (runtime_env.state_dir / "containers" / record.id).exists()
    # Two creates racing for one name: exactly one wins.
    results = await asyncio.gather(
        runtime.create(sh("true"), BUSYBOX_IMAGE, name="same"),
        runtime.create(sh("true"), BUSYBOX_IMAGE, name="same"),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["ContainerRecord", "NameConflict"]


async def test_kill_refuses_paused_and_stop_handles_it(runtime: ContainerRuntime) -> None:
    record = await runtime.create(sh("sleep 30"), BUSYBOX_IMAGE)
    await runtime.start(record.id)
    await runtime.pause(record.id)
    with pytest.raises(ContainerStateConflict):
        await runtime.kill(record.id)
    await runtime.stop(record.id, timeout=0)
    assert runtime.inspect(record.id).state.status == "exited"
    assert runtime.inspect(record.id).state.exit_code == 137
