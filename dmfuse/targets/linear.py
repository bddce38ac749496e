"""linear — map a range of the device onto a contiguous range of another device.

Table:   ``<start> <length> linear <dev> <offset>``
  ``dev``     a file, block device (path or MAJOR:MINOR) or another device of this mount
              (``/dev/mapper/NAME`` or ``MOUNTPOINT/NAME``)
  ``offset``  start of the mapped area on ``dev``, in sectors
Mapping: byte ``o`` of the target is byte ``offset*512 + o`` of ``dev``.
Status:  empty.   Table: ``<dev> <offset>`` (a block device prints as MAJOR:MINOR).
Flush, FUA, discard and write-zeroes pass down.  No messages.
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
        return cls(length, opener.open(spec), offset)

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

    def table(self, showkeys: bool = False) -> str:
        return f"{self.dev.display} {self.offset_sectors}"

    def devices(self) -> list[Backend]:
        return [self.dev]

    def check_fits(self) -> None:
        check_area(self.dev, self.base, self.length)
