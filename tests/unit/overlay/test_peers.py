"""The peer table: what a host programs and answers for an overlay network, from the managers' frames."""

from __future__ import annotations

from api.objects import EndpointMode
from api.peers import NetworkPeers, PeerEndpoint, Peers, PeerService
from overlay.lb import render
from overlay.peers import SERVICE_KEY, TASKS_KEY, PeerEntry, PeerTable, host_of, mac_for

NET = "net1"
HOST_A, HOST_B, HOST_C = "10.200.0.1", "10.200.0.2", "10.200.0.3"


def ep(task: str, ip: str, host: str, *, service: str = "svc-web", serving: bool = True) -> PeerEndpoint:
    return PeerEndpoint(
        task_id=task,
        service_id=service,
        node_id=f"node-{host}",
        node_addr=host,
        addresses=(f"{ip}/24",),
        name=f"web.{task}.{task}",
        serving=serving,
    )


WEB = PeerService("svc-web", "web", EndpointMode.VIP, "10.0.9.2/24", ("www",))
DB = PeerService("svc-db", "db", EndpointMode.DNSRR)


def table(*endpoints: PeerEndpoint, services: tuple[PeerService, ...] = (WEB,)) -> PeerTable:
    t = PeerTable()
    t.apply(Peers(full=True, networks=(NetworkPeers(NET, endpoints, services),)))
    return t


def test_mac_is_derived_from_the_ipv4_address_as_libnetwork_does() -> None:
    assert mac_for("10.0.9.3") == "02:42:0a:00:09:03"
    assert mac_for("10.0.9.3/24") == "02:42:0a:00:09:03"
    assert mac_for("192.168.255.1") == "02:42:c0:a8:ff:01"


def test_node_addresses_lose_their_port() -> None:
    assert host_of("10.0.0.1:2377") == "10.0.0.1"
    assert host_of("10.0.0.1") == "10.0.0.1"
    assert host_of("[fd00::1]:2377") == "fd00::1"


def test_only_remote_endpoints_get_entries() -> None:
    t = table(ep("t1", "10.0.9.3", HOST_A), ep("t2", "10.0.9.4", HOST_B), ep("t3", "10.0.9.5", HOST_C))
    assert t.entries(NET, [HOST_A]) == {
        PeerEntry("10.0.9.4", "02:42:0a:00:09:04", HOST_B),
        PeerEntry("10.0.9.5", "02:42:0a:00:09:05", HOST_C),
    }
    # A container attached here is local whatever the managers think of its node's address.
    assert {e.ip for e in t.entries(NET, [HOST_A], ["10.0.9.4/24"])} == {"10.0.9.5"}
    # Starting tasks (not serving yet) already get entries: their containers may be up before RUNNING.
    t = table(ep("t2", "10.0.9.4", HOST_B, serving=False))
    assert {e.ip for e in t.entries(NET, [HOST_A])} == {"10.0.9.4"}


def test_an_address_listed_twice_programs_one_entry_on_every_host_alike() -> None:
    t = table(ep("t1", "10.0.9.4", HOST_B), ep("t2", "10.0.9.4", HOST_C))
    assert t.entries(NET, [HOST_A]) == {PeerEntry("10.0.9.4", "02:42:0a:00:09:04", HOST_B)}


def test_full_frames_replace_everything_and_incremental_ones_only_what_they_name() -> None:
    t = PeerTable()
    assert not t.known(NET)
    changed = t.apply(
        Peers(
            full=True,
            networks=(NetworkPeers(NET, (ep("t1", "10.0.9.3", HOST_B),)), NetworkPeers("net2", ())),
        )
    )
    assert changed == {NET, "net2"} and t.known(NET) and t.known("other")
    assert t.apply(Peers(networks=(NetworkPeers(NET, (ep("t1", "10.0.9.3", HOST_B),)),))) == set()
    assert t.apply(Peers(removed=("net2",))) == {"net2"}
    assert t.apply(Peers(full=True, networks=())) == {NET}
    assert t.entries(NET, [HOST_A]) == set()


def test_vip_mode_answers_the_virtual_ip_and_tasks_answers_every_serving_task() -> None:
    t = table(
        ep("t1", "10.0.9.3", HOST_A),
        ep("t2", "10.0.9.4", HOST_B),
        ep("t3", "10.0.9.5", HOST_C, serving=False),
    )
    records = t.dns_records(NET)
    assert records[SERVICE_KEY + "svc-web"] == (("web", "www"), ("10.0.9.2",))
    assert records[TASKS_KEY + "svc-web"] == (("tasks.web", "tasks.www"), ("10.0.9.3", "10.0.9.4"))
    task_names = sorted(names for key, (names, _) in records.items() if key.startswith("overlay-task:"))
    assert task_names == [("web.t1.t1",), ("web.t2.t2",)], "a task that does not serve has no name yet"
    assert t.virtual_ips(NET) == {"10.0.9.2": ("10.0.9.3", "10.0.9.4")}


def test_dnsrr_mode_answers_the_tasks_and_has_no_virtual_ip() -> None:
    t = table(
        ep("d1", "10.0.9.7", HOST_A, service="svc-db"),
        ep("d2", "10.0.9.8", HOST_B, service="svc-db"),
        services=(DB,),
    )
    records = t.dns_records(NET)
    assert records[SERVICE_KEY + "svc-db"] == (("db",), ("10.0.9.7", "10.0.9.8"))
    assert records[TASKS_KEY + "svc-db"] == (("tasks.db",), ("10.0.9.7", "10.0.9.8"))
    assert t.virtual_ips(NET) == {}


def test_a_virtual_ip_without_serving_tasks_is_kept_and_refuses_connections() -> None:
    t = table(ep("t1", "10.0.9.3", HOST_B, serving=False))
    assert t.virtual_ips(NET) == {"10.0.9.2": ()}
    script = render(t.virtual_ips(NET))
    assert "ip daddr 10.0.9.2 meta l4proto tcp reject with tcp reset" in script
    assert "dnat to" not in script


def test_virtual_ip_rules_balance_over_every_backend_in_turn() -> None:
    script = render({"10.0.9.2": ("10.0.9.3", "10.0.9.4", "10.0.9.10")})
    assert (
        "ip daddr 10.0.9.2 dnat to numgen inc mod 3 map { 0 : 10.0.9.3, 1 : 10.0.9.4, 2 : 10.0.9.10 }"
        in script
    )
    # Replaced atomically: the script recreates the whole table.
    assert script.startswith("table ip shoal_lb\ndelete table ip shoal_lb\n")
