"""Another device of the same mount used as a backing device (stacking), resolved in process.

I/O goes straight to that device's dispatcher, never through the mount: re-entering the kernel
from a FUSE handler could deadlock the request queue.  While a table holds it, the lower device
counts as open (``Open count`` in ``info``), so it cannot be removed under its user.
SEEK_DATA/SEEK_HOLE ask the lower device's live table, so its holes show through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dmfuse.backends.base import Backend

if TYPE_CHECKING:
    from dmfuse.engine.device import Device


class MappedBackend(Backend):
    def __init__(self, device: Device, display: str) -> None:
        self.device = device
        self.display = display
        self.devno = (MAPPED_MAJOR, device.minor)
        device.open_count += 1

    def size(self) -> int:
        return self.device.size

    def block_size(self) -> int:
        live = self.device.live
        return live.block if live is not None else 1

    def discards(self) -> bool:
        live = self.device.live
        return live is not None and live.discards

    async def read(self, offset: int, buf: memoryview) -> None:
        await self.device.read_into(offset, buf)

    async def write(self, offset: int, data: memoryview) -> None:
        await self.device.write(offset, data, exact=True)

    async def write_fua(self, offset: int, data: memoryview) -> None:
        await self.device.write(offset, data, exact=True, fua=True)  # REQ_FUA passes down

    async def flush(self, datasync: bool = False) -> None:
        await self.device.flush(datasync=datasync)

    async def discard(self, offset: int, length: int) -> None:
        await self.device.discard(offset, length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self.device.discard(offset, length, zero_fill=True)

    def allocated(self) -> int | None:
        return self.device.allocated()

    async def seek_data(self, offset: int, end: int) -> int:
        found, size = await self.device.seek(offset, hole=False, end=end)
        if offset >= size:
            return offset  # past the lower device's end: reads fail, that is not a hole
        return min(found, end)

    async def seek_hole(self, offset: int, end: int) -> int:
        found, size = await self.device.seek(offset, hole=True, end=end)
        if found >= size:
            return end  # the lower device's end is no hole for us (past it reads fail)
        return min(found, end)

    async def close(self) -> None:
        self.device.open_count -= 1

    def buffer_alignment(self) -> int:
        live = self.device.live
        return live.buffer_align if live is not None else 1

    def depends_on(self) -> list[str]:
        return [self.device.name]


# dm's usual dynamic major; our devices have no real device node, this only numbers them.
MAPPED_MAJOR = 253
