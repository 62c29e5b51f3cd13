"""The Consul adapter's pure parts: URL options, key/lease mapping, decoding Consul's JSON, planning
transactions and turning two listings into watch events. The Consul replies used here are shaped like the
samples in Consul's HTTP API documentation (/v1/kv, /v1/txn)."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore_adapters.base import Compare, Delete, EventType, KeyValue, Put, StoreURL
from kvstore_adapters.consul_codec import (
    MAX_TXN_OPS,
    ConsulError,
    Observed,
    Reply,
    decode_entries,
    decode_entry,
    decode_txn_reply,
    diff_snapshots,
    format_wait,
    full_key,
    full_op,
    holds,
    lease_of,
    page,
    parse_config,
    parse_index,
    plan_txn,
    session_body,
    session_of,
    session_ttl,
    start_baseline,
    user_key,
)
from kvstore_adapters.errors import CompactedError, InvalidStoreURL, LeaseNotFound

SESSION = "adf4238a-882b-9ddc-4a9d-5b6758e4159e"
OTHER_SESSION = "0c2b7d1e-5f3a-4c6b-9e8d-7a6b5c4d3e2f"


def url(
    params: dict[str, str] | None = None,
    *,
    prefix: str = "shoal",
    endpoints: tuple[tuple[str, int], ...] = (("127.0.0.1", 8500),),
) -> StoreURL:
    return StoreURL("consul", endpoints, prefix, dict(params or {}), raw="consul://test")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kv_body(op: dict[str, object]) -> dict[str, object]:
    inner = op["KV"]
    assert isinstance(inner, dict)
    return inner


# --- URL options ------------------------------------------------------------------------------------------
def test_plain_url_gives_http_endpoints_in_order_and_a_root_with_slash() -> None:
    cfg = parse_config(url(endpoints=(("10.0.0.1", 8500), ("10.0.0.2", 0))), env={})
    assert cfg.base_urls == ("http://10.0.0.1:8500", "http://10.0.0.2:8500")  # port 0 -> Consul's default
    assert cfg.endpoints_text == "10.0.0.1:8500,10.0.0.2:8500"
    assert cfg.root == "shoal/"
    assert cfg.headers() == {}
    assert cfg.query() == {}


def test_empty_prefix_means_whole_kv_store() -> None:
    assert parse_config(url(prefix=""), env={}).root == ""
    assert parse_config(url(prefix="/a/b/"), env={}).root == "a/b/"


def test_ipv6_hosts_are_bracketed_in_urls() -> None:
    cfg = parse_config(url(endpoints=(("::1", 8501),)), env={})
    assert cfg.base_urls == ("http://[::1]:8501",)


@pytest.mark.parametrize(
    "params", [{"tls": "1"}, {"tls": "true"}, {"cacert": "/ca.pem"}, {"cert": "/c.pem", "key": "/k.pem"}]
)
def test_tls_switches_to_https(params: dict[str, str]) -> None:
    cfg = parse_config(url(params), env={})
    assert cfg.https
    assert cfg.base_urls == ("https://127.0.0.1:8500",)


def test_token_from_url_wins_over_environment_and_travels_as_header() -> None:
    env = {"CONSUL_HTTP_TOKEN": "from-env"}
    assert parse_config(url({"token": "from-url"}), env=env).headers() == {"X-Consul-Token": "from-url"}
    assert parse_config(url(), env=env).headers() == {"X-Consul-Token": "from-env"}
    # The token never goes into the query string (it would end up in access logs).
    assert "token" not in parse_config(url({"token": "t"}), env={}).query(recurse="")


def test_datacenter_timeout_and_wait_options() -> None:
    cfg = parse_config(url({"dc": "eu1", "timeout": "2.5", "wait": "30s"}), env={})
    assert cfg.query(recurse="") == {"dc": "eu1", "recurse": ""}
    assert cfg.timeout == 2.5
    assert cfg.wait == 30.0
    assert format_wait(cfg.wait) == "30s"
    assert format_wait(0.2) == "1s"


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"tokn": "x"}, "tokn"),
        ({"cert": "/c.pem"}, "cert and key"),
        ({"key": "/k.pem"}, "cert and key"),
        ({"tls": "maybe"}, "tls"),
        ({"tls": "0", "cacert": "/ca.pem"}, "contradicts"),
        ({"timeout": "soon"}, "timeout"),
        ({"wait": "3600"}, "wait"),
    ],
)
def test_bad_options_are_rejected_naming_the_problem(params: dict[str, str], needle: str) -> None:
    with pytest.raises(InvalidStoreURL) as info:
        parse_config(url(params), env={})
    assert needle in str(info.value)
    assert info.value.url == "consul://test"


def test_url_without_endpoints_is_rejected() -> None:
    with pytest.raises(InvalidStoreURL, match="no Consul endpoint"):
        parse_config(url(endpoints=()), env={})


# --- keys, leases, sessions ---------------------------------------------------------------------------------
def test_keys_map_under_the_root_and_back() -> None:
    assert full_key("shoal/", "tasks/t1") == "shoal/tasks/t1"
    assert user_key("shoal/", "shoal/tasks/t1") == "tasks/t1"
    with pytest.raises(ConsulError, match="outside the root"):
        user_key("shoal/", "other/tasks/t1")


def test_lease_ids_are_session_uuids_as_integers() -> None:
    lease = lease_of(SESSION)
    assert lease == uuid.UUID(SESSION).int
    assert session_of(lease) == SESSION
    with pytest.raises(ConsulError):
        lease_of("not-a-session")
    with pytest.raises(LeaseNotFound):
        session_of(-1)  # no session has that id (a lease from another backend, say)


@pytest.mark.parametrize(("asked", "granted"), [(0.5, 10), (10, 10), (10.2, 11), (30, 30), (86400, 86400)])
def test_session_ttl_is_whole_seconds_within_consul_bounds(asked: float, granted: int) -> None:
    assert session_ttl(asked) == granted


@pytest.mark.parametrize("asked", [0, -1, 86401])
def test_session_ttl_out_of_range_is_refused(asked: float) -> None:
    with pytest.raises(ValueError):
        session_ttl(asked)


def test_session_body_deletes_keys_with_the_session_and_has_no_lock_delay_or_health_checks() -> None:
    assert session_body(15) == {
        "Name": "shoal-lease",
        "TTL": "15s",
        "Behavior": "delete",
        "LockDelay": "0s",
        "Checks": [],
    }


# --- decoding ---------------------------------------------------------------------------------------------
def test_entry_decodes_value_revisions_version_and_lease() -> None:
    entry = {
        "CreateIndex": 100,
        "ModifyIndex": 200,
        "LockIndex": 1,
        "Key": "shoal/nodes/n1",
        "Flags": 3,
        "Value": b64(b"\x00msgpack\xff"),
        "Session": SESSION,
    }
    assert decode_entry(entry, "shoal/") == KeyValue(
        "nodes/n1", b"\x00msgpack\xff", 100, 200, 3, uuid.UUID(SESSION).int
    )


def test_entry_with_null_value_and_zero_flags_is_empty_version_one_without_lease() -> None:
    entry = {"CreateIndex": 5, "ModifyIndex": 5, "LockIndex": 0, "Key": "shoal/x", "Flags": 0, "Value": None}
    assert decode_entry(entry, "shoal/") == KeyValue("x", b"", 5, 5, 1, None)


@pytest.mark.parametrize(
    "entry",
    [
        {"Key": "shoal/x", "Value": "%%%not-base64"},
        {"Key": "shoal/x", "ModifyIndex": -1},
        {"Key": "shoal/x", "CreateIndex": "7"},
        {"Key": 7},
        ["shoal/x"],
        {"Key": "shoal/x", "Session": 12},
    ],
)
def test_malformed_entries_raise_consul_error(entry: object) -> None:
    with pytest.raises(ConsulError):
        decode_entry(entry, "shoal/")


def test_listing_decodes_in_key_order_and_404_is_empty() -> None:
    payload = [
        {"Key": "shoal/b", "ModifyIndex": 2, "CreateIndex": 2, "Value": b64(b"2")},
        {"Key": "shoal/a", "ModifyIndex": 3, "CreateIndex": 1, "Value": b64(b"1")},
    ]
    assert [kv.key for kv in decode_entries(payload, "shoal/")] == ["a", "b"]
    assert decode_entries(None, "shoal/") == ()
    with pytest.raises(ConsulError):
        decode_entries({"Key": "shoal/a"}, "shoal/")


def test_index_header_is_parsed_and_never_below_one() -> None:
    assert parse_index("1234") == 1234
    assert parse_index("0") == 1  # Consul documents 0 as a bug; 1 is always safe to block on
    with pytest.raises(ConsulError):
        parse_index(None)
    with pytest.raises(ConsulError):
        parse_index("12a")


def test_reply_json_and_failure_message() -> None:
    assert Reply(200, "5", b'"10.0.0.1:8300"').json() == "10.0.0.1:8300"
    assert Reply(404, "5", b"").json() is None
    with pytest.raises(ConsulError, match="invalid JSON"):
        Reply(200, None, b"{nope").json()
    error = Reply(403, None, b"Permission denied\n").fail("GET 'shoal/x'")
    assert error.status == 403
    assert str(error) == "Consul GET 'shoal/x' failed with HTTP 403: Permission denied"


def test_committed_txn_reply_gives_results_and_the_txn_index() -> None:
    payload = {
        "Results": [
            {
                "KV": {
                    "Key": "shoal/a",
                    "Flags": 1,
                    "Value": None,
                    "CreateIndex": 40,
                    "ModifyIndex": 40,
                    "LockIndex": 0,
                }
            },
            {
                "KV": {
                    "Key": "shoal/b",
                    "Flags": 4,
                    "Value": None,
                    "CreateIndex": 3,
                    "ModifyIndex": 57,
                    "LockIndex": 0,
                }
            },
        ],
        "Errors": None,
    }
    reply = decode_txn_reply(payload)
    assert reply.errors == ()
    assert len(reply.results) == 2
    assert reply.max_index == 57


def test_rolled_back_txn_reply_gives_errors_by_operation() -> None:
    payload = {
        "Results": None,
        "Errors": [
            {"OpIndex": 0, "What": 'failed index check for key "shoal/a", current modify index 41 != 40'},
            {"OpIndex": 2, "What": 'invalid session "adf4238a-882b-9ddc-4a9d-5b6758e4159e"'},
        ],
    }
    reply = decode_txn_reply(payload)
    assert reply.results == ()
    assert reply.max_index == 0
    assert [i for i, _ in reply.errors] == [0, 2]
    assert "invalid session" in reply.errors[1][1]
    with pytest.raises(ConsulError):
        decode_txn_reply(["not", "an", "object"])
    with pytest.raises(ConsulError):
        decode_txn_reply({"Results": [{"Node": {}}]})


def test_pages_start_after_a_key_and_say_whether_more_remain() -> None:
    kvs = tuple(KeyValue(k, b"", 1, 1, 1) for k in ("a", "b", "c", "d"))
    assert page(kvs, None, 0) == (kvs, False)
    first, more = page(kvs, None, 2)
    assert [kv.key for kv in first] == ["a", "b"] and more
    second, more = page(kvs, "b", 2)
    assert [kv.key for kv in second] == ["c", "d"] and not more
    assert page(kvs, "d", 2) == ((), False)


# --- transaction plans ---------------------------------------------------------------------------------
def test_compares_hold_on_absence_or_exact_mod_revision() -> None:
    seen = Observed(mod_revision=40, version=3)
    assert holds(Compare.absent("k"), None)
    assert not holds(Compare.absent("k"), seen)
    assert holds(Compare.at("k", 40), seen)
    assert not holds(Compare.at("k", 39), seen)
    assert not holds(Compare.at("k", 40), None)


def test_create_is_pinned_absent_and_writes_version_one() -> None:
    plan = plan_txn(["s/k"], [Put("s/k", b"v1")], {"s/k": None})
    assert plan.pins == 1
    assert [kv_body(op) for op in plan.body] == [
        {"Verb": "check-not-exists", "Key": "s/k"},
        {"Verb": "set", "Key": "s/k", "Value": b64(b"v1"), "Flags": 1},
    ]


def test_update_is_pinned_to_the_read_index_and_bumps_the_version() -> None:
    plan = plan_txn(["s/k"], [Put("s/k", b"v4")], {"s/k": Observed(40, 3)})
    assert [kv_body(op) for op in plan.body] == [
        {"Verb": "check-index", "Key": "s/k", "Index": 40},
        {"Verb": "set", "Key": "s/k", "Value": b64(b"v4"), "Flags": 4},
    ]


def test_put_with_lease_acquires_the_key_for_the_session() -> None:
    lease = uuid.UUID(SESSION).int
    plan = plan_txn(["s/k"], [Put("s/k", b"v", lease)], {"s/k": None})
    assert kv_body(plan.body[1]) == {
        "Verb": "lock",
        "Key": "s/k",
        "Value": b64(b"v"),
        "Flags": 1,
        "Session": SESSION,
    }


def test_put_without_lease_on_a_leased_key_releases_it() -> None:
    # Consul's plain set would keep the lock holder; etcd semantics detach the key from its lease.
    plan = plan_txn(["s/k"], [Put("s/k", b"v")], {"s/k": Observed(9, 2, SESSION)})
    assert [kv_body(op)["Verb"] for op in plan.body] == ["check-index", "unlock"]
    assert kv_body(plan.body[1])["Session"] == SESSION
    assert kv_body(plan.body[1])["Flags"] == 3


def test_put_with_another_lease_moves_the_key_to_it() -> None:
    new_lease = uuid.UUID(OTHER_SESSION).int
    plan = plan_txn(["s/k"], [Put("s/k", b"v", new_lease)], {"s/k": Observed(9, 2, SESSION)})
    verbs = [(kv_body(op)["Verb"], kv_body(op).get("Session")) for op in plan.body]
    assert verbs == [("check-index", None), ("unlock", SESSION), ("lock", OTHER_SESSION)]


def test_put_with_the_holding_lease_just_locks_again() -> None:
    plan = plan_txn(["s/k"], [Put("s/k", b"v", uuid.UUID(SESSION).int)], {"s/k": Observed(9, 2, SESSION)})
    assert [kv_body(op)["Verb"] for op in plan.body] == ["check-index", "lock"]


def test_ops_in_one_txn_see_each_other() -> None:
    plan = plan_txn(
        ["s/a"],
        [
            Put("s/a", b"1"),
            Put("s/a", b"2"),
            Delete("s/a"),
            Put("s/a", b"3"),
            Delete("s/b"),
            Put("s/b", b"x"),
        ],
        {"s/a": Observed(7, 5)},
    )
    writes = [kv_body(op) for op in plan.body[plan.pins :]]
    assert [(w["Verb"], w["Key"], w.get("Flags")) for w in writes] == [
        ("set", "s/a", 6),
        ("set", "s/a", 7),
        ("delete", "s/a", None),
        ("set", "s/a", 1),
        ("delete", "s/b", None),
        ("set", "s/b", 1),  # a key deleted first needs no read: it restarts at 1
    ]


def test_pins_are_deduplicated_and_come_first() -> None:
    observed: dict[str, Observed | None] = {"s/a": Observed(3, 1), "s/b": None}
    plan = plan_txn(["s/a", "s/b", "s/a"], [Delete("s/c")], observed)
    assert plan.pins == 2
    assert [kv_body(op)["Verb"] for op in plan.body] == ["check-index", "check-not-exists", "delete"]


def test_writing_a_key_that_was_not_read_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        plan_txn([], [Put("s/k", b"v")], {})


def test_transactions_beyond_consul_limit_are_refused_before_sending() -> None:
    ops = [Delete(f"s/{i}") for i in range(MAX_TXN_OPS)]
    assert len(plan_txn([], ops, {}).body) == MAX_TXN_OPS
    with pytest.raises(ConsulError, match="allows 64"):
        plan_txn(["s/x"], ops, {"s/x": None})


def test_ops_keys_are_mapped_under_the_root() -> None:
    assert full_op("shoal/", Put("a", b"1", 5)) == Put("shoal/a", b"1", 5)
    assert full_op("shoal/", Delete("a")) == Delete("shoal/a")


# --- watch events --------------------------------------------------------------------------------------
def kv(key: str, mod: int, value: bytes = b"", create: int = 1) -> KeyValue:
    return KeyValue(key, value, create, mod, 1)


def test_diff_reports_new_changed_and_removed_keys_in_revision_order() -> None:
    old = {"a": 5, "b": 6, "c": 7}
    new = [kv("a", 5), kv("b", 12, b"b2"), kv("d", 11, b"d1")]
    events = diff_snapshots(old, new, new_index=13, floor=7, after=7)
    assert [(e.type, e.key, e.value, e.revision) for e in events] == [
        (EventType.PUT, "d", b"d1", 11),
        (EventType.PUT, "b", b"b2", 12),
        (EventType.DELETE, "c", b"", 13),  # Consul does not say when; the poll's index is when it is known
    ]


def test_diff_coalesces_several_writes_to_one_key_into_its_latest_value() -> None:
    # b was written at 9, 10 and 12 between the two polls: one PUT with the value as of 12.
    events = diff_snapshots({"b": 8}, [kv("b", 12, b"third")], new_index=12, floor=8, after=8)
    assert [(e.type, e.value, e.revision) for e in events] == [(EventType.PUT, b"third", 12)]


def test_diff_of_identical_listings_is_empty() -> None:
    assert diff_snapshots({"a": 5}, [kv("a", 5)], new_index=9, floor=9, after=9) == []


def test_delete_never_goes_back_before_what_was_delivered() -> None:
    # The listing index went backwards (Consul reaped the tombstone): the delete still sorts after.
    events = diff_snapshots({"a": 5, "b": 20}, [kv("a", 5)], new_index=5, floor=20, after=20)
    assert [(e.type, e.key, e.revision) for e in events] == [(EventType.DELETE, "b", 21)]


def test_changes_before_the_start_revision_only_update_the_state() -> None:
    # Watch from 15 while the prefix was last changed at 10: a write at 13 happened before the start.
    events = diff_snapshots({"a": 10}, [kv("a", 13), kv("b", 16)], new_index=16, floor=10, after=14)
    assert [(e.key, e.revision) for e in events] == [("b", 16)]


def test_a_rewritten_history_is_reported_as_compaction() -> None:
    # After a snapshot restore a key shows an index older than the listing we already had.
    with pytest.raises(CompactedError) as info:
        diff_snapshots({"a": 30}, [kv("a", 12)], new_index=12, floor=30, after=30)
    assert info.value.requested == 31


def test_watch_start_rules() -> None:
    assert start_baseline(11, listing_index=10, remembered_index=None) == "current"
    assert start_baseline(50, listing_index=10, remembered_index=None) == "current"
    assert start_baseline(11, listing_index=14, remembered_index=10) == "remembered"
    with pytest.raises(CompactedError) as info:
        start_baseline(11, listing_index=14, remembered_index=None)
    assert (info.value.requested, info.value.compact_revision) == (11, 14)
    assert "oldest available: 15" in str(info.value)
    with pytest.raises(CompactedError):
        start_baseline(11, listing_index=14, remembered_index=9)  # a listing from before is not enough
    with pytest.raises(CompactedError):
        # Something changed at exactly 11 (perhaps a delete, which a listing does not show): not servable.
        start_baseline(11, listing_index=11, remembered_index=None)


# A model of Consul's KV for one prefix: writes and deletes get rising raft indexes; a listing reports the
# highest index among the entries and the tombstones of deleted keys, as KVS.List does.
write_ops = st.lists(st.tuples(st.sampled_from("abcd"), st.booleans(), st.booleans()), max_size=60)


@settings(max_examples=200, deadline=None)
@given(write_ops)
def test_polling_any_history_replays_to_the_final_state_in_order_without_repeats(
    ops: list[tuple[str, bool, bool]],
) -> None:
    index = 100
    entries: dict[str, KeyValue] = {}
    tombstones: dict[str, int] = {}

    def listing() -> tuple[list[KeyValue], int]:
        kvs = sorted(entries.values(), key=lambda e: e.key)
        return kvs, max([e.mod_revision for e in kvs] + list(tombstones.values()) + [1])

    kvs, last_index = listing()
    state = {e.key: e.value for e in kvs}
    baseline = {e.key: e.mod_revision for e in kvs}
    after = floor = last_index
    delivered: list[tuple[int, str]] = []
    for key, is_delete, poll_after in ops:
        index += 1
        if is_delete:
            if entries.pop(key, None) is not None:
                tombstones[key] = index
        else:
            created = entries[key].create_revision if key in entries else index
            entries[key] = KeyValue(key, f"{key}@{index}".encode(), created, index, 1)
        if poll_after:
            kvs, last_index = listing()
            events = diff_snapshots(baseline, kvs, new_index=last_index, floor=floor, after=after)
            for event in events:
                assert event.revision > after, "events must come after everything already delivered"
                delivered.append((event.revision, event.key))
                if event.type is EventType.PUT:
                    state[event.key] = event.value
                else:
                    del state[event.key]
            if events:
                after = events[-1].revision
            baseline = {e.key: e.mod_revision for e in kvs}
            floor = last_index
            assert state == {e.key: e.value for e in kvs}
    assert delivered == sorted(delivered)
    assert len(delivered) == len(set(delivered))
