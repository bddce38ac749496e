"""Byte-range locks for read-modify-write of partial blocks.

A write that covers part of a block must read the block, merge, and write it back; two such
writes to the same block, or one racing an aligned write, would lose an update.  Every write to
a table with blocks larger than a byte holds the range it touches (rounded out to whole blocks)
for its whole duration; overlapping writes wait for each other, disjoint ones do not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class RangeLocks:
    def __init__(self) -> None:
        self._held: list[tuple[int, int, trio.Event]] = []

    @asynccontextmanager
    async def hold(self, start: int, end: int) -> AsyncIterator[None]:
        while True:
            blocker = next((ev for s, e, ev in self._held if s < end and start < e), None)
            if blocker is None:
                break
            await blocker.wait()
        entry = (start, end, trio.Event())
        self._held.append(entry)
        try:
            yield
        finally:
            self._held.remove(entry)
            entry[2].set()
