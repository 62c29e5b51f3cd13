"""Network namespace helpers: run code inside a namespace, create and remove named namespaces.

``setns(2)`` changes the namespace of the calling *thread* only, so work that must happen inside another
namespace (opening a socket there, writing one of its sysctls) runs on a short-lived thread of its own that
enters the namespace and then ends; the thread's namespace dies with it and no pooled thread is ever left
in a foreign namespace. Sockets keep the namespace they were created in, so the caller can serve them
from its own event loop afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from pyroute2 import netns as pr_netns

T = TypeVar("T")

NETNS_RUN_DIR = Path("/run/netns")


def netns_path(name_or_path: str) -> str:
    """A namespace name (``ip netns`` style) or path, as a path."""
    return name_or_path if "/" in name_or_path else str(NETNS_RUN_DIR / name_or_path)


def _enter(path: str) -> None:
    pr_netns.setns(path, flags=0, fork=False)


def run_in_netns(netns: str | None, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` inside ``netns`` (a name or path; ``None``: here) and return its result.

    Blocks the caller for the duration of ``fn``; use :func:`arun_in_netns` from a coroutine.
    """
    if netns is None:
        return fn(*args)
    path = netns_path(netns)

    def entered() -> T:
        _enter(path)
        return fn(*args)

    return _in_thread(entered)


async def arun_in_netns(netns: str | None, fn: Callable[..., T], *args: Any) -> T:
    """:func:`run_in_netns` without blocking the event loop."""
    if netns is None:
        return fn(*args)
    path = netns_path(netns)

    def entered() -> T:
        _enter(path)
        return fn(*args)

    def abandon(result: T) -> None:
        # Nobody will take the sockets made in the namespace: close them rather than leak them.
        for item in result if isinstance(result, tuple) else (result,):
            if isinstance(item, socket.socket):
                item.close()

    return await _awaited_thread(entered, abandon)


def bound_socket(family: int, type_: int, address: tuple[Any, ...], *, reuse: bool = False) -> socket.socket:
    """A socket bound to ``address`` (called inside the target namespace by :func:`run_in_netns`)."""
    sock = socket.socket(family, type_)
    try:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def write_sysctl(netns: str | None, key: str, value: str) -> None:
    """Write ``net.…`` sysctl ``key`` (dotted) in ``netns``; /proc/sys/net follows the thread's namespace."""
    path = "/proc/sys/" + key.replace(".", "/")

    def write() -> None:
        with open(path, "w") as fh:
            fh.write(value)

    run_in_netns(netns, write)


def read_sysctl(netns: str | None, key: str) -> str:
    """Read ``net.…`` sysctl ``key`` (dotted) in ``netns``."""
    path = "/proc/sys/" + key.replace(".", "/")

    def read() -> str:
        with open(path) as fh:
            return fh.read().strip()

    return run_in_netns(netns, read)


def _unshare_netns() -> None:
    """Give the calling thread a new, empty network namespace (its process keeps its own)."""
    if _libc().unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def _make_netns(name: str) -> None:
    _unshare_netns()
    # What ``ip netns add`` does, for this thread's namespace: bind it at /run/netns/NAME.
    pr_netns.attach(name, "thread-self")


def create_netns(name: str) -> str:
    """Create the named namespace (``/run/netns/NAME``); returns its path. Its loopback is still down.

    A short thread unshares into a new namespace and binds it at the path, then ends (the mount keeps the
    namespace). pyroute2's ``netns.create`` forks the agent for that instead, which costs it about 10 ms
    of CPU per namespace, and a container start makes one.
    """
    _in_thread(_make_netns, name)
    return netns_path(name)


async def acreate_netns(name: str) -> str:
    """:func:`create_netns` without blocking the event loop."""
    path, _ = await acreate_netns_with(name, _nothing)
    return path


async def acreate_netns_with(name: str, fn: Callable[[], T]) -> tuple[str, T]:
    """:func:`acreate_netns`, then ``fn()`` called inside the new namespace by the thread that made it (to
    open a socket there without another thread); returns the path and what ``fn`` returned."""

    def made() -> T:
        _make_netns(name)
        try:
            return fn()
        except BaseException:
            remove_netns(name)
            raise

    def abandon(result: T) -> None:
        if isinstance(result, socket.socket):
            result.close()
        remove_netns(name)  # nobody is left to use or remove it

    return netns_path(name), await _awaited_thread(made, abandon)


async def _awaited_thread(fn: Callable[[], T], abandon: Callable[[T], None]) -> T:
    """``fn()`` on a thread of its own that ends afterwards, awaited without blocking the event loop; if the
    awaiting task is cancelled first, ``abandon`` gets what ``fn`` made so that nothing leaks."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.cancelled():
            if error is None:
                abandon(result)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name="netns-thread", daemon=True).start()
    return await future


def _nothing() -> None:
    return None


def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` on a thread of its own that ends afterwards (for namespace changes that must
    not stay with a pooled thread, or with this one)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="netns-thread", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return cast(T, box["result"])


_LIBC: ctypes.CDLL | None = None
CLONE_NEWNET = 0x40000000


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def remove_netns(path: str) -> None:
    """Unmount and remove a named namespace; a namespace already gone is not an error."""
    path = netns_path(path)
    if not os.path.exists(path):
        return
    with contextlib.suppress(OSError):
        pr_netns.remove(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def same_netns(a: str | None, b: str | None) -> bool:
    """Whether two namespace paths (``None``: this process's) are the same namespace."""
    sa = os.stat(netns_path(a) if a else "/proc/self/ns/net")
    sb = os.stat(netns_path(b) if b else "/proc/self/ns/net")
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
