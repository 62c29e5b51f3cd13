"""IPAM: subnets that never overlap, gateways, ranges, aux addresses, allocation."""

from __future__ import annotations

import ipaddress

import pytest

from agent.network import ipam
from agent.network.errors import AddressInUse, InvalidNetworkConfig, PoolExhausted, PoolOverlap
from agent.network.model import IPAMPool


def net(text: str) -> ipam.Network:
    return ipaddress.ip_network(text)


def test_resolve_pool_defaults_gateway_to_first_host_and_range_to_subnet() -> None:
    pool = ipam.resolve_pool(IPAMPool("10.10.0.0/24"))
    assert pool == IPAMPool("10.10.0.0/24", "10.10.0.1", "10.10.0.0/24", {})


def test_resolve_pool_keeps_explicit_gateway_range_and_aux() -> None:
    pool = ipam.resolve_pool(
        IPAMPool("10.10.0.0/16", "10.10.0.254", "10.10.5.0/24", {"router": "10.10.0.253"})
    )
    assert (pool.gateway, pool.ip_range, dict(pool.aux_addresses)) == (
        "10.10.0.254",
        "10.10.5.0/24",
        {"router": "10.10.0.253"},
    )


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (IPAMPool("10.10.0.0/24", gateway="10.11.0.1"), "gateway"),
        (IPAMPool("10.10.0.0/24", gateway="10.10.0.255"), "gateway"),
        (IPAMPool("10.10.0.0/24", ip_range="10.10.1.0/25"), "ip-range"),
        (IPAMPool("10.10.0.0/24", aux_addresses={"x": "10.9.0.1"}), "aux-address"),
        (IPAMPool("10.10.0.1/24"), "subnet"),
        (IPAMPool("not-a-subnet"), "subnet"),
    ],
)
def test_resolve_pool_rejects_inconsistent_requests(request_: IPAMPool, field: str) -> None:
    with pytest.raises(InvalidNetworkConfig) as info:
        ipam.resolve_pool(request_)
    assert info.value.field == field


def test_auto_subnet_starts_at_docker_default_and_skips_what_is_taken() -> None:
    assert ipam.auto_subnet([]) == net("172.17.0.0/16")
    taken = [net("172.17.0.0/16"), net("172.18.5.0/24")]
    assert ipam.auto_subnet(taken) == net("172.19.0.0/16")
    # IPv6 networks never block IPv4 choices.
    assert ipam.auto_subnet([net("fd00::/8")]) == net("172.17.0.0/16")


def test_auto_subnet_moves_to_192_168_after_172_pools() -> None:
    taken = [net("172.16.0.0/12")]
    assert ipam.auto_subnet(taken) == net("192.168.0.0/20")


def test_auto_subnet_exhaustion_is_an_error() -> None:
    pools = (ipam.PoolSpec("10.99.0.0/23", 24),)
    with pytest.raises(PoolExhausted):
        ipam.auto_subnet([net("10.99.0.0/24"), net("10.99.1.0/24")], pools)


def test_check_overlap_names_the_other_network() -> None:
    with pytest.raises(PoolOverlap, match="network web"):
        ipam.check_overlap(net("10.1.0.0/16"), {"network web": [net("10.1.2.0/24")]})
    ipam.check_overlap(net("10.2.0.0/16"), {"network web": [net("10.1.2.0/24")]})


def test_allocate_skips_gateway_aux_and_used_addresses() -> None:
    pool = ipam.resolve_pool(IPAMPool("10.5.0.0/24", aux_addresses={"a": "10.5.0.2"}))
    assert ipam.allocate(pool, []) == "10.5.0.3/24"
    assert ipam.allocate(pool, ["10.5.0.3/24", "10.5.0.4"]) == "10.5.0.5/24"


def test_allocate_stays_within_ip_range() -> None:
    pool = ipam.resolve_pool(IPAMPool("10.5.0.0/16", ip_range="10.5.7.0/30"))
    first = ipam.allocate(pool, [])
    assert first == "10.5.7.0/16"  # inside a /16, the range's first address is a usable host
    assert ipam.allocate(pool, ["10.5.7.0", "10.5.7.1", "10.5.7.2"]) == "10.5.7.3/16"
    with pytest.raises(PoolExhausted):
        ipam.allocate(pool, ["10.5.7.0", "10.5.7.1", "10.5.7.2", "10.5.7.3"])


def test_allocate_requested_address() -> None:
    pool = ipam.resolve_pool(IPAMPool("10.5.0.0/24"))
    assert ipam.allocate(pool, [], "10.5.0.77") == "10.5.0.77/24"
    with pytest.raises(AddressInUse, match="already in use"):
        ipam.allocate(pool, ["10.5.0.77/24"], "10.5.0.77")
    with pytest.raises(AddressInUse, match="already in use"):
        ipam.allocate(pool, [], "10.5.0.1")  # the gateway
    with pytest.raises(AddressInUse, match="usable"):
        ipam.allocate(pool, [], "10.5.0.255")
    with pytest.raises(AddressInUse, match="usable"):
        ipam.allocate(pool, [], "10.6.0.3")


def test_allocate_ipv6() -> None:
    pool = ipam.resolve_pool(IPAMPool("fd00:5::/64"))
    assert pool.gateway == "fd00:5::1"
    assert ipam.allocate(pool, []) == "fd00:5::2/64"
    assert ipam.pool_for([IPAMPool("10.0.0.0/8"), pool], 6) == pool
    assert ipam.pool_for([pool], 4) is None
