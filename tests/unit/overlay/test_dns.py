"""The embedded DNS server, served on loopback ports of this namespace (no root needed).

A second tiny dnslib server on loopback plays the host's upstream resolver.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from overlay.dns import DNSTable, EmbeddedDNS, Upstream


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


class FakeUpstream(asyncio.DatagramProtocol):
    """Answers ``example.test`` with 10.200.99.7, everything else NXDOMAIN; counts queries."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.queries = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        request = DNSRecord.parse(data)
        reply = request.reply(aa=0)
        if str(request.q.qname).rstrip(".") == "example.test":
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A("10.200.99.7"), ttl=30))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        assert self.transport is not None
        self.transport.sendto(reply.pack(), addr)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[FakeUpstream, str]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(FakeUpstream, local_addr=("127.0.0.1", 0))
    try:
        yield proto, f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"
    finally:
        transport.close()


@pytest.fixture
async def server(upstream: tuple[FakeUpstream, str]) -> AsyncIterator[tuple[EmbeddedDNS, int]]:
    port = _free_port()
    dns = EmbeddedDNS(listen=("127.0.0.1", port), timeout=0.5)
    table = dns.table
    table.set_records("net1", "ep-web", ["web.net1", "web", "www"], ["10.0.1.2"])
    table.set_records("net1", "ep-web2", ["web2.net1", "web2", "www"], ["10.0.1.3", "fd00:1::3"])
    table.set_records("net2", "ep-db", ["db.net2", "db"], ["10.0.2.2"])
    await dns.attach("sb1", None, ["net1"], [upstream[1]])
    try:
        yield dns, port
    finally:
        await dns.close()


async def ask(
    port: int, name: str, qtype: str = "A", *, tcp: bool = False, raw: bytes | None = None
) -> DNSRecord:
    data = raw if raw is not None else DNSRecord.question(name, qtype).pack()
    if tcp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(struct.pack("!H", len(data)) + data)
            await writer.drain()
            (size,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 3))
            return DNSRecord.parse(await reader.readexactly(size))
        finally:
            writer.close()
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, data)
        return DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(sock, 65535), 3))
    finally:
        sock.close()


def addresses(reply: DNSRecord) -> set[str]:
    return {str(rr.rdata) for rr in reply.rr}


async def test_answers_names_aliases_case_insensitively(server: tuple[EmbeddedDNS, int]) -> None:
    _, port = server
    assert addresses(await ask(port, "web")) == {"10.0.1.2"}
    assert addresses(await ask(port, "WEB.net1.")) == {"10.0.1.2"}
    www = await ask(port, "www")
    assert addresses(www) == {"10.0.1.2", "10.0.1.3"}
    assert www.header.aa == 1 and www.header.rcode == RCODE.NOERROR
    assert addresses(await ask(port, "web2", "AAAA")) == {"fd00:1::3"}


async def test_several_answers_are_shuffled(server: tuple[EmbeddedDNS, int]) -> None:
    dns, port = server
    dns.table.set_records("net1", "many", ["many"], [f"10.0.3.{i}" for i in range(1, 9)])
    orders = {tuple(str(rr.rdata) for rr in (await ask(port, "many")).rr) for _ in range(10)}
    assert len(orders) > 1


async def test_known_name_without_that_type_is_nodata(server: tuple[EmbeddedDNS, int]) -> None:
    _, port = server
    reply = await ask(port, "web", "AAAA")
    assert reply.header.rcode == RCODE.NOERROR and reply.rr == []


async def test_names_are_scoped_by_network(server: tuple[EmbeddedDNS, int]) -> None:
    dns, port = server
    reply = await ask(port, "db")  # on net2 only: forwarded, and upstream says NXDOMAIN
    assert reply.header.rcode == RCODE.NXDOMAIN
    dns.update("sb1", networks=["net1", "net2"])
    assert addresses(await ask(port, "db")) == {"10.0.2.2"}


async def test_reverse_lookup(server: tuple[EmbeddedDNS, int]) -> None:
    _, port = server
    reply = await ask(port, "2.1.0.10.in-addr.arpa", "PTR")
    assert [str(rr.rdata) for rr in reply.rr] == ["web.net1."]


