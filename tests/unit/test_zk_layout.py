"""The ZooKeeper adapter's encodings (kvstore_adapters/zk_layout.py): keys → znode paths, values, log entries.

Run: ``.venv/bin/pytest tests/unit/test_zk_layout.py``. No server needed.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from kvstore_adapters.base import EventType
from kvstore_adapters.zk_layout import (
    Layout,
    decode_key_name,
    decode_segment,
    encode_key_name,
    encode_segment,
    entry_seq,
    is_dir,
    lease_name,
    lease_of_name,
    pack_event,
    pack_value,
    unpack_event,
    unpack_value,
)

# What ZooKeeper's PathUtils.validatePath refuses in a node name.
REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\uf8ff\ufff0-\uffff]")
segments = st.text(st.characters(codec=None, exclude_characters="/"), max_size=12)  # a segment has no "/"
keys = st.lists(segments, min_size=1, max_size=4).map("/".join)


def assert_valid_znode_name(name: str) -> None:
    assert name and name not in (".", "..") and "/" not in name
    assert not REFUSED.search(name), f"{name!r} has characters ZooKeeper refuses"


@given(segments)
def test_segments_round_trip_into_valid_names(segment: str) -> None:
    name = encode_segment(segment)
    assert_valid_znode_name(name)
    assert not is_dir(name)
    assert decode_segment(name) == segment


@given(keys)
def test_whole_keys_round_trip_into_valid_names(key: str) -> None:
    name = encode_key_name(key)
    assert_valid_znode_name(name)
    assert decode_key_name(name) == key


def test_plain_keys_stay_readable_and_dirs_are_marked() -> None:
    layout = Layout.for_prefix("shoal")
    assert layout.key_path("tasks/abc") == "/shoal/kv/tasks+/abc"
    assert layout.key_path("a") == "/shoal/kv/a"
    assert layout.key_dirs("a/b/c") == ["/shoal/kv/a+", "/shoal/kv/a+/b+"]
    # "a" and "a/b" can both be keys: the value of "a" and the directory of "a/" differ.
    assert layout.key_path("a") != layout.key_dirs("a/b")[0]
    assert layout.key_path("50%+x") == "/shoal/kv/50%25%2Bx"
    assert layout.key_path("t/") == "/shoal/kv/t+/%"  # the empty last segment
    assert layout.key_path("..") == "/shoal/kv/%2E%2E"


@given(keys)
def test_key_paths_are_distinct_and_valid(key: str) -> None:
    layout = Layout.for_prefix("p")
    path = layout.key_path(key)
    assert path.startswith("/p/kv/")
    for name in path.split("/")[3:]:
        assert_valid_znode_name(name)
    *dirs, last = path.split("/")[3:]
    assert all(is_dir(d) for d in dirs) and not is_dir(last)
    assert "/".join([*(decode_segment(d[:-1]) for d in dirs), decode_segment(last)]) == key


def test_empty_prefix_uses_the_zookeeper_root() -> None:
    layout = Layout.for_prefix("")
    assert layout.kv == "/kv" and layout.key_path("x") == "/kv/x"
    assert layout.structure()[0] == "/kv"
    nested = Layout.for_prefix("a/b")
    assert nested.structure()[:3] == ("/a", "/a/b", "/a/b/kv")


def test_scan_splits_a_prefix_into_directory_and_partial_segment() -> None:
    layout = Layout.for_prefix("p")
    scan = layout.scan("tasks/")
    assert (scan.directory, scan.key_base, scan.partial) == ("/p/kv/tasks+", "tasks/", "")
    scan = layout.scan("ap")
    assert (scan.directory, scan.key_base, scan.partial) == ("/p/kv", "", "ap")
    assert layout.scan("").directory == "/p/kv"


@given(st.binary(max_size=64), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)))
def test_values_carry_their_lease(value: bytes, lease: int | None) -> None:
    assert unpack_value(pack_value(value, lease)) == (value, lease)


@given(keys, st.binary(max_size=64), st.sampled_from(list(EventType)))
def test_log_entries_round_trip(key: str, value: bytes, kind: EventType) -> None:
    assert unpack_event(pack_event(kind, key, value)) == (kind, key, value)


def test_log_entry_names_and_lease_names() -> None:
    layout = Layout.for_prefix("p")
    assert layout.entry_path(42) == "/p/log/e0000000042"
    assert entry_seq("e0000000042") == 42 and entry_seq("other") is None
    for lease in (0x1000000AB, -5, 2**63 - 1):
        assert lease_of_name(lease_name(lease)) == lease
        assert len(lease_name(lease)) == 16
    assert lease_of_name("not-hex") is None
