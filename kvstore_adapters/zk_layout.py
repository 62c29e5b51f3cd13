"""Where the ZooKeeper adapter keeps things, and how keys, values and change-log entries are encoded.

Under the root ``/<prefix>`` (``""`` for an empty prefix)::

    /<prefix>/kv/…            the keys (below)
    /<prefix>/log/e0000000042 the change log: one sequential znode per changed key (see zk_log.py)
    /<prefix>/compacted       data: the highest revision whose history was dropped (decimal)
    /<prefix>/epoch           its *version* counts the transactions that deleted keys (see zookeeper.py)
    /<prefix>/leases/<id>     one ephemeral znode per live lease, owned by the lease's session
    /<prefix>/lease-keys/<id>/<name>   the keys ever attached to lease <id> (name: the whole key, escaped)

Keys map hierarchically: ``tasks/abc`` is the znode ``kv/tasks+/abc``. A key's segments but the last are
*directory* znodes whose name ends with ``+``; the last one is the *value* znode that holds the value. So
"a" and "a/b" live side by side (``kv/a`` and ``kv/a+/b``), directories never look like keys, and the name
says which is which without reading data. Segments are escaped like URLs (``%XX`` of the UTF-8 bytes) for
``%``, ``+``, the characters ZooKeeper refuses in paths, and the names ``.``/``..``; the empty segment is
``%``. Escaping keeps plain keys readable in ``zkCli.sh``.

Value znodes hold one header byte before the value: ``0`` (no lease) or ``1`` followed by the 8-byte lease
id. Log entries hold a type byte (``P``/``D``), the key's length and UTF-8 bytes, then the value.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from urllib.parse import unquote

from kvstore_adapters.base import EventType

DIR_MARK = "+"
LOG_ENTRY = "e"

# What ZooKeeper refuses in a path (PathUtils.validatePath: controls, C1 controls, surrogates and the
# private-use and specials ranges it blocks), plus "%" and "+" which the encoding itself uses.
_REFUSED = "\x00-\x1f\x7f-\x9f\ud800-\uf8ff\ufff0-\U0010ffff"
_UNSAFE_SEGMENT = re.compile(f"[%+{_REFUSED}]")
_UNSAFE_NAME = re.compile(f"[%+/{_REFUSED}]")

_LEASED = struct.Struct(">Bq")
_EVENT_HEAD = struct.Struct(">cI")
_PUT = b"P"
_DELETE = b"D"


def _escape(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode("utf-8", "surrogatepass"))


def encode_segment(segment: str) -> str:
    """The znode name of one key segment (never empty, never ``.`` or ``..``, never ending with ``+``)."""
    if segment in ("", ".", ".."):
        return segment.replace(".", "%2E") or "%"
    return _UNSAFE_SEGMENT.sub(_escape, segment)


def decode_segment(name: str) -> str:
    """The key segment a znode name stands for (the inverse of :func:`encode_segment`)."""
    if "%" not in name:
        return name
    if name == "%":
        return ""
    return unquote(name, errors="surrogatepass")


def encode_key_name(key: str) -> str:
    """A whole key as one znode name (``/`` escaped too), for the lease-key registry."""
    if key in (".", ".."):
        return key.replace(".", "%2E")
    return _UNSAFE_NAME.sub(_escape, key) or "%"


def decode_key_name(name: str) -> str:
    """The key a registry name stands for (the inverse of :func:`encode_key_name`)."""
    return decode_segment(name)


def pack_value(value: bytes, lease: int | None) -> bytes:
    """The data of a value znode."""
    if lease is None:
        return b"\x00" + value
    return _LEASED.pack(1, lease) + value


def unpack_value(data: bytes) -> tuple[bytes, int | None]:
    """``(value, lease)`` from the data of a value znode."""
    if data[:1] == b"\x01":
        return data[_LEASED.size :], _LEASED.unpack_from(data)[1]
    return data[1:], None


def pack_event(kind: EventType, key: str, value: bytes = b"") -> bytes:
    """The data of a change-log entry."""
    raw = key.encode("utf-8", "surrogatepass")
    return _EVENT_HEAD.pack(_PUT if kind is EventType.PUT else _DELETE, len(raw)) + raw + value


def unpack_event(data: bytes) -> tuple[EventType, str, bytes]:
    """``(type, key, value)`` from the data of a change-log entry."""
    kind, size = _EVENT_HEAD.unpack_from(data)
    start = _EVENT_HEAD.size
    key = data[start : start + size].decode("utf-8", "surrogatepass")
    return (EventType.PUT if kind == _PUT else EventType.DELETE), key, data[start + size :]


def entry_seq(name: str) -> int | None:
    """The sequence number of a change-log entry's name (``e0000000042`` → 42), or None for other names."""
    if name.startswith(LOG_ENTRY) and name[1:].lstrip("-").isdigit():
        return int(name[1:])
    return None


