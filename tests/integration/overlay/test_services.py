"""Services on overlays: virtual IPs balanced over tasks on every host, DNS round robin, scaling, restarts."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from api.objects import EndpointMode
from overlay import vxlan
from overlay.peers import mac_for
from tests.integration.overlay.conftest import OverlayLab, programmed, requires_overlay, run

pytestmark = [pytest.mark.root, requires_overlay]

VNI = 4200
VIP = "10.0.9.2"


async def answers(lab: OverlayLab, container: object, url: str, count: int) -> list[str]:
    out = []
    for _ in range(count):
        out.append((await lab.wget(container, url)).strip())  # type: ignore[arg-type]
    return out


async def test_a_virtual_ip_spreads_connections_over_tasks_on_three_hosts_and_follows_scaling(
    lab: OverlayLab,
) -> None:
    net = await lab.network("my-net", "10.0.9.0", VNI)
    lab.service(net, "whoami", vip=VIP)
    replicas = []
    for i, host in enumerate(lab.hosts):
        replicas.append(await lab.container(host, net, f"10.0.9.{10 + i}", service="whoami"))
    clients = [await lab.container(host, net, f"10.0.9.{20 + i}") for i, host in enumerate(lab.hosts)]
    await lab.publish()
    for replica in replicas:
        await lab.httpd(replica.netns, f"{replica.host.name}\n")

    # From every host, the service's name is its VIP and every replica takes connections.
    for client in clients:
        assert await lab.nslookup(client, "whoami") == [VIP]
        assert sorted(set(await answers(lab, client, "http://whoami/", 6))) == ["h1", "h2", "h3"]
    assert await lab.nslookup(clients[0], "tasks.whoami") == ["10.0.9.10", "10.0.9.11", "10.0.9.12"]

    # Scale down: h3's replica goes. Nothing of it stays anywhere; the VIP only answers with the others.
    gone = replicas.pop()
    await lab.remove(gone)
    await lab.publish()
    for host in lab.hosts[:2]:
        entries = await programmed(host, net, VNI)
        assert "10.0.9.12" not in entries.neighbours, host.name
        assert mac_for("10.0.9.12") not in entries.forwarding, host.name
    assert sorted(set(await answers(lab, clients[0], "http://whoami/", 6))) == ["h1", "h2"]
    assert await lab.nslookup(clients[1], "tasks.whoami") == ["10.0.9.10", "10.0.9.11"]

    # Scale up again on h3.
    again = await lab.container(lab.hosts[2], net, "10.0.9.13", service="whoami")
    await lab.publish()
    await lab.httpd(again.netns, "h3-again\n")
    assert sorted(set(await answers(lab, clients[0], "http://whoami/", 6))) == ["h1", "h2", "h3-again"]


async def test_a_task_that_stops_serving_leaves_the_vip_and_dns_before_its_container_goes(
    lab: OverlayLab,
) -> None:
    h1, h2, _ = lab.hosts
    net = await lab.network("my-net", "10.0.9.0", VNI)
    lab.service(net, "web", vip=VIP)
    a = await lab.container(h1, net, "10.0.9.10", service="web")
    b = await lab.container(h2, net, "10.0.9.11", service="web")
    client = await lab.container(h1, net, "10.0.9.20")
    await lab.publish()
    await lab.httpd(a.netns, "a\n")
    await lab.httpd(b.netns, "b\n")
    lab.endpoints[net][b.id] = replace(lab.endpoints[net][b.id], serving=False)
    await lab.publish()
    assert set(await answers(lab, client, "http://web/", 4)) == {"a"}
    assert await lab.nslookup(client, "tasks.web") == ["10.0.9.10"]
    # Still reachable directly (its connections can finish), and still programmed.
    assert await lab.wget(client, "http://10.0.9.11/") == "b\n"

    # No serving task at all: the VIP refuses at once rather than hanging.
    lab.endpoints[net][a.id] = replace(lab.endpoints[net][a.id], serving=False)
    await lab.publish()
    status, out = await lab.in_container(client, "busybox wget -q -O- http://web/", timeout=5)
    assert status != 0 and "refused" in out.lower(), out


async def test_dnsrr_services_resolve_to_their_tasks(lab: OverlayLab) -> None:
    h1, h2, h3 = lab.hosts
    net = await lab.network("my-net", "10.0.9.0", VNI)
    lab.service(net, "db", mode=EndpointMode.DNSRR)
    await lab.container(h1, net, "10.0.9.10", service="db")
    await lab.container(h2, net, "10.0.9.11", service="db")
    client = await lab.container(h3, net, "10.0.9.20")
    await lab.publish()
    assert await lab.nslookup(client, "db") == ["10.0.9.10", "10.0.9.11"]
    assert await lab.nslookup(client, "tasks.db") == ["10.0.9.10", "10.0.9.11"]
    status, out = await run(client.netns, "nft", "list", "table", "ip", "shoal_lb")
    assert status != 0 or "dnat" not in out, "a dnsrr service has no virtual IP rules"


async def test_a_restarted_agent_keeps_traffic_flowing_and_reconciles_from_the_next_full_frame(
    lab: OverlayLab,
) -> None:
    h1, h2, h3 = lab.hosts
    net = await lab.network("my-net", "10.0.9.0", VNI)
    lab.service(net, "web", vip=VIP)
    web = await lab.container(h2, net, "10.0.9.10", service="web")
    old = await lab.container(h3, net, "10.0.9.11", service="web")
    client = await lab.container(h1, net, "10.0.9.20")
    await lab.publish()
    await lab.httpd(web.netns, "web\n")
    await lab.httpd(old.netns, "old\n")

    # h1's agent stops; meanwhile h3's task ends and somebody adds a bogus entry by hand.
    await lab.stop_host(h1)
    await lab.remove(old)
    path = h1.overlay.local(net)
    assert path is not None
    status, out = await run(
        path, "bridge", "fdb", "add", "02:42:0a:00:09:63", "dev", vxlan.vxlan_name(VNI), "dst", "10.200.0.99"
    )
    assert status == 0, out

    restarted = await lab.start_host("h1", h1.netns, h1.addr)
    lab.hosts[0] = restarted
    # Before the managers speak, nothing is torn down: the client still reaches the web task.
    assert await lab.wget(client, "http://10.0.9.10/") == "web\n"
    before = await programmed(restarted, net, VNI)
    assert "10.0.9.10" in before.neighbours

    await lab.publish([restarted])
    after = await programmed(restarted, net, VNI)
    assert after.neighbours == {"10.0.9.10": mac_for("10.0.9.10")}
    assert after.forwarding == {mac_for("10.0.9.10"): h2.addr}
    assert await lab.nslookup(client, "web") == [VIP]
    assert set(await answers(lab, client, "http://web/", 3)) == {"web"}


async def test_peer_changes_are_applied_in_the_background_while_containers_come_and_go(
    lab: OverlayLab,
) -> None:
    h1, h2, _ = lab.hosts
    net = await lab.network("my-net", "10.0.9.0", VNI)
    await lab.container(h1, net, "10.0.9.10")
    await lab.publish()
    # Frames keep arriving while containers join on the same host: nothing deadlocks, all lands.
    frames = []
    for i in range(5):
        await lab.container(h2, net, f"10.0.9.{30 + i}")
        frames.append(lab.frame())
        h1.overlay.apply_peers(frames[-1])
    await asyncio.wait_for(h1.overlay.settled(), 10)
    entries = await programmed(h1, net, VNI)
    assert sorted(entries.neighbours) == [f"10.0.9.{30 + i}" for i in range(5)]
