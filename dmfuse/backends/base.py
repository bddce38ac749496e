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

    @abc.abstractmethod
    async def flush(self) -> None:
        """Make completed writes durable."""

    @abc.abstractmethod
    async def discard(self, offset: int, length: int) -> None:
        """Forget the range; afterwards it reads as zeros."""

    async def write_zeroes(self, offset: int, length: int) -> None:
        await self.discard(offset, length)

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what was opened (called when the last table using it is destroyed)."""

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
