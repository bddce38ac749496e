"""The snapshot-origin target (its man page: the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence

from dmfuse.backends.base import Backend
from dmfuse.errors import TableError
from dmfuse.target import DeviceOpener, Limits, Target, check_area, register
from dmfuse.targets.snapshot import origin as registry
from dmfuse.targets.snapshot.origin import Origin


@register
@register
class SnapshotOrigin(Target):
    name = "snapshot-origin"
    version = (1, 9, 0)

    def __init__(self, length: int, dev: Backend, origin: Origin) -> None:
        super().__init__(length)
        self.dev = dev
        self.origin = origin
        self.limits = Limits(io_boundary=origin.min_chunk(), discard_bios=0, write_zeroes=False)

    @classmethod
    async def construct(
        cls, opener: DeviceOpener, length: int, args: Sequence[str]
    ) -> SnapshotOrigin:
        if len(args) != 1:
            raise TableError("origin: incorrect number of arguments")
        dev = await opener.open(args[0])
        return cls(length, dev, registry.acquire(dev))

    # origin_map only calls bio_set_dev: the origin gets the device's own sector
    async def read(self, offset: int, buf: memoryview) -> None:
        await self.dev.read(self.device_offset(self.dev, offset, len(buf)), buf)

    async def write(self, offset: int, data: memoryview) -> None:
        await self.origin.write(self.dev, self.device_offset(self.dev, offset, len(data)), data)

    def table(self, showkeys: bool = False) -> str:
        return self.dev.display

    def devices(self) -> list[Backend]:
        return [self.dev]

    def check_fits(self) -> None:
        check_area(self.dev, 0, self.length)

    async def destroy(self) -> None:
        registry.release(self.origin)
