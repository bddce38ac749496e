"""striped — spread the target over several devices in chunks (RAID-0).

Table:   ``<start> <length> striped <num_stripes> <chunk_size> (<dev> <offset>){num_stripes}``
  ``chunk_size``  sectors per chunk (> 0; powers of two not required)
  The length must divide by ``num_stripes`` and ``length / num_stripes`` by ``chunk_size``.
Mapping of target sector ``o``:  ``chunk = o // chunk_size``, ``stripe = chunk % num_stripes``,
  ``dev_sector = offset[stripe] + (chunk // num_stripes) * chunk_size + o % chunk_size``.
  A request never crosses a chunk (io boundary = chunk size).
Status:  ``<num_stripes> <dev>... 1 <health>``, one ``A`` (alive) or ``D`` (had errors) per stripe.
Table:   ``<num_stripes> <chunk_size> <dev> <offset> ...``.
Flush goes to every stripe; discard and write-zeroes are mapped per stripe (one contiguous
range on each device, like the kernel's ``stripe_map_range``).

Differences from the kernel: lseek(2) SEEK_DATA/SEEK_HOLE on the device file see the stripes'
holes (sparse backing files, lower dmfuse devices).  Each stripe's part of the target is one
contiguous range of its device, so a seek asks each stripe once, from where the offset falls on
it, and maps the nearest answer back: ``num_stripes`` questions per seek, however many chunks
lie between the offset and the answer.  In the device file's ``st_blocks`` each stripe counts
at most what its device has allocated.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from dmfuse.args import ArgReader, parse_unsigned
from dmfuse.backends.base import Backend
from dmfuse.errors import DmError, TableError
from dmfuse.target import DeviceOpener, Limits, Target, check_area, register


@attrs.define
class Stripe:
    dev: Backend
    offset_sectors: int
    errors: int = 0

    @property
    def base(self) -> int:
        return self.offset_sectors * 512


@register
class Striped(Target):
    name = "striped"
    version = (1, 6, 0)

    def __init__(self, length: int, chunk_sectors: int, stripes: list[Stripe]) -> None:
        super().__init__(length)
        self.chunk_sectors = chunk_sectors
        self.chunk = chunk_sectors * 512
        self.stripes = stripes
        self.limits = Limits(
            io_boundary=self.chunk, flush_bios=len(stripes), discard_bios=len(stripes)
        )

    @classmethod
    async def construct(cls, opener: DeviceOpener, length: int, args: Sequence[str]) -> Striped:
        if len(args) < 2:
            raise TableError("Not enough arguments")
        count = parse_unsigned(args[0], "stripe count", minimum=1)
        chunk_sectors = parse_unsigned(args[1], "chunk size", minimum=1, maximum=2**32 - 1)
        sectors = length // 512
        if sectors % count:
            raise TableError("Target length not divisible by number of stripes")
        if (sectors // count) % chunk_sectors:
            raise TableError("Target length not divisible by chunk size")
        if len(args) != 2 + 2 * count:
            raise TableError("Not enough destinations specified")
        reader = ArgReader(args[2:])
        stripes = []
        for _ in range(count):
            spec = reader.shift("device")
            offset = reader.unsigned("stripe destination offset")
            stripes.append(Stripe(await opener.open(spec), offset))
        return cls(length, chunk_sectors, stripes)

    def _map(self, offset: int) -> tuple[Stripe, int]:
        chunk, within = divmod(offset, self.chunk)
        row, index = divmod(chunk, len(self.stripes))
        stripe = self.stripes[index]
        return stripe, stripe.base + row * self.chunk + within

    async def read(self, offset: int, buf: memoryview) -> None:
        stripe, where = self._map(offset)
        try:
            await stripe.dev.read(where, buf)
        except (OSError, DmError):
            stripe.errors += 1
            raise

    async def write(self, offset: int, data: memoryview) -> None:
        stripe, where = self._map(offset)
        try:
            await stripe.dev.write(where, data)
        except (OSError, DmError):
            stripe.errors += 1
            raise

    async def write_fua(self, offset: int, data: memoryview) -> None:
        stripe, where = self._map(offset)  # a piece never crosses a chunk: one stripe
        try:
            await stripe.dev.write_fua(where, data)
        except (OSError, DmError):
            stripe.errors += 1
            raise

    def _range_on(self, index: int, offset: int) -> int:
        """Where ``offset`` falls on stripe ``index``'s device, rounded to that stripe's chunks."""
        chunk, within = divmod(offset, self.chunk)
        row, stripe = divmod(chunk, len(self.stripes))
        if stripe == index:
            return row * self.chunk + within
        return (row + 1) * self.chunk if index < stripe else row * self.chunk

    async def _per_stripe(self, offset: int, length: int, zeroes: bool) -> None:
        for index, stripe in enumerate(self.stripes):
            begin = self._range_on(index, offset)
            end = self._range_on(index, offset + length)
            if end > begin:
                if zeroes:
                    await stripe.dev.write_zeroes(stripe.base + begin, end - begin)
                else:
                    await stripe.dev.discard(stripe.base + begin, end - begin)

    async def discard(self, offset: int, length: int) -> None:
        await self._per_stripe(offset, length, zeroes=False)

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self._per_stripe(offset, length, zeroes=True)

    def data_sources(self) -> list[tuple[Backend, int]]:
        per_stripe = self.length // len(self.stripes)
        return [(stripe.dev, per_stripe) for stripe in self.stripes]

    def _unmap(self, index: int, where: int) -> int:
        """Target offset of byte ``where`` of stripe ``index``'s part (inverse of ``_map``)."""
        row, within = divmod(where, self.chunk)
        return (row * len(self.stripes) + index) * self.chunk + within

    async def _seek(self, offset: int, hole: bool) -> int:
        # The first hit in target order is the nearest of each stripe's first hit, mapped back.
        per_stripe = self.length // len(self.stripes)
        best = self.length
        for index, stripe in enumerate(self.stripes):
            begin = self._range_on(index, offset)
            if begin >= per_stripe:
                continue
            base = stripe.base
            if hole:
                found = await stripe.dev.seek_hole(base + begin, base + per_stripe) - base
            else:
                found = await stripe.dev.seek_data(base + begin, base + per_stripe) - base
            if found < per_stripe:
                best = min(best, self._unmap(index, found))
                if best == offset:
                    break  # nothing comes before the offset itself
        return best

    async def seek_data(self, offset: int) -> int:
        return await self._seek(offset, hole=False)

    async def seek_hole(self, offset: int) -> int:
        return await self._seek(offset, hole=True)

    def status(self) -> str:
        devs = " ".join(s.dev.display for s in self.stripes)
        health = "".join("D" if s.errors else "A" for s in self.stripes)
        return f"{len(self.stripes)} {devs} 1 {health}"

    def table(self, showkeys: bool = False) -> str:
        parts = " ".join(f"{s.dev.display} {s.offset_sectors}" for s in self.stripes)
        return f"{len(self.stripes)} {self.chunk_sectors} {parts}"

    def devices(self) -> list[Backend]:
        return [s.dev for s in self.stripes]

    def check_fits(self) -> None:
        per_stripe = self.length // len(self.stripes)
        for stripe in self.stripes:
            check_area(stripe.dev, stripe.base, per_stripe)
