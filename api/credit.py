"""Credit: how many frames a sender may still send on a stream before its receiver acknowledges some.

Log subscriptions and engine calls (api/logs.py, api/engine.py) share this flow control: the receiver
grants a window, the sender takes one unit per frame and waits when none is left, and each acknowledgement
gives units back. Nothing piles up between a slow reader and a fast writer.
"""

from __future__ import annotations

import asyncio


class Credit:
    """Units a sender may still use; :meth:`take` waits for one, :meth:`give` returns some."""

    def __init__(self, units: int) -> None:
        self.units = units
        self._changed = asyncio.Event()
        self._closed = False

    async def take(self) -> bool:
        """Wait for a unit and use it; False once :meth:`close` was called (nothing more will come)."""
        while self.units <= 0 and not self._closed:
            self._changed.clear()
            await self._changed.wait()
        if self._closed:
            return False
        self.units -= 1
        return True

    def give(self, units: int) -> None:
        """The receiver consumed ``units`` more frames."""
        self.units += max(units, 0)
        self._changed.set()

    def close(self) -> None:
        """Wake every waiter: the stream is over."""
        self._closed = True
        self._changed.set()
