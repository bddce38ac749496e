"""unstriped — expose one member of a striped (RAID-0) layout as a device of its own.

Table:   ``<start> <length> unstriped <num_stripes> <chunk_size> <stripe_nr> <dev> <offset>``
  ``num_stripes``  stripes of the layout on ``dev`` (>= 1)
  ``chunk_size``   sectors per chunk (> 0; powers of two not required)
  ``stripe_nr``    the member to extract, 0-based
  ``offset``       start of the striped layout on ``dev``, in sectors
  The length must divide by ``chunk_size`` (only that, as in Linux 6.12's unstriped v1.1.0).
Mapping of target sector ``s``: ``row = s // chunk_size``,
  ``dev_sector = offset + s + row * (num_stripes - 1) * chunk_size + stripe_nr * chunk_size``.
  A request never crosses a chunk (io boundary = chunk size).
Status:  empty.   Table: ``<num_stripes> <chunk_size> <stripe_nr> <dev> <offset>``.
Like the kernel's target it takes no flushes (fsync skips it) and no discards (a punch-hole over
it fails with EOPNOTSUPP); write-zeroes writes zeros.  No messages.

Kernel quirks kept: ``stripe_nr`` equal to ``num_stripes`` is accepted (the range check is off
by one), and with a single stripe any ``stripe_nr`` is.  The resume-time size check covers only
``offset + length`` on ``dev``, as the kernel's ``iterate_devices`` reports it.  Sectors are
target-relative (checked on 6.12 with a line starting at sector 64).
"""

from __future__ import annotations

from collections.abc import Sequence

from dmfuse.args import parse_unsigned
from dmfuse.backends.base import Backend
from dmfuse.errors import TableError
from dmfuse.target import DeviceOpener, Limits, Target, check_area, register

_UINT_MAX = 2**32 - 1


def _uint(text: str, error: str, minimum: int = 0) -> int:
    try:
        return parse_unsigned(text, "value", minimum, _UINT_MAX)
    except TableError:
        raise TableError(error) from None


@register
class Unstriped(Target):
    name = "unstriped"
    version = (1, 1, 0)

    def __init__(
        self,
        length: int,
        stripes: int,
        chunk_sectors: int,
        stripe_nr: int,
        dev: Backend,
        offset_sectors: int,
    ) -> None:
        super().__init__(length)
        self.stripes = stripes
        self.chunk_sectors = chunk_sectors
        self.stripe_nr = stripe_nr
        self.dev = dev
        self.offset_sectors = offset_sectors
        self.chunk = chunk_sectors * 512
        self.base = offset_sectors * 512
        self._skip = (stripes - 1) * self.chunk  # the other members' chunks in each row
        self._member = stripe_nr * self.chunk
        self.limits = Limits(io_boundary=self.chunk, flush_bios=0, discard_bios=0)

    @classmethod
    async def construct(cls, opener: DeviceOpener, length: int, args: Sequence[str]) -> Unstriped:
        if len(args) != 5:
            raise TableError("Invalid number of arguments")
        stripes = _uint(args[0], "Invalid stripe count", minimum=1)
        chunk_sectors = _uint(args[1], "Invalid chunk_size", minimum=1)
        stripe_nr = _uint(args[2], "Invalid stripe number")
        if stripe_nr > stripes > 1:  # the kernel's check, off by one
            raise TableError("Please provide stripe between [0, # of stripes]")
        try:
            dev = await opener.open(args[3])
        except TableError as exc:
            detail = str(exc).removeprefix("Device lookup failed")
            raise TableError(f"Couldn't get striped device{detail}") from None
        try:
            offset = parse_unsigned(args[4], "offset")
        except TableError:
            raise TableError("Invalid striped device offset") from None
        if (length // 512) % chunk_sectors:
            raise TableError("Target length not divisible by chunk size")
        return cls(length, stripes, chunk_sectors, stripe_nr, dev, offset)

    def _map(self, offset: int) -> int:
        return self.base + offset + self._skip * (offset // self.chunk) + self._member

    async def read(self, offset: int, buf: memoryview) -> None:
        await self.dev.read(self._map(offset), buf)

    async def write(self, offset: int, data: memoryview) -> None:
        await self.dev.write(self._map(offset), data)

    async def write_fua(self, offset: int, data: memoryview) -> None:
        await self.dev.write_fua(self._map(offset), data)

    async def write_zeroes(self, offset: int, length: int) -> None:
        # No write-zeroes bios in the kernel target: the block layer writes zero pages, chunk
        # by chunk since each chunk lands elsewhere on the device.
        end = offset + length
        while offset < end:
            n = min(end - offset, self.chunk - offset % self.chunk)
            await self.dev.write(self._map(offset), memoryview(bytes(n)))
            offset += n

    def table(self, showkeys: bool = False) -> str:
        return (
            f"{self.stripes} {self.chunk_sectors} {self.stripe_nr} "
            f"{self.dev.display} {self.offset_sectors}"
        )

    def devices(self) -> list[Backend]:
        return [self.dev]

    def check_fits(self) -> None:
        check_area(self.dev, self.base, self.length)
