"""error — every read, write and discard fails with EIO.

Table:   ``<start> <length> error [<dev> <offset>]``
Any arguments are accepted and ignored, except that exactly two are read like linear's
``<dev> <offset>`` and the device is opened (it shows in ``deps``), as kernel error v1.7 does.
The arguments are never echoed: status and table strings are empty.  Takes no flushes, so an
fsync on an all-error device succeeds.  ``dmsetup remove --force`` swaps this in.
For lseek(2) SEEK_DATA/SEEK_HOLE on the device file it is data (reads fail; that is no hole).
"""

from __future__ import annotations

from collections.abc import Sequence

from dmfuse.args import ArgReader
from dmfuse.backends.base import Backend
from dmfuse.errors import IOFailure
from dmfuse.target import DeviceOpener, Limits, Target, register


@register
class Error(Target):
    name = "error"
    wildcard = True  # may replace an immutable table (dm-spec 5.4)
    version = (1, 7, 0)
    limits = Limits(flush_bios=0, discard_zeroes=False, write_zeroes=False)

    def __init__(self, length: int, dev: Backend | None = None) -> None:
        super().__init__(length)
        self.dev = dev

    @classmethod
    async def construct(cls, opener: DeviceOpener, length: int, args: Sequence[str]) -> Error:
        if len(args) == 2:
            reader = ArgReader(args)
            spec = reader.shift("device")
            reader.unsigned("device sector")
            return cls(length, await opener.open(spec))
        return cls(length)

    async def read(self, offset: int, buf: memoryview) -> None:
        raise IOFailure("error target")

    async def write(self, offset: int, data: memoryview) -> None:
        raise IOFailure("error target")

    async def discard(self, offset: int, length: int) -> None:
        raise IOFailure("error target")

    async def write_zeroes(self, offset: int, length: int) -> None:
        raise IOFailure("error target")

    def devices(self) -> list[Backend]:
        return [self.dev] if self.dev is not None else []
