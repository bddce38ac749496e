"""The registry of snapshots per origin device, and the copy-on-write rule for origin writes.

The kernel keeps a hash of origins keyed by the origin's ``bdev``; every ``snapshot`` registers
there at construction and every ``snapshot-origin`` write asks *all active, valid* snapshots of
that bdev to copy the old chunk out before the write lands.  Here the key is what identifies
the underlying storage: a regular file by (st_dev, inode), a block device by its device number,
another dmfuse device by its :class:`Device` object (the backend pool shares one ``FileBackend``
per file and mode, but a read-only table and a read-write one open separate objects, so the
object itself is not the key).

Ordering: a per-origin byte-range lock serialises, per chunk, the copy-out plus origin write
against snapshot reads and writes of the same chunk that have no exception yet, so a snapshot
never reads a half-overwritten origin chunk and a chunk is never copied twice.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from dmfuse.backends.base import Backend
from dmfuse.backends.file import FileBackend
from dmfuse.backends.mapped import MappedBackend
from dmfuse.engine.rangelock import RangeLocks


class Participant(Protocol):
    """What an origin write needs from a snapshot of it."""

    @property
    def chunk(self) -> int:
        """Chunk size in bytes."""

    def needs_copy(self, offset: int) -> bool:
        """Active and valid, and no exception yet for the chunk holding ``offset``."""

    async def copy_out(self, offset: int) -> None:
        """Copy the origin chunk holding ``offset`` to the COW; never raises (invalidates)."""


def storage_key(backend: Backend) -> Hashable:
    """What two backends share when they are the same underlying device."""
    if isinstance(backend, MappedBackend):
        return ("device", backend.device)
    if isinstance(backend, FileBackend):
        if backend.is_block and backend.devno is not None:
            return ("block", backend.devno)
        key = getattr(backend, "key", None)
        if key is not None:
            return ("file", key[0], key[1])
        return ("path", backend.path)
    return ("object", id(backend))


class Origin:
    """One origin device: its snapshots and the chunk locks."""

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.snapshots: list[Participant] = []
        self.locks = RangeLocks()
        self.users = 0

    def min_chunk(self) -> int:
        """The kernel's ``get_origin_minimum_chunksize`` (0 without snapshots)."""
        return min((s.chunk for s in self.snapshots), default=0)

    async def write(self, dev: Backend, offset: int, data: memoryview) -> None:
        """An origin write: copy out to every snapshot that needs it, chunk by chunk, then write."""
        pos = 0
        total = len(data)
        while pos < total:
            at = offset + pos
            step = self.min_chunk()
            n = total - pos if not step else min(total - pos, step - at % step)
            piece = data[pos : pos + n]
            need = [s for s in self.snapshots if s.needs_copy(at)]
            if not need:
                await dev.write(at, piece)
            else:
                big = max(s.chunk for s in need)
                start = at - at % big
                async with self.locks.hold(start, start + big):
                    for snap in list(self.snapshots):
                        if snap.needs_copy(at):  # state may have changed while we waited
                            await snap.copy_out(at)
                    await dev.write(at, piece)
            pos += n


_ORIGINS: dict[Hashable, Origin] = {}


def find(backend: Backend) -> Origin | None:
    return _ORIGINS.get(storage_key(backend))


def acquire(backend: Backend) -> Origin:
    key = storage_key(backend)
    origin = _ORIGINS.get(key)
    if origin is None:
        origin = _ORIGINS[key] = Origin(key)
    origin.users += 1
    return origin


def release(origin: Origin) -> None:
    origin.users -= 1
    if origin.users <= 0 and _ORIGINS.get(origin.key) is origin:
        del _ORIGINS[origin.key]
