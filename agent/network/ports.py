"""Published ports: parsing ``-p`` and ``-P``, and holding the host ports a container publishes.

Traffic to a published port is redirected by nftables before it reaches any socket, so nothing would stop
another program from binding the same port and never seeing its traffic. :class:`PortReservations` therefore
binds every published host port (TCP sockets are bound, not listening) for as long as the mapping exists,
as Docker does: a port in use by a process is refused with a clear error, and a port Shoal holds cannot
be taken by anyone else.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from agent.network.errors import InvalidNetworkConfig, NoFreePort, PortAlreadyAllocated
from agent.network.model import PortBinding
from agent.network.nsutil import bound_socket, read_sysctl, run_in_netns

PROTOCOLS = ("tcp", "udp")
#: Docker's fallback when the kernel's ephemeral range cannot be read.
DEFAULT_EPHEMERAL = (49153, 65535)

_SPEC_RE = re.compile(
    r"""^(?:(?P<ip>\[[0-9a-fA-F:.]+\]|\d+\.\d+\.\d+\.\d+):)?  # optional host IP (IPv6 in brackets)
         (?:(?P<host>\d*(?:-\d+)?):)?                   # optional host port or range (may be empty)
         (?P<container>\d+(?:-\d+)?)                    # container port or range
         (?:/(?P<proto>[a-zA-Z]+))?$""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class PortRequest:
    """One container port to publish: on ``host_first``..``host_last`` (both 0: any free port)."""

    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""
    host_first: int = 0
    host_last: int = 0


