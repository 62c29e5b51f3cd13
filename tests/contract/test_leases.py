"""Lease contract: keys attached to a lease vanish when it expires or is revoked, keep-alive holds them,
and a client process that dies (kill -9) loses its keys within the TTL. (How to run: see test_contract.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time

import pytest

from kvstore_adapters import EventType, KVStore, LeaseNotFound, Put
from kvstore_adapters.lease import LeaseKeeper
from tests.contract.conftest import Backend
from tests.contract.helpers import PROMPT, PYTHON, SLACK, TTL, collect, key_gone, wait_until

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def test_lease_expiry_deletes_its_keys(store: KVStore, backend: Backend) -> None:
    observer = await backend.open()
    lease = await store.grant_lease(TTL)
    assert lease.ttl >= TTL
    start = await store.revision() + 1
    await store.put("l/leased", b"v", lease=lease.id)
    await store.put("l/plain", b"v")
    kv = await store.get("l/leased")
    assert kv is not None and kv.lease == lease.id

    async with observer.watch("l/", start_revision=start) as watch:
        await asyncio.sleep(lease.ttl / 2)
        assert await observer.get("l/leased") is not None, "expired after half its TTL"
        await wait_until(lambda: key_gone(observer, "l/leased"), lease.ttl + SLACK, "leased key vanishes")
        events = await collect(watch, 3)
    assert [(e.type, e.key) for e in events] == [
        (EventType.PUT, "l/leased"),
        (EventType.PUT, "l/plain"),
        (EventType.DELETE, "l/leased"),
    ]
    assert await observer.get("l/plain") is not None
    with pytest.raises(LeaseNotFound):
        await store.keep_alive(lease)
    await store.revoke_lease(lease)  # revoking an expired lease is not an error


async def test_keep_alive_holds_the_keys(store: KVStore, backend: Backend) -> None:
    observer = await backend.open()
    lease = await store.grant_lease(TTL)
    await store.put("k/held", b"v", lease=lease.id)
    deadline = time.monotonic() + 2 * lease.ttl
    while time.monotonic() < deadline:
        await asyncio.sleep(lease.ttl / 4)
        await store.keep_alive(lease)
    assert await observer.get("k/held") is not None, "vanished although kept alive"
    await wait_until(
        lambda: key_gone(observer, "k/held"), lease.ttl + SLACK, "key vanishes after keep-alive stops"
    )


async def test_revoke_deletes_keys_at_once(store: KVStore, backend: Backend) -> None:
    observer = await backend.open()
    lease = await store.grant_lease(30)
    for i in range(3):
        await store.put(f"r/{i}", b"v", lease=lease.id)
    await store.put("r/plain", b"v")
    await store.revoke_lease(lease)
    assert [kv.key for kv in (await observer.range("r/")).kvs] == ["r/plain"]
    with pytest.raises(LeaseNotFound):
        await store.keep_alive(lease)
    with pytest.raises(LeaseNotFound):
        await store.put("r/late", b"v", lease=lease.id)
    await store.revoke_lease(lease)


async def test_put_without_lease_detaches_the_key(store: KVStore) -> None:
    lease = await store.grant_lease(30)
    await store.put("d/k", b"leased", lease=lease.id)
    await store.put("d/k", b"plain")
    kv = await store.get("d/k")
    assert kv is not None and kv.lease is None
    await store.revoke_lease(lease)
    assert (kv := await store.get("d/k")) is not None and kv.value == b"plain"


async def test_lease_keys_in_a_transaction(store: KVStore) -> None:
    lease = await store.grant_lease(30)
    result = await store.txn([], [Put("t/a", b"1", lease=lease.id), Put("t/b", b"2")])
    assert result.succeeded
    await store.revoke_lease(lease)
    assert [kv.key for kv in (await store.range("t/")).kvs] == ["t/b"]


async def test_closing_a_client_lets_its_leases_expire(backend: Backend) -> None:
    client, observer = await backend.open(), await backend.open()
    lease = await client.grant_lease(TTL)
    await client.put("c/k", b"v", lease=lease.id)
    await client.close()
    await wait_until(lambda: key_gone(observer, "c/k"), lease.ttl + SLACK, "key of a closed client vanishes")


async def test_lease_keeper_keeps_alive_and_reports_loss(store: KVStore, backend: Backend) -> None:
    observer = await backend.open()
    keeper = await LeaseKeeper.grant(store, TTL)
    try:
        await store.put("lk/k", b"v", lease=keeper.lease.id)
        await asyncio.sleep(2 * keeper.lease.ttl)
        assert await observer.get("lk/k") is not None
        assert not keeper.lost.is_set()
        await observer.revoke_lease(keeper.lease)  # behind the keeper's back
        await asyncio.wait_for(keeper.lost.wait(), keeper.lease.ttl + SLACK)
        assert isinstance(keeper.error, LeaseNotFound)
        with pytest.raises(LeaseNotFound):
            await keeper.wait_lost()
    finally:
        await keeper.stop()


# A client process: opens the store by URL, keeps a lease alive, puts a key on it, says "ready", waits.
CLIENT = """
import asyncio, sys
from kvstore_adapters import open_store
from kvstore_adapters.lease import LeaseKeeper

async def main():
    store = await open_store(sys.argv[1])
    keeper = await LeaseKeeper.grant(store, float(sys.argv[2]))
    await store.put(sys.argv[3], b"alive", lease=keeper.lease.id)
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def start_client_process(args: list[str], script: str = CLIENT) -> subprocess.Popen[str]:
    """Start ``python -c script args…`` and wait for its "ready" line (or fail with its output)."""
    proc = subprocess.Popen(
        [PYTHON, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), PROMPT + 20)
    except TimeoutError:
        kill_process(proc)
        raise AssertionError("client process did not get ready") from None
    if line.strip() != "ready":
        kill_process(proc)
        rest = proc.stdout.read()
        raise AssertionError(f"client process failed: {line}{rest}")
    return proc


def kill_process(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process we started (by PID) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


async def test_killed_client_process_loses_its_keys(backend: Backend, backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("the memory store lives in one process: another process cannot share it")
    observer = await backend.open()
    proc = await start_client_process([backend.url, str(TTL), "proc/key"])
    try:
        kv = await observer.get("proc/key")
        assert kv is not None and kv.lease is not None
        # While the process lives, its keep-alives hold the key past the TTL…
        await asyncio.sleep(1.5 * TTL)
        assert await observer.get("proc/key") is not None, "vanished while its client was alive"
        # …and once it is killed, the key goes within a TTL (+ slack).
        kill_process(proc)
        await wait_until(
            lambda: key_gone(observer, "proc/key"), TTL + SLACK, "key of a killed client vanishes"
        )
    finally:
        kill_process(proc)