@dataclass(frozen=True, slots=True)
class Scan:
    """Where a prefix's keys are: the directory to list first, the key text every key in it starts with,
    and the partial last segment its entries must start with (``range("ap")`` lists ``kv`` for ``ap…``)."""

    directory: str
    key_base: str
    partial: str


@dataclass(frozen=True, slots=True)
class Layout:
    """The znode paths of one root prefix."""

    root: str

    @classmethod
    def for_prefix(cls, prefix: str) -> Layout:
        """The layout of a store URL's prefix (``"shoal"`` → ``/shoal``; ``""`` → the ZooKeeper root)."""
        return cls("/" + prefix.strip("/") if prefix.strip("/") else "")

    @property
    def kv(self) -> str:
        return f"{self.root}/kv"

    @property
    def log(self) -> str:
        return f"{self.root}/log"

    @property
    def log_entry(self) -> str:
        """The path sequential log entries are created with (ZooKeeper appends the number)."""
        return f"{self.root}/log/{LOG_ENTRY}"

    @property
    def compacted(self) -> str:
        return f"{self.root}/compacted"

    @property
    def epoch(self) -> str:
        return f"{self.root}/epoch"

    @property
    def holders(self) -> str:
        return f"{self.root}/leases"

    @property
    def lease_keys(self) -> str:
        return f"{self.root}/lease-keys"

    def structure(self) -> tuple[str, ...]:
        """Every znode the adapter expects to exist, parents first."""
        parts = [p for p in self.root.split("/") if p]
        parents = tuple("/" + "/".join(parts[: i + 1]) for i in range(len(parts)))
        return (*parents, self.kv, self.log, self.compacted, self.epoch, self.holders, self.lease_keys)

    def entry_path(self, seq: int) -> str:
        return f"{self.root}/log/{LOG_ENTRY}{seq:010d}"

    def key_path(self, key: str) -> str:
        """The value znode of ``key``."""
        if "/" not in key:
            return f"{self.root}/kv/{encode_segment(key)}"
        *dirs, last = key.split("/")
        middle = "".join(f"/{encode_segment(s)}{DIR_MARK}" for s in dirs)
        return f"{self.root}/kv{middle}/{encode_segment(last)}"

    def key_dirs(self, key: str) -> list[str]:
        """The directory znodes above ``key``'s value znode, outermost first."""
        path = self.kv
        out = []
        for segment in key.split("/")[:-1]:
            path = f"{path}/{encode_segment(segment)}{DIR_MARK}"
            out.append(path)
        return out

    def holder_path(self, lease: int) -> str:
        return f"{self.root}/leases/{lease_name(lease)}"

    def lease_keys_dir(self, lease: int) -> str:
        return f"{self.root}/lease-keys/{lease_name(lease)}"

    def lease_key_path(self, lease: int, key: str) -> str:
        return f"{self.root}/lease-keys/{lease_name(lease)}/{encode_key_name(key)}"

    def scan(self, prefix: str) -> Scan:
        """Where to look for the keys starting with ``prefix``."""
        *dirs, partial = prefix.split("/")
        directory = self.kv + "".join(f"/{encode_segment(s)}{DIR_MARK}" for s in dirs)
        return Scan(directory, "".join(f"{s}/" for s in dirs), partial)


def lease_name(lease: int) -> str:
    """A lease (ZooKeeper session) id as a znode name: 16 hex digits."""
    return f"{lease & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def lease_of_name(name: str) -> int | None:
    """The lease id a holder or registry name stands for, or None for other names."""
    try:
        raw = int(name, 16)
    except ValueError:
        return None
    return raw - (1 << 64) if raw >= 1 << 63 else raw


def is_dir(name: str) -> bool:
    """Whether a child of a ``kv`` directory is a directory (else it is a value znode)."""
    return name.endswith(DIR_MARK)
