"""The log-writes target (its man page: the package docstring)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from dmfuse.backends.base import Backend
from dmfuse.backends.claim import claim_exclusive
from dmfuse.errors import DmError, InvalidArgument, TableError
from dmfuse.target import DeviceOpener, Flushed, Limits, Target, check_area, register
from dmfuse.targets.log_writes import log_format as fmt

log = logging.getLogger(__name__)

SECTOR = 512
END_MARK = b"dm-log-writes-end"

# A pending entry: the header and, for a write, a private copy of the data (the caller's buffer
# is reused once the write returns).
_Pending = tuple[fmt.Entry, bytes]


@register
class LogWrites(Target):
    name = "log-writes"
    version = (1, 1, 0)
    # Whole sectors only: the device merges partial ones (read-modify-write), so every logged
    # write is the sector range it really changed.  Write-zeroes is written as zero buffers.
    limits = Limits(flush_bios=1, discard_bios=1, write_zeroes=False, block_size=SECTOR)

    def __init__(self, length: int, dev: Backend, log_dev: Backend) -> None:
        super().__init__(length)
        # Two daemons appending to one log would write their entries over each other's.
        claim_exclusive(log_dev, "log device")
        self.dev = dev
        self.log_dev = log_dev
        self.sectorsize = SECTOR
        self.next_sector = self.sectorsize // SECTOR  # 512-byte units; entries start after super
        self.end_sector = log_dev.size() // SECTOR
        self.logged_entries = 0
        self.logging_enabled = True
        self.unflushed: list[_Pending] = []
        self._lock = trio.Lock()  # log writes happen one at a time, in the order queued
        self._destroyed = False

    @classmethod
    async def construct(cls, opener: DeviceOpener, length: int, args: Sequence[str]) -> LogWrites:
        if len(args) < 2:
            raise TableError("Invalid argument count")
        dev = await opener.open(args[0])
        try:
            log_dev = await opener.open(args[1])
        except TableError as exc:
            raise TableError(f"Log {exc.message[0].lower()}{exc.message[1:]}", exc.errno) from None
        return cls(length, dev, log_dev)

    # -- I/O ---------------------------------------------------------------------------------
    # The kernel's log_writes_map only calls bio_set_dev: ``dev`` gets the mapped device's own
    # sector (no ``ti->begin`` subtracted), and the log entry records that same sector.
    async def read(self, offset: int, buf: memoryview) -> None:
        await self.dev.read(self.device_offset(self.dev, offset, len(buf)), buf)

    async def write(self, offset: int, data: memoryview) -> None:
        at = self.device_offset(self.dev, offset, len(data))
        await self.dev.write(at, data)
        entry = fmt.Entry(sector=at // SECTOR, nr_sectors=len(data) // SECTOR, flags=0)
        self.unflushed.append((entry, bytes(data)))

    async def write_fua(self, offset: int, data: memoryview) -> None:
        # log_writes_map passes REQ_FUA on to dev; normal_end_io queues a FUA entry for the
        # log at once, ahead of the unflushed entries, which a later flush logs.
        at = self.device_offset(self.dev, offset, len(data))
        await self.dev.write_fua(at, data)
        entry = fmt.Entry(sector=at // SECTOR, nr_sectors=len(data) // SECTOR, flags=fmt.FUA)
        await self._log([(entry, bytes(data))])

    async def discard(self, offset: int, length: int) -> None:
        at = self.device_offset(self.dev, offset, length)
        await self.dev.discard(at, length)
        entry = fmt.Entry(sector=at // SECTOR, nr_sectors=length // SECTOR, flags=fmt.DISCARD)
        self.unflushed.append((entry, b""))

    async def flush(self, flushed: Flushed) -> None:
        if flushed.suspend:
            await flushed.flush(self.dev)
            return
        # Only what completed before the flush arrived is covered by it.
        captured, self.unflushed = self.unflushed, []
        try:
            await flushed.flush(self.dev)
        except BaseException:
            self.unflushed[:0] = captured  # not flushed after all: still pending
            raise
        captured.append((fmt.Entry(sector=0, nr_sectors=0, flags=fmt.FLUSH), b""))
        await self._log(captured)

    # -- messages ----------------------------------------------------------------------------
    async def message(self, argv: Sequence[str]) -> str | None:
        if len(argv) != 2:
            raise InvalidArgument(
                f"Invalid log-writes message arguments, expect 2 arguments, got {len(argv)}"
            )
        if argv[0].lower() != "mark":
            raise InvalidArgument(f"Unrecognised log writes target message received: {argv[0]}")
        text = argv[1].encode("utf-8", "surrogateescape")
        await self._log([(fmt.mark_entry(text, self.sectorsize), b"")])
        return None

    # -- logging -----------------------------------------------------------------------------
    async def _log(self, items: list[_Pending]) -> None:
        """Append entries to the log in order; a full log or a failed write stops logging."""
        async with self._lock:
            for entry, data in items:
                if not self.logging_enabled:
                    return
                sector = self.next_sector
                step = self.sectorsize // SECTOR
                self.next_sector += step * entry.log_sectors()
                if self.next_sector >= self.end_sector:  # the kernel's test, kept exactly
                    log.error("log-writes: ran out of space on the log device")
                    self.logging_enabled = False
                    return
                self.logged_entries += 1
                try:
                    await self._write_entry(sector, entry, data)
                    if entry.flags & (fmt.FUA | fmt.MARK):
                        await self._write_super()
                except (DmError, OSError) as exc:
                    log.warning("log-writes: writing the log failed, logging disabled: %s", exc)
                    self.logging_enabled = False
                    return

    async def _write_entry(self, sector: int, entry: fmt.Entry, data: bytes) -> None:
        head = fmt.encode_entry(entry, self.sectorsize)
        await self.log_dev.write(sector * SECTOR, memoryview(head + data))

    async def _write_super(self) -> None:
        block = fmt.encode_super(self.logged_entries, self.sectorsize)
        await self.log_dev.write(fmt.SUPER_SECTOR, memoryview(block))

    # -- description -------------------------------------------------------------------------
    def status(self) -> str:
        text = f"{self.logged_entries} {self.next_sector - 1}"
        return text if self.logging_enabled else text + " logging_disabled"

    def table(self, showkeys: bool = False) -> str:
        return f"{self.dev.display} {self.log_dev.display}"

    def devices(self) -> list[Backend]:
        return [self.dev, self.log_dev]

    def check_fits(self) -> None:
        check_area(self.dev, 0, self.length)

    async def destroy(self) -> None:
        """Log what was never flushed, then the end mark (which rewrites the super)."""
        if self._destroyed:
            return
        self._destroyed = True
        pending, self.unflushed = self.unflushed, []
        pending.append((fmt.mark_entry(END_MARK, self.sectorsize), b""))
        await self._log(pending)
        try:
            await self.log_dev.flush()
        except (DmError, OSError) as exc:
            log.warning("log-writes: flushing the log failed: %s", exc)
