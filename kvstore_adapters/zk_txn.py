"""Transactions of the ZooKeeper adapter: compares on revisions mapped onto ZooKeeper's multi-op ``check``.

ZooKeeper can only make a multi-op conditional on a znode's *version* (its write count), while Shoal
compares *mod revisions* (the zxid of a key's last write). Every write (put, delete, transaction,
prefix delete) is one multi-op that also appends its change-log entries, so a write and its events commit
together with one zxid. Compares map as follows:

- ``Compare.absent(k)``: the ``create`` of k in the same multi fails if k exists; when the transaction does
  not create k first, a create-and-delete of k (no visible effect) asserts the absence.
- ``Compare.at(k, rev)``: ``check(k, version)`` where ``version`` is the version k had when its mod
  revision was ``rev``. The version comes from the client's cache of what it last read or wrote (the usual
  read-modify-write needs no extra request) or else from reading k's stat first. When the transaction
  writes k, the write itself carries the version (``setData``/``delete`` with a version): one op fewer.

A version only identifies a write within one *incarnation* of a key: delete k, create it again and write
it as often, and the version repeats (the "ABA" case). The ``epoch`` znode closes that hole: every multi
that deletes keys also bumps the epoch's version, and every multi guarded by versions also checks that
the epoch is still what it was *before* the versions were read. If the check passes, no key was deleted
in between, so k is still the incarnation that was read and the version check is exact. A delete anywhere
invalidates cached versions (the next compare re-reads once). After a few rounds lost to concurrent
deletes the transaction falls back to version checks alone; the remaining window is one round trip.
This holds as long as only this adapter writes under the prefix.

The failure branch runs in a multi that pins what the compares saw (versions, absences, epoch), so it too
happens atomically with the compares not holding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.serialization import CheckVersion, Create, Delete, SetData
from kazoo.security import OPEN_ACL_UNSAFE

from kvstore_adapters.base import Compare, EventType, Op, Put
from kvstore_adapters.errors import KVError, LeaseNotFound
from kvstore_adapters.zk_layout import pack_event, pack_value
from kvstore_adapters.zk_wire import first_failure

if TYPE_CHECKING:
    from kazoo.protocol.states import ZnodeStat

    from kvstore_adapters.zookeeper import ZooKeeperStore

ACL = OPEN_ACL_UNSAFE
SEQUENTIAL = 2
#: Rounds a transaction may lose to concurrent deletes before it stops checking the epoch.
EPOCH_ROUNDS = 4
#: Bound of the client's cache of key versions (cleared when full: it is only a shortcut).
CACHE_SIZE = 100_000

# Roles of the operations of one multi, to say what its failure means.
EPOCH_CHECK, CHECK, ASSERT_ABSENT, CREATE, SET, DELETE, REGISTER, HOLDER, LOG, OTHER = range(10)

UNKNOWN = object()  # a key's lease when only its existence is known


@dataclass(frozen=True, slots=True)
class Known:
    """What this client last saw of a key: mod revision and znode version at ``epoch``, and its lease."""

    mod_revision: int
    version: int
    epoch: int
    lease: int | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A committed (or refused) transaction: did the compares hold, its revision, how many keys it deleted."""

    succeeded: bool
    revision: int
    deleted: int = 0


@dataclass
class _State:
    """What one transaction call believes about a key: exists?, its lease, and whether that is certain."""

    exists: bool
    lease: object = None
    certain: bool = False


