"""Overlay networks across hosts: reachability by address and name, the devices, the gateway, isolation."""

from __future__ import annotations

import os

import pytest

from agent.network import nsutil
from agent.network.model import IPAMPool, NetworkConfig, NetworkRecord
from overlay import vxlan
from overlay.driver import OverlayConfig, OverlayDriver
from overlay.errors import AdvertiseAddressError, InvalidOverlayConfig
from overlay.peers import mac_for
from tests.integration.overlay.conftest import (
    OUTSIDE_ADDR,
    OverlayLab,
    can_connect,
    programmed,
    requires_overlay,
    run,
)

pytestmark = [pytest.mark.root, requires_overlay]

VNI = 4097


async def test_a_container_reaches_one_on_another_host_by_address_and_by_name(lab: OverlayLab) -> None:
    h1, h2, _ = lab.hosts
    net = await lab.network("my-net", "10.0.9.0", VNI)
    lab.service(net, "web", vip="10.0.9.2")
    web = await lab.container(h1, net, "10.0.9.3", service="web")
    client = await lab.container(h2, net, "10.0.9.4", service="client")
    await lab.publish()
    await lab.httpd(web.netns, "hello from web\n")

    assert await lab.wget(client, "http://10.0.9.3/") == "hello from web\n"
    # The service name is its virtual IP, balanced to the task; the task's own name is its address.
    assert await lab.nslookup(client, "web") == ["10.0.9.2"]
    assert await lab.wget(client, "http://web/") == "hello from web\n"
    assert await lab.nslookup(client, web.name) == ["10.0.9.3"]
    status, out = await lab.in_container(client, f"busybox ping -c 1 -W 2 {web.name}")
    assert status == 0, out
    status, out = await lab.in_container(client, "busybox ping -c 1 -W 2 web")
    assert status == 0, out

    # Statically programmed, as libnetwork does: on h2, h1's task is a neighbour behind h1's address.
    entries = await programmed(h2, net, VNI)
    assert entries.neighbours == {"10.0.9.3": mac_for("10.0.9.3")}
    assert entries.forwarding == {mac_for("10.0.9.3"): h1.addr}


async def test_devices_are_built_as_the_network_asks(lab: OverlayLab) -> None:
    h1, _, _ = lab.hosts
    net = await lab.network("my-net", "10.0.9.0", VNI)
    a = await lab.container(h1, net, "10.0.9.3")
    path = h1.overlay.local(net)
    assert path is not None
    status, out = await run(path, "ip", "-d", "link", "show", vxlan.vxlan_name(VNI))
    assert status == 0, out
    assert f"vxlan id {VNI}" in out and f"local {h1.addr}" in out and "dstport 4789" in out
    assert "nolearning" in out and "proxy" in out and "mtu 1450" in out
    if os.path.exists("/proc/sys/net/bridge"):
        # Nothing filters in the network's namespace: br_netfilter is off there, and only there.
        assert nsutil.read_sysctl(path, "net.bridge.bridge-nf-call-iptables") == "0"
        assert nsutil.read_sysctl(h1.netns, "net.bridge.bridge-nf-call-iptables") == "1"
    # The container's interface: the overlay MTU (underlay 1500 - 50) and the MAC derived from its address.
    status, out = await run(a.netns, "ip", "-o", "link", "show", "eth0")
    assert "mtu 1450" in out and mac_for("10.0.9.3") in out, out

    other = await lab.network("jumbo-less", "10.0.10.0", VNI + 1, options={"mtu": "1400"})
    b = await lab.container(h1, other, "10.0.10.3")
    status, out = await run(b.netns, "ip", "-o", "link", "show", "eth0")
    assert "mtu 1400" in out, out


async def test_the_last_endpoint_on_a_host_takes_the_network_namespace_with_it(lab: OverlayLab) -> None:
    h1, h2, _ = lab.hosts
    net = await lab.network("my-net", "10.0.9.0", VNI)
    a = await lab.container(h1, net, "10.0.9.3")
    b = await lab.container(h1, net, "10.0.9.4")
    c = await lab.container(h2, net, "10.0.9.5")
    await lab.publish()
    ns1 = h1.overlay.namespace(net)
    assert ns1 in lab.namespaces()
    assert h2.overlay.namespace(net) in lab.namespaces()
    assert h1.overlay.namespace(net) != h2.overlay.namespace(net)

    await lab.remove(a)
    assert ns1 in lab.namespaces(), "another container still uses the network on h1"
    await lab.remove(b)
    assert ns1 not in lab.namespaces()
    assert h1.overlay.local(net) is None
    await lab.publish()
    assert (await programmed(h2, net, VNI)).neighbours == {}, "h1's tasks left entries on h2"
    # The host can take the network again later.
    d = await lab.container(h1, net, "10.0.9.6")
    await lab.publish()
    await lab.httpd(c.netns, "c\n")
    assert await lab.wget(d, "http://10.0.9.5/") == "c\n"


