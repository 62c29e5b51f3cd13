"""``-p`` / ``-P`` parsing and host port reservations (bound on loopback in this namespace)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from agent.network.errors import InvalidNetworkConfig, NoFreePort, PortAlreadyAllocated
from agent.network.model import PortBinding
from agent.network.ports import (
    PortRequest,
    PortReservations,
    parse_exposed,
    parse_publish,
    publish_all_requests,
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("80", [PortRequest(80)]),
        ("8080:80", [PortRequest(80, "tcp", "", 8080, 8080)]),
        ("8080:80/udp", [PortRequest(80, "udp", "", 8080, 8080)]),
        ("127.0.0.1:8080:80", [PortRequest(80, "tcp", "127.0.0.1", 8080, 8080)]),
        ("127.0.0.1::80", [PortRequest(80, "tcp", "127.0.0.1")]),
        ("0.0.0.0:8080:80", [PortRequest(80, "tcp", "", 8080, 8080)]),
        ("[::1]:8080:80", [PortRequest(80, "tcp", "::1", 8080, 8080)]),
        ("8000-8010:80", [PortRequest(80, "tcp", "", 8000, 8010)]),
        (
            "7000-7001:80-81/tcp",
            [PortRequest(80, "tcp", "", 7000, 7000), PortRequest(81, "tcp", "", 7001, 7001)],
        ),
        ("53-54/udp", [PortRequest(53, "udp"), PortRequest(54, "udp")]),
    ],
)
def test_parse_publish(spec: str, expected: list[PortRequest]) -> None:
    assert parse_publish(spec) == expected


@pytest.mark.parametrize(
    "spec", ["", "abc", "8080:80/icmp", "70000:80", "8080:0", "1.2.3:80:80", "7000-7002:80-81", "90-80"]
)
def test_parse_publish_rejects(spec: str) -> None:
    with pytest.raises(InvalidNetworkConfig):
        parse_publish(spec)


def test_exposed_and_publish_all() -> None:
    assert parse_exposed(["80/tcp", "53/udp", "8000-8001", "9/sctp"]) == [
        (53, "udp"),
        (80, "tcp"),
        (8000, "tcp"),
        (8001, "tcp"),
    ]
    already = parse_publish("8080:80")
    assert publish_all_requests(["80/tcp", "443/tcp"], already) == [PortRequest(443)]


@pytest.fixture
def reservations() -> Iterator[PortReservations]:
    held = PortReservations()
    try:
        yield held
    finally:
        held.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_hold_refuses_a_port_held_twice_or_in_use(reservations: PortReservations) -> None:
    port = _free_port()
    binding = PortBinding(80, "tcp", "127.0.0.1", port)
    reservations.hold(binding)
    with pytest.raises(PortAlreadyAllocated, match="published"):
        reservations.hold(PortBinding(81, "tcp", "", port))
    # The held port really is bound: nobody else can take it.
    with socket.socket() as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", port))
    reservations.release([binding])
    reservations.hold(PortBinding(81, "tcp", "127.0.0.1", port))

    busy_port = _free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", busy_port))
        busy.listen()
        with pytest.raises(PortAlreadyAllocated, match="in use on the host"):
            reservations.hold(PortBinding(80, "tcp", "127.0.0.1", busy_port))


def test_same_port_number_tcp_and_udp_are_independent(reservations: PortReservations) -> None:
    port = _free_port()
    reservations.hold(PortBinding(53, "tcp", "127.0.0.1", port))
    reservations.hold(PortBinding(53, "udp", "127.0.0.1", port))
    assert len(reservations.held()) == 2


def test_range_request_takes_the_first_free_port(reservations: PortReservations) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        first = busy.getsockname()[1]
        binding = reservations.hold_request(PortRequest(80, "tcp", "127.0.0.1", first, first + 5))
        assert first < binding.host_port <= first + 5
        # A one-port "range" is an exact port: in use is in use.
        with pytest.raises(PortAlreadyAllocated):
            reservations.hold_request(PortRequest(81, "tcp", "127.0.0.1", first, first))
        if binding.host_port == first + 1:
            with pytest.raises(NoFreePort):
                reservations.hold_request(PortRequest(81, "tcp", "127.0.0.1", first, first + 1))


def test_any_port_requests_use_the_ephemeral_range(reservations: PortReservations) -> None:
    lo, hi = reservations.ephemeral_range()
    a = reservations.hold_request(PortRequest(80, "tcp", "127.0.0.1"))
    b = reservations.hold_request(PortRequest(443, "tcp", "127.0.0.1"))
    assert lo <= a.host_port <= hi and lo <= b.host_port <= hi
    assert a.host_port != b.host_port


def test_hold_all_is_all_or_nothing(reservations: PortReservations) -> None:
    port = _free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        requests = [PortRequest(80, "tcp", "127.0.0.1"), PortRequest(81, "tcp", "127.0.0.1", port, port)]
        with pytest.raises(PortAlreadyAllocated):
            reservations.hold_all(requests)
    assert reservations.held() == []
