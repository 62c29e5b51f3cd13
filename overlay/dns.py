"""The embedded DNS server: container names, aliases and service names at ``127.0.0.11:53``.

One :class:`EmbeddedDNS` per host serves every container. For each sandbox (a container's network
namespace) it opens a UDP and a TCP socket bound to ``127.0.0.11:53`` *inside that namespace* — a short
thread enters the namespace with ``setns`` just long enough to create and bind them — and then serves all
of them from the agent's event loop. Sockets keep the namespace they were made in, so a container talks to
"its" ``127.0.0.11`` while the answers come from one process, and queries the server forwards leave from the
agent's own namespace (so even a loopback resolver of the host, like systemd-resolved, works as upstream).
The alternative, one server reached through a DNAT rule from ``127.0.0.11`` in every container, needs
``route_localnet`` and nftables rules in every container namespace; the socket-per-namespace way needs
nothing inside the container but its loopback interface.

Names are scoped by network: the agent (and, for overlays, the cluster's service records) feeds a
:class:`DNSTable` with ``(network, key) → names, addresses`` entries, and a container sees the names of the
networks it is attached to. A name registered by several keys answers with all their addresses, shuffled
(DNS round robin). Other names are forwarded to the sandbox's upstream servers (``--dns`` or the host's
resolvers) with a timeout; no answer from any of them is SERVFAIL, and the upstream's NXDOMAIN is passed on.
Malformed queries get FORMERR when their header can be read and are dropped otherwise; nothing a client
sends can stop the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dnslib import AAAA, PTR, QTYPE, RCODE, RR, A, DNSError, DNSHeader, DNSQuestion, DNSRecord

from agent.network.nsutil import arun_in_netns, bound_socket

log = logging.getLogger(__name__)

LISTEN_ADDRESS = "127.0.0.11"
LISTEN_PORT = 53
#: Docker's TTL for container records.
TTL = 600
MAX_UDP = 512
MAX_TCP_IDLE = 10.0


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


@dataclass(frozen=True)
class Upstream:
    """A resolver the server forwards to."""

    host: str
    port: int = 53

    @classmethod
    def parse(cls, value: str | Upstream) -> Upstream:
        """``1.2.3.4``, ``1.2.3.4:5353``, ``[::1]:53`` or ``::1``."""
        if isinstance(value, Upstream):
            return value
        if value.startswith("["):
            host, _, port = value[1:].partition("]")
            return cls(host, int(port.lstrip(":") or 53))
        if value.count(":") == 1:
            host, _, port = value.partition(":")
            return cls(host, int(port))
        return cls(value)


class DNSTable:
    """Network-scoped records: ``(network, key) → (names, addresses)``, indexed for lookups."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
        self._by_name: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {}
        self._by_addr: dict[str, dict[str, dict[str, str]]] = {}

    def set_records(self, network: str, key: str, names: Iterable[str], addresses: Iterable[str]) -> None:
        """Register (or replace) ``key``'s ``names`` → ``addresses`` on ``network``.

        The first name is the one reverse (PTR) lookups of the addresses answer with.
        """
        self.remove_records(network, key)
        names_t = tuple(dict.fromkeys(_norm(n) for n in names if n))
        addrs = tuple(dict.fromkeys(str(ipaddress.ip_address(a.split("/")[0])) for a in addresses))
        if not names_t:
            return
        self._entries.setdefault(network, {})[key] = (names_t, addrs)
        by_name = self._by_name.setdefault(network, {})
        for name in names_t:
            by_name.setdefault(name, {})[key] = addrs
        by_addr = self._by_addr.setdefault(network, {})
        for addr in addrs:
            by_addr.setdefault(addr, {})[key] = names_t[0]

    def remove_records(self, network: str, key: str) -> None:
        """Forget ``key``'s records on ``network`` (unknown keys are ignored)."""
        entry = self._entries.get(network, {}).pop(key, None)
        if entry is None:
            return
        names, addrs = entry
        by_name = self._by_name.get(network, {})
        for name in names:
            holders = by_name.get(name, {})
            holders.pop(key, None)
            if not holders:
                by_name.pop(name, None)
        by_addr = self._by_addr.get(network, {})
        for addr in addrs:
            holders_a = by_addr.get(addr, {})
            holders_a.pop(key, None)
            if not holders_a:
                by_addr.pop(addr, None)

    def remove_network(self, network: str) -> None:
        """Forget every record of ``network``."""
        self._entries.pop(network, None)
        self._by_name.pop(network, None)
        self._by_addr.pop(network, None)

    def lookup(self, networks: Iterable[str], name: str) -> list[str] | None:
        """Addresses of ``name`` on ``networks``: ``[]`` for a known name without any, ``None`` if unknown."""
        name = _norm(name)
        found: list[str] | None = None
        for network in networks:
            holders = self._by_name.get(network, {}).get(name)
            if holders is None:
                continue
            found = found if found is not None else []
            for addrs in holders.values():
                found.extend(a for a in addrs if a not in found)
        return found

    def reverse(self, networks: Iterable[str], address: str) -> str | None:
        """The name an address of ``networks`` answers to in a PTR lookup."""
        for network in networks:
            holders = self._by_addr.get(network, {}).get(address)
            if holders:
                return next(iter(holders.values()))
        return None

    def names(self, network: str) -> dict[str, list[str]]:
        """Every name of ``network`` with its addresses (for inspection and tests)."""
        return {
            name: [a for addrs in holders.values() for a in addrs]
            for name, holders in self._by_name.get(network, {}).items()
        }


