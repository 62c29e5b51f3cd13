"""Installing Shoal with its Ansible playbooks, over SSH, on three hosts made of network namespaces.

One manager (with etcd, TLS) and two agents; the manager host runs an agent too, so the cluster has three
nodes. The playbook runs from a controller namespace as a user would run it from their workstation: over
SSH to each host's own sshd, with Shoal built from a copy of this source tree and its dependencies installed
from a wheelhouse (the hosts reach no package index). Agents run tasks as runc containers, from the
busybox image the playbook puts into each agent's image store (the hosts reach no registry either).

The module's fixture installs the cluster once; the tests then look at it, run the playbook again (no
change, also in --check mode) and finally remove an agent with remove-node.yml.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.ansible.lab import Lab

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("ip") or not os.path.exists("/usr/sbin/sshd"),
        reason="needs root, iproute2 and openssh-server",
    ),
    pytest.mark.skipif(
        not (Path(sys.executable).parent / "ansible-playbook").exists(),
        reason="ansible-core is not installed (make setup)",
    ),
]

REPO = Path(__file__).resolve().parents[3]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
SWARMCTL = "/opt/shoal/venv/bin/swarmctl"
HOSTS = ["m1", "a1", "a2"]
HOSTS_SORTED = sorted(HOSTS)
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
# What a copy of the source tree for the wheel needs (the build ignores the rest).
SOURCE_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "tests", "ansible", "build"
)


@dataclass
class Run:
    """One ansible-playbook run: exit code, output, and the PLAY RECAP counts per host."""

    returncode: int
    output: str
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    def changed(self) -> dict[str, int]:
        """Changed tasks per host."""
        return {host: counts["changed"] for host, counts in self.recap.items()}

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


@dataclass
class Controller:
    """Runs the playbooks from the controller namespace, with the lab's key and an offline pip."""

    lab: Lab
    workdir: Path
    wheelhouse: Path
    control_dir: Path

    def inventory(self, name: str, groups: dict[str, list[str]]) -> Path:
        """Write an inventory placing the lab's hosts in ``groups``."""
        host_vars = {
            "a1": 'agent_node_labels=\'{"zone": "a"}\' agent_engine_labels=\'{"disk": "ssd"}\'',
            "a2": 'agent_node_labels=\'{"zone": "b"}\'',
        }
        lines = []
        for group, names in groups.items():
            lines.append(f"[{group}]")
            for host_name in names:
                host = self.lab.host(host_name)
                # The lab's cleanup finds the namespaces each agent named by this prefix.
                lines.append(
                    f"{host.name} ansible_host={host.addr} agent_netns_prefix={host.netns_prefix} "
                    f"{host_vars.get(host.name, '')}".rstrip()
                )
        lines += [
            "[all:vars]",
            "ansible_user=root",
            "ansible_python_interpreter=/usr/bin/python3",
            f"ansible_ssh_private_key_file={self.lab.key}",
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
            "common_advertise_interface=eth0",
            f"common_shoal_source={self.workdir / 'src'}",
            f"common_wheelhouse={self.wheelhouse}",
            f"common_build_dir={self.workdir / 'build'}",
            "",
        ]
        path = self.workdir / f"{name}.ini"
        path.write_text("\n".join(lines))
        return path

    def playbook(self, playbook: str, inventory: Path, *args: str) -> Run:
        """Run ``ansible-playbook`` in the controller namespace; its output is also kept in the work dir."""
        env = {
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.control_dir),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            # The wheel is built in the controller namespace, which reaches no index: its build requirements
            # (setuptools, wheel) come from the wheelhouse.
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(self.wheelhouse),
        }
        cmd = [str(BIN / "ansible-playbook"), "-i", str(inventory), playbook, *args]
        done = self.lab.controller(cmd, env=env, cwd=ANSIBLE_DIR, timeout=400)
        output = done.stdout + done.stderr
        log = self.workdir / "runs.log"
        with log.open("a") as f:
            f.write(f"\n===== {' '.join(cmd)} (exit {done.returncode})\n{output}")
        recap = {
            m.group(1): {
                "ok": int(m.group(2)),
                "changed": int(m.group(3)),
                "unreachable": int(m.group(4)),
                "failed": int(m.group(5)),
            }
            for m in RECAP.finditer(output)
        }
        return Run(done.returncode, output, recap)

    def swarmctl(self, *args: str) -> str:
        """Run ``swarmctl`` as installed on the first manager, where it uses the manager's socket."""
        done = self.lab.host("m1").run([SWARMCTL, *args])
        assert done.returncode == 0, f"swarmctl {' '.join(args)}: {done.stdout} {done.stderr}"
        return done.stdout

    def rows(self, *args: str) -> list[dict[str, str]]:
        """A ``swarmctl … --format json`` listing, one dict per row."""
        return [json.loads(line) for line in self.swarmctl(*args, "--format", "json").splitlines() if line]

    def node_ls(self) -> dict[str, dict[str, str]]:
        """``swarmctl node ls`` rows by host name."""
        return {row["Hostname"]: row for row in self.rows("node", "ls")}

    def nodes(self) -> dict[str, dict[str, Any]]:
        """``swarmctl node inspect`` of every node, by host name."""
        names = list(self.node_ls())
        inspected = json.loads(self.swarmctl("node", "inspect", *names))
        return {n["status"]["description"]["hostname"]: n for n in inspected}

    def running_on(self, service: str) -> list[str]:
        """Host names of the running tasks of ``service``, sorted."""
        rows = self.rows("service", "ps", service)
        return sorted(r["Node"] for r in rows if r["CurrentState"].startswith("Running"))

    def running_containers(self) -> dict[str, list[str]]:
        """Command lines of the running containers of each host's agent (``runc list`` on the host)."""
        out: dict[str, list[str]] = {}
        for host in self.lab.hosts:
            running = [c for c in host.containers() if c["status"] == "running"]
            assert host.sshd is not None
            out[host.name] = sorted(_container_cmdline(c["pid"], host.sshd.pid) for c in running)
        return out

    def host_logs(self) -> str:
        """The daemons' logs on every host, for failure messages."""
        parts = []
        for host in self.lab.hosts:
            for log in sorted(host.path("/var/log/shoal").glob("*.log")):
                text = log.read_text(errors="replace").splitlines()[-15:]
                parts.append(f"--- {host.name}:{log.name}\n" + "\n".join(text))
        return "\n".join(parts)


