"""Fixtures for host networking tests: a private "host" namespace per test, real bridges and nftables.

Each test gets its own namespaces, all named ``<prefix>…`` with a random prefix: ``host`` plays the machine
the agent manages (bridges, the ``inet shoal`` table and sysctls all live there, so nothing touches the real
host), ``client`` is another machine on a veth link to it (10.200.0.2 → host 10.200.0.1), and every
container sandbox is a namespace the controller creates under the same prefix. The finaliser kills the
processes the test started (by PID), tears the controller down, and removes every namespace with the
prefix — which also removes every veth, bridge and nftables rule inside them — even when the test failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from agent.network import netlink, nsutil
from agent.network.controller import ControllerConfig, DefaultBridge, NetworkController
from overlay.dns import EmbeddedDNS

HOST_ADDR = "10.200.0.1"
CLIENT_ADDR = "10.200.0.2"
UPSTREAM_NAME = "example.test"
UPSTREAM_ANSWER = "10.200.99.7"

requires_netns = pytest.mark.skipif(
    os.geteuid() != 0
    or not shutil.which("busybox")
    or not shutil.which("nft")
    or not shutil.which("nsenter"),
    reason="needs root, busybox, nft and nsenter",
)


class Lab:
    """The namespaces and processes of one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.prefix = f"sn{secrets.token_hex(3)}-"
        self.tmp = tmp_path
        self.host = ""
        self.client = ""
        self.procs: list[subprocess.Popen[bytes]] = []

    async def setup(self) -> None:
        self.host = nsutil.create_netns(self.prefix + "host")
        self.client = nsutil.create_netns(self.prefix + "client")
        for ns in (self.host, self.client):
            await netlink.loopback_up(ns)
        async with netlink.iproute(self.host) as ipr:
            await ipr.link(
                "add", ifname="eth0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": self.client}
            )
            index = await netlink.link_index(ipr, "eth0")
            await ipr.addr("add", index=index, address=HOST_ADDR, prefixlen=24)
            await ipr.link("set", index=index, state="up")
        await netlink.configure_interface(self.client, "eth0", [f"{CLIENT_ADDR}/24"], [], 1500)

    def namespaces(self) -> list[str]:
        """Namespaces of this test still present."""
        return sorted(n for n in os.listdir(nsutil.NETNS_RUN_DIR) if n.startswith(self.prefix))

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for name in self.namespaces():
            nsutil.remove_netns(name)

    # --- processes in namespaces ------------------------------------------------------------------------

    def start(self, netns: str, *argv: str) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``netns``; killed by PID when the test ends."""
        proc = subprocess.Popen(
            ["nsenter", f"--net={netns}", "--", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.procs.append(proc)
        return proc

    async def httpd(self, netns: str, text: str, port: int = 80) -> subprocess.Popen[bytes]:
        """A busybox httpd serving ``text`` on ``port`` inside ``netns``; returns once it listens."""
        root = self.tmp / f"www-{secrets.token_hex(4)}"
        root.mkdir()
        (root / "index.html").write_text(text)
        proc = self.start(netns, "busybox", "httpd", "-f", "-p", str(port), "-h", str(root))
        for _ in range(100):
            if await can_connect(netns, "127.0.0.1", port, 0.2):
                return proc
            await asyncio.sleep(0.02)
        raise RuntimeError(f"httpd did not start in {netns}")

    async def nslookup(self, netns: str, name: str, server: str = "127.0.0.11") -> tuple[int, str]:
        """busybox nslookup inside ``netns``: (exit status, output)."""
        proc = await asyncio.create_subprocess_exec(
            "nsenter", f"--net={netns}", "--", "busybox", "nslookup", name, server,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        return proc.returncode or 0, out.decode()


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def can_connect(netns: str, host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection from ``netns`` to ``host:port`` succeeds within ``timeout``."""
    try:
        sock = await nsutil.arun_in_netns(netns, _connect, host, port, timeout)
    except OSError:
        return False
    sock.close()
    return True


async def http_get(netns: str, host: str, port: int = 80, timeout: float = 3.0) -> str:
    """The body of ``GET /`` on ``host:port``, from inside ``netns``."""
    sock = await nsutil.arun_in_netns(netns, _connect, host, port, timeout)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        data = b""
        while True:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.") and " 200 " in head.splitlines()[0], head
    return body


class FakeUpstream(asyncio.DatagramProtocol):
    """The host's resolver, on loopback: ``example.test`` → 10.200.99.7, anything else NXDOMAIN."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        request = DNSRecord.parse(data)
        reply = request.reply(aa=0)
        if str(request.q.qname).rstrip(".") == UPSTREAM_NAME and request.q.qtype == QTYPE.A:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(UPSTREAM_ANSWER), ttl=30))
        elif str(request.q.qname).rstrip(".") != UPSTREAM_NAME:
            reply.header.rcode = RCODE.NXDOMAIN
        assert self.transport is not None
        self.transport.sendto(reply.pack(), addr)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.cleanup()
        assert lab.namespaces() == [], "namespaces left behind"


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(FakeUpstream, local_addr=("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"
    finally:
        transport.close()


def controller_config(lab: Lab, state_dir: Path, upstream: str, **kwargs: object) -> ControllerConfig:
    """The controller configuration every test uses: everything inside the lab's host namespace."""
    return ControllerConfig(
        state_dir=state_dir,
        host_netns=lab.host,
        sandbox_prefix=lab.prefix,
        dns_upstreams=(upstream,),
        default_bridge=DefaultBridge(**kwargs),  # type: ignore[arg-type]
    )


@pytest.fixture
async def ctl(lab: Lab, tmp_path: Path, upstream: str) -> AsyncIterator[NetworkController]:
    await lab.setup()
    controller = NetworkController(
        controller_config(lab, tmp_path / "state", upstream), EmbeddedDNS(timeout=1)
    )
    try:
        await controller.start()
        yield controller
    finally:
        try:
            await controller.teardown()
        finally:
            await controller.dns.close()
