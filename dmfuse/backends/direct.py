"""Backing files opened with ``O_DIRECT``: the ``cache=none`` policy.

With ``dmfuse mount -o cache=none`` (or ``cache=none`` in a table file's ``# dmfuse:`` line)
regular files and block devices are opened ``O_DIRECT``, so their data is not kept in the page
cache a second time: whoever sits on the device file (a loop device, a filesystem, a guest)
caches it already.  This is qemu's ``cache.direct=on`` and nbdkit's ``cache=none``.  The
default, ``writeback``, opens them as before and lets the kernel cache.

``O_DIRECT`` wants file offsets, lengths and buffer addresses aligned:

* the unit is what ``statx(STATX_DIOALIGN)`` reports (Linux 6.1+ for files, 6.11+ for block
  devices): ``dio_offset_align`` for offsets and lengths, ``dio_mem_align`` for addresses;
* a block device that does not report it uses its logical block size (``BLKSSZGET``) for both;
* a file that does not report it uses 4096 for both: every logical block size up to 4096
  divides it, so it is always accepted, and the only price is a larger read-modify-write;
* a file whose file system reports 0 (no direct I/O for this file) is refused at table load.

Where requests run.  A direct read waits for the disk, so doing it inline on the trio thread
(as the cached policy does) would run deep queues one request at a time, and handing each call
to a worker thread (``trio.to_thread``, tried with 16 threads) was measured slower on every fio
cell on this 2-vCPU machine (4k random read QD16 ~2.5x fewer IOPS): the disk answers in
~50-100 µs, less than the thread hops cost.  So a request with aligned offset and length
that overlaps others (AIO requests in flight, or FUSE requests waiting to be received: the
probe of :mod:`dmfuse.openssl.offload`) is submitted with Linux native AIO
(:mod:`dmfuse.backends.aio`)
and the task waits while the trio thread serves others; a request alone runs inline, because
an AIO completion reaches the task later than a blocking ``preadv`` returns (engine level, 4k
QD1: 4k vs 10k IOPS).  Measured interleaved against inline-only through FUSE (fio on the
device file, 256 MiB, dropped cache, 3 rounds, load 3-4 on 2 vCPUs): 1M sequential read QD16
1.2-2.2x, 4k random write QD16 0.8-1.7x, 4k random read QD1 and QD16 unchanged within the
noise.

Alignment.  A request aligned into an aligned buffer goes straight through.  A write with
aligned offset and length from an unaligned buffer is copied into a page-aligned bounce buffer
(anonymous ``mmap``; a few are kept, not one per request) and written from there.  Anything
else runs inline through a bounce buffer: reads read the aligned range around the request
and copy out; writes read the partial first and last units, copy the data in and write the
aligned range.  Such a read-modify-write first waits for AIO writes in flight on its units,
then runs with no ``await`` inside, so no other request of this process writes those units in
between.  A write whose aligned range would reach past the end of a regular file (a file
size that is not a multiple of the unit) is written through the page cache instead,
``O_DIRECT`` switched off on the descriptor around that one ``pwrite`` (submitted AIO keeps
the flags it was submitted with): an aligned direct write there would grow the file.  The
kernel keeps cached and direct I/O of a file coherent (direct reads write back dirty cached
pages first, direct writes drop them).

FUSE hands dmfuse a write's data as ``bytes``, never aligned, so every write from the device
file is copied once into a bounce buffer; reads are aligned when the device reads into a
buffer it allocated aligned (:func:`aligned_buffer`, used when a table's backends ask for it).
Measured on this backend over a tmpfs file (O_DIRECT there is a copy from memory, so only the
CPU cost shows): a 1 MiB read costs 90 µs into an aligned buffer and 157 µs bounced, a 4 KiB
read 4.7 µs and 6.9 µs; an aligned buffer costs ~1.5 µs more to allocate than a bytearray,
so device reads always get one.

``crypt`` over such a backend converts in memory and reads and writes through this class
(:meth:`file_fd` is None), instead of doing its file I/O from C with unaligned buffers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import struct

import attrs
import trio

from dmfuse.backends.aio import AioContext, context
from dmfuse.backends.file import FileBackend
from dmfuse.errors import IOFailure, TableError
from dmfuse.openssl import offload

STATX_DIOALIGN = 0x2000
AT_EMPTY_PATH = 0x1000
BLKSSZGET = 0x1268
FALLBACK_ALIGN = 4096
_STATX_SIZE = 256
_STATX_MASK_AT = 0  # struct statx: __u32 stx_mask
_STATX_DIO_AT = 152  # __u32 stx_dio_mem_align, __u32 stx_dio_offset_align

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_statx = getattr(_libc, "statx", None)
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    _statx.restype = ctypes.c_int


@attrs.frozen
class DirectAlignment:
    offset: int  # file offsets and lengths: multiples of this
    memory: int  # buffer addresses: multiples of this


def statx_dio_align(fd: int) -> tuple[int, int] | None:
    """``(dio_mem_align, dio_offset_align)`` from ``statx``, or None if not reported."""
    if _statx is None:
        return None
    buf = ctypes.create_string_buffer(_STATX_SIZE)
    if _statx(fd, b"", AT_EMPTY_PATH, STATX_DIOALIGN, buf) != 0:
        return None
    raw = buf.raw
    (mask,) = struct.unpack_from("I", raw, _STATX_MASK_AT)
    if not mask & STATX_DIOALIGN:
        return None
    mem, offset = struct.unpack_from("II", raw, _STATX_DIO_AT)
    return mem, offset


def dio_alignment(fd: int, is_block: bool, display: str) -> DirectAlignment:
    """What ``O_DIRECT`` I/O on ``fd`` must be aligned to (see the module docstring)."""
    reported = statx_dio_align(fd)
    if reported is not None:
        mem, offset = reported
        if offset == 0:
            raise TableError(f"cache=none: {display}: this file does not support direct I/O")
        return DirectAlignment(offset=offset, memory=max(mem, 1))
    if is_block:
        raw = fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4)
        size = max(int(struct.unpack("i", raw)[0]), 512)
        return DirectAlignment(offset=size, memory=size)
    return DirectAlignment(offset=FALLBACK_ALIGN, memory=FALLBACK_ALIGN)


def buffer_address(buf: memoryview) -> int | None:
    """The address of a writable buffer's first byte (None for a read-only one)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))
    except TypeError:
        return None


