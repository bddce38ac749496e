"""zero — reads return zeros, writes and discards are accepted and dropped.

Table:   ``<start> <length> zero`` (no arguments; any argument is refused).
Status and table strings are empty.  Takes no flushes.  Classic use: a huge sparse device.

Differences from the kernel: on the device file the whole target is a hole for lseek(2)
SEEK_DATA/SEEK_HOLE (the kernel's block device has no holes), so ``cp --sparse``, ``qemu-img
map`` and ``tar -S`` skip it without reading, and it counts nothing in the device file's
``st_blocks``.
"""

from __future__ import annotations

from collections.abc import Sequence

from dmfuse.backends.base import Backend
from dmfuse.errors import TableError
from dmfuse.target import DeviceOpener, Limits, Target, register


@register
class Zero(Target):
    name = "zero"
    version = (1, 2, 0)
    limits = Limits(flush_bios=0)

    @classmethod
    async def construct(cls, opener: DeviceOpener, length: int, args: Sequence[str]) -> Zero:
        if args:
            raise TableError("No arguments required")
        return cls(length)

    async def read(self, offset: int, buf: memoryview) -> None:
        buf[:] = bytes(len(buf))

    async def write(self, offset: int, data: memoryview) -> None:
        pass

    async def discard(self, offset: int, length: int) -> None:
        pass

    async def write_zeroes(self, offset: int, length: int) -> None:
        pass

    def data_sources(self) -> list[tuple[Backend, int]]:
        return []

    async def seek_data(self, offset: int) -> int:
        return self.length

    async def seek_hole(self, offset: int) -> int:
        return offset
