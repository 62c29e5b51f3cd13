"""Hosts of a local cluster: network namespaces on one underlay, each with processes of its own.

The underlay is a bridge inside a namespace of its own (``<prefix>-ul``), so the cluster's addresses exist
only inside the cluster's namespaces and never on the machine itself. Each host is a namespace
(``<prefix>-h<N>``, N from 0) whose ``eth0`` is a veth into that bridge, with one address of the underlay
subnet.
Processes are started inside a host with ``nsenter`` and remembered by PID; :meth:`Underlay.destroy` stops
them (SIGTERM, then SIGKILL) and removes the namespaces, which takes the veths and the bridge with them.

The state of an underlay (its names and the PIDs it started) is written to a JSON file, so another process
(``swarmctl cluster down``, a test's finaliser) can tear down exactly what it made, and nothing else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyroute2 import AsyncIPRoute

from agent.network.netlink import configure_interface, create_veth, ensure_bridge, iproute, loopback_up
from agent.network.nsutil import create_netns, netns_path, remove_netns

#: The underlay's MTU; the overlay subtracts its 50 bytes from this.
MTU = 1500


@dataclass
class HostInfo:
    """One host: its name, namespace and underlay address."""

    name: str
    netns: str
    addr: str


@dataclass
class UnderlayState:
    """Everything an underlay made, as written to its state file."""

    prefix: str
    subnet: str
    netns: str
    hosts: list[HostInfo] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    #: Of ``pids``, the ones to stop only after all the others have ended (what they depend on).
    last: list[int] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> UnderlayState:
        raw = json.loads(path.read_text())
        return cls(
            prefix=raw["prefix"],
            subnet=raw["subnet"],
            netns=raw["netns"],
            hosts=[HostInfo(**h) for h in raw["hosts"]],
            pids=list(raw["pids"]),
            last=list(raw.get("last", [])),
        )


class Underlay:
    """A set of namespace hosts on one bridge. ``await create(n)``, ``spawn(...)``, then ``destroy()``."""

    def __init__(self, state_file: Path, prefix: str = "shoal", subnet: str = "10.213.0.0/24") -> None:
        self.state_file = state_file
        self.state = UnderlayState(prefix=prefix, subnet=subnet, netns=f"{prefix}-ul")

    @classmethod
    def load(cls, state_file: Path) -> Underlay:
        """The underlay a state file describes (to tear it down, or to start more processes in it)."""
        underlay = cls(state_file)
        underlay.state = UnderlayState.load(state_file)
        return underlay

    @property
    def hosts(self) -> list[HostInfo]:
        return self.state.hosts

    def _save(self) -> None:
        self.state.save(self.state_file)

    async def create(self, count: int) -> list[HostInfo]:
        """The underlay and ``count`` hosts; on failure, whatever was made is removed again."""
        try:
            self._save()  # first, so a crash half-way still leaves a record of what to remove
            create_netns(self.state.netns)
            await loopback_up(self.state.netns)
            async with iproute(self.state.netns) as ipr:
                bridge = await ensure_bridge(ipr, "br0", [], MTU)
                for _ in range(count):
                    await self._add(ipr, bridge)
        except BaseException:
            self.destroy()
            raise
        return self.hosts

    async def add_host(self) -> HostInfo:
        """One more host on the existing underlay, with the next number and address. On failure the new
        host's namespace (and with it its veth) is removed again; the other hosts are left as they are."""
        before = len(self.state.hosts)
        try:
            async with iproute(self.state.netns) as ipr:
                bridge = await ensure_bridge(ipr, "br0", [], MTU)
                return await self._add(ipr, bridge)
        except BaseException:
            for host in self.state.hosts[before:]:
                remove_netns(host.netns)
            del self.state.hosts[before:]
            self._save()
            raise

    async def _add(self, ipr: AsyncIPRoute, bridge: int) -> HostInfo:
        """Host number ``len(hosts)``: its namespace, its veth on ``bridge`` and its underlay address."""
        i = len(self.state.hosts)
        net = ipaddress.ip_network(self.state.subnet)
        if i + 2 >= net.num_addresses - 1:
            raise ValueError(f"the underlay {net} has no address left for host{i}")
        addr = net.network_address + i + 2  # .1 is left for a gateway, as it always was
        host = HostInfo(name=f"host{i}", netns=f"{self.state.prefix}-h{i}", addr=f"{addr}/{net.prefixlen}")
        self.state.hosts.append(host)
        self._save()  # before the namespace exists, so that destroy() finds it whatever happens next
        create_netns(host.netns)
        await create_veth(ipr, f"ul{i}", "eth0", host.netns, bridge, MTU, hairpin=False)
        await configure_interface(host.netns, "eth0", [host.addr], [], MTU)
        return host

    def spawn(
        self,
        host: HostInfo | None,
        argv: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        *,
        stop_last: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``'s network namespace (``None``: the machine's own), logging to
        ``log``; its PID is recorded. ``stop_last``: :meth:`destroy` stops it only once every process
        without it has ended (a store the others still talk to while they shut down)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        enter = ["nsenter", f"--net={netns_path(host.netns)}", "--"] if host is not None else []
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*enter, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # a Ctrl-C in the terminal that ran `up` must not reach it
            )
        self.state.pids.append(proc.pid)
        if stop_last:
            self.state.last.append(proc.pid)
        self._save()
        return proc

    def destroy(self, grace: float = 10.0) -> None:
        """Stop every process this underlay started (by PID), those spawned with ``stop_last`` after the
        others, and remove its namespaces."""
        _stop([pid for pid in self.state.pids if pid not in self.state.last], grace)
        _stop(self.state.last, grace)
        for host in self.state.hosts:
            remove_netns(host.netns)
        remove_netns(self.state.netns)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()


def _stop(pids: list[int], grace: float) -> None:
    """SIGTERM to each of ``pids``, SIGKILL to those still there ``grace`` seconds later."""
    live = [pid for pid in pids if _alive(pid)]
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        live = [pid for pid in live if _alive(pid)]
        time.sleep(0.05)
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child and has ended
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie that is not our child still answers kill(0); it is gone as far as we are concerned.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True