def _wheelhouse(target: Path) -> None:
    """Wheels of Shoal's dependencies and build requirements, fetched here (the hosts reach no index)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(target), *wanted],
        check=True,
        capture_output=True,
        timeout=300,
    )


def _container_cmdline(pid: int, host_pid: int) -> str:
    """The command line of a container's first process, checked to run in a container: in a network
    namespace other than its host's (a task's sandbox), with a root file system other than the host's,
    holding busybox."""
    proc, host = Path(f"/proc/{pid}"), Path(f"/proc/{host_pid}")
    if (proc / "ns" / "net").readlink() == (host / "ns" / "net").readlink():
        return f"(pid {pid} runs in the host's network namespace)"
    root, host_root = (proc / "root").stat(), (host / "root").stat()
    if (root.st_dev, root.st_ino) == (host_root.st_dev, host_root.st_ino):
        return f"(pid {pid} runs in the host's root file system)"
    if not (proc / "root" / "bin" / "busybox").exists():
        return f"(pid {pid} does not see the busybox image)"
    return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def _eventually(
    check: Callable[[], Any], timeout: float, what: str, detail: Callable[[], str] = lambda: ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{detail()}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    """The lab with Shoal installed by a first run of site.yml."""
    workdir = tmp_path_factory.mktemp("ansible")
    shutil.copytree(REPO, workdir / "src", ignore=SOURCE_IGNORE, symlinks=True)
    _wheelhouse(workdir / "wheelhouse")
    # SSH connection sockets need a short path (a unix socket path has at most 107 bytes).
    control_dir = Path(tempfile.mkdtemp(prefix="shoal-cp-"))
    try:
        with Lab(workdir / "lab", HOSTS) as lab:
            ctl = Controller(lab, workdir, workdir / "wheelhouse", control_dir)
            inventory = ctl.inventory("site", {"managers": ["m1"], "agents": ["a1", "a2"]})
            run = ctl.playbook("site.yml", inventory)
            assert run.returncode == 0, f"site.yml failed:\n{run.tail()}\n{ctl.host_logs()}"
            yield ctl
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)


def test_the_cluster_has_three_ready_nodes(controller: Controller) -> None:
    listed = controller.node_ls()
    assert {name: row["Status"] for name, row in listed.items()} == dict.fromkeys(HOSTS, "Ready")
    assert listed["m1"]["ManagerStatus"] in ("Leader", "Reachable")
    assert listed["a1"]["ManagerStatus"] == listed["a2"]["ManagerStatus"] == ""
    # Each node advertises its underlay address.
    assert {name: row["Address"] for name, row in listed.items()} == {
        "m1": "10.200.0.11",
        "a1": "10.200.0.12",
        "a2": "10.200.0.13",
    }
    nodes = controller.nodes()
    # The manager host's agent joined with the manager token, the others with the worker token.
    assert {name: n["spec"]["role"] for name, n in nodes.items()} == {
        "a1": "worker",
        "a2": "worker",
        "m1": "manager",
    }
    # Labels come from the inventory.
    assert nodes["a1"]["spec"]["annotations"]["labels"] == {"zone": "a"}
    assert nodes["a2"]["spec"]["annotations"]["labels"] == {"zone": "b"}
    assert nodes["a1"]["status"]["description"]["engine_labels"]["disk"] == "ssd"


def test_daemons_run_on_their_hosts_under_the_supervisor(controller: Controller) -> None:
    def daemons(name: str) -> set[str]:
        found = set()
        for cmdline in controller.lab.host(name).processes().values():
            for daemon in ("shoal-manager", "shoal-agent", "/usr/bin/etcd"):
                if daemon in cmdline and "shoal-service" not in cmdline:
                    found.add(daemon.rsplit("/", 1)[-1])
        return found

    assert daemons("m1") == {"shoal-manager", "shoal-agent", "etcd"}
    assert daemons("a1") == {"shoal-agent"}
    # etcd serves clients over TLS only, and wants a client certificate.
    etc = controller.lab.host("m1").path("/etc/shoal")
    assert "client-cert-auth: true" in (etc / "etcd.yml").read_text()
    assert "https://10.200.0.11:2379" in (etc / "etcd.yml").read_text()
    assert "cacert=/etc/shoal/pki/ca.pem" in (etc / "shoal-manager.conf").read_text()


def test_services_run_on_the_agents(controller: Controller) -> None:
    controller.swarmctl(
        "service", "create", "--detach", "--name", "web", "--replicas", "3", "busybox", "sleep", "1000"
    )  # fmt: skip
    # A node label set from the inventory places a task.
    controller.swarmctl(
        "service", "create", "--detach", "--name", "in-zone-b", "--constraint", "node.labels.zone==b",
        "busybox", "sleep", "1000",
    )  # fmt: skip

    def tasks() -> str:
        ps = controller.swarmctl("service", "ps", "--no-trunc", "web", "in-zone-b")
        return f"{ps}\n{controller.host_logs()}"

    # Spread: one task on each node, so both agents run one.
    assert _eventually(lambda: controller.running_on("web") == HOSTS_SORTED, 60, "web on every node", tasks)
    assert _eventually(lambda: controller.running_on("in-zone-b") == ["a2"], 60, "in-zone-b on a2", tasks)
    # Each task is a busybox container of its node's agent, under the agent's runc root.
    assert controller.running_containers() == {
        "m1": ["sleep 1000"],
        "a1": ["sleep 1000"],
        "a2": ["sleep 1000", "sleep 1000"],
    }


def test_a_second_run_changes_nothing(controller: Controller) -> None:
    inventory = controller.inventory("site", {"managers": ["m1"], "agents": ["a1", "a2"]})
    run = controller.playbook("site.yml", inventory)
    assert run.returncode == 0, run.tail()
    assert run.changed() == dict.fromkeys(HOSTS, 0), run.tail()


def test_check_mode_on_the_converged_cluster_reports_no_change(controller: Controller) -> None:
    inventory = controller.inventory("site", {"managers": ["m1"], "agents": ["a1", "a2"]})
    run = controller.playbook("site.yml", inventory, "--check")
    assert run.returncode == 0, run.tail()
    assert run.changed() == dict.fromkeys(HOSTS, 0), run.tail()


def test_remove_node_drains_the_agent_and_removes_it(controller: Controller) -> None:
    """Runs last: a2 leaves the cluster."""
    inventory = controller.inventory("retire-a2", {"managers": ["m1"], "agents": ["a1"], "retired": ["a2"]})
    run = controller.playbook("remove-node.yml", inventory)
    assert run.returncode == 0, run.tail()
    assert run.changed()["a2"] > 0

    assert sorted(controller.node_ls()) == ["a1", "m1"]
    # The drained node's task moved: web runs its 3 replicas on the nodes that are left.
    assert _eventually(lambda: len(controller.running_on("web")) == 3, 30, "3 running tasks of web")
    assert set(controller.running_on("web")) == {"a1", "m1"}
    running = controller.running_containers()
    assert len(running["m1"] + running["a1"]) == 3 and running["a2"] == [], running
    # The agent is gone from the host, with its containers, their namespaces and mounts, and its files;
    # sshd is all that still runs there.
    a2 = controller.lab.host("a2")
    assert not [c for c in a2.processes().values() if "shoal" in c], a2.processes()
    assert a2.containers() == []
    assert a2.agent_netns() == []
    assert a2.agent_mounts() == []
    assert not (a2.path("/var/lib/shoal") / "agent").exists()
    assert not (a2.path("/etc/shoal") / "shoal-agent.conf").exists()
