"""flakey — a device that works for ``up`` seconds, then misbehaves for ``down`` seconds, in turn.

Table:   ``<start> <length> flakey <dev> <offset> <up> <down> [<#features> <feature>...]``
  ``offset``    start of the mapped area on ``dev``, in sectors
  ``up``/``down`` seconds (0 .. 2^32-1, not both 0); the clock starts when the table is built
              (``load``/``create``): the device is down when
              ``whole seconds since then % (up + down) >= up``
Features (names case-insensitive; ``#features`` counts every word, at most 11):
  ``error_reads``             reads fail with EIO while down
  ``drop_writes``             writes, discards and flushes are acknowledged and dropped while down
  ``error_writes``            writes, discards and flushes fail with EIO while down
  ``corrupt_bio_byte <N> <r|w> <value> <flags>``  while down, byte N (1-based, counted from the
                              start of each request piece) of matching reads (after reading) or
                              writes (in a copy; the caller's data is untouched) is set to value
  ``random_read_corrupt <p>`` / ``random_write_corrupt <p>``  while down, with probability
                              p / 1000000000 one random byte of a read / written piece gets a
                              random value
  With no feature at all (or ``0``) every read, write, discard and flush fails while down (the
  table then prints as ``... 2 error_reads error_writes``).  Refused as by Linux 6.12:
  drop_writes with error_writes, either of them with ``corrupt_bio_byte ... w``, error_reads,
  drop_writes or error_writes twice.  A repeated ``corrupt_bio_byte`` or ``random_*_corrupt``
  replaces the earlier one, and error_reads may be combined with read corruption (reads then
  fail), as 6.12 allows (newer kernels refuse these).
While up it is exactly linear.
Status:  empty.
Table:   ``<dev> <offset> <up> <down> <count> [error_reads] [drop_writes|error_writes]
          [corrupt_bio_byte N r|w V F] [random_read_corrupt P] [random_write_corrupt P]``.
No messages.

Differences from the kernel: the ``<flags>`` mask is matched against a request op of 0 for a
read, 1 (REQ_OP_WRITE) for a write and 1|REQ_FUA (0x20001) for a FUA write, with no other flag
bits (FUSE requests carry no REQ_META/REQ_SYNC...), so 0 matches everything, 1 matches writes
only, 131072 (REQ_FUA) or 131073 FUA writes only, and other masks match nothing.  Corruption
positions count from the start of each piece of a FUSE request (cut at target ends), not of a
kernel bio.  Numbers refuse a sign or trailing text; like the kernel's ``%u`` a number wider
than 32 bits keeps its low 32 bits.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs
import trio

from dmfuse.args import parse_unsigned
from dmfuse.backends.base import Backend
from dmfuse.errors import IOFailure, TableError
from dmfuse.target import DeviceOpener, Flushed, Target, check_area, register

PROBABILITY_BASE = 1_000_000_000
_UINT_MAX = 2**32 - 1
_REQ_OP_READ, _REQ_OP_WRITE = 0, 1
_REQ_FUA = 1 << 17  # __REQ_FUA in Linux 6.12's blk_types.h


@attrs.define
class Features:
    """What the device does while down (parsed feature arguments)."""

    error_reads: bool = False
    drop_writes: bool = False
    error_writes: bool = False
    corrupt_byte: int = 0  # 1-based; 0 = no corrupt_bio_byte
    corrupt_write: bool = False  # direction of corrupt_bio_byte
    corrupt_value: int = 0
    corrupt_flags: int = 0
    random_read: int = 0  # probabilities out of PROBABILITY_BASE
    random_write: int = 0

    def words(self) -> list[str]:
        out = []
        if self.error_reads:
            out.append("error_reads")
        if self.drop_writes:
            out.append("drop_writes")
        elif self.error_writes:
            out.append("error_writes")
        if self.corrupt_byte:
            direction = "w" if self.corrupt_write else "r"
            out += [
                "corrupt_bio_byte",
                str(self.corrupt_byte),
                direction,
                str(self.corrupt_value),
                str(self.corrupt_flags),
            ]
        if self.random_read:
            out += ["random_read_corrupt", str(self.random_read)]
        if self.random_write:
            out += ["random_write_corrupt", str(self.random_write)]
        return out


def kernel_uint(text: str | None, maximum: int, error: str, minimum: int = 0) -> int:
    """The kernel's ``dm_read_arg``: ``sscanf("%u%c")`` then a range check, else ``error``.

    Like the kernel's ``%u`` a number wider than 32 bits keeps its low 32 bits (Linux 6.12
    loads ``up_interval 4294967296`` as 0); a sign or trailing text is refused."""
    if text is None:
        raise TableError(error)
    try:
        value = parse_unsigned(text, "value") & _UINT_MAX
    except TableError:
        raise TableError(error) from None
    if not minimum <= value <= maximum:
        raise TableError(error)
    return value


def parse_features(args: Sequence[str]) -> Features:
    """``[<#features> <feature>...]`` as Linux 6.12's ``parse_features``."""
    f = Features()
    count = 0
    if args:
        count = kernel_uint(args[0], 11, "Invalid number of feature args")
        if len(args) - 1 < count:
            raise TableError("Invalid number of feature args")
    # Words after the group are ignored, as the kernel does.
    words = list(args[1 : 1 + count])
    pos = 0
    while pos < len(words):
        name = words[pos].lower()
        pos += 1
        if name == "error_reads":
            if f.error_reads:
                raise TableError("Feature error_reads duplicated")
            f.error_reads = True
        elif name == "drop_writes":
            if f.drop_writes:
                raise TableError("Feature drop_writes duplicated")
            if f.error_writes:
                raise TableError("Feature drop_writes conflicts with feature error_writes")
            f.drop_writes = True
        elif name == "error_writes":
            if f.error_writes:
                raise TableError("Feature error_writes duplicated")
            if f.drop_writes:
                raise TableError("Feature error_writes conflicts with feature drop_writes")
            f.error_writes = True
        elif name == "corrupt_bio_byte":
            # A repeated corrupt_bio_byte replaces the earlier one (6.12 has no check).
            if pos == len(words):
                raise TableError("Feature corrupt_bio_byte requires parameters")
            params: list[str | None] = [*words[pos : pos + 4], None, None, None][:4]
            pos += 4
            f.corrupt_byte = kernel_uint(
                params[0], _UINT_MAX, "Invalid corrupt bio byte", minimum=1
            )
            direction = (params[1] or "").lower()
            if direction not in ("r", "w"):
                raise TableError("Invalid corrupt bio direction (r or w)")
            f.corrupt_write = direction == "w"
            f.corrupt_value = kernel_uint(
                params[2], 255, "Invalid corrupt value to write into bio byte (0-255)"
            )
            f.corrupt_flags = kernel_uint(params[3], _UINT_MAX, "Invalid corrupt bio flags mask")
        elif name in ("random_read_corrupt", "random_write_corrupt"):
            # Repeated: the last one counts (6.12 has no check).
            if pos == len(words):
                raise TableError(f"Feature {name} requires a parameter")
            p = kernel_uint(words[pos], PROBABILITY_BASE, "Invalid random corrupt argument")
            pos += 1
            if name == "random_read_corrupt":
                f.random_read = p
            else:
                f.random_write = p
        else:
            raise TableError("Unrecognised flakey feature requested")
    if f.corrupt_byte and f.corrupt_write:
        for flag in ("drop_writes", "error_writes"):
            if getattr(f, flag):
                raise TableError(
                    f"{flag} is incompatible with corrupt_bio_byte with the WRITE flag set"
                )
    if not (
        f.corrupt_byte
        or f.error_reads
        or f.drop_writes
        or f.error_writes
        or f.random_read
        or f.random_write
    ):
        # No features: everything fails while down.
        f.error_reads = f.error_writes = True
    return f


@register
class Flakey(Target):
    name = "flakey"
    version = (1, 5, 0)

    def __init__(
        self,
        length: int,
        dev: Backend,
        offset_sectors: int,
        up: int,
        down: int,
        features: Features,
    ) -> None:
        super().__init__(length)
        self.dev = dev
        self.offset_sectors = offset_sectors
        self.base = offset_sectors * 512
        self.up = up
        self.down = down
        self.features = features
        self.start_time = trio.current_time()  # the table's construction, as fc->start_time
        self.rng = random.Random()

    @classmethod
    async def construct(cls, opener: DeviceOpener, length: int, args: Sequence[str]) -> Flakey:
        if len(args) < 4:
            raise TableError("Invalid argument count")
        try:
            offset = parse_unsigned(args[1], "device sector")
        except TableError:
            raise TableError("Invalid device sector") from None
        up = kernel_uint(args[2], _UINT_MAX, "Invalid up interval")
        # 6.12 reads the down interval with the up interval's error text.
        down = kernel_uint(args[3], _UINT_MAX, "Invalid up interval")
        if not (up + down) & _UINT_MAX:  # unsigned int arithmetic, as in the kernel
            raise TableError("Total (up + down) interval is zero")
        if up + down > _UINT_MAX:
            raise TableError("Interval overflow")
        features = parse_features(args[4:])
        return cls(length, await opener.open(args[0]), offset, up, down, features)

    def is_down(self) -> bool:
        elapsed = int(trio.current_time() - self.start_time)
        return elapsed % (self.up + self.down) >= self.up

    def _flags_match(self, op: int) -> bool:
        flags = self.features.corrupt_flags
        return op & flags == flags

    def _random_hit(self, probability: int) -> bool:
        return bool(probability) and self.rng.randrange(PROBABILITY_BASE) < probability

    def _corrupt(self, buf: memoryview | bytearray, fixed: bool, randomly: bool) -> None:
        f = self.features
        if fixed and f.corrupt_byte <= len(buf):
            buf[f.corrupt_byte - 1] = f.corrupt_value
        if randomly and len(buf):
            pos = self.rng.randrange(len(buf))  # position first, then value, as the kernel
            buf[pos] = self.rng.randrange(256)

    async def read(self, offset: int, buf: memoryview) -> None:
        if not self.is_down():
            await self.dev.read(self.base + offset, buf)
            return
        f = self.features
        if f.error_reads:
            raise IOFailure("flakey: read while down")
        await self.dev.read(self.base + offset, buf)
        fixed = bool(f.corrupt_byte) and not f.corrupt_write and self._flags_match(_REQ_OP_READ)
        self._corrupt(buf, fixed, self._random_hit(f.random_read))

    def _write_allowed(self) -> bool:
        """While down: False = drop it; raises for error_writes; True = carry it out."""
        f = self.features
        if f.drop_writes:
            return False
        if f.error_writes:
            raise IOFailure("flakey: write while down")
        return True

    def _down_write(self, data: memoryview, op: int) -> memoryview | None:
        """A write while down: None to drop it (raises for error_writes), else what to write
        (a corrupted copy where asked; the caller's buffer stays as it was)."""
        if not self._write_allowed():
            return None
        f = self.features
        fixed = bool(f.corrupt_byte) and f.corrupt_write and self._flags_match(op)
        randomly = self._random_hit(f.random_write)
        if fixed or randomly:
            copy = bytearray(data)
            self._corrupt(copy, fixed, randomly)
            return memoryview(copy)
        return data

    async def write(self, offset: int, data: memoryview) -> None:
        if self.is_down():
            written = self._down_write(data, _REQ_OP_WRITE)
            if written is None:
                return
            data = written
        await self.dev.write(self.base + offset, data)

    async def write_fua(self, offset: int, data: memoryview) -> None:
        if self.is_down():
            written = self._down_write(data, _REQ_OP_WRITE | _REQ_FUA)
            if written is None:
                return
            data = written
        await self.dev.write_fua(self.base + offset, data)

    async def flush(self, flushed: Flushed) -> None:
        # dmfuse's own flush at suspend is no kernel flush bio: never dropped or failed.
        if not flushed.suspend and self.is_down() and not self._write_allowed():
            return
        await flushed.flush(self.dev)

    async def discard(self, offset: int, length: int) -> None:
        if self.is_down() and not self._write_allowed():
            return
        await self.dev.discard(self.base + offset, length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        if self.is_down() and not self._write_allowed():
            return
        await self.dev.write_zeroes(self.base + offset, length)

    def table(self, showkeys: bool = False) -> str:
        words = self.features.words()
        head = f"{self.dev.display} {self.offset_sectors} {self.up} {self.down} {len(words)}"
        return " ".join([head, *words])

    def devices(self) -> list[Backend]:
        return [self.dev]

    def check_fits(self) -> None:
        check_area(self.dev, self.base, self.length)