async def test_unknown_names_are_forwarded_and_nxdomain_passed_on(
    server: tuple[EmbeddedDNS, int], upstream: tuple[FakeUpstream, str]
) -> None:
    _, port = server
    reply = await ask(port, "example.test")
    assert addresses(reply) == {"10.200.99.7"}
    assert (await ask(port, "nothing.test")).header.rcode == RCODE.NXDOMAIN
    assert upstream[0].queries == 2
    # Local answers never reach the upstream.
    await ask(port, "web")
    assert upstream[0].queries == 2


async def test_tcp_queries_local_and_forwarded(server: tuple[EmbeddedDNS, int]) -> None:
    _, port = server
    assert addresses(await ask(port, "web", tcp=True)) == {"10.0.1.2"}


async def test_unreachable_upstream_is_servfail(server: tuple[EmbeddedDNS, int]) -> None:
    dns, port = server
    dead = _free_port()  # nothing listens there
    dns.update("sb1", upstreams=[f"127.0.0.1:{dead}"])
    assert (await ask(port, "example.test")).header.rcode == RCODE.SERVFAIL
    dns.update("sb1", upstreams=[])
    assert (await ask(port, "example.test")).header.rcode == RCODE.SERVFAIL


async def test_big_answers_are_truncated_over_udp_only(server: tuple[EmbeddedDNS, int]) -> None:
    dns, port = server
    dns.table.set_records("net1", "big", ["big"], [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(100)])
    udp = await ask(port, "big")
    assert udp.header.tc == 1 and udp.rr == []
    tcp = await ask(port, "big", tcp=True)
    assert tcp.header.tc == 0 and len(tcp.rr) == 100


async def test_malformed_packets_never_stop_the_server(server: tuple[EmbeddedDNS, int]) -> None:
    _, port = server
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        for junk in (b"", b"\x00", os.urandom(7), b"\x12\x34" + b"\x01\x00" + b"\x00\x05" + os.urandom(40)):
            await loop.sock_sendall(sock, junk)
        for _ in range(200):
            await loop.sock_sendall(sock, os.urandom(12 + os.urandom(1)[0] % 60))
        garbage = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3fabc"  # label runs past the end
        await loop.sock_sendall(sock, garbage)
        replies = []
        with pytest.raises(TimeoutError):
            while True:
                replies.append(await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.3))
        formerr = [r for r in replies if r[:2] == b"\xab\xcd"]
        assert formerr and DNSRecord.parse(formerr[0]).header.rcode == RCODE.FORMERR
    finally:
        sock.close()
    assert addresses(await ask(port, "web")) == {"10.0.1.2"}
    # A truncated TCP frame just closes that connection.
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x00\x40abc")
    writer.close()
    assert addresses(await ask(port, "web", tcp=True)) == {"10.0.1.2"}


def test_table_bookkeeping() -> None:
    table = DNSTable()
    table.set_records("n", "a", ["svc"], ["10.0.0.1"])
    table.set_records("n", "b", ["svc", "tasks.svc"], ["10.0.0.2"])
    assert sorted(table.lookup(["n"], "svc") or []) == ["10.0.0.1", "10.0.0.2"]
    table.remove_records("n", "a")
    assert table.lookup(["n"], "svc") == ["10.0.0.2"]
    assert table.reverse(["n"], "10.0.0.1") is None
    table.set_records("n", "b", ["other"], ["10.0.0.3"])  # replacing a key drops its old names
    assert table.lookup(["n"], "svc") is None
    table.remove_network("n")
    assert table.names("n") == {}


def test_upstream_parse() -> None:
    assert Upstream.parse("10.0.0.1") == Upstream("10.0.0.1", 53)
    assert Upstream.parse("127.0.0.1:5353") == Upstream("127.0.0.1", 5353)
    assert Upstream.parse("[::1]:53") == Upstream("::1", 53)
    assert Upstream.parse("::1") == Upstream("::1", 53)
