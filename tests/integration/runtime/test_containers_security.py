"""What a process inside the container sees of Docker's defaults and of the options that change them."""

from __future__ import annotations

import asyncio

import pytest

from agent.runtime.containers.config import ContainerConfig, ImageConfig, Ulimit
from agent.runtime.containers.logs import LogFilter
from agent.runtime.containers.runtime import ContainerRuntime
from agent.runtime.containers.spec import ALL_CAPABILITIES, DEFAULT_CAPABILITIES, host_capabilities
from tests.integration.runtime import containers_support as support
from tests.integration.runtime.containers_support import requires_runc

pytestmark = [pytest.mark.root, requires_runc]

# The fixtures this module uses (defined with their finalisers in containers_support).
busybox_template = support.busybox_template
runtime_env = support.runtime_env
runtime = support.runtime

STATUS = "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status"


async def output(rt: ContainerRuntime, script: str, **options: object) -> tuple[int, str]:
    """Run a shell script in a fresh busybox container; its exit code and its stdout + stderr."""
    config = ContainerConfig(image="busybox", cmd=("sh", "-c", script), **options)  # type: ignore[arg-type]
    record = await rt.create(config, ImageConfig())
    await rt.start(record.id)
    code = await asyncio.wait_for(rt.wait(record.id), 20)
    text = b"".join(e.message for e in rt.logs(record.id, LogFilter())).decode()
    return code, text


def status_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def mask(caps: list[str] | tuple[str, ...]) -> int:
    return sum(1 << ALL_CAPABILITIES.index(c) for c in caps)


async def test_default_capabilities_no_new_privileges_and_seccomp(runtime: ContainerRuntime) -> None:
    code, text = await output(runtime, STATUS)
    fields = status_fields(text)
    assert code == 0
    assert int(fields["CapEff"], 16) == mask(DEFAULT_CAPABILITIES) == 0xA80425FB
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"  # a filter is installed


async def test_cap_add_and_drop(runtime: ContainerRuntime) -> None:
    _, text = await output(runtime, STATUS, cap_add=("NET_ADMIN",), cap_drop=("chown", "CAP_KILL"))
    expected = (set(DEFAULT_CAPABILITIES) | {"CAP_NET_ADMIN"}) - {"CAP_CHOWN", "CAP_KILL"}
    assert int(status_fields(text)["CapEff"], 16) == mask(sorted(expected))
    _, text = await output(runtime, STATUS, cap_drop=("ALL",))
    assert int(status_fields(text)["CapEff"], 16) == 0
    # Without CAP_CHOWN, chown fails even for root.
    code, _ = await output(runtime, "chown 1000 /tmp", cap_drop=("CHOWN",))
    assert code != 0


async def test_seccomp_follows_capabilities(runtime: ContainerRuntime) -> None:
    # mount(2) is only in the filter for containers holding CAP_SYS_ADMIN.
    code, text = await output(runtime, "mount -t tmpfs none /mnt && echo mounted")
    assert code != 0
    code, text = await output(
        runtime, "mkdir -p /mnt && mount -t tmpfs none /mnt && echo mounted", cap_add=("SYS_ADMIN",)
    )
    assert code == 0 and "mounted" in text
    _, text = await output(runtime, STATUS, seccomp_profile="unconfined")
    assert status_fields(text)["Seccomp"] == "0"


async def test_privileged(runtime: ContainerRuntime) -> None:
    code, text = await output(runtime, STATUS, privileged=True)
    fields = status_fields(text)
    assert code == 0
    assert int(fields["CapEff"], 16) == mask(host_capabilities())
    assert fields["NoNewPrivs"] == "0" and fields["Seccomp"] == "0"


async def test_masked_and_read_only_paths(runtime: ContainerRuntime) -> None:
    script = (
        "echo kcore=$(cat /proc/kcore | wc -c); "
        "echo 1 > /proc/sys/kernel/domainname && echo sys-writable; "
        "touch /sys/x && echo sysfs-writable; "
        "ls /sys/fs/cgroup | grep -q memory && echo has-cgroups; true"
    )
    _, text = await output(runtime, script)
    assert "kcore=0" in text
    assert "sys-writable" not in text and "sysfs-writable" not in text
    assert "has-cgroups" in text


async def test_read_only_rootfs_with_tmpfs(runtime: ContainerRuntime) -> None:
    script = (
        "touch /newfile && echo rootfs-writable; touch /run/x && echo run-writable; "
        "grep ' /run ' /proc/mounts; true"
    )
    _, text = await output(runtime, script, read_only=True, tmpfs={"/run": "size=1m"})
    assert "rootfs-writable" not in text and "run-writable" in text
    assert "tmpfs /run tmpfs" in text and "size=1024k" in text and "noexec" in text


async def test_user_groups_and_workdir(runtime: ContainerRuntime) -> None:
    _, text = await output(runtime, "id; echo home=$HOME; pwd; ls -ld /work", user="app", working_dir="/work")
    assert "uid=1000(app) gid=1000(app)" in text and "50(staff)" in text
    assert "home=/home/app" in text
    lines = text.splitlines()
    assert "/work" in lines and any(line.startswith("d") and " app " in line for line in lines)
    _, text = await output(runtime, "id -u; id -g", user="1234:50")
    assert text.split() == ["1234", "50"]


async def test_network_is_an_empty_namespace(runtime: ContainerRuntime) -> None:
    _, text = await output(runtime, "cat /proc/net/dev; echo ---; ip -o link show lo")
    devices, _, lo = text.partition("---")
    interfaces = [line.split(":")[0].strip() for line in devices.splitlines()[2:] if ":" in line]
    assert interfaces == ["lo"]
    assert "UP" in lo  # runc brings the loopback interface up


async def test_hostname_ulimits_and_init(runtime: ContainerRuntime) -> None:
    script = "hostname; ulimit -n; cat /etc/hosts | grep -c localhost; tr '\\0' ' ' < /proc/1/cmdline"
    _, text = await output(
        runtime, script, hostname="box1", ulimits=(Ulimit("nofile", 1234, 1234),), init=True
    )
    lines = text.splitlines()
    assert lines[0] == "box1" and lines[1] == "1234" and int(lines[2]) >= 1
    assert lines[3].startswith("/dev/init -- sh -c")


async def test_init_reaps_zombies_and_forwards_signals(runtime: ContainerRuntime) -> None:
    # Orphans re-parented to PID 1 are reaped by the init, and a stop signal reaches the command.
    record = await runtime.create(
        ContainerConfig(image="busybox", init=True, cmd=("sh", "-c", "(sleep 0.1 &) ; exec sleep 30")),
        ImageConfig(),
    )
    await runtime.start(record.id)
    await asyncio.sleep(0.5)
    top = await runtime.top(record.id, "-eo pid,stat,comm")
    stats = [row[1] for row in top.processes]
    assert not any(s.startswith("Z") for s in stats)
    await runtime.stop(record.id, timeout=5)
    assert runtime.inspect(record.id).state.exit_code == 143  # SIGTERM reached sleep through tini