@dataclass
class _Sandbox:
    key: str
    networks: tuple[str, ...]
    upstreams: tuple[Upstream, ...]
    transports: list[asyncio.BaseTransport] = field(default_factory=list)
    server: asyncio.AbstractServer | None = None
    tcp_tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _ptr_address(qname: str) -> str | None:
    """``4.3.2.1.in-addr.arpa`` → ``1.2.3.4`` (and the nibble form for IPv6)."""
    name = _norm(qname)
    try:
        if name.endswith(".in-addr.arpa"):
            parts = name[: -len(".in-addr.arpa")].split(".")
            if len(parts) == 4:
                return str(ipaddress.IPv4Address(".".join(reversed(parts))))
        elif name.endswith(".ip6.arpa"):
            nibbles = name[: -len(".ip6.arpa")].split(".")
            if len(nibbles) == 32:
                text = "".join(reversed(nibbles))
                return str(ipaddress.IPv6Address(":".join(text[i : i + 4] for i in range(0, 32, 4))))
    except ValueError:
        return None
    return None


def _formerr(data: bytes) -> bytes | None:
    """A FORMERR reply to an unparseable query, if at least its header can be read."""
    if len(data) < 12:
        return None
    (qid,) = struct.unpack("!H", data[:2])
    if data[2] & 0x80:  # a response, not a query: never answer those (no reflection loops)
        return None
    return _wire(DNSRecord(DNSHeader(id=qid, qr=1, rcode=RCODE.FORMERR)))


def _servfail(request: DNSRecord) -> bytes:
    reply = request.reply(aa=0)
    reply.header.rcode = RCODE.SERVFAIL
    return _wire(reply)


def _wire(record: DNSRecord) -> bytes:
    packed: bytes = record.pack()
    return packed


def _max_udp_size(request: DNSRecord) -> int:
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(MAX_UDP, min(int(rr.rclass), 4096))
    return MAX_UDP