def aligned_buffer(size: int, align: int) -> memoryview:
    """``size`` zeroed bytes starting at a multiple of ``align`` (a power of two)."""
    raw = bytearray(size + align)
    view = memoryview(raw)
    address = buffer_address(view)
    assert address is not None
    skip = -address % align
    return view[skip : skip + size]


class BounceBuffers:
    """Page-aligned scratch memory (anonymous ``mmap``): up to ``keep`` spares of at most
    ``max_bytes`` each and ``max_total`` together stay mapped (writes in flight hold one each).
    For the trio thread only (take and give are not thread-safe)."""

    GRAIN = 64 << 10

    def __init__(self, keep: int = 32, max_bytes: int = 4 << 20, max_total: int = 16 << 20) -> None:
        self.keep = keep
        self.max_bytes = max_bytes
        self.max_total = max_total
        self._spare: list[mmap.mmap] = []
        self._spare_bytes = 0

    def take(self, size: int) -> mmap.mmap:
        for i, area in enumerate(self._spare):
            if len(area) >= size:
                del self._spare[i]
                self._spare_bytes -= len(area)
                return area
        return mmap.mmap(-1, -(-size // self.GRAIN) * self.GRAIN)

    def give(self, area: mmap.mmap) -> None:
        """Take back an area from :meth:`take`; every view of it must be released."""
        size = len(area)
        if (
            len(self._spare) < self.keep
            and size <= self.max_bytes
            and self._spare_bytes + size <= self.max_total
        ):
            self._spare.append(area)
            self._spare_bytes += size
        else:
            area.close()


BOUNCE = BounceBuffers()


def overlapped_aio() -> AioContext | None:
    """The AIO context when a request overlaps others (AIO requests in flight, or FUSE
    requests waiting to be received), else None: a request alone is done inline."""
    aio = context()
    if aio is not None and (aio.inflight or offload.requests_waiting()):
        return aio
    return None


class DirectFileBackend(FileBackend):
    """A regular file or block device opened ``O_DIRECT``, with bounce buffers."""

    cache = "none"

    def __init__(
        self,
        path: str,
        display: str,
        *,
        writable: bool,
        alignment: DirectAlignment | None = None,
    ) -> None:
        """``alignment``: None to ask the kernel; a larger unit (a multiple of what the kernel
        wants) is accepted too, which the tests use to exercise the 4096-byte fallback."""
        try:
            super().__init__(path, display, writable=writable, extra_flags=os.O_DIRECT)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # the file system has no O_DIRECT (open(2))
                raise TableError(
                    f"cache=none: {display}: the file system does not support direct I/O"
                ) from None
            raise
        try:
            self.align = alignment or dio_alignment(self.fd, self.is_block, self.display)
            self._flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        except BaseException:
            os.close(self.fd)
            raise
        self._offset_mask = self.align.offset - 1
        self._memory_mask = self.align.memory - 1
        self._size_seen = 0
        self._writing: list[tuple[int, int, trio.Event]] = []  # AIO writes in flight

    def buffer_alignment(self) -> int:
        return self.align.memory

    def _aligned(self, offset: int, buf: memoryview) -> bool:
        if (offset | len(buf)) & self._offset_mask:
            return False
        address = buffer_address(buf)
        return address is not None and not address & self._memory_mask

    def _aligned_address(self, buf: memoryview) -> int | None:
        address = buffer_address(buf)
        return address if address is not None and not address & self._memory_mask else None

    async def read(self, offset: int, buf: memoryview) -> None:
        aio = overlapped_aio() if not (offset | len(buf)) & self._offset_mask else None
        address = self._aligned_address(buf) if aio is not None else None
        if aio is None or address is None:
            self._read_now(offset, buf)
            return
        got = await aio.pread(self.fd, address, len(buf), offset)  # `buf` lives till done
        if got < len(buf):  # the end of the file: the rest inline, failing there
            self._read_now(offset + got, buf[got:])

    def _read_now(self, offset: int, buf: memoryview) -> None:
        if self._aligned(offset, buf):
            got = self._pread_direct(buf, offset)
            if got < len(buf):
                raise IOFailure(f"{self.display}: read beyond end of device at byte {offset + got}")
            return
        start = offset & ~self._offset_mask
        stop = -(-(offset + len(buf)) // self.align.offset) * self.align.offset
        area = BOUNCE.take(stop - start)
        try:
            with memoryview(area) as bounce:
                need = offset + len(buf) - start
                got = self._pread_direct(bounce[: stop - start], start)
                if got < need:
                    raise IOFailure(
                        f"{self.display}: read beyond end of device at byte {start + got}"
                    )
                buf[:] = bounce[offset - start : need]
        finally:
            BOUNCE.give(area)

    def _pread_direct(self, view: memoryview, offset: int) -> int:
        """Read aligned ``view`` at ``offset``; fewer bytes only at the end of the file."""
        done = 0
        while done < len(view):
            got = os.preadv(self.fd, [view[done:]], offset + done)
            done += got
            if got == 0 or done & self._offset_mask:  # EOF (a short direct read ends there)
                break
        return done

    async def write(self, offset: int, data: memoryview) -> None:
        self._written += 1  # O_DIRECT is not durable by itself: the next flush must sync
        end = offset + len(data)
        aio = overlapped_aio() if not (offset | len(data)) & self._offset_mask else None
        if aio is None:
            # A read-modify-write (or no AIO): first let in-flight writes of its units finish,
            # then run it without an await, so that nothing else writes them meanwhile.
            start = offset & ~self._offset_mask
            stop = -(-end // self.align.offset) * self.align.offset
            while True:
                blocker = next((e for s, t, e in self._writing if s < stop and start < t), None)
                if blocker is None:
                    break
                await blocker.wait()
            self._write_now(offset, data)
            return
        entry = (offset, end, trio.Event())
        self._writing.append(entry)
        try:
            address = self._aligned_address(data)
            if address is not None:
                done = await aio.pwrite(self.fd, address, len(data), offset)
            else:  # FUSE's `bytes`: copied once into aligned memory
                area = BOUNCE.take(len(data))
                try:
                    with memoryview(area) as bounce:
                        bounce[: len(data)] = data
                        address = buffer_address(bounce)
                        assert address is not None
                        done = await aio.pwrite(self.fd, address, len(data), offset)
                finally:
                    BOUNCE.give(area)
            if done < len(data):  # short (a full disk): the rest inline, failing there
                _pwrite_all(self.fd, data[done:], offset + done)
        finally:
            self._writing.remove(entry)
            entry[2].set()

    def _write_now(self, offset: int, data: memoryview) -> None:
        if self._aligned(offset, data):
            _pwrite_all(self.fd, data, offset)
            return
        unit = self.align.offset
        start = offset & ~self._offset_mask
        end = offset + len(data)
        stop = -(-end // unit) * unit
        if not self.is_block and stop > self._file_size(stop):
            self._write_cached(offset, data)  # the unaligned tail of the file
            return
        area = BOUNCE.take(stop - start)
        try:
            with memoryview(area) as bounce:
                whole = bounce[: stop - start]
                # No await from here to the write: the read-modify-write cannot interleave.
                if start != offset:
                    self._read_unit(whole[:unit], start)
                if end != stop and (stop - unit >= start + unit or start == offset):
                    self._read_unit(whole[-unit:], stop - unit)
                whole[offset - start : end - start] = data
                _pwrite_all(self.fd, whole, start)
        finally:
            BOUNCE.give(area)

    def _read_unit(self, view: memoryview, offset: int) -> None:
        got = self._pread_direct(view, offset)
        if got < len(view):
            view[got:] = bytes(len(view) - got)  # past the end of a block device: none there

    def _file_size(self, wanted: int) -> int:
        """The file's size, looked up again only when a write would reach past the last one
        seen (the file may have grown since)."""
        size = self._size_seen
        if wanted > size:
            size = os.fstat(self.fd).st_size
            self._size_seen = size
        return size

    def _write_cached(self, offset: int, data: memoryview) -> None:
        fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags & ~os.O_DIRECT)
        try:
            _pwrite_all(self.fd, data, offset)
        finally:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, self._flags)

    async def write_fua(self, offset: int, data: memoryview) -> None:
        # RWF_DSYNC on the O_DIRECT fd would need the buffer aligned: write (bounced if need
        # be), then sync, as the block layer does for a device without native FUA.
        await self.write(offset, data)
        await self.flush()

    def file_fd(self) -> int | None:
        return None  # crypt's C loops use unaligned buffers: it goes through read/write


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwritev(fd, [data[done:]], offset + done)