def _port_range(text: str, what: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    try:
        lo, hi = int(first), int(last or first)
    except ValueError:
        raise InvalidNetworkConfig("-p", f"invalid {what} port {text!r}") from None
    if not (1 <= lo <= hi <= 65535):
        raise InvalidNetworkConfig("-p", f"invalid {what} port range {text!r}")
    return lo, hi


def parse_publish(spec: str) -> list[PortRequest]:
    """Parse one ``-p [ip:][host[-host]:]container[-container][/proto]`` into port requests.

    A container range maps onto a host range of the same length port by port; a single container port
    with a host range takes the first free port of that range; no host port means any free port.
    """
    match = _SPEC_RE.match(spec.strip())
    if match is None:
        raise InvalidNetworkConfig("-p", f"invalid port specification {spec!r}")
    ip = (match["ip"] or "").strip("[]")
    if ip:
        try:
            ip = str(ipaddress.ip_address(ip))
        except ValueError:
            raise InvalidNetworkConfig("-p", f"invalid host IP {ip!r} in {spec!r}") from None
        if ip in ("0.0.0.0", "::"):
            ip = ""
    proto = (match["proto"] or "tcp").lower()
    if proto not in PROTOCOLS:
        raise InvalidNetworkConfig("-p", f"unsupported protocol {proto!r} in {spec!r}")
    c_lo, c_hi = _port_range(match["container"], "container")
    count = c_hi - c_lo + 1
    if not match["host"]:
        return [PortRequest(port, proto, ip) for port in range(c_lo, c_hi + 1)]
    h_lo, h_hi = _port_range(match["host"], "host")
    if count == 1:
        return [PortRequest(c_lo, proto, ip, h_lo, h_hi)]
    if h_hi - h_lo + 1 != count:
        raise InvalidNetworkConfig("-p", f"host and container port ranges differ in length in {spec!r}")
    return [PortRequest(c_lo + i, proto, ip, h_lo + i, h_lo + i) for i in range(count)]


def parse_exposed(exposed: Iterable[str]) -> list[tuple[int, str]]:
    """``80/tcp``, ``53/udp``, ``8000-8002`` (Dockerfile ``EXPOSE`` forms) as ``(port, protocol)``."""
    out: list[tuple[int, str]] = []
    for item in exposed:
        port_text, _, proto = item.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in PROTOCOLS:
            continue
        lo, hi = _port_range(port_text, "exposed")
        out.extend((port, proto) for port in range(lo, hi + 1))
    return sorted(set(out))


def publish_all_requests(exposed: Iterable[str], already: Iterable[PortRequest] = ()) -> list[PortRequest]:
    """``-P``: one request for any free host port per exposed port not already published with ``-p``."""
    done = {(r.container_port, r.protocol) for r in already}
    return [PortRequest(port, proto) for port, proto in parse_exposed(exposed) if (port, proto) not in done]


def _family(host_ip: str) -> int:
    return socket.AF_INET6 if ":" in host_ip else socket.AF_INET


def _sock_type(protocol: str) -> int:
    return socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM


class PortReservations:
    """The host ports held for published mappings, bound in the host's network namespace."""

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._held: dict[PortBinding, socket.socket] = {}
        self._ephemeral: tuple[int, int] | None = None
        self._next = 0

    def ephemeral_range(self) -> tuple[int, int]:
        """The host's ephemeral port range (``net.ipv4.ip_local_port_range``), where ``-P`` picks from."""
        if self._ephemeral is None:
            try:
                lo, hi = read_sysctl(self._netns, "net.ipv4.ip_local_port_range").split()
                self._ephemeral = (int(lo), int(hi))
            except (OSError, ValueError):
                self._ephemeral = DEFAULT_EPHEMERAL
        return self._ephemeral

    def _bind(self, binding: PortBinding) -> socket.socket:
        address = (binding.host_ip or ("0.0.0.0" if _family(binding.host_ip) == socket.AF_INET else "::"),)
        sock = run_in_netns(
            self._netns,
            bound_socket,
            _family(binding.host_ip),
            _sock_type(binding.protocol),
            (*address, binding.host_port),
        )
        return sock

    def hold(self, binding: PortBinding) -> None:
        """Bind ``binding``'s host port or raise :class:`PortAlreadyAllocated`."""
        for held in self._held:
            if (
                held.protocol == binding.protocol
                and held.host_port == binding.host_port
                and (not held.host_ip or not binding.host_ip or held.host_ip == binding.host_ip)
            ):
                raise PortAlreadyAllocated(binding.host_ip, binding.host_port, binding.protocol, "published")
        try:
            self._held[binding] = self._bind(binding)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortAlreadyAllocated(
                    binding.host_ip, binding.host_port, binding.protocol, "in use on the host"
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise InvalidNetworkConfig(
                    "-p", f"{binding.host_ip} is not an address of this host"
                ) from None
            raise

    def hold_request(self, request: PortRequest) -> PortBinding:
        """Resolve ``request`` to a host port and hold it; the chosen binding is returned."""
        if request.host_first and request.host_first == request.host_last:
            binding = PortBinding(
                request.container_port, request.protocol, request.host_ip, request.host_first
            )
            self.hold(binding)
            return binding
        if request.host_first:
            first, last, start = request.host_first, request.host_last, request.host_first
        else:
            first, last = self.ephemeral_range()
            # Rotate through the range, like the kernel, so a port just released is not handed out again.
            start = self._next if first <= self._next <= last else first
        size = last - first + 1
        for i in range(size):
            port = first + (start - first + i) % size
            binding = PortBinding(request.container_port, request.protocol, request.host_ip, port)
            try:
                self.hold(binding)
            except PortAlreadyAllocated:
                continue
            if not request.host_first:
                self._next = port + 1
            return binding
        raise NoFreePort(request.protocol, first, last)

    def hold_all(self, requests: Iterable[PortRequest]) -> list[PortBinding]:
        """Hold every request, or none of them: on the first failure the ones already held are released."""
        done: list[PortBinding] = []
        try:
            for request in requests:
                done.append(self.hold_request(request))
        except BaseException:
            self.release(done)
            raise
        return done

    def release(self, bindings: Iterable[PortBinding]) -> None:
        """Close the sockets holding ``bindings`` (unknown ones are ignored)."""
        for binding in bindings:
            sock = self._held.pop(binding, None)
            if sock is not None:
                sock.close()

    def held(self) -> list[PortBinding]:
        """Every binding currently held."""
        return list(self._held)

    def close(self) -> None:
        """Release everything (the agent is stopping; the mappings stay in nftables)."""
        self.release(list(self._held))