@dataclass
class _Plan:
    ops: list[Any] = field(default_factory=list)
    roles: list[tuple[int, Any]] = field(default_factory=list)
    #: Index of each Put's write op, its path and lease, for the cache.
    puts: list[tuple[int, str, int | None]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    epoch_bump: int | None = None
    #: Version checks of compare keys not yet placed: the first write of such a key carries its check.
    checks: dict[str, int] = field(default_factory=dict)

    def add(self, op: Any, role: int, target: Any = None) -> int:
        self.ops.append(op)
        self.roles.append((role, target))
        return len(self.ops) - 1


class Transaction:
    """One call of :meth:`ZooKeeperStore.txn` (also used by put, delete and delete_prefix)."""

    def __init__(
        self, store: ZooKeeperStore, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]
    ) -> None:
        self.store = store
        self.layout = store.layout
        self.compares = compares
        self.paths = [store.key_path(c.key) for c in compares]
        self.success = success
        self.failure = failure
        # Learned from the server's refusals during this call; they hold for its later rounds.
        self.learned: dict[str, _State] = {}
        self.registered: set[tuple[int, str]] = set()
        # Stats of the compare keys when read (None: use the cache).
        self.stats: list[ZnodeStat | None] | None = None
        self.read_epoch = 0
        self.read_zxid = 0
        self.epoch_rounds = 0

    async def run(self) -> Outcome:
        for lease in {op.lease for op in (*self.success, *self.failure) if isinstance(op, Put)}:
            if lease is not None:
                self.store.leases.check_usable(lease)
        limit = 24 + 2 * (len(self.success) + len(self.failure) + len(self.compares))
        for _ in range(limit):
            outcome = await self._round()
            if outcome is not None:
                return outcome
        raise KVError(f"zookeeper: transaction gave up after {limit} rounds of concurrent changes")

    # --- one round -----------------------------------------------------------------------------------
    async def _round(self) -> Outcome | None:
        plan = _Plan()
        states: dict[str, _State] = {}
        epoch: int | None
        if self.stats is None:
            epoch = self._guards_from_cache(plan, states)
            if epoch is None:
                await self._read_compares()
                return None
            holds = True
        else:
            holds = all(_holds(c, s) for c, s in zip(self.compares, self.stats, strict=True))
            if not holds and not self.failure:
                return Outcome(False, self.read_zxid)
            epoch = self.read_epoch if self.epoch_rounds < EPOCH_ROUNDS else None
            self._guards_from_stats(plan, states, epoch)
        branch = self.success if holds else self.failure
        self._plan_ops(plan, states, branch)
        if not plan.ops:
            return Outcome(holds, self.read_zxid or await self.store.revision())

        results, zxid = await self.store.write_multi(plan.ops)
        failed = first_failure(results)
        if failed is None:
            self._remember(plan, results, zxid, epoch)
            return Outcome(holds, zxid, len(plan.deletes))
        index, error = failed
        role, target = plan.roles[index]
        return await self._refused(role, target, error, zxid)

    async def _refused(self, role: int, target: Any, error: BaseException, zxid: int) -> Outcome | None:
        """What a refused multi means: an answer (compares false), or what to change for the next round."""
        if role == EPOCH_CHECK:
            # Keys were deleted since the versions were read: re-read them (and the epoch).
            self.epoch_rounds += 1
            await self._read_compares()
            return None
        if role in (CHECK, ASSERT_ABSENT):
            if not isinstance(error, BadVersionError | NoNodeError | NodeExistsError):
                raise _unexpected(error)  # e.g. a value too large: not an answer to the compare
            if role == ASSERT_ABSENT and isinstance(error, NoNodeError):
                await self.store.ensure_dirs(target)  # the key's directory is missing, so is the key
                return None
            if self.stats is None and not self.failure:
                return Outcome(False, zxid)  # a cached version no longer matches: the compare is false
            await self._read_compares()  # (re)read to decide and to pin the failure branch
            return None
        if role == CREATE:
            if isinstance(error, NodeExistsError):
                self.learned[target] = _State(True, UNKNOWN, True)
            elif isinstance(error, NoNodeError):
                await self.store.ensure_dirs(target)
            else:
                raise _unexpected(error)
            return None
        if role in (SET, DELETE) and isinstance(error, NoNodeError):
            self.learned[target] = _State(False, None, True)
            return None
        if role == REGISTER:
            if isinstance(error, NodeExistsError):
                self.registered.add(target)
                return None
            raise LeaseNotFound(target[0])
        if role == HOLDER:
            raise LeaseNotFound(target)
        if role == LOG and isinstance(error, NoNodeError):
            await self.store.ensure_structure()
            return None
        raise _unexpected(error)

    # --- compares ------------------------------------------------------------------------------------
    def _guards_from_cache(self, plan: _Plan, states: dict[str, _State]) -> int | None:
        """Version checks from the cache; the epoch they were read at, or None when one is not cached."""
        known = self.store.known
        current = self.store.epoch
        checks: list[tuple[str, int]] = []
        for compare, path in zip(self.compares, self.paths, strict=True):
            if compare.mod_revision == 0:
                states[path] = _State(False, None, True)
                continue
            entry = known.get(path)
            if entry is None or entry.mod_revision != compare.mod_revision or entry.epoch != current:
                return None
            checks.append((path, entry.version))
            states[path] = _State(True, entry.lease, True)
        if checks:
            plan.add(CheckVersion(self.layout.epoch, current), EPOCH_CHECK)
            plan.checks.update(checks)
        self._assert_absences(plan, states, self.success)
        return current

    def _guards_from_stats(self, plan: _Plan, states: dict[str, _State], epoch: int | None) -> None:
        """Pin what the last read saw: versions of existing keys, absence of the others, the epoch."""
        assert self.stats is not None
        if epoch is not None and any(s is not None for s in self.stats):
            plan.add(CheckVersion(self.layout.epoch, epoch), EPOCH_CHECK)
        for path, stat in zip(self.paths, self.stats, strict=True):
            if stat is None:
                states[path] = _State(False, None, True)
            else:
                plan.checks[path] = stat.version
                states[path] = _State(True, UNKNOWN, True)
        holds = all(_holds(c, s) for c, s in zip(self.compares, self.stats, strict=True))
        self._assert_absences(plan, states, self.success if holds else self.failure)

    def _assert_absences(self, plan: _Plan, states: dict[str, _State], branch: Sequence[Op]) -> None:
        """Absent keys not created first by ``branch`` get a create-and-delete that fails if they exist."""
        first_op: dict[str, Op] = {}
        for op in branch:
            first_op.setdefault(self.store.key_path(op.key), op)
        for path, state in states.items():
            if state.exists or isinstance(first_op.get(path), Put):
                continue
            plan.add(Create(path, b"", ACL, 0), ASSERT_ABSENT, path)
            plan.add(Delete(path, -1), OTHER)

    async def _read_compares(self) -> None:
        """Read the epoch and the compare keys' stats, in one round trip (the epoch first)."""
        stats, epoch, zxid = await self.store.read_stats(self.paths)
        self.stats, self.read_epoch, self.read_zxid = stats, epoch, zxid

    # --- operations ----------------------------------------------------------------------------------
    def _plan_ops(self, plan: _Plan, states: dict[str, _State], branch: Sequence[Op]) -> None:
        layout = self.layout
        known = self.store.known
        holders: set[int] = set()
        log_entries: list[Any] = []
        for op in branch:
            path = self.store.key_path(op.key)
            state = states.get(path) or self.learned.get(path)
            if state is None:
                entry = known.get(path, UNKNOWN)
                if entry is UNKNOWN:
                    state = _State(False)  # a guess: most unconditional writes create
                elif entry is None:
                    state = _State(False)
                else:
                    assert isinstance(entry, Known)
                    state = _State(True, entry.lease)
            if isinstance(op, Put):
                data = pack_value(op.value, op.lease)
                if path in plan.checks:  # the write itself checks the version the compare needs
                    index = plan.add(SetData(path, data, plan.checks.pop(path)), CHECK, path)
                elif state.exists:
                    index = plan.add(SetData(path, data, -1), SET, path)
                else:
                    index = plan.add(
                        Create(path, data, ACL, 0),
                        ASSERT_ABSENT if state.certain and path in states else CREATE,
                        path,
                    )
                plan.puts.append((index, path, op.lease))
                if op.lease is not None:
                    if state.lease != op.lease and (op.lease, op.key) not in self.registered:
                        registration = Create(layout.lease_key_path(op.lease, op.key), b"", ACL, 0)
                        plan.add(registration, REGISTER, (op.lease, op.key))
                    if op.lease not in holders:
                        holders.add(op.lease)
                        plan.add(CheckVersion(layout.holder_path(op.lease), -1), HOLDER, op.lease)
                states[path] = _State(True, op.lease, True)
                log_entries.append(
                    Create(layout.log_entry, pack_event(EventType.PUT, op.key, op.value), ACL, SEQUENTIAL)
                )
            else:
                if not state.exists and state.certain:
                    continue  # deleting a missing key is no change and no event
                if path in plan.checks:
                    plan.add(Delete(path, plan.checks.pop(path)), CHECK, path)
                else:
                    plan.add(Delete(path, -1), DELETE, path)
                plan.deletes.append(path)
                states[path] = _State(False, None, True)
                log_entries.append(
                    Create(layout.log_entry, pack_event(EventType.DELETE, op.key), ACL, SEQUENTIAL)
                )
        for path, version in plan.checks.items():  # compare keys the branch does not write
            plan.add(CheckVersion(path, version), CHECK, path)
        plan.checks.clear()
        if plan.deletes:
            plan.epoch_bump = plan.add(SetData(layout.epoch, b"", -1), OTHER)
        for entry_op in log_entries:
            plan.add(entry_op, LOG)

    def _remember(self, plan: _Plan, results: list[Any], zxid: int, epoch: int | None) -> None:
        """Record the versions this transaction produced, so the next compare on them needs no read."""
        store = self.store
        known = store.known
        if plan.epoch_bump is not None:
            epoch = results[plan.epoch_bump].version
            store.note_epoch(epoch)
        elif epoch is None:
            epoch = -1  # no epoch to vouch for these versions: never use them unread
        if len(known) > CACHE_SIZE:
            known.clear()
        for index, path, lease in plan.puts:
            result = results[index]
            if isinstance(result, str):  # a create
                known[path] = Known(zxid, 0, epoch, lease)
            else:
                known[path] = Known(result.mzxid, result.version, epoch, lease)
        for path in plan.deletes:
            known[path] = None
        store.note_appended(len(plan.puts) + len(plan.deletes))


def _holds(compare: Compare, stat: ZnodeStat | None) -> bool:
    if compare.mod_revision == 0:
        return stat is None
    return stat is not None and stat.mzxid == compare.mod_revision


def _unexpected(error: BaseException) -> KVError:
    if isinstance(error, BadVersionError | NodeExistsError | NoNodeError):
        return KVError(
            f"zookeeper: transaction refused unexpectedly ({type(error).__name__}); "
            "is something else writing under this prefix?"
        )
    return KVError(f"zookeeper: transaction failed: {type(error).__name__}: {error}")
