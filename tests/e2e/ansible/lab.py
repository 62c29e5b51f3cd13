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
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

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
    """One host: its inventory name, namespace, underlay address and the directory behind its files."""

    name: str
    netns: str
    addr: str
    root: Path
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

    def processes(self) -> dict[int, str]:
        """Command lines of the processes in this host's network namespace, by PID."""
        out = {}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                out[pid] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        return out


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
            Host(name, f"shoal-lab-{tag}-{name}", f"{SUBNET}.{11 + i}", base / "hosts" / name)
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
            f"{mounts}; hostname {host.name}; exec /usr/sbin/sshd -D -e -f {config}"
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
        """Stop every process of the lab by PID, delete its namespaces, remove the mount points it made."""
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

        def alive() -> list[int]:
            return sorted({pid for ns in namespaces for pid in _netns_pids(ns)})

        # SIGTERM first: supervisors stop their daemons, daemons close their stores and sessions.
        for pid in alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive() and time.monotonic() < deadline:
            for proc in sshds:
                proc.poll()  # reap our own children so they do not linger as zombies
            time.sleep(0.1)
        for pid in alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in sshds:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for host in self.hosts:
            host.sshd = None
