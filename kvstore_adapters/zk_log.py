"""The change log of the ZooKeeper adapter: reading it, trimming it, compacting it.

Every write appends one sequential znode per changed key to ``/<prefix>/log`` in the same multi-op as the
write, so an entry's ``czxid`` is the write's zxid: the event's revision. Entries are ordered by their
sequence number, which ZooKeeper assigns in commit order, so sequence order is revision order.

ZooKeeper numbers sequential children with a count of the parent's child *creations*, so the numbers are
consecutive: deleting entries never leaves holes after them. It reports ``cversion`` as twice that count
minus the current number of children (creations plus deletions), so the number the next entry will get
is ``(cversion + numChildren) / 2``, known from one stat (:func:`next_entry_seq`).

``/<prefix>/compacted`` holds the highest revision whose history may be gone. It is raised *before*
entries are deleted, so a reader that finds an entry missing, or that starts at or below it, knows history
was dropped and raises :class:`CompactedError`. Trimming keeps the newest ``log_size`` entries;
:meth:`ZooKeeperStore.compact` drops everything before a revision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kazoo.exceptions import NoNodeError
from kazoo.protocol.serialization import Delete, Exists, GetChildren2, GetData, SetData

from kvstore_adapters.base import Event
from kvstore_adapters.errors import KVError
from kvstore_adapters.zk_layout import entry_seq, unpack_event
from kvstore_adapters.zk_wire import first_failure

if TYPE_CHECKING:
    from kazoo.protocol.states import ZnodeStat

    from kvstore_adapters.zookeeper import ZooKeeperStore

log = logging.getLogger(__name__)

#: Entries read (or deleted) per request: entries carry values, so replies stay around a megabyte.
BATCH = 64


async def list_log(store: ZooKeeperStore, watcher: Any = None) -> tuple[list[int], ZnodeStat, int]:
    """The log's sequence numbers in order, the log znode's stat, and the reply's zxid."""
    (children, stat), zxid = await store.read(GetChildren2(store.layout.log, watcher))
    return sorted_seqs(children), stat, zxid


def next_entry_seq(log_stat: ZnodeStat) -> int:
    """The sequence number ZooKeeper will give the next entry (see the module docstring)."""
    total = int(log_stat.cversion) + int(log_stat.numChildren)
    if total % 2:
        raise KVError(
            f"zookeeper: the change log's cversion {log_stat.cversion} and {log_stat.numChildren} children "
            "do not match the numbering this adapter relies on"
        )
    return total // 2


def sorted_seqs(children: Sequence[str]) -> list[int]:
    return sorted(s for s in map(entry_seq, children) if s is not None)


async def read_compacted(store: ZooKeeperStore) -> tuple[int, int]:
    """``(compaction revision, znode version)``: history at or below that revision may be gone."""
    try:
        (data, stat), _ = await store.read(GetData(store.layout.compacted, None))
    except NoNodeError:
        return 0, -1
    return int(data or b"0"), stat.version


async def first_at_or_after(store: ZooKeeperStore, seqs: Sequence[int], revision: int) -> int:
    """The index of the first entry whose revision is ``>= revision`` (binary search on entry stats)."""
    lo, hi = 0, len(seqs)
    while lo < hi:
        mid = (lo + hi) // 2
        stat, _ = await store.read(Exists(store.layout.entry_path(seqs[mid]), None))
        if stat is None or stat.czxid < revision:  # a vanished entry was trimmed: it is older
            lo = mid + 1
        else:
            hi = mid
    return lo


async def read_entries(
    store: ZooKeeperStore, seqs: Sequence[int]
) -> tuple[list[tuple[int, int, Event]], int]:
    """``(seq, revision, event)`` of those of the given entries that exist, in order, and how many do not."""
    layout = store.layout
    results = await store.multi_read([GetData(layout.entry_path(s), None) for s in seqs])
    out = []
    missing = 0
    for seq, result in zip(seqs, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, NoNodeError):
                raise result
            missing += 1
            continue
        data, stat = result
        kind, key, value = unpack_event(data)
        out.append((seq, stat.czxid, Event(kind, key, value, stat.czxid)))
    return out, missing


async def trim(store: ZooKeeperStore, keep: int, slack: int = 0) -> int:
    """Delete the oldest entries beyond the newest ``keep`` if there are more than ``keep + slack``
    (trimming in batches is cheaper); returns how many were deleted."""
    stat, _ = await store.read(Exists(store.layout.log, None))
    if stat is None or stat.numChildren <= keep + slack:
        return 0  # the stat's child count spares listing thousands of names
    seqs, _, _ = await list_log(store)
    excess = len(seqs) - keep
    if excess <= 0:
        return 0
    victims = seqs[:excess]
    newest, compacted = await asyncio.gather(
        store.read(Exists(store.layout.entry_path(victims[-1]), None)), read_compacted(store)
    )
    stat = newest[0]
    if stat is None:
        return 0  # another client is trimming the same entries
    floor, version = compacted
    if not await _raise_floor(store, max(floor, stat.czxid), version):
        return 0
    await _delete_entries(store, victims)
    return len(victims)


async def compact(store: ZooKeeperStore, revision: int) -> None:
    """Drop the history before ``revision`` (never past the store's current revision)."""
    while True:
        floor, version = await read_compacted(store)
        seqs, _, zxid = await list_log(store)
        target = min(revision - 1, zxid)
        if target <= floor:
            return
        cut = await first_at_or_after(store, seqs, target + 1)
        if await _raise_floor(store, target, version):
            break
    await _delete_entries(store, seqs[:cut])


async def _raise_floor(store: ZooKeeperStore, revision: int, version: int) -> bool:
    """Set the compaction revision if the znode is still at ``version`` (one trimmer at a time)."""
    results, _ = await store.write_multi([SetData(store.layout.compacted, str(revision).encode(), version)])
    return first_failure(results) is None


async def _delete_entries(store: ZooKeeperStore, seqs: Sequence[int]) -> None:
    layout = store.layout
    for start in range(0, len(seqs), BATCH):
        paths = [layout.entry_path(s) for s in seqs[start : start + BATCH]]
        results, _ = await store.write_multi([Delete(p, -1) for p in paths])
        if first_failure(results) is not None:
            # Someone else deleted some of them: delete the rest one by one, ignoring the missing.
            await store.write_each([Delete(p, -1) for p in paths])
