"""linear — map a range of the device onto a contiguous range of another device.

Table:   ``<start> <length> linear <dev> <offset>``
  ``dev``     a file, block device (path or MAJOR:MINOR) or another device of this mount
              (``/dev/mapper/NAME`` or ``MOUNTPOINT/NAME``)
  ``offset``  start of the mapped area on ``dev``, in sectors
Mapping: byte ``o`` of the target is byte ``offset*512 + o`` of ``dev``.
Status:  empty.   Table: ``<dev> <offset>`` (a block device prints as MAJOR:MINOR).
Flush, FUA, discard and write-zeroes pass down.  No messages.

Differences from the kernel: lseek(2) SEEK_DATA/SEEK_HOLE on the device file pass down too: a
hole of a sparse backing file (asked with lseek in a worker thread) or of a lower dmfuse device
is a hole of this target; a block device is all data.  In the device file's ``st_blocks`` the
target counts at most what its backing file has allocated.
"""

from __future__ import annotations

from collections.abc import Sequence

from dmfuse.args import ArgReader
from dmfuse.backends.base import Backend
from dmfuse.errors import TableError
from dmfuse.target import DeviceOpener, Target, check_area, register


@register
class Linear(Target):
    name = "linear"
    version = (1, 4, 0)

    def __init__(self, length: int, dev: Backend, offset_sectors: int) -> None:
        super().__init__(length)
        self.dev = dev
        self.offset_sectors = offset_sectors
        self.base = offset_sectors * 512

    @classmethod
    async def construct(cls, opener: DeviceOpener, length: int, args: Sequence[str]) -> Linear:
        if len(args) != 2:
            raise TableError("Invalid argument count")
        reader = ArgReader(args)
        spec = reader.shift("device")
        offset = reader.unsigned("device sector")
        return cls(length, await opener.open(spec), offset)

    async def read(self, offset: int, buf: memoryview) -> None:
        await self.dev.read(self.base + offset, buf)

    async def write(self, offset: int, data: memoryview) -> None:
        await self.dev.write(self.base + offset, data)

    async def write_fua(self, offset: int, data: memoryview) -> None:
        await self.dev.write_fua(self.base + offset, data)

    async def discard(self, offset: int, length: int) -> None:
        await self.dev.discard(self.base + offset, length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self.dev.write_zeroes(self.base + offset, length)

    def remap(self) -> tuple[Backend, int]:
        return self.dev, self.base

    def data_sources(self) -> list[tuple[Backend, int]]:
        return [(self.dev, self.length)]

    async def seek_data(self, offset: int) -> int:
        return await self.dev.seek_data(self.base + offset, self.base + self.length) - self.base

    async def seek_hole(self, offset: int) -> int:
        return await self.dev.seek_hole(self.base + offset, self.base + self.length) - self.base

    def table(self, showkeys: bool = False) -> str:
        return f"{self.dev.display} {self.offset_sectors}"

    def devices(self) -> list[Backend]:
        return [self.dev]

    def check_fits(self) -> None:
        check_area(self.dev, self.base, self.length)
