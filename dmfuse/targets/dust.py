"""dust — a device that grows bad blocks on command (reads of them fail with EIO).

Table:   ``<start> <length> dust <dev> <offset> <blksz>``
  ``offset``  start of the mapped area on ``dev``, in sectors
  ``blksz``   block size in bytes: a power of two, 512 .. 1 GiB and not larger than the target
Mapping: byte ``o`` of the target is byte ``offset*512 + o`` of ``dev``; a request never crosses
  a block of the target (io boundary = ``blksz``).
Status:  ``<dev> <bypass|fail_read_on_bad_block> <verbose|quiet>``.
Table:   ``<dev> <offset> <blksz>``.

A list of bad block numbers is kept, each with a write-fail count.  It starts empty and
disabled (``bypass``: all I/O passes).  After ``enable``, a read starting in a bad block fails
with EIO; a write to one fails with EIO while its write-fail count is above 0 (and counts it
down), after that the write succeeds and takes the block off the list (a remapped sector).
Flushes and discards count as writes, as kernel bios of the write direction do.

Messages (``dmfuse message DEV 0 ...``; names are case-insensitive):
  ``addbadblock <blk> [<wr_fail_cnt 0-255>]``, ``removebadblock <blk>``, ``queryblock <blk>``
  -> ``dust_query_block: block <blk> found in badblocklist`` (or ``not found``),
  ``countbadblocks`` -> ``countbadblocks: <n> badblock(s) found``,
  ``clearbadblocks`` -> ``dust_clear_badblocks: badblocks cleared`` (or ``no badblocks found``),
  ``listbadblocks`` -> one block number a line (or ``No blocks in badblocklist``),
  ``enable``, ``disable``, ``quiet`` (toggles the log lines of add/remove/write-clear).
  A block above ``size of dev / blksz`` is refused (``selected block value out of range``);
  adding a listed block or removing an absent one fails with EINVAL.

Kernel quirks kept (dm-dust.c): block numbers on I/O are counted from the start of ``dev``
(``(offset*512 + o) // blksz``) while messages check them against the size of ``dev``, so the
two agree when ``offset`` is 0; the range check lets ``size / blksz`` itself through; a flush
is a write of the block at the target's start (a flush can take that block off the list).
Differences: the kernel's informational lines go to the daemon's log (``logging``) instead of
the kernel log; ``dust`` is not built in Debian's kernel, so this follows the kernel source.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from dmfuse.args import parse_unsigned
from dmfuse.backends.base import Backend
from dmfuse.errors import InvalidArgument, IOFailure, TableError
from dmfuse.target import DeviceOpener, Flushed, Limits, Target, check_area, register

log = logging.getLogger(__name__)

_MAX_BLOCK_SECTORS = 2097152  # 1 GiB


@register
class Dust(Target):
    name = "dust"
    version = (1, 0, 0)

    def __init__(self, length: int, dev: Backend, offset_sectors: int, blksz: int) -> None:
        super().__init__(length)
        self.dev = dev
        self.offset_sectors = offset_sectors
        self.base = offset_sectors * 512
        self.blksz = blksz
        self.badblocks: dict[int, int] = {}  # block -> write-fail count
        self.fail_read_on_bad_block = False
        self.quiet = False
        self.limits = Limits(io_boundary=blksz)

    @classmethod
    async def construct(cls, opener: DeviceOpener, length: int, args: Sequence[str]) -> Dust:
        if len(args) != 3:
            raise TableError("Invalid argument count")
        try:
            blksz = parse_unsigned(args[2], "block size", minimum=1, maximum=2**32 - 1)
        except TableError:
            raise TableError("Invalid block size parameter") from None
        if blksz < 512:
            raise TableError("Block size must be at least 512")
        if blksz & (blksz - 1):
            raise TableError("Block size must be a power of 2")
        if blksz // 512 > min(length // 512, _MAX_BLOCK_SECTORS):
            raise TableError("Block size is too large")
        try:
            offset = parse_unsigned(args[1], "offset")
        except TableError:
            raise TableError("Invalid device offset sector") from None
        return cls(length, await opener.open(args[0]), offset, blksz)

    # -- I/O ---------------------------------------------------------------------------------
    def _block(self, offset: int) -> int:
        # Counted on the underlying device, as dust_map does after remapping the sector.
        return (self.base + offset) // self.blksz

    def _check_write(self, offset: int) -> None:
        """A write-direction request while enabled: fail it or clear the bad block."""
        if not self.fail_read_on_bad_block:
            return
        block = self._block(offset)
        count = self.badblocks.get(block)
        if count is None:
            return
        if count > 0:
            self.badblocks[block] = count - 1
            raise IOFailure(f"dust: write to bad block {block}")
        del self.badblocks[block]
        if not self.quiet:
            log.info("dust: block %d removed from badblocklist by write", block)

    async def read(self, offset: int, buf: memoryview) -> None:
        if self.fail_read_on_bad_block:
            block = self._block(offset)
            if block in self.badblocks:
                raise IOFailure(f"dust: read of bad block {block}")
        await self.dev.read(self.base + offset, buf)

    async def write(self, offset: int, data: memoryview) -> None:
        self._check_write(offset)
        await self.dev.write(self.base + offset, data)

    async def write_fua(self, offset: int, data: memoryview) -> None:
        self._check_write(offset)
        await self.dev.write_fua(self.base + offset, data)

    async def flush(self, flushed: Flushed) -> None:
        if not flushed.suspend:  # dmfuse's own flush at suspend is no kernel flush bio
            self._check_write(0)
        await flushed.flush(self.dev)

    async def discard(self, offset: int, length: int) -> None:
        self._check_write(offset)  # one bio: only its first block is looked at
        await self.dev.discard(self.base + offset, length)

    async def write_zeroes(self, offset: int, length: int) -> None:
        # No write-zeroes bios in the kernel target: the block layer writes zero pages, which
        # dm splits per block, so every block goes through the bad-block check.
        end = offset + length
        while offset < end:
            n = min(end - offset, self.blksz - offset % self.blksz)
            await self.write(offset, memoryview(bytes(n)))
            offset += n

    # -- messages ----------------------------------------------------------------------------
    async def message(self, argv: Sequence[str]) -> str | None:
        verb = argv[0].lower()
        if len(argv) == 1:
            return self._simple(verb, argv[0])
        if len(argv) not in (2, 3):
            raise InvalidArgument(f"invalid number of arguments '{len(argv)}'")
        block = _number(argv[1], "block number")
        wr_fail_cnt = 0
        if len(argv) == 3:
            wr_fail_cnt = _number(argv[2], "write fail count")
            if wr_fail_cnt > 255:
                raise InvalidArgument("selected write fail count out of range")
        if block > self.dev.size() // self.blksz:
            raise InvalidArgument("selected block value out of range")
        if verb == "addbadblock":
            self._add(block, wr_fail_cnt)
            return None
        if len(argv) == 2 and verb == "removebadblock":
            self._remove(block)
            return None
        if len(argv) == 2 and verb == "queryblock":
            found = "found" if block in self.badblocks else "not found"
            return f"dust_query_block: block {block} {found} in badblocklist"
        raise InvalidArgument(f"unrecognized message '{argv[0]}' received")

    def _simple(self, verb: str, word: str) -> str | None:
        if verb in ("addbadblock", "removebadblock", "queryblock"):
            raise InvalidArgument(f"{word} requires an additional argument")
        if verb == "disable":
            log.info("dust: disabling read failures on bad sectors")
            self.fail_read_on_bad_block = False
            return None
        if verb == "enable":
            log.info("dust: enabling read failures on bad sectors")
            self.fail_read_on_bad_block = True
            return None
        if verb == "countbadblocks":
            return f"countbadblocks: {len(self.badblocks)} badblock(s) found"
        if verb == "clearbadblocks":
            had = bool(self.badblocks)
            self.badblocks.clear()
            return f"dust_clear_badblocks: {'badblocks cleared' if had else 'no badblocks found'}"
        if verb == "quiet":
            self.quiet = not self.quiet
            return None
        if verb == "listbadblocks":
            if not self.badblocks:
                return "No blocks in badblocklist"
            return "".join(f"{block}\n" for block in sorted(self.badblocks))
        raise InvalidArgument(f"unrecognized message '{word}' received")

    def _add(self, block: int, wr_fail_cnt: int) -> None:
        if block in self.badblocks:
            raise InvalidArgument(f"dust_add_block: block {block} already in badblocklist")
        self.badblocks[block] = wr_fail_cnt
        if not self.quiet:
            log.info(
                "dust: badblock added at block %d with write fail count %d", block, wr_fail_cnt
            )

    def _remove(self, block: int) -> None:
        if block not in self.badblocks:
            raise InvalidArgument(f"dust_remove_block: block {block} not found in badblocklist")
        del self.badblocks[block]
        if not self.quiet:
            log.info("dust: badblock removed at block %d", block)

    # -- description -------------------------------------------------------------------------
    def status(self) -> str:
        mode = "fail_read_on_bad_block" if self.fail_read_on_bad_block else "bypass"
        return f"{self.dev.display} {mode} {'quiet' if self.quiet else 'verbose'}"

    def table(self, showkeys: bool = False) -> str:
        return f"{self.dev.display} {self.offset_sectors} {self.blksz}"

    def devices(self) -> list[Backend]:
        return [self.dev]

    def check_fits(self) -> None:
        check_area(self.dev, self.base, self.length)


def _number(text: str, what: str) -> int:
    try:
        return parse_unsigned(text, what)
    except TableError:
        raise InvalidArgument(f"invalid {what} '{text}'") from None
