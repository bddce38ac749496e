"""One mapped device: live and inactive tables, the suspend gate, in-flight and open counts.

Admission of a request (check the gate, take the live table, count it in flight) has no
``await`` inside it, so a table swap can never see half-admitted I/O.  Suspend installs a gate
(new requests wait on it), waits for in-flight requests to drain and flushes unless told not
to; resume swaps the staged table in while nothing is in flight, reports the new size and opens
the gate, and the held requests continue against the new table.

Lifecycle commands hold locks, as the kernel does (the manager takes them):
``suspend_lock`` (dm's ``md->suspend_lock``) serialises suspend, resume, message, rename and
remove of one device, so a second suspend cannot install a second gate while the first one
awaits a hook or a drain, and a resume waits for a draining suspend to finish; ``table_lock``
(dm's ``type_lock``) serialises load and clear, which touch only the inactive slot and so never
wait for a drain (a ``load`` issued while a suspend drains goes ahead, as in the kernel).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from time import monotonic_ns

import trio

from dmfuse.backends.direct import aligned_buffer
from dmfuse.engine.loaded import LoadedTable
from dmfuse.engine.rangelock import RangeLocks
from dmfuse.errors import DmError, InvalidArgument, IOFailure, NotSupported, ReadOnlyDevice
from dmfuse.lifecycle import DeviceState, Plan, plan_resume, plan_suspend
from dmfuse.stats import READ, WRITE, Stats, Token

log = logging.getLogger(__name__)


# Device.totals slots: requests and bytes of each kind
READS, WRITES, DISCARDS = 0, 2, 4


class Device:
    """A dm device.  Byte offsets throughout; sectors only in table text."""

    def __init__(self, name: str, uuid: str, minor: int) -> None:
        self.name = name
        self.uuid = uuid
        self.minor = minor
        self.live: LoadedTable | None = None
        self.inactive: LoadedTable | None = None
        self.suspended = False
        self.readonly = False
        self.open_count = 0
        self.deferred_remove = False
        self.ever_loaded = False  # the kernel creates the disk at the first table load
        self.cache: str | None = None  # backing cache policy of its own (else the mount's)
        self.event_nr = 0
        self.inflight = 0
        self._gate: trio.Event | None = None
        self._idle: trio.Event | None = None
        self._event = trio.Event()
        self._range_locks = RangeLocks()
        self.closing = False
        self.removed = False  # set by remove: commands that waited for a lock give ENXIO
        self.suspend_lock = trio.Lock()
        self.table_lock = trio.Lock()
        self.on_resize: Callable[[Device], None] = lambda device: None
        # dm-stats regions (the device's, not a table's: they survive swaps) and the totals
        # of /sys/block/dm-N/stat: requests and bytes of reads, writes and discards
        self.stats = Stats()
        self.totals = [0] * 6

    # -- state -------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        live = self.live
        return live.size if live is not None else 0

    @property
    def logical_block_size(self) -> int:
        """As ``blockdev --getss`` would say: at least 512, more for a 4096-byte table."""
        live = self.live
        return max(live.block, 512) if live is not None else 512

    def allocated(self) -> int:
        """Estimated bytes of the device that hold data (``st_blocks * 512`` of its file)."""
        live = self.live
        return live.allocated() if live is not None else 0

    def state(self) -> DeviceState:
        return DeviceState(
            has_live=self.live is not None,
            has_inactive=self.inactive is not None,
            suspended=self.suspended,
            open_count=self.open_count,
            has_uuid=bool(self.uuid),
        )

    def raise_event(self) -> None:
        """A dm table event: bump ``event_nr`` and wake ``wait`` callers."""
        self.event_nr = (self.event_nr + 1) & 0xFFFFFFFF
        self._event.set()
        self._event = trio.Event()

    async def wait_event(self, event_nr: int) -> int:
        while self.event_nr == event_nr:
            await self._event.wait()
        return self.event_nr

    # -- admission ---------------------------------------------------------------------------
    async def _admit(self) -> LoadedTable:
        while self._gate is not None:
            await self._gate.wait()
        live = self.live
        if live is None or self.closing:
            raise IOFailure(f"{self.name}: no live table")
        self.inflight += 1
        return live

    def _done(self) -> None:
        self.inflight -= 1
        if not self.inflight and self._idle is not None:
            self._idle.set()

    def _begin(self, kind: int, offset: int, size: int) -> Token | None:
        """dm-stats accounting of an admitted request (called only while a region exists)."""
        if size <= 0:
            return None
        direction = READ if kind == READS else WRITE  # bio_data_dir: a discard writes
        return self.stats.begin(direction, offset >> 9, (offset + size + 511) >> 9, monotonic_ns())

    def _finish(self, kind: int, size: int, token: Token | None) -> None:
        """:meth:`_done` for a read, write or discard: the device totals (two additions,
        no clock: nothing more while no region exists) and its dm-stats regions."""
        self.inflight -= 1
        if not self.inflight and self._idle is not None:
            self._idle.set()
        if size > 0:
            totals = self.totals
            totals[kind] += 1
            totals[kind + 1] += size
        if token is not None:
            self.stats.end(token, monotonic_ns())

    # -- I/O ---------------------------------------------------------------------------------
    async def read(self, offset: int, size: int) -> bytearray | memoryview:
        """Read up to ``size`` bytes; a read at or past the end returns fewer (EOF, like a file)."""
        live = await self._admit()
        token = None
        try:
            end = live.size
            if offset >= end or size <= 0:
                size = 0
                return bytearray()
            size = min(size, end - offset)
            if self.stats.regions:
                token = self._begin(READS, offset, size)
            block = live.block
            if block > 1 and (offset % block or size % block):
                return await _read_unaligned(live, offset, size)
            if live.buffer_align > 1:  # O_DIRECT below: read straight into aligned memory
                view = aligned_buffer(size, live.buffer_align)
                await live.read(offset, view)
                return view
            buf = bytearray(size)
            await live.read(offset, memoryview(buf))
            return buf
        finally:
            self._finish(READS, size, token)

    async def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` exactly (used by stacked devices: short is an error, as for a disk).

        Any offset works: a request that does not cover whole blocks of this device reads
        the blocks around it (a target above with a smaller unit, or metadata reads)."""
        live = await self._admit()
        token = self._begin(READS, offset, len(buf)) if self.stats.regions else None
        try:
            if offset + len(buf) > live.size:
                raise IOFailure(f"{self.name}: access beyond end of device")
            block = live.block
            if block > 1 and (offset % block or len(buf) % block):
                buf[:] = await _read_unaligned(live, offset, len(buf))
            else:
                await live.read(offset, buf)
        finally:
            self._finish(READS, len(buf), token)

    async def write(
        self, offset: int, data: memoryview, *, exact: bool = False, fua: bool = False
    ) -> int:
        """Write ``data``; past the end it is cut short, at the end it is ENOSPC (a disk).
        ``fua``: a FUA write (REQ_FUA), durable when this returns."""
        live = await self._admit()
        token, counted = None, 0
        try:
            if live.readonly:
                raise ReadOnlyDevice(f"{self.name}: device is read-only")
            end = live.size
            if offset + len(data) > end:
                if exact:
                    raise IOFailure(f"{self.name}: access beyond end of device")
                if offset >= end:
                    raise DmError(f"{self.name}: no space left on device", errno.ENOSPC)
                data = data[: end - offset]
            counted = len(data)
            if self.stats.regions:
                token = self._begin(WRITES, offset, counted)
            if live.block > 1:
                await self._write_blocks(live, offset, data, fua)
            else:
                await live.write(offset, data, fua)
            return len(data)
        finally:
            self._finish(WRITES, counted, token)

    async def _write_blocks(
        self, live: LoadedTable, offset: int, data: memoryview, fua: bool = False
    ) -> None:
        """Write to a table with a block size: whole blocks only, partial ones merged."""
        block = live.block
        start = offset - offset % block
        stop = -(-(offset + len(data)) // block) * block
        async with self._range_locks.hold(start, stop):
            if start == offset and stop == offset + len(data):
                await live.write(offset, data, fua)
                return
            merged = bytearray(stop - start)
            view = memoryview(merged)
            if start != offset:
                await live.read(start, view[:block])
            if stop != offset + len(data) and (stop - block >= start + block or start == offset):
                await live.read(stop - block, view[-block:])
            view[offset - start : offset - start + len(data)] = data
            await live.write(start, view, fua)

    async def flush(self, *, datasync: bool = False) -> None:
        live = await self._admit()
        try:
            await live.flush(datasync=datasync)
        finally:
            self._done()

    async def discard(self, offset: int, length: int, *, zero_fill: bool = False) -> None:
        """Punch-hole (``zero_fill=False``) or zero-range; the range must lie inside the device."""
        live = await self._admit()
        token, counted = None, 0
        try:
            if live.readonly:
                raise ReadOnlyDevice(f"{self.name}: device is read-only")
            if offset + length > live.size:
                raise InvalidArgument(f"{self.name}: range beyond end of device")
            if length == 0:
                return
            counted = length
            kind = WRITES if zero_fill else DISCARDS  # as op_stat_group: write-zeroes writes
            if self.stats.regions:
                token = self._begin(kind, offset, length)
            if not zero_fill and not live.discards:
                raise NotSupported(f"{self.name}: the table does not support discards")
            block = live.block
            if block > 1 and (offset % block or length % block):
                if not zero_fill:
                    raise InvalidArgument(
                        f"{self.name}: discard must be aligned to the {block}-byte block size"
                    )
                await self._write_blocks(live, offset, memoryview(bytes(length)))
            elif zero_fill:
                await live.write_zeroes(offset, length)
            else:
                await live.discard(offset, length)
        finally:
            self._finish(WRITES if zero_fill else DISCARDS, counted, token)

    async def seek(self, offset: int, *, hole: bool, end: int | None = None) -> tuple[int, int]:
        """lseek SEEK_DATA (``hole=False``) or SEEK_HOLE on the live table: ``(found, size)``.

        ``found`` is the first byte at or after ``offset`` that may be data, or that is known
        to be a hole; ``size`` (the answering table's size) if there is none.  ``size`` is
        returned so the caller judges ``offset`` against the same table (``offset >= size``
        gives ``(offset, size)``).  ``end``: only ``[offset, end)`` matters (stacking), see
        :meth:`LoadedTable.seek`.  Admitted like I/O: it waits while the device is suspended,
        and the table it asks (whose backing files it seeks in) stays live until it is done.
        """
        live = await self._admit()
        try:
            size = live.size
            if offset >= size:
                return offset, size
            return await live.seek(offset, hole=hole, end=end), size
        finally:
            self._done()

    # -- lifecycle ---------------------------------------------------------------------------
    async def suspend(self, *, noflush: bool = False) -> None:
        if plan_suspend(self.state()) is Plan.NOOP:
            self.suspended = True
            if self._gate is None:
                self._gate = trio.Event()
            return
        live = self.live
        assert live is not None
        for target in live.targets:
            await target.presuspend()
        # Under suspend_lock nobody else installs a gate meanwhile; never replace one that
        # held requests already wait on, whatever happens (they would wait forever).
        if self._gate is None:
            self._gate = trio.Event()
        self.suspended = True
        try:
            if self.inflight:
                self._idle = trio.Event()
                await self._idle.wait()
        except BaseException:
            self._reopen()  # interrupted (the client went away): undo, as dm does on a signal
            raise
        finally:
            self._idle = None
        if not noflush:
            await live.flush(suspend=True)
        for target in live.targets:
            await target.postsuspend()

    def fail_held(self) -> None:
        """Shutdown of a suspended device: held and new requests fail with EIO."""
        self.closing = True
        self._reopen()

    def _reopen(self) -> None:
        self.suspended = False
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    async def resume(self) -> None:
        plan = plan_resume(self.state())
        if plan is Plan.NOOP:
            return
        if plan is Plan.SWAP:
            new = self.inactive
            assert new is not None
            self.inactive = None
            if not self.suspended:
                await self.suspend()
            try:
                new.check_fits()  # the kernel's dm_swap_table: failure leaves us suspended
            except DmError:
                await new.destroy()
                raise
            old, self.live = self.live, new
            self.readonly = new.readonly
            for target in new.targets:
                target.on_event = self.raise_event
            if old is None or old.size != new.size:
                self.on_resize(self)
            if old is not None:
                await old.destroy()
        live = self.live
        if live is not None:
            for target in live.targets:
                await target.preresume()  # may veto: the device stays suspended
        self._reopen()
        if live is not None:
            for target in live.targets:
                await target.resume()

    async def load(self, table: LoadedTable) -> None:
        self.ever_loaded = True
        old, self.inactive = self.inactive, table
        if old is not None:
            await old.destroy()

    async def clear(self) -> None:
        old, self.inactive = self.inactive, None
        if old is not None:
            await old.destroy()

    async def destroy(self) -> None:
        """Drop both tables (remove).  Held I/O is failed: the gate opens onto no table."""
        for table in (self.inactive, self.live):
            if table is not None:
                await table.destroy()
        self.inactive = self.live = None
        self._reopen()


async def _read_unaligned(live: LoadedTable, offset: int, size: int) -> bytearray:
    """Read the whole blocks around ``[offset, offset+size)`` and keep the part asked for."""
    block = live.block
    start = offset - offset % block
    stop = min(-(-(offset + size) // block) * block, live.size)
    buf = bytearray(stop - start)
    await live.read(start, memoryview(buf))
    del buf[offset - start + size :]
    del buf[: offset - start]
    return buf
