"""Small async helpers of the contract suite: bounded waits on watches and conditions."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

from kvstore_adapters import Event, KVStore, Watch

#: Lease TTL the suite uses (seconds): short so expiry tests are quick, long enough for a loaded machine.
TTL = 2.0
#: How late an expiry may be (seconds): server-side expiry checks are periodic and ZooKeeper rounds
#: session timeouts to ticks.
SLACK = 3.0
#: A bound on waits that should finish almost at once; only a hang or a lost event reaches it.
PROMPT = 10.0

PYTHON = sys.executable


async def next_event(watch: Watch, timeout: float = PROMPT) -> Event:
    """The watch's next event; fails the test if none comes within ``timeout``."""
    try:
        return await asyncio.wait_for(anext(watch), timeout)
    except TimeoutError:
        raise AssertionError(f"no watch event within {timeout}s") from None


async def collect(watch: Watch, count: int, timeout: float = PROMPT) -> list[Event]:
    """Exactly ``count`` events (fails if they do not all arrive within ``timeout``)."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(events) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"only {len(events)} of {count} watch events within {timeout}s: {events}")
        events.append(await next_event(watch, remaining))
    return events


async def assert_quiet(watch: Watch, wait: float = 0.5) -> None:
    """No further event arrives within ``wait`` seconds (nothing repeated, nothing extra)."""
    try:
        extra = await asyncio.wait_for(anext(watch), wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected extra watch event {extra}")


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.1
) -> float:
    """Poll ``condition`` until true; returns the seconds it took, fails after ``timeout``."""
    start = time.monotonic()
    while True:
        if await condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(interval)


async def key_gone(store: KVStore, key: str) -> bool:
    return await store.get(key) is None


def simple(events: list[Event]) -> list[tuple[str, str, bytes]]:
    """Events without revisions, for comparing with what a test wrote."""
    return [(e.type.value, e.key, e.value) for e in events]
