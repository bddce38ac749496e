"""The backend contract: byte-addressed I/O on something a table line names."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable


class Backend(abc.ABC):
    """An opened underlying device.  Offsets and lengths are bytes.

    ``display`` is how table/status output names it: ``MAJOR:MINOR`` for a block device (as the
    kernel prints), otherwise the path or name the user gave.  ``devno`` is ``(major, minor)``
    where one exists, for ``deps``.
    """

    display: str
    devno: tuple[int, int] | None = None
    refs: int = 0

    @abc.abstractmethod
    def size(self) -> int:
        """Current size in bytes (checked at resume, like ``device_area_is_invalid``)."""

    @abc.abstractmethod
    async def read(self, offset: int, buf: memoryview) -> None:
        """Fill all of ``buf`` from ``offset``; reading past the end raises :class:`IOFailure`."""

    @abc.abstractmethod
    async def write(self, offset: int, data: memoryview) -> None:
        """Write all of ``data`` at ``offset``."""

    async def write_fua(self, offset: int, data: memoryview) -> None:
        """Write all of ``data`` at ``offset`` and return only once it is durable (the kernel's
        REQ_FUA).  By default a write followed by a flush, as the block layer does for a
        device without native FUA."""
        await self.write(offset, data)
        await self.flush()

    @abc.abstractmethod
    async def flush(self, datasync: bool = False) -> None:
        """Make completed writes durable (``datasync``: data and what reading it back needs,
        as ``fdatasync``)."""

    @abc.abstractmethod
    async def discard(self, offset: int, length: int) -> None:
        """Forget the range; afterwards it reads as zeros."""

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self.discard(offset, length)

    async def seek_data(self, offset: int, end: int) -> int:
        """The first byte in ``[offset, end)`` that may be data, ``end`` if the whole range is
        known to be a hole (reads as zeros).  Default: every byte is data.

        Answers are conservative: a byte not known to be a hole is data (so a byte past the
        backend's end, where reads fail, is data too)."""
        return offset

    async def seek_hole(self, offset: int, end: int) -> int:
        """The first byte in ``[offset, end)`` known to be a hole, ``end`` if there is none.
        Default: there is none (the end of the backend is not a hole here: past it reads
        fail)."""
        return end

    def allocated(self) -> int | None:
        """Bytes the backend has allocated (a sparse file's ``st_blocks * 512``), for the
        device file's ``st_blocks``; None if unknown (every mapped byte counts).  Cheap: it
        runs on every ``stat`` of the device file."""
        return None

    def seek_fd(self) -> int | None:
        """A regular file's fd whose SEEK_DATA/SEEK_HOLE answers are this backend's, so a
        seek over many table lines asks them all in one worker-thread call
        (:func:`dmfuse.backends.file.seek_in_files`); None if there is none."""
        return None

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what was opened (called when the last table using it is destroyed)."""

    def block_size(self) -> int:
        """The smallest unit I/O to this backend may use, in bytes (its logical block size;
        1 for a file read and written byte by byte)."""
        return 1

    def discards(self) -> bool:
        """Whether discards can be sent (the kernel's ``device_not_discard_capable``)."""
        return True

    def file_fd(self) -> int | None:
        """A file descriptor whose byte ``o`` is this backend's byte ``o``, for targets that
        read and write it from C (crypt), or None if there is none."""
        return None

    def buffer_alignment(self) -> int:
        """The address alignment a read buffer needs to go to the backend without a copy
        (``O_DIRECT`` backends, :mod:`dmfuse.backends.direct`); 1 when any will do."""
        return 1

    def depends_on(self) -> list[str]:
        """Names of dmfuse devices this backend stacks on (for cycle checks)."""
        return []


ZERO_CHUNK = 1 << 20


async def write_zero_buffers(
    write: Callable[[int, memoryview], Awaitable[None]], offset: int, length: int
) -> None:
    """Write-zeroes the slow way, with plain writes of a shared zero buffer (at most 1 MiB)."""
    zeros = memoryview(bytes(min(length, ZERO_CHUNK)))
    end = offset + length
    while offset < end:
        n = min(len(zeros), end - offset)
        await write(offset, zeros[:n])
        offset += n
