"""kazoo requests as asyncio futures, and the one ZooKeeper request kazoo 2.11 lacks (``multiRead``).

kazoo's connection thread completes each request by calling ``set(result)`` or ``set_exception(exc)`` on the
object handed to ``KazooClient._call``. :class:`_Reply` is such an object: it forwards the outcome straight
to the event loop with ``call_soon_threadsafe``, with no detour through kazoo's completion thread and no
``asyncio.to_thread``. It also records the zxid of the reply header, which kazoo stores in
``client.last_zxid`` on that same thread just before completing the request: for a write that is the
write's zxid, for a read the server's last committed zxid when it answered. That gives the adapter its
revisions without extra requests.

``_call`` is kazoo's internal entry point (stable since kazoo 1.0); requests are kazoo's own serializable
namedtuples, built directly to skip the argument checks of the public ``*_async`` methods on hot paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Sequence
from typing import Any

from kazoo.exceptions import (
    EXCEPTIONS,
    ConnectionClosedError,
    ConnectionLoss,
    RolledBackError,
    RuntimeInconsistency,
    SessionExpiredError,
)
from kazoo.protocol.serialization import (
    CheckVersion,
    Create,
    Delete,
    MultiHeader,
    SetData,
    Transaction,
    int_struct,
    multiheader_struct,
    read_buffer,
    read_string,
    stat_struct,
)
from kazoo.protocol.states import ZnodeStat
from kazoo.security import OPEN_ACL_UNSAFE

#: Errors meaning "the connection or session went away", as opposed to an answer from the server.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionLoss,
    SessionExpiredError,
    ConnectionClosedError,
)


def _settle(future: asyncio.Future[tuple[Any, int]], result: Any, zxid: int) -> None:
    if not future.done():
        future.set_result((result, zxid))


def _fail(future: asyncio.Future[tuple[Any, int]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class _Reply:
    """The completion object kazoo's connection thread calls; see the module docstring."""

    __slots__ = ("_client", "_future", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[tuple[Any, int]], client: Any):
        self._loop = loop
        self._future = future
        self._client = client

    def __bool__(self) -> bool:  # kazoo tests ``if async_object:``
        return True

    def set(self, value: Any = None) -> None:
        zxid = self._client.last_zxid
        with contextlib.suppress(RuntimeError):  # the loop closed while the request was in flight
            self._loop.call_soon_threadsafe(_settle, self._future, value, zxid)

    def set_exception(self, exception: BaseException) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_fail, self._future, exception)


def submit(client: Any, request: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future[tuple[Any, int]]:
    """Queue ``request`` on ``client`` now; the future resolves to ``(result, reply zxid)``.

    Queueing happens before this returns, so requests submitted one after another by the same client are
    answered in that order (ZooKeeper serves a session's requests in order).
    """
    future: asyncio.Future[tuple[Any, int]] = loop.create_future()
    client._call(request, _Reply(loop, future, client))
    return future


class MultiRead:
    """ZooKeeper's ``multiRead`` (opcode 22, server 3.6+): several ``GetData``/``GetChildren`` in one request.

    Each read succeeds or fails on its own; the result list holds ``(data, stat)`` for GetData, a list of
    names for GetChildren, and an exception instance for a read that failed (e.g. ``NoNodeError``).
    """

    type = 22

    def __init__(self, operations: Sequence[Any]) -> None:
        self.operations = list(operations)

    def serialize(self) -> bytearray:
        out = bytearray()
        for op in self.operations:
            out.extend(MultiHeader(op.type, False, -1).serialize())
            out.extend(op.serialize())
        out.extend(multiheader_struct.pack(-1, True, -1))
        return out

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> list[Any]:
        results: list[Any] = []
        while True:
            kind, done, _err = multiheader_struct.unpack_from(buffer, offset)
            offset += multiheader_struct.size
            if done:
                return results
            if kind == 4:  # GetData
                data, offset = read_buffer(buffer, offset)
                stat = ZnodeStat._make(stat_struct.unpack_from(buffer, offset))
                offset += stat_struct.size
                results.append((data, stat))
            elif kind == 8:  # GetChildren
                count = int_struct.unpack_from(buffer, offset)[0]
                offset += int_struct.size
                names = []
                for _ in range(count):
                    name, offset = read_string(buffer, offset)
                    names.append(name)
                results.append(names)
            elif kind == -1:
                code = int_struct.unpack_from(buffer, offset)[0]
                offset += int_struct.size
                results.append(EXCEPTIONS[code]())
            else:
                raise ValueError(f"unexpected result type {kind} in a multiRead reply")


_HEAD = struct.Struct("!iBi")
_INT = struct.Struct("!i")
_END = _HEAD.pack(-1, 1, -1)


def _acl_bytes(acls: Sequence[Any]) -> bytes:
    out = bytearray(_INT.pack(len(acls)))
    for acl in acls:
        scheme, ident = acl.id.scheme.encode(), acl.id.id.encode()
        out += _INT.pack(acl.perms) + _INT.pack(len(scheme)) + scheme + _INT.pack(len(ident)) + ident
    return bytes(out)


_OPEN_ACL = _acl_bytes(OPEN_ACL_UNSAFE)


def _string(text: str) -> bytes:
    raw = text.encode()
    return _INT.pack(len(raw)) + raw


class Multi:
    """A multi-op transaction (opcode 14) like kazoo's ``Transaction``, with a faster ``serialize``.

    Every write of the adapter is one of these, so encoding its few create/set/delete/check operations
    directly (and the open ACL once) saves work on kazoo's connection thread. Replies decode with kazoo's
    own code.
    """

    type = Transaction.type
    deserialize = Transaction.deserialize

    __slots__ = ("operations",)

    def __init__(self, operations: Sequence[Any]) -> None:
        self.operations = operations

    def serialize(self) -> bytes:
        parts: list[bytes] = []
        for op in self.operations:
            kind = type(op)
            if kind is Create and op.acl is OPEN_ACL_UNSAFE:
                data = op.data
                parts += (
                    _HEAD.pack(1, 0, -1),
                    _string(op.path),
                    _INT.pack(len(data)),
                    data,
                    _OPEN_ACL,
                    _INT.pack(op.flags),
                )
            elif kind is SetData:
                data = op.data
                parts += (
                    _HEAD.pack(5, 0, -1),
                    _string(op.path),
                    _INT.pack(len(data)),
                    data,
                    _INT.pack(op.version),
                )
            elif kind is Delete or kind is CheckVersion:
                parts += (_HEAD.pack(op.type, 0, -1), _string(op.path), _INT.pack(op.version))
            else:
                parts += (bytes(MultiHeader(op.type, False, -1).serialize()), bytes(op.serialize()))
        parts.append(_END)
        return b"".join(parts)


def first_failure(results: Sequence[Any]) -> tuple[int, BaseException] | None:
    """The operation that made a multi-op transaction fail, as ``(index, error)``; None if it succeeded.

    ZooKeeper reports the operations before the culprit as rolled back and those after it as
    "runtime inconsistency"; only the culprit carries the real error.
    """
    for index, result in enumerate(results):
        if isinstance(result, BaseException) and not isinstance(
            result, RolledBackError | RuntimeInconsistency
        ):
            return index, result
    return None
