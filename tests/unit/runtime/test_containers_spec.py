"""OCI spec generation: Docker's defaults and the options that change them (no runc needed)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from agent.runtime.containers.config import ContainerConfig, ImageConfig, Resources, RestartPolicy, Ulimit
from agent.runtime.containers.seccomp import default_profile
from agent.runtime.containers.spec import (
    ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    MASKED_PATHS,
    READONLY_PATHS,
    SpecPaths,
    build_spec,
    capabilities,
    merge_env,
    plan_process,
)
from agent.runtime.errors import InvalidContainerConfig

CID = "0123456789abcdef" * 4
IMAGE = ImageConfig(
    cmd=("sh",),
    env=("PATH=/bin", "LANG=C"),
    working_dir="/app",
    stop_signal="SIGQUIT",
    labels={"from": "image"},
)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nweb:x:33:33:web:/var/www:/bin/sh\n"
    )
    (tmp_path / "etc" / "group").write_text("root:x:0:\nweb:x:33:\nlog:x:4:web\n")
    return tmp_path


def spec_for(rootfs: Path, **options: object) -> dict:  # type: ignore[type-arg]
    config = ContainerConfig(image="img", **options)  # type: ignore[arg-type]
    return build_spec(
        CID,
        config,
        IMAGE,
        SpecPaths(rootfs=rootfs, init_binary=Path("/usr/bin/tini-static")),
        "/shoal/" + CID,
        cgroup_v2=False,
        available_capabilities=ALL_CAPABILITIES,
    )


def test_defaults_match_docker(rootfs: Path) -> None:
    spec = spec_for(rootfs)
    process = spec["process"]
    assert process["args"] == ["sh"] and process["cwd"] == "/app"
    assert process["env"] == ["PATH=/bin", "LANG=C", "HOSTNAME=" + CID[:12], "HOME=/root"]
    assert set(process["capabilities"]["bounding"]) == set(DEFAULT_CAPABILITIES)
    assert process["capabilities"]["effective"] == process["capabilities"]["bounding"]
    assert process["noNewPrivileges"] is True
    assert process["user"] == {"uid": 0, "gid": 0}
    assert spec["hostname"] == CID[:12]
    assert spec["root"] == {"path": str(rootfs), "readonly": False}
    destinations = [m["destination"] for m in spec["mounts"]]
    assert destinations == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    sys_mount = spec["mounts"][5]
    assert sys_mount["type"] == "sysfs" and "ro" in sys_mount["options"]
    assert "ro" in spec["mounts"][6]["options"]
    linux = spec["linux"]
    assert linux["maskedPaths"] == list(MASKED_PATHS) and linux["readonlyPaths"] == list(READONLY_PATHS)
    assert {"type": "network"} in linux["namespaces"]
    assert {"type": "cgroup"} not in linux["namespaces"]  # cgroup v1: the host's cgroup namespace, as Docker
    assert linux["cgroupsPath"] == "/shoal/" + CID
    assert linux["resources"]["devices"][0] == {"allow": False, "access": "rwm"}
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"


def test_docker_default_capability_mask() -> None:
    mask = sum(1 << ALL_CAPABILITIES.index(c) for c in DEFAULT_CAPABILITIES)
    assert mask == 0xA80425FB  # CapEff of a default Docker container


@pytest.mark.parametrize(
    ("add", "drop", "expected"),
    [
        ((), (), set(DEFAULT_CAPABILITIES)),
        (("net_admin",), ("CAP_KILL",), set(DEFAULT_CAPABILITIES) - {"CAP_KILL"} | {"CAP_NET_ADMIN"}),
        ((), ("ALL",), set()),
        (("CHOWN",), ("ALL",), {"CAP_CHOWN"}),
        (("ALL",), ("SYS_ADMIN",), set(ALL_CAPABILITIES) - {"CAP_SYS_ADMIN"}),
    ],
)
def test_cap_add_and_drop(add: tuple[str, ...], drop: tuple[str, ...], expected: set[str]) -> None:
    assert set(capabilities(add, drop)) == expected


def test_unknown_capability_is_refused() -> None:
    with pytest.raises(InvalidContainerConfig):
        capabilities(("CAP_FLY",), ())


def test_privileged_gets_what_the_host_has(rootfs: Path) -> None:
    assert capabilities((), (), privileged=True, available=("CAP_CHOWN", "CAP_KILL")) == [
        "CAP_CHOWN",
        "CAP_KILL",
    ]
    spec = spec_for(rootfs, privileged=True)
    assert "seccomp" not in spec["linux"] and "maskedPaths" not in spec["linux"]
    assert spec["process"]["noNewPrivileges"] is False
    assert spec["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    assert "ro" not in spec["mounts"][5]["options"]


def test_entrypoint_and_cmd_merge_like_docker() -> None:
    image = ImageConfig(entrypoint=("/entry",), cmd=("--default",))
    assert plan_process(CID, ContainerConfig(image="i"), image).args == ("/entry", "--default")
    assert plan_process(CID, ContainerConfig(image="i", cmd=("x",)), image).args == ("/entry", "x")
    # An explicit entrypoint drops the image's CMD.
    assert plan_process(CID, ContainerConfig(image="i", entrypoint=("/other",)), image).args == ("/other",)
    with pytest.raises(InvalidContainerConfig, match="no command"):
        plan_process(CID, ContainerConfig(image="i", entrypoint=()), ImageConfig())


def test_env_merge_and_stop_signal() -> None:
    assert merge_env(["A=1", "B=2"], ["A=3", "C"]) == ["A=3", "B=2", "C"]
    plan = plan_process(CID, ContainerConfig(image="i", env=("LANG=fr",)), IMAGE)
    assert "LANG=fr" in plan.env and "LANG=C" not in plan.env
    assert plan.stop_signal == signal.SIGQUIT
    assert (
        plan_process(CID, ContainerConfig(image="i", stop_signal="HUP"), IMAGE).stop_signal == signal.SIGHUP
    )


def test_user_resolution_from_the_rootfs(rootfs: Path) -> None:
    process = spec_for(rootfs, user="web")["process"]
    assert process["user"] == {"uid": 33, "gid": 33, "additionalGids": [4]}
    assert "HOME=/var/www" in process["env"]
    assert spec_for(rootfs, user="1000:4")["process"]["user"] == {"uid": 1000, "gid": 4}
    with pytest.raises(InvalidContainerConfig, match="unable to find user nobody"):
        spec_for(rootfs, user="nobody")


def test_options_reach_the_spec(rootfs: Path) -> None:
    spec = spec_for(
        rootfs,
        read_only=True,
        tmpfs={"/run": "size=64m,exec"},
        ulimits=(Ulimit("nofile", 100, 200),),
        hostname="web1",
        init=True,
        network_mode="host",
        resources=Resources(memory=64 << 20, nano_cpus=1_500_000_000, cpu_shares=256, pids_limit=20),
        labels={"a": "b"},
        restart_policy=RestartPolicy.parse("always"),
    )
    assert spec["root"]["readonly"] is True
    tmpfs = next(m for m in spec["mounts"] if m["destination"] == "/run")
    assert tmpfs["options"] == ["nosuid", "nodev", "size=64m", "exec"]
    assert spec["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}]
    assert spec["hostname"] == "web1"
    assert spec["process"]["args"][:2] == ["/dev/init", "--"]
    assert any(
        m["destination"] == "/dev/init" and m["source"] == "/usr/bin/tini-static" for m in spec["mounts"]
    )
    assert all(ns["type"] != "network" for ns in spec["linux"]["namespaces"])
    assert next(m for m in spec["mounts"] if m["destination"] == "/sys")["type"] == "bind"
    resources = spec["linux"]["resources"]
    assert resources["memory"] == {"limit": 64 << 20, "swap": 128 << 20}
    assert resources["cpu"] == {"shares": 256, "period": 100_000, "quota": 150_000}
    assert resources["pids"] == {"limit": 20}


def test_seccomp_profile_widens_with_capabilities() -> None:
    default = default_profile(DEFAULT_CAPABILITIES, machine="x86_64")
    allowed = set(default["syscalls"][0]["names"])
    assert {"read", "write", "execve", "arch_prctl"} <= allowed
    assert not {"mount", "reboot", "kexec_load", "keyctl", "unshare", "setns"} & allowed
    assert any(rule["names"] == ["clone3"] and rule["errnoRet"] == 38 for rule in default["syscalls"])
    admin = default_profile((*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"), machine="x86_64")
    assert {"mount", "unshare", "setns"} <= set(admin["syscalls"][0]["names"])
    assert not any(rule["names"] == ["clone3"] for rule in admin["syscalls"])
    assert default["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


def test_invalid_configs_are_refused() -> None:
    for options in (
        {"working_dir": "relative"},
        {"tmpfs": {"run": ""}},
        {"network_mode": "bridge"},
        {"resources": Resources(memory=1024)},
        {"stop_signal": "SIGNOPE"},
        {"auto_remove": True, "restart_policy": RestartPolicy("always")},
    ):
        with pytest.raises(InvalidContainerConfig):
            ContainerConfig(image="i", **options).validate()  # type: ignore[arg-type]
