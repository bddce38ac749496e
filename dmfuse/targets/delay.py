"""delay — hold each request for a fixed time, optionally on separate read/write/flush devices.

Table:   ``<start> <length> delay <rdev> <roff> <rdelay>
                 [<wdev> <woff> <wdelay> [<fdev> <foff> <fdelay>]]``
  3 arguments   reads, writes and flushes use the one triple
  6 arguments   reads use the first triple; writes, discards and flushes the second
  9 arguments   flushes use the third triple
  ``off``       start of the mapped area on the device, in sectors
  ``delay``     milliseconds (0 = no delay, the request is not counted as held)
Mapping: byte ``o`` of the target is byte ``off*512 + o`` of the class's device.
Status:  ``<reads> <writes> <flushes>`` — requests held right now, per class.
Table:   the triples given (3, 6 or 9 words).
Suspend releases every held request at once (the kernel's presuspend) and nothing is delayed
until the next resume, so a suspend never waits out the delays.  Held requests wait as their
own trio tasks: a held read never blocks other I/O.  No messages.

A delay wider than 32 bits keeps its low 32 bits, as the kernel's ``sscanf("%u")`` does.
Differences from the kernel: a request is held as the pieces the dispatcher split it into (a
FUSE request, cut at target ends), not as kernel bios, so the held counts follow those pieces.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

from dmfuse.args import parse_unsigned
from dmfuse.backends.base import Backend
from dmfuse.errors import TableError
from dmfuse.target import DeviceOpener, Flushed, Target, check_area, register
from dmfuse.targets.flakey import kernel_uint

_UINT_MAX = 2**32 - 1
_READ, _WRITE, _FLUSH = 0, 1, 2


@attrs.define
class DelayClass:
    """One triple: where requests of this class go and how long they are held."""

    dev: Backend
    offset_sectors: int
    delay_ms: int

    @property
    def base(self) -> int:
        return self.offset_sectors * 512

    def describe(self) -> str:
        return f"{self.dev.display} {self.offset_sectors} {self.delay_ms}"


async def _parse_class(opener: DeviceOpener, words: Sequence[str]) -> DelayClass:
    # The kernel's delay_class_ctr: sector, then delay, then the device lookup.
    try:
        offset = parse_unsigned(words[1], "device sector")
    except TableError:
        raise TableError("Invalid device sector") from None
    # sscanf("%u"): a number wider than 32 bits keeps its low bits (6.12 loads 4294967296 as 0).
    delay = kernel_uint(words[2], _UINT_MAX, "Invalid delay")
    return DelayClass(await opener.open(words[0]), offset, delay)


@register
class Delay(Target):
    name = "delay"
    version = (1, 4, 0)

    def __init__(
        self, length: int, classes: list[DelayClass], read: int, write: int, flush: int
    ) -> None:
        super().__init__(length)
        self.classes = classes  # as given: 1, 2 or 3 triples (table output)
        # Per direction, like the kernel's read/write/flush classes (copies with 3 arguments).
        self.read_class = classes[read]
        self.write_class = classes[write]
        self.flush_class = classes[flush]
        self.held = [0, 0, 0]  # requests held now: reads, writes, flushes
        self.may_delay = True
        # Set by presuspend: wakes every held request at once.
        self._release = trio.Event()

    @classmethod
    async def construct(cls, opener: DeviceOpener, length: int, args: Sequence[str]) -> Delay:
        if len(args) not in (3, 6, 9):
            raise TableError("Requires exactly 3, 6 or 9 arguments")
        classes = [await _parse_class(opener, args[i : i + 3]) for i in range(0, len(args), 3)]
        count = len(classes)
        # 3 args: one triple for all; 6: writes and flushes share the second; 9: one each.
        return cls(length, classes, 0, min(1, count - 1), count - 1)

    async def _hold(self, klass: DelayClass, direction: int) -> None:
        """Wait out the class delay, or until presuspend releases everything."""
        if not klass.delay_ms or not self.may_delay:
            return
        self.held[direction] += 1
        try:
            with trio.move_on_after(klass.delay_ms / 1000):
                await self._release.wait()
        finally:
            self.held[direction] -= 1

    async def read(self, offset: int, buf: memoryview) -> None:
        klass = self.read_class
        await self._hold(klass, _READ)
        await klass.dev.read(klass.base + offset, buf)

    async def write(self, offset: int, data: memoryview) -> None:
        klass = self.write_class
        await self._hold(klass, _WRITE)
        await klass.dev.write(klass.base + offset, data)

    async def write_fua(self, offset: int, data: memoryview) -> None:
        klass = self.write_class  # a FUA write is a write: delayed as one
        await self._hold(klass, _WRITE)
        await klass.dev.write_fua(klass.base + offset, data)

    async def flush(self, flushed: Flushed) -> None:
        klass = self.flush_class
        await self._hold(klass, _FLUSH)
        await flushed.flush(klass.dev)

    async def discard(self, offset: int, length: int) -> None:
        klass = self.write_class
        await self._hold(klass, _WRITE)
        await klass.dev.discard(klass.base + offset, length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        klass = self.write_class
        await self._hold(klass, _WRITE)
        await klass.dev.write_zeroes(klass.base + offset, length)

    async def presuspend(self) -> None:
        # As delay_presuspend: stop delaying and let every held request go now.
        self.may_delay = False
        self._release.set()

    async def resume(self) -> None:
        if not self.may_delay:
            self._release = trio.Event()
            self.may_delay = True

    async def destroy(self) -> None:
        self.may_delay = False
        self._release.set()

    def status(self) -> str:
        return " ".join(str(n) for n in self.held)

    def table(self, showkeys: bool = False) -> str:
        return " ".join(klass.describe() for klass in self.classes)

    def devices(self) -> list[Backend]:
        return [klass.dev for klass in self.classes]

    def check_fits(self) -> None:
        for klass in self.classes:
            check_area(klass.dev, klass.base, self.length)