class EmbeddedDNS:
    """The host's embedded DNS server; :meth:`attach` a sandbox to serve ``127.0.0.11`` inside it."""

    def __init__(
        self,
        table: DNSTable | None = None,
        *,
        timeout: float = 2.0,
        listen: tuple[str, int] = (LISTEN_ADDRESS, LISTEN_PORT),
    ) -> None:
        self.table = table or DNSTable()
        self.timeout = timeout
        self.listen = listen
        self._sandboxes: dict[str, _Sandbox] = {}

    # --- sandboxes --------------------------------------------------------------------------------------

    async def attach(
        self,
        key: str,
        netns: str | None,
        networks: Iterable[str],
        upstreams: Iterable[str | Upstream] = (),
    ) -> None:
        """Serve ``127.0.0.11:53`` (UDP and TCP) inside ``netns`` for the sandbox ``key``."""
        if key in self._sandboxes:
            self.update(key, networks=networks, upstreams=upstreams)
            return
        sandbox = _Sandbox(key, tuple(networks), tuple(Upstream.parse(u) for u in upstreams))
        udp, tcp = await arun_in_netns(netns, self._sockets)
        try:
            await self.serve(sandbox, udp, tcp)
        except BaseException:
            udp.close()
            tcp.close()
            await self._close(sandbox)
            raise
        self._sandboxes[key] = sandbox

    def _sockets(self) -> tuple[socket.socket, socket.socket]:
        udp = bound_socket(socket.AF_INET, socket.SOCK_DGRAM, self.listen)
        try:
            tcp = bound_socket(socket.AF_INET, socket.SOCK_STREAM, self.listen, reuse=True)
        except BaseException:
            udp.close()
            raise
        return udp, tcp

    async def serve(self, sandbox: _Sandbox, udp: socket.socket, tcp: socket.socket) -> None:
        """Serve already bound sockets for ``sandbox`` (used by :meth:`attach` and the benchmark)."""
        loop = asyncio.get_running_loop()
        udp.setblocking(False)
        tcp.setblocking(False)
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDPServer(self, sandbox), sock=udp)
        sandbox.transports.append(transport)
        sandbox.server = await asyncio.start_server(
            lambda r, w: self._tcp_client(sandbox, r, w), sock=tcp, backlog=64
        )

    def update(
        self,
        key: str,
        *,
        networks: Iterable[str] | None = None,
        upstreams: Iterable[str | Upstream] | None = None,
    ) -> None:
        """Change which networks' names a sandbox sees, or where its other queries go."""
        sandbox = self._sandboxes[key]
        if networks is not None:
            sandbox.networks = tuple(networks)
        if upstreams is not None:
            sandbox.upstreams = tuple(Upstream.parse(u) for u in upstreams)

    def attached(self, key: str) -> bool:
        """Whether sandbox ``key`` is being served."""
        return key in self._sandboxes

    async def detach(self, key: str) -> None:
        """Stop serving sandbox ``key`` and close its sockets (unknown keys are ignored)."""
        sandbox = self._sandboxes.pop(key, None)
        if sandbox is not None:
            await self._close(sandbox)

    async def _close(self, sandbox: _Sandbox) -> None:
        for transport in sandbox.transports:
            transport.close()
        if sandbox.server is not None:
            sandbox.server.close()
        for task in list(sandbox.tcp_tasks):
            task.cancel()
        if sandbox.tcp_tasks:
            await asyncio.gather(*sandbox.tcp_tasks, return_exceptions=True)
        if sandbox.server is not None:
            with contextlib.suppress(Exception):
                await sandbox.server.wait_closed()

    async def close(self) -> None:
        """Stop serving every sandbox."""
        for key in list(self._sandboxes):
            await self.detach(key)

    # --- answering --------------------------------------------------------------------------------------

    def answer_local(self, sandbox: _Sandbox, request: DNSRecord) -> DNSRecord | None:
        """The reply from the table, or ``None`` when the query must be forwarded."""
        if request.header.opcode != 0 or len(request.questions) != 1:
            reply = request.reply()
            reply.header.rcode = RCODE.NOTIMP if request.header.opcode != 0 else RCODE.FORMERR
            return reply
        question: DNSQuestion = request.questions[0]
        qname = str(question.qname)
        qtype = question.qtype
        if qtype == QTYPE.PTR:
            address = _ptr_address(qname)
            name = self.table.reverse(sandbox.networks, address) if address else None
            if name is None:
                return None
            reply = request.reply()
            reply.add_answer(RR(question.qname, QTYPE.PTR, rdata=PTR(name + "."), ttl=TTL))
            return reply
        found = self.table.lookup(sandbox.networks, qname)
        if found is None:
            return None
        reply = request.reply()
        addresses = list(found)
        random.shuffle(addresses)
        for address in addresses:
            is_v6 = ":" in address
            if qtype in (QTYPE.A, QTYPE.ANY) and not is_v6:
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(address), ttl=TTL))
            elif qtype in (QTYPE.AAAA, QTYPE.ANY) and is_v6:
                reply.add_answer(RR(question.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=TTL))
        # A known name without records of the asked type is NODATA (NOERROR, no answer), not NXDOMAIN.
        return reply

    async def resolve(self, sandbox: _Sandbox, data: bytes, *, tcp: bool) -> bytes | None:
        """The wire reply to the wire query ``data`` (``None``: drop it)."""
        try:
            request = DNSRecord.parse(data)
        except (DNSError, ValueError, IndexError, struct.error, UnicodeError):
            return _formerr(data)
        if request.header.qr:
            return None
        reply = self.answer_local(sandbox, request)
        if reply is not None:
            return self.fit(reply, request, tcp)
        return await self.forward(sandbox, request, data, tcp=tcp)

    def fit(self, reply: DNSRecord, request: DNSRecord, tcp: bool) -> bytes:
        """The reply on the wire; over UDP, a header with TC set when it exceeds the client's size."""
        wire = _wire(reply)
        if not tcp and len(wire) > _max_udp_size(request):
            short = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1), q=request.q)
            return _wire(short)
        return wire

    async def forward(self, sandbox: _Sandbox, request: DNSRecord, data: bytes, *, tcp: bool) -> bytes:
        """Ask the sandbox's upstream servers in turn; SERVFAIL when none answers in time."""
        for upstream in sandbox.upstreams:
            try:
                if tcp:
                    wire = await asyncio.wait_for(_ask_tcp(upstream, data), self.timeout)
                else:
                    wire = await asyncio.wait_for(_ask_udp(upstream, data), self.timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                log.debug("upstream %s:%s failed: %r", upstream.host, upstream.port, exc)
                continue
            if len(wire) >= 2 and wire[:2] == data[:2]:
                return wire
        return _servfail(request)

    async def _tcp_client(
        self, sandbox: _Sandbox, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            sandbox.tcp_tasks.add(task)
        try:
            while True:
                try:
                    size_bytes = await asyncio.wait_for(reader.readexactly(2), MAX_TCP_IDLE)
                    (size,) = struct.unpack("!H", size_bytes)
                    data = await asyncio.wait_for(reader.readexactly(size), MAX_TCP_IDLE)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                wire = await self.resolve(sandbox, data, tcp=True)
                if wire is None:
                    return
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except Exception:
            log.exception("embedded DNS: TCP client failed")
        finally:
            if task is not None:
                sandbox.tcp_tasks.discard(task)
            writer.close()


class _UDPServer(asyncio.DatagramProtocol):
    """Answers from the table at once; forwarded queries run as tasks so one slow upstream blocks nothing."""

    def __init__(self, server: EmbeddedDNS, sandbox: _Sandbox) -> None:
        self.server = server
        self.sandbox = sandbox
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            request = DNSRecord.parse(data)
        except Exception:
            wire = _formerr(data)
            if wire is not None and self.transport is not None:
                self.transport.sendto(wire, addr)
            return
        if request.header.qr:
            return
        try:
            reply = self.server.answer_local(self.sandbox, request)
        except Exception:
            log.exception("embedded DNS: cannot answer %s", request.q)
            if self.transport is not None:
                self.transport.sendto(_servfail(request), addr)
            return
        if reply is not None:
            if self.transport is not None:
                self.transport.sendto(self.server.fit(reply, request, False), addr)
            return
        task = asyncio.get_running_loop().create_task(self._forward(request, data, addr))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _forward(self, request: DNSRecord, data: bytes, addr: tuple[str, int]) -> None:
        wire = await self.server.forward(self.sandbox, request, data, tcp=False)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(wire, addr)

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.pending:
            task.cancel()


class _OneShot(asyncio.DatagramProtocol):
    def __init__(self, expect_id: bytes) -> None:
        self.expect_id = expect_id
        self.future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data[:2] == self.expect_id and not self.future.done():
            self.future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


async def _ask_udp(upstream: Upstream, data: bytes) -> bytes:
    """One UDP exchange with ``upstream`` from a fresh socket (a fresh source port per query)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in upstream.host else socket.AF_INET
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _OneShot(data[:2]), remote_addr=(upstream.host, upstream.port), family=family
    )
    try:
        transport.sendto(data)
        return await proto.future
    finally:
        transport.close()


async def _ask_tcp(upstream: Upstream, data: bytes) -> bytes:
    """One TCP exchange with ``upstream``."""
    reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
    try:
        writer.write(struct.pack("!H", len(data)) + data)
        await writer.drain()
        (size,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(size)
    finally:
        writer.close()


def upstreams_of(servers: Sequence[str]) -> tuple[Upstream, ...]:
    """Parse a list of ``host[:port]`` strings."""
    return tuple(Upstream.parse(s) for s in servers)
