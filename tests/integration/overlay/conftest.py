"""Fixtures for overlay tests: several "hosts" as namespaces on an underlay bridge, each with its own driver.

Every namespace of a test is named ``<prefix>…`` with a random prefix. ``underlay`` holds the bridge the
hosts are plugged into (10.200.0.0/24) and plays "the outside": it has 10.200.0.254 and runs servers that
overlay containers reach through their gateway bridge. ``h1``, ``h2``, ``h3`` are the hosts (10.200.0.1-3):
each has a real :class:`~agent.network.controller.NetworkController` managing that namespace as its host
namespace, with the overlay driver installed and an embedded DNS. Containers are namespaces the
controllers create (``<prefix>hN-<id>``); overlay namespaces are ``<prefix>hN-ov-<network>``.

The cluster's side is played by the test: :meth:`OverlayLab.publish` sends every host the ``peers`` frame
a manager would send (the endpoints and services the test declared). The finaliser kills the processes
the test started (by PID), tears every controller down, and removes every namespace with the prefix —
which takes every veth, bridge, VXLAN device and nftables table inside them along — even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.network import netlink, nsutil
from agent.network.controller import ControllerConfig, NetworkController
from agent.network.model import IPAMPool, NetworkConfig
from agent.network.sandbox import Sandbox, SandboxConfig
from api.objects import EndpointMode
from api.peers import NetworkPeers, PeerEndpoint, Peers, PeerService
from overlay import vxlan
from overlay.dns import EmbeddedDNS
from overlay.driver import VNI_OPTIONS, OverlayConfig, OverlayDriver
from tests.integration.network.conftest import can_connect

UNDERLAY_SUBNET = "10.200.0"
OUTSIDE_ADDR = f"{UNDERLAY_SUBNET}.254"

requires_overlay = pytest.mark.skipif(
    os.geteuid() != 0
    or not shutil.which("busybox")
    or not shutil.which("nft")
    or not shutil.which("nsenter")
    or not shutil.which("unshare"),
    reason="needs root, busybox, nft, nsenter and unshare",
)


@dataclass
class Host:
    """One "machine": its namespace, its address on the underlay, its controller and overlay driver."""

    name: str
    netns: str
    addr: str
    ctl: NetworkController
    overlay: OverlayDriver
    node_id: str = ""


@dataclass
class Container:
    """A container's sandbox on a host, with the cluster's view of it."""

    host: Host
    sandbox: Sandbox
    name: str
    resolv_conf: Path

    @property
    def netns(self) -> str:
        return self.sandbox.netns

    @property
    def id(self) -> str:
        return self.sandbox.container_id


@dataclass
class OverlayLab:
    """Namespaces, hosts, processes, and the cluster state the test publishes."""

    tmp: Path
    prefix: str = field(default_factory=lambda: f"so{secrets.token_hex(3)}-")
    underlay: str = ""
    hosts: list[Host] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: network id → endpoints / services, as the managers would describe them.
    endpoints: dict[str, dict[str, PeerEndpoint]] = field(default_factory=dict)
    services: dict[str, dict[str, PeerService]] = field(default_factory=dict)
    upstream: str = "127.0.0.1:9"

    # --- topology ---------------------------------------------------------------------------------------

    async def setup(self, count: int = 3, mtu: int = 1500) -> None:
        self.underlay = nsutil.create_netns(self.prefix + "underlay")
        await netlink.loopback_up(self.underlay)
        async with netlink.iproute(self.underlay) as ipr:
            bridge = await netlink.ensure_bridge(ipr, "br0", [f"{OUTSIDE_ADDR}/24"], mtu)
        for i in range(1, count + 1):
            await self.add_host(i, bridge, mtu)

    async def add_host(self, i: int, bridge: int, mtu: int) -> Host:
        netns = nsutil.create_netns(f"{self.prefix}h{i}")
        await netlink.loopback_up(netns)
        async with netlink.iproute(self.underlay) as ipr:
            await ipr.link(
                "add", ifname=f"u{i}", kind="veth", mtu=mtu, peer={"ifname": "eth0", "net_ns_fd": netns}
            )
            index = await netlink.link_index(ipr, f"u{i}")
            await ipr.link("set", index=index, master=bridge, state="up")
        addr = f"{UNDERLAY_SUBNET}.{i}"
        await netlink.configure_interface(netns, "eth0", [f"{addr}/24"], [], mtu)
        host = await self.start_host(f"h{i}", netns, addr)
        self.hosts.append(host)
        return host

    async def start_host(self, name: str, netns: str, addr: str) -> Host:
        """A controller and overlay driver for the host (again after a "restart": same state dir)."""
        ctl = NetworkController(
            ControllerConfig(
                state_dir=self.tmp / name,
                host_netns=netns,
                sandbox_prefix=f"{self.prefix}{name}-",
                dns_upstreams=(self.upstream,),
            ),
            EmbeddedDNS(timeout=1),
        )
        overlay = OverlayDriver.install(
            ctl, OverlayConfig(advertise_addr=addr, netns_prefix=f"{self.prefix}{name}-ov-")
        )
        await ctl.start()
        return Host(name, netns, addr, ctl, overlay, node_id=f"node-{name}")

    async def stop_host(self, host: Host) -> None:
        """The agent stops: containers, devices and entries stay."""
        await host.overlay.close()
        await host.ctl.close()
        await host.ctl.dns.close()

    def namespaces(self) -> list[str]:
        return sorted(n for n in os.listdir(nsutil.NETNS_RUN_DIR) if n.startswith(self.prefix))

    async def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for host in self.hosts:
            with contextlib.suppress(Exception):
                await host.overlay.close()
            with contextlib.suppress(Exception):
                await host.ctl.teardown()
            with contextlib.suppress(Exception):
                await host.ctl.dns.close()
        for name in self.namespaces():
            nsutil.remove_netns(name)

    # --- networks and containers ------------------------------------------------------------------------

    async def network(
        self,
        name: str,
        subnet: str,
        vni: int,
        *,
        internal: bool = False,
        options: dict[str, str] | None = None,
    ) -> str:
        """A cluster overlay network, known to every host (its devices appear with its first container)."""
        network_id = secrets.token_hex(32)
        gateway = subnet.rsplit(".", 1)[0] + ".1"
        config = NetworkConfig(
            name=name,
            driver="overlay",
            ipam=(IPAMPool(subnet=f"{subnet}/24", gateway=gateway),),
            internal=internal,
            options={VNI_OPTIONS[0]: str(vni), **(options or {})},
            id=network_id,
        )
        for host in self.hosts:
            await host.ctl.create_network(config)
        self.endpoints[network_id] = {}
        self.services[network_id] = {}
        return network_id

    def service(
        self, network_id: str, name: str, vip: str = "", mode: EndpointMode = EndpointMode.VIP
    ) -> str:
        service_id = f"svc-{name}"
        self.services[network_id][service_id] = PeerService(
            service_id, name, mode, f"{vip}/24" if vip else "", ()
        )
        return service_id

    async def container(
        self, host: Host, network_id: str, ip: str, *, service: str = "", name: str = ""
    ) -> Container:
        """A task's container on ``host``, attached to the overlay with ``ip``; listed as serving."""
        container_id = secrets.token_hex(32)
        name = name or f"{service or 'task'}.{len(self.endpoints[network_id]) + 1}.{container_id[:8]}"
        network = host.ctl.network(network_id)
        sandbox = await host.ctl.create_sandbox(
            SandboxConfig(container_id, name, network_mode=network.name, ip=ip)
        )
        resolv = self.tmp / f"resolv-{container_id[:12]}.conf"
        resolv.write_text(sandbox.files.resolv_conf)
        self.endpoints[network_id][container_id] = PeerEndpoint(
            task_id=container_id,
            service_id=f"svc-{service}" if service else "",
            node_id=host.node_id,
            node_addr=host.addr,
            addresses=(f"{ip}/24",),
            name=name,
            serving=True,
        )
        return Container(host, sandbox, name, resolv)

    async def remove(self, container: Container) -> None:
        """The task ends: its container goes, and the cluster forgets its endpoint."""
        await container.host.ctl.remove_sandbox(container.id)
        for endpoints in self.endpoints.values():
            endpoints.pop(container.id, None)

    def frame(self) -> Peers:
        networks = tuple(
            NetworkPeers(
                network_id,
                tuple(self.endpoints[network_id].values()),
                tuple(self.services[network_id].values()),
            )
            for network_id in sorted(self.endpoints)
        )
        return Peers(full=True, networks=networks)

    async def publish(self, hosts: list[Host] | None = None) -> None:
        """Send every host the managers' picture, and wait until each has programmed it."""
        frame = self.frame()
        for host in hosts or self.hosts:
            host.overlay.apply_peers(frame)
        for host in hosts or self.hosts:
            await host.overlay.settled()

    # --- processes in namespaces ------------------------------------------------------------------------

    def start(self, netns: str, *argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["nsenter", f"--net={netns}", "--", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.procs.append(proc)
        return proc

    async def httpd(self, netns: str, text: str, port: int = 80) -> None:
        root = self.tmp / f"www-{secrets.token_hex(4)}"
        root.mkdir()
        (root / "index.html").write_text(text)
        self.start(netns, "busybox", "httpd", "-f", "-p", str(port), "-h", str(root))
        for _ in range(100):
            if await can_connect(netns, "127.0.0.1", port, 0.2):
                return
            await asyncio.sleep(0.02)
        raise RuntimeError(f"httpd did not start in {netns}")

    async def in_container(self, container: Container, command: str, timeout: float = 10) -> tuple[int, str]:
        """Run a shell command as the container would: its network namespace and its ``resolv.conf``."""
        script = f"mount --bind {container.resolv_conf} /etc/resolv.conf && {command}"
        return await run(container.netns, "unshare", "--mount", "sh", "-c", script, timeout=timeout)

    async def wget(self, container: Container, url: str) -> str:
        status, out = await self.in_container(container, f"busybox wget -q -O- {url}")
        assert status == 0, f"wget {url} from {container.name} failed ({status}): {out}"
        return out

    async def nslookup(self, container: Container, name: str) -> list[str]:
        """The addresses the container's embedded DNS gives for ``name`` ([] when it has none)."""
        status, out = await run(container.netns, "busybox", "nslookup", name, "127.0.0.11")
        if status != 0:
            return []
        answers = out.split(f"Name:\t{name}", 1)
        if len(answers) < 2:
            answers = out.split("Name:", 1)
        return sorted(line.split()[-1] for line in answers[-1].splitlines() if line.startswith("Address"))


async def run(netns: str, *argv: str, timeout: float = 10) -> tuple[int, str]:
    """Run ``argv`` inside ``netns``: (exit status, output)."""
    proc = await asyncio.create_subprocess_exec(
        "nsenter", f"--net={netns}", "--", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, "timed out"
    return proc.returncode or 0, out.decode()


async def run_ok(netns: str, *argv: str, timeout: float = 10) -> bool:
    status, _ = await run(netns, *argv, timeout=timeout)
    return status == 0


async def programmed(host: Host, network_id: str, vni: int) -> vxlan.Programmed:
    """The neighbour and forwarding entries on ``host``'s VXLAN device of the network (none without one)."""
    path = host.overlay.local(network_id)
    if path is None:
        return vxlan.Programmed({}, {})
    return await vxlan.programmed(path, vni)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[OverlayLab]:
    lab = OverlayLab(tmp_path)
    try:
        await lab.setup()
        yield lab
    finally:
        await lab.cleanup()
        assert lab.namespaces() == [], "namespaces left behind"