async def test_a_removed_task_leaves_nothing_the_bridge_learned_behind_the_tunnel(lab: OverlayLab) -> None:
    h1, h2, _ = lab.hosts
    net = await lab.network("my-net", "10.0.9.0", VNI)
    a = await lab.container(h1, net, "10.0.9.3")
    b = await lab.container(h2, net, "10.0.9.4")
    await lab.publish()
    await lab.httpd(a.netns, "a\n")
    assert await lab.wget(b, "http://10.0.9.3/") == "a\n"
    # From that traffic, h1's bridge learned b's MAC behind the VXLAN device (for 300 s, left alone).
    assert mac_for("10.0.9.4") in (await programmed(h1, net, VNI)).learned

    await lab.remove(b)
    await lab.publish()
    path = h1.overlay.local(net)
    assert path is not None
    status, out = await run(path, "bridge", "fdb", "show")
    assert status == 0, out
    assert mac_for("10.0.9.4") not in out, f"b's MAC is still known on h1:\n{out}"


async def test_outbound_traffic_leaves_through_the_gateway_bridge_but_not_from_internal_overlays(
    lab: OverlayLab,
) -> None:
    h1, _, _ = lab.hosts
    await lab.httpd(lab.underlay, "outside\n")
    net = await lab.network("my-net", "10.0.9.0", VNI)
    private = await lab.network("private", "10.0.10.0", VNI + 1, internal=True)
    open_ = await lab.container(h1, net, "10.0.9.3")
    closed = await lab.container(h1, private, "10.0.10.3")
    await lab.publish()

    assert await lab.wget(open_, f"http://{OUTSIDE_ADDR}/") == "outside\n"
    gateway = h1.overlay.gateway.endpoint_of(open_.id)
    assert gateway is not None and gateway.ifname == "eth1"
    _, out = await run(open_.netns, "ip", "route", "show", "default")
    assert f"dev {gateway.ifname}" in out, out

    assert h1.overlay.gateway.endpoint_of(closed.id) is None
    _, out = await run(closed.netns, "ip", "route", "show", "default")
    assert out.strip() == "", f"an internal overlay has no default route: {out}"
    assert not await can_connect(closed.netns, OUTSIDE_ADDR, 80, 1.0)

    # Containers do not meet on the gateway bridge (inter-container traffic is off there).
    other = await lab.container(h1, net, "10.0.9.4")
    await lab.httpd(other.netns, "other\n")
    other_gateway = h1.overlay.gateway.endpoint_of(other.id)
    assert other_gateway is not None
    assert not await can_connect(open_.netns, other_gateway.ipv4, 80, 1.0)
    assert await lab.wget(open_, "http://10.0.9.4/") == "other\n"


async def test_two_overlays_are_isolated_from_each_other(lab: OverlayLab) -> None:
    h1, h2, _ = lab.hosts
    blue = await lab.network("blue", "10.0.9.0", VNI)
    red = await lab.network("red", "10.0.10.0", VNI + 1)
    b1 = await lab.container(h1, blue, "10.0.9.3")
    b2 = await lab.container(h2, blue, "10.0.9.4")
    r1 = await lab.container(h1, red, "10.0.10.3")
    r2 = await lab.container(h2, red, "10.0.10.4")
    await lab.publish()
    for c in (b1, b2, r1, r2):
        await lab.httpd(c.netns, f"{c.name}\n")
    assert await lab.wget(b1, "http://10.0.9.4/") == f"{b2.name}\n"
    assert await lab.wget(r2, "http://10.0.10.3/") == f"{r1.name}\n"
    for source, target in ((b1, "10.0.10.4"), (b1, "10.0.10.3"), (r2, "10.0.9.3"), (r2, "10.0.9.4")):
        assert not await can_connect(source.netns, target, 80, 1.0), (
            f"{source.name} reached {target} on another overlay"
        )
    # Names are scoped to the network too.
    assert await lab.nslookup(b1, r2.name) == []
    assert not nsutil.same_netns(h1.overlay.local(blue), h1.overlay.local(red))


async def test_an_overlay_the_host_cannot_build_is_refused_with_the_reason(lab: OverlayLab) -> None:
    h1 = lab.hosts[0]
    pools = (IPAMPool("10.0.9.0/24", "10.0.9.1"),)
    with pytest.raises(InvalidOverlayConfig) as refused:
        await h1.ctl.create_network(NetworkConfig(name="no-vni", driver="overlay", ipam=pools))
    assert refused.value.field == "vni"
    assert "no-vni" not in [n.name for n in h1.ctl.list_networks()]

    # A host told a cluster address it does not have cannot be a tunnel endpoint.
    misconfigured = OverlayDriver(h1.ctl, OverlayConfig("10.200.0.77", netns_prefix=f"{lab.prefix}bad-"))
    record = NetworkRecord(
        id="x" * 64, name="n", driver="overlay", created="", ipam=pools, options={"vni": "4300"}
    )
    with pytest.raises(AdvertiseAddressError):
        await misconfigured.create(record)
