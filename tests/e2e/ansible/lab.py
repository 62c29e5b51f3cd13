"""Hosts for installing Shoal with Ansible over SSH, each a network namespace on this machine.

The lab is one namespace for the controller side, holding the underlay bridge and its address (the machine
that runs ``ansible-playbook``), and one namespace per host, wired to the bridge by a veth pair. Every host
runs its own ``sshd`` in a mount and UTS namespace of its own: a host name, a private ``/run`` (tmpfs) and
its own ``/etc/shoal``, ``/var/lib/shoal``, ``/opt/shoal`` and ``/var/log/shoal`` (bind mounts of directories
under the lab's base directory), so the hosts share the machine's packages but not Shoal's files, state or
processes. The underlay's addresses exist only inside the lab's namespaces.

:meth:`Lab.cleanup` stops every process in the lab's namespaces by PID (sshd and all it started: supervisors,
etcd, managers, agents, SSH connection masters), then deletes the namespaces (and with them the veths and
the bridge), and removes the mount points it had to create. It runs even when starting the lab failed.

Agents run real containers (runc). A container's processes live in network namespaces of their own, not the
host's, so stopping the host's processes does not reach them: between stopping the daemons and stopping
sshd, the cleanup kills and deletes every container through the agent's private runc root, deletes the
network namespaces the agent named (each host's agent has its own prefix, :attr:`Host.netns_prefix`) and
unmounts what the agent mounted (container root file systems, secrets), inside the host's mount namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.runtime.containers import cgroups
from agent.runtime.local import LocalRuntimeOptions

SUBNET = "10.200.0"
CONTROLLER_ADDR = f"{SUBNET}.1"
# Where each host sees its own directory (the mount points) and the directory under the host's root
# that backs it.
HOST_DIRS = {
    "/etc/shoal": "etc",
    "/var/lib/shoal": "var-lib",
    "/opt/shoal": "opt",
    "/var/log/shoal": "var-log",
}
# The agent's state directory (the playbook's default agent_state_dir) and, under it, its runc root.
AGENT_STATE_DIR = "/var/lib/shoal/agent"
AGENT_RUNC_ROOT = f"{AGENT_STATE_DIR}/runtime/runc"
# Where the agent mounts things on its host: its state (container root file systems) and /run/shoal
# (secrets).
AGENT_MOUNT_DIRS = (f"{AGENT_STATE_DIR}/", "/run/shoal/")
NETNS_DIR = Path("/run/netns")


class LabError(RuntimeError):
    """The lab could not be set up; the message says which step failed and how."""


def run(cmd: list[str], *, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; a failure raises LabError with the output."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(cmd)} exited with {done.returncode}: {done.stderr.strip() or done.stdout}")
    return done


@dataclass
class Host:
    """One host: its inventory name, namespace, underlay address, the directory behind its files and the
    prefix of the network namespaces its agent names (agent_netns_prefix)."""

    name: str
    netns: str
    addr: str
    root: Path
    netns_prefix: str
    sshd: subprocess.Popen[bytes] | None = None

    def path(self, mount_point: str) -> Path:
        """The directory behind ``mount_point`` (one of HOST_DIRS) as this machine sees it."""
        return self.root / HOST_DIRS[mount_point]

    def run(self, cmd: list[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` on this host (in its network, mount and UTS namespaces), capturing its output."""
        if self.sshd is None:
            raise LabError(f"host {self.name} is not running")
        enter = ["nsenter", "--target", str(self.sshd.pid), "--net", "--mount", "--uts", "--"]
        return subprocess.run(enter + cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def pids(self) -> list[int]:
        """PIDs of every process in this host's network namespace."""
        return _netns_pids(self.netns)

    def is_up(self) -> bool:
        """Whether the host's sshd, which holds its mount namespace, still runs."""
        return self.sshd is not None and self.sshd.poll() is None

    def containers(self) -> list[dict[str, Any]]:
        """``runc list`` of the agent's private runc root, run on the host: id, pid, status, bundle…"""
        if not (self._root() / AGENT_RUNC_ROOT.lstrip("/")).is_dir():
            return []  # (runc list would create it)
        done = self.run(["runc", "--root", AGENT_RUNC_ROOT, "list", "--format", "json"])
        if done.returncode != 0:
            raise LabError(f"runc list on {self.name}: {done.stderr.strip()}")
        listed: list[dict[str, Any]] | None = json.loads(done.stdout or "null")
        return listed or []

    def agent_netns(self) -> list[str]:
        """Network namespaces the agent named, on the host (its own /run) and on this machine."""
        names: set[str] = set()
        for directory in (self._root() / NETNS_DIR.relative_to("/"), NETNS_DIR):
            with contextlib.suppress(OSError):
                names.update(n for n in os.listdir(directory) if n.startswith(self.netns_prefix))
        return sorted(names)

    def agent_mounts(self) -> list[str]:
        """Mount points in the host's mount namespace under the places the agent mounts things."""
        assert self.sshd is not None
        with open(f"/proc/{self.sshd.pid}/mounts", encoding="utf-8") as f:
            targets = [line.split()[1] for line in f]
        return [t for t in targets if t.startswith(AGENT_MOUNT_DIRS)]

    def _root(self) -> Path:
        """The host's file system as its processes see it (through its mount namespace)."""
        if self.sshd is None:
            raise LabError(f"host {self.name} is not running")
        return Path(f"/proc/{self.sshd.pid}/root")

    def processes(self) -> dict[int, str]:
        """Command lines of the processes in this host's network namespace, by PID."""
        out = {}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                out[pid] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        return out


def _cgroup_mounts() -> str:
    """Shell commands that mount this machine's cgroup file systems again, each followed by ``; ``.

    ``ip netns exec`` mounts a fresh sysfs (for the namespace's view of its network devices) and with it
    loses the cgroup mounts below /sys/fs/cgroup, which runc needs. Mounting a cgroup file system with the
    options it has here attaches the same hierarchy, so the hosts' containers are in this machine's
    cgroups, where the cleanup finds them.
    """
    base = "/sys/fs/cgroup"
    commands = []
    with open("/proc/self/mounts", encoding="utf-8") as f:
        for line in f:
            source, target, fstype, options = line.split()[:4]
            if target != base and not target.startswith(base + "/"):
                continue
            if fstype == "tmpfs":
                options = "mode=0755"  # writable, whatever it is here: the mount points are made in it
            commands.append(f"mkdir -p {shlex.quote(target)}")
            commands.append(
                f"mount -t {shlex.quote(fstype)} -o {shlex.quote(options)} {shlex.quote(source)} "
                f"{shlex.quote(target)}"
            )
    with contextlib.suppress(OSError):
        for entry in os.scandir(base):
            if entry.is_symlink():  # cpuacct -> cpu,cpuacct on hosts with joined controllers
                link = f"{base}/{entry.name}"
                commands.append(f"ln -sfn {shlex.quote(os.readlink(link))} {shlex.quote(link)}")
    return "".join(f"{c}; " for c in commands)


def _netns_pids(netns: str) -> list[int]:
    done = run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


class Lab:
    """A controller namespace with an underlay bridge, and hosts with sshd. Use as a context manager."""

    def __init__(self, base: Path, names: list[str]) -> None:
        tag = secrets.token_hex(3)
        self.base = base
        self.controller_netns = f"shoal-lab-{tag}-ctl"
        self.hosts = [
            Host(
                name,
                f"shoal-lab-{tag}-{name}",
                f"{SUBNET}.{11 + i}",
                base / "hosts" / name,
                netns_prefix=f"shoal-lab-{tag}-{name}-",
            )
            for i, name in enumerate(names)
        ]
        self.key = base / "ssh" / "id_ed25519"
        self.authorized_keys = base / "ssh" / "authorized_keys"
        self._made_netns: list[str] = []
        self._made_mount_points: list[Path] = []

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()

    # --- setting up ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the namespaces, the underlay and the keys, and start every host's sshd."""
        (self.base / "ssh").mkdir(parents=True, exist_ok=True)
        for old in (self.key, Path(f"{self.key}.pub")):
            old.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "shoal-lab", "-f", str(self.key)])
        self.authorized_keys.write_text(Path(f"{self.key}.pub").read_text())
        self.authorized_keys.chmod(0o600)
        self._make_mount_points()
        ctl = self.controller_netns
        self._add_netns(ctl)
        run(["ip", "-n", ctl, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", ctl, "addr", "add", f"{CONTROLLER_ADDR}/24", "dev", "br0"])
        run(["ip", "-n", ctl, "link", "set", "br0", "up"])
        for i, host in enumerate(self.hosts):
            self._add_netns(host.netns)
            veth = f"veth{i}"
            run(
                [
                    "ip",
                    "-n",
                    ctl,
                    "link",
                    "add",
                    veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    host.netns,
                ]
            )
            run(["ip", "-n", ctl, "link", "set", veth, "master", "br0", "up"])
            run(["ip", "-n", host.netns, "addr", "add", f"{host.addr}/24", "dev", "eth0"])
            run(["ip", "-n", host.netns, "link", "set", "eth0", "up"])
            self._start_sshd(host)
        for host in self.hosts:
            self._wait_sshd(host)

    def _add_netns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self._made_netns.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _make_mount_points(self) -> None:
        # The bind mounts need their mount points on this machine's filesystem; empty ones made here are
        # removed again by cleanup().
        for mount_point in HOST_DIRS:
            path = Path(mount_point)
            missing = []
            p = path
            while not p.exists():
                missing.append(p)
                p = p.parent
            path.mkdir(parents=True, exist_ok=True)
            self._made_mount_points.extend(missing)

    def _start_sshd(self, host: Host) -> None:
        ssh_dir = host.root / "ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True)
        for sub in HOST_DIRS.values():
            (host.root / sub).mkdir(parents=True, exist_ok=True)
        host_key = ssh_dir / "ssh_host_ed25519_key"
        for old in (host_key, Path(f"{host_key}.pub")):
            old.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
        config = ssh_dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {host.addr}:22",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PidFile none",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    # The keys live in a test directory, not in a home directory sshd would check.
                    "StrictModes no",
                    "PrintMotd no",
                    "MaxSessions 50",
                    "MaxStartups 100",
                    "Subsystem sftp internal-sftp",
                    "LogLevel INFO",
                    "",
                ]
            )
        )
        mounts = " && ".join(
            f"mount --bind {host.root / sub} {mount_point}" for mount_point, sub in HOST_DIRS.items()
        )
        # ip netns exec enters the network namespace; unshare gives the host its own mounts and host name.
        # Everything sshd starts (and Ansible, through it) inherits all three.
        script = (
            "set -e; mount -t tmpfs -o mode=0755 tmpfs /run; mkdir -p /run/sshd /run/shoal; "
            f"{_cgroup_mounts()}{mounts}; hostname {host.name}; exec /usr/sbin/sshd -D -e -f {config}"
        )
        log = open(host.root / "sshd.log", "ab")  # noqa: SIM115 - the child keeps writing to it
        try:
            host.sshd = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts", "--propagation", "private",
                 "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()

    def _wait_sshd(self, host: Host, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert host.sshd is not None
            if host.sshd.poll() is not None:
                raise LabError(
                    f"sshd of {host.name} exited with {host.sshd.returncode}: {self._sshd_log(host)}"
                )
            done = run(["ip", "netns", "exec", host.netns, "ss", "-Hltn", "sport = :22"], check=False)
            if host.addr in done.stdout:
                return
            time.sleep(0.05)
        raise LabError(f"sshd of {host.name} not listening after {timeout:.0f}s: {self._sshd_log(host)}")

    @staticmethod
    def _sshd_log(host: Host) -> str:
        with contextlib.suppress(OSError):
            return (host.root / "sshd.log").read_text(errors="replace")[-2000:]
        return "(no log)"

    # --- using it ----------------------------------------------------------------------------------------
    def controller(
        self,
        cmd: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the controller's namespace (where the underlay is reachable), capturing output."""
        full_env = dict(os.environ, **(env or {}))
        return subprocess.run(
            ["ip", "netns", "exec", self.controller_netns, *cmd],
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )

    def host(self, name: str) -> Host:
        """The host called ``name``."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    # --- tearing down --------------------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Stop every process of the lab by PID, remove the agents' containers, the namespaces they named
        and their mounts, delete the lab's namespaces, and remove the mount points it made."""
        try:
            self._stop_processes()
        finally:
            for name in reversed(self._made_netns):
                run(["ip", "netns", "del", name], check=False)
            self._made_netns.clear()
            for path in sorted(self._made_mount_points, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir()  # only if empty: never anything that was not ours
            self._made_mount_points.clear()
            shutil.rmtree(self.base / "hosts", ignore_errors=True)

    def _stop_processes(self, grace: float = 10.0) -> None:
        namespaces = list(self._made_netns)
        sshds = [h.sshd for h in self.hosts if h.sshd is not None]
        sshd_pids = {proc.pid for proc in sshds}
        failures: list[str] = []

        def alive(keep: set[int]) -> list[int]:
            return sorted({pid for ns in namespaces for pid in _netns_pids(ns)} - keep)

        def stop(keep: set[int]) -> None:
            # SIGTERM first: supervisors stop their daemons, daemons close their stores and sessions.
            for pid in alive(keep):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while alive(keep) and time.monotonic() < deadline:
                for proc in sshds:
                    proc.poll()  # reap our own children so they do not linger as zombies
                time.sleep(0.1)
            for pid in alive(keep):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        try:
            # The daemons first and sshd last: sshd holds the host's mount namespace, where the agent's
            # mounts and (under the host's private /run) the namespaces it named are; and with the agents
            # stopped, none starts a container while the others are removed.
            stop(sshd_pids)
            for host in self.hosts:
                try:
                    self._remove_agent_leftovers(host)
                except (OSError, subprocess.SubprocessError, LabError) as e:
                    failures.append(f"{host.name}: {e}")  # the other hosts still get cleaned
        finally:
            stop(set())
            for proc in sshds:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            for host in self.hosts:
                host.sshd = None
            cgroups.remove_parent_if_empty(LocalRuntimeOptions().cgroup_parent)
        if failures:
            raise LabError(f"could not remove what the agents left: {'; '.join(failures)}")

    def _remove_agent_leftovers(self, host: Host) -> None:
        """Kill and delete the agent's containers, delete the namespaces it named, unmount its mounts."""
        inside = host.is_up()

        def on_host(cmd: list[str]) -> subprocess.CompletedProcess[str]:
            return host.run(cmd, timeout=30) if inside else run(cmd, timeout=30, check=False)

        # Without the host's mount namespace (its sshd died) the runc root is still reachable from here,
        # through the directory behind the host's /var/lib/shoal; the agent's mounts went with the namespace.
        runc_root = (
            AGENT_RUNC_ROOT
            if inside
            else str(host.path("/var/lib/shoal") / Path(AGENT_RUNC_ROOT).relative_to("/var/lib/shoal"))
        )
        listed = on_host(["runc", "--root", runc_root, "list", "-q"])
        for cid in listed.stdout.split() if listed.returncode == 0 else []:
            on_host(["runc", "--root", runc_root, "kill", cid, "KILL"])
            for _ in range(50):
                if on_host(["runc", "--root", runc_root, "delete", "--force", cid]).returncode == 0:
                    break
                time.sleep(0.1)
        left = on_host(["runc", "--root", runc_root, "list", "-q"]).stdout.split()
        if inside:
            for name in host.agent_netns():
                on_host(["ip", "netns", "del", name])
            for target in sorted(host.agent_mounts(), key=len, reverse=True):
                on_host(["umount", "-l", target])
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(NETNS_DIR)):
                if name.startswith(host.netns_prefix):
                    run(["ip", "netns", "del", name], check=False)
        if left:
            raise LabError(f"runc could not delete the containers {', '.join(left)}")
