"""The snapshot target (its man page: the package docstring)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Hashable, Sequence

from dmfuse.backends.base import Backend
from dmfuse.errors import DmError, IOFailure, TableError
from dmfuse.target import DeviceOpener, Flushed, Limits, Target, check_area, register
from dmfuse.targets.snapshot import origin as registry
from dmfuse.targets.snapshot.origin import Origin, storage_key
from dmfuse.targets.snapshot.store import ExceptionStore
from dmfuse.targets.snapshot.table_args import open_store, parse_features, parse_store

log = logging.getLogger(__name__)


class _Shared:
    """An exception store and the snapshot tables using its COW device (for handover)."""

    def __init__(self, key: Hashable, store: ExceptionStore) -> None:
        self.key = key
        self.store = store
        self.users: list[Snapshot] = []


_STORES: dict[Hashable, _Shared] = {}


@register
class Snapshot(Target):
    name = "snapshot"
    version = (1, 16, 0)
    merging = False

    def __init__(
        self,
        length: int,
        origin_dev: Backend,
        cow: Backend,
        shared: _Shared,
        origin: Origin,
        *,
        overflow_ok: bool,
        discard_zeroes_cow: bool,
        discard_passdown_origin: bool,
    ) -> None:
        super().__init__(length)
        self.origin_dev = origin_dev
        self.cow = cow
        self.shared = shared
        self.origin = origin
        self.overflow_ok = overflow_ok
        self.discard_zeroes_cow = discard_zeroes_cow
        self.discard_passdown_origin = discard_passdown_origin
        self.active = False  # set at resume: origin writes copy out only to active snapshots
        self.suspended = False
        self.handed_off = False  # another table took the store over: EIO from now on
        discards = (2 if discard_passdown_origin else 1) if discard_zeroes_cow else 0
        self.limits = Limits(
            io_boundary=self.chunk,
            discard_bios=discards,
            discard_zeroes=False,
            write_zeroes=False,
        )

    @property
    def store(self) -> ExceptionStore:
        return self.shared.store

    @property
    def chunk(self) -> int:
        return self.shared.store.chunk

    # -- construction ------------------------------------------------------------------------
    @classmethod
    async def construct(cls, opener: DeviceOpener, length: int, args: Sequence[str]) -> Snapshot:
        if len(args) < 4:
            raise TableError("requires 4 or more arguments")
        zeroes_cow, passdown = parse_features(args[4:])
        origin_dev = await opener.open(args[0])
        # The kernel compares device numbers before opening the COW; the key says the same here.
        cow = await opener.open(args[1])
        if storage_key(cow) == storage_key(origin_dev):
            raise TableError("COW device cannot be the same as origin device")
        kind, chunk_sectors = parse_store(args[2], args[3], origin_dev, cow)
        if cls.merging and kind == "N":
            raise TableError("Snapshot exception store does not support snapshot-merge.")
        key = storage_key(cow)
        shared = _STORES.get(key)
        if shared is not None:  # a handover: the new table takes the live store at resume
            if len(shared.users) >= 2:
                raise TableError("Snapshot cow pairing for exception table handover failed")
            existing = registry.find(origin_dev)
            if (
                cls.merging
                and existing is not None
                and any(isinstance(s, Snapshot) and s.merging for s in existing.snapshots)
            ):
                # only checked for a handover, as the kernel does (a merge of a fresh COW passes)
                raise TableError("A snapshot is already merging.")
        else:
            store = await open_store(kind, cow, chunk_sectors, origin_dev)
            shared = _STORES[key] = _Shared(key, store)
        origin = registry.acquire(origin_dev)
        target = cls(
            length,
            origin_dev,
            cow,
            shared,
            origin,
            overflow_ok=kind == "PO",
            discard_zeroes_cow=zeroes_cow,
            discard_passdown_origin=passdown,
        )
        shared.users.append(target)
        origin.snapshots.append(target)
        return target

    # -- lifecycle ---------------------------------------------------------------------------
    async def postsuspend(self) -> None:
        self.suspended = True

    def _pairing(self) -> tuple[Snapshot | None, Snapshot | None]:
        """``__find_snapshots_sharing_cow``: the active table using the COW and a waiting one."""
        src = dest = None
        for user in self.shared.users:
            if user.active:
                src = user
            else:
                dest = user
        return src, dest

    async def preresume(self) -> None:
        src, dest = self._pairing()
        if src is not None and dest is not None:
            if src is self:
                raise TableError("Unable to resume snapshot source until handover completes.")
            if not src.suspended:
                raise TableError("Unable to perform snapshot handover until source is suspended.")

    async def resume(self) -> None:
        src, dest = self._pairing()
        if src is not None and dest is self:
            src.handed_off = True  # the kernel marks the source invalid: no more I/O there
        self.store.cow = self.cow
        self.store.on_invalid = self.raise_event
        self.active = True
        self.suspended = False

    async def destroy(self) -> None:
        self.active = False
        if self in self.origin.snapshots:
            self.origin.snapshots.remove(self)
        registry.release(self.origin)
        if self in self.shared.users:
            self.shared.users.remove(self)
        if not self.shared.users and _STORES.get(self.shared.key) is self.shared:
            del _STORES[self.shared.key]

    # -- I/O ---------------------------------------------------------------------------------
    def _check_usable(self) -> None:
        if self.handed_off or not self.store.valid:
            raise IOFailure("snapshot is invalid")

    def _pieces(self, offset: int, view: memoryview) -> list[tuple[int, memoryview]]:
        """``(device offset, part of view)`` per chunk of the *device* that ``offset`` (target-
        relative) and ``view`` touch: one piece when ``begin`` is a multiple of the chunk size,
        since requests are already split at the target's chunk boundaries."""
        pos = self.begin + offset
        chunk_size = self.chunk
        first = chunk_size - pos % chunk_size
        if len(view) <= first:
            return [(pos, view)]
        cuts = [0, *range(first, len(view), chunk_size), len(view)]
        return [(pos + a, view[a:b]) for a, b in itertools.pairwise(cuts)]

    async def read(self, offset: int, buf: memoryview) -> None:
        self._check_usable()
        for at, piece in self._pieces(offset, buf):
            await self._read_chunk(at, piece)

    async def _read_chunk(self, at: int, buf: memoryview) -> None:
        chunk_size = self.chunk
        chunk, within = divmod(at, chunk_size)
        new = self.store.lookup(chunk)
        if new is None:
            start = chunk * chunk_size
            async with self.origin.locks.hold(start, start + chunk_size):
                new = self.store.lookup(chunk)
                if new is None:
                    await self.origin_dev.read(at, buf)
                    return
        await self.cow.read(new * chunk_size + within, buf)

    async def write(self, offset: int, data: memoryview) -> None:
        self._check_usable()
        if self.store.overflowed:  # the kernel refuses every snapshot write once overflowed
            raise IOFailure("snapshot overflowed")
        for at, piece in self._pieces(offset, data):
            await self._write_chunk(at, piece)

    async def _write_chunk(self, at: int, data: memoryview) -> None:
        chunk_size = self.chunk
        chunk, within = divmod(at, chunk_size)
        new = self.store.lookup(chunk)
        if new is None:
            start = chunk * chunk_size
            async with self.origin.locks.hold(start, start + chunk_size):
                new = self.store.lookup(chunk)
                if new is None:
                    await self._new_exception(chunk, within, data)
                    return
        await self.cow.write(new * chunk_size + within, data)

    async def _new_exception(self, chunk: int, within: int, data: memoryview) -> None:
        """A snapshot write to a chunk without an exception (the chunk lock is held)."""
        store = self.store
        new = store.allocate()
        if new is None:
            if self.overflow_ok:
                if store.valid and not store.overflowed:
                    store.overflowed = True
                    log.error("Snapshot overflowed: Unable to allocate exception.")
            else:
                await self._invalidate("Unable to allocate exception.")
            raise IOFailure("snapshot COW device is full")
        chunk_size = self.chunk
        try:
            if within == 0 and len(data) == chunk_size:
                await self.cow.write(new * chunk_size, data)
            else:
                merged = await self._origin_chunk(chunk)
                merged[within : within + len(data)] = data
                await self.cow.write(new * chunk_size, memoryview(merged))
        except (DmError, OSError):
            await self._invalidate("Error reading/writing.")
            raise
        await store.commit(chunk, new)

    async def _origin_chunk(self, chunk: int) -> bytearray:
        """The origin's chunk (short at the end of the origin; the rest reads as zeros)."""
        start = chunk * self.chunk
        count = max(0, min(self.chunk, self.origin_dev.size() - start))
        buf = bytearray(self.chunk)
        if count:
            await self.origin_dev.read(start, memoryview(buf)[:count])
        return buf

    # -- the origin's side (called with the origin's chunk lock held) --------------------------
    def needs_copy(self, offset: int) -> bool:
        # __origin_write: "Nothing to do if writing beyond end of snapshot": the origin sector
        # is compared with the snapshot's whole table (dm_table_get_size), not its line
        return (
            offset < self.table_size
            and self.active
            and not self.handed_off
            and self.store.valid
            and self.store.lookup(offset // self.store.chunk) is None
        )

    async def copy_out(self, offset: int) -> None:
        store = self.store
        chunk_size = store.chunk
        chunk = offset // chunk_size
        new = store.allocate()
        if new is None:
            # An origin write never overflows: it invalidates, even for PO (as the kernel).
            await self._invalidate("Unable to allocate exception.")
            return
        try:
            start = chunk * chunk_size
            count = max(0, min(chunk_size, self.origin_dev.size() - start))
            buf = bytearray(count)
            await self.origin_dev.read(start, memoryview(buf))
            await self.cow.write(new * chunk_size, memoryview(buf))
            await store.commit(chunk, new)
        except (DmError, OSError):
            await self._invalidate("Error reading/writing.")

    async def _invalidate(self, why: str) -> None:
        if self.store.valid:
            log.error("Invalidating snapshot: %s", why)
        await self.store.invalidate()  # raises the dm event through store.on_invalid, once

    # -- flush and discard -------------------------------------------------------------------
    async def flush(self, flushed: Flushed) -> None:
        await flushed.flush(self.cow)

    async def discard(self, offset: int, length: int) -> None:
        """Zero the COW chunks of whole chunks with exceptions; pass down to the origin if asked."""
        self._check_usable()
        chunk_size = self.chunk
        pos = self.begin + offset
        end = pos + length
        while pos < end:
            chunk, within = divmod(pos, chunk_size)
            n = min(end - pos, chunk_size - within)
            new = self.store.lookup(chunk)
            if new is not None:
                if n == chunk_size:
                    await self.cow.write_zeroes(new * chunk_size, chunk_size)
                else:
                    await self.cow.discard(new * chunk_size + within, n)
            pos += n
        if self.discard_passdown_origin:
            at = self.device_offset(self.origin_dev, offset, length)
            await self.origin_dev.discard(at, length)

    # -- description -------------------------------------------------------------------------
    def status(self) -> str:
        store = self.store
        if self.handed_off or not store.valid:
            return "Invalid"
        if store.overflowed:
            return "Overflow"
        allocated, total, metadata = store.usage()
        return f"{allocated}/{total} {metadata}"

    def table(self, showkeys: bool = False) -> str:
        kind = "N" if self.store.kind == "N" else ("PO" if self.overflow_ok else "P")
        out = f"{self.origin_dev.display} {self.cow.display} {kind} {self.store.chunk_sectors}"
        features = [
            name
            for name, on in (
                ("discard_zeroes_cow", self.discard_zeroes_cow),
                ("discard_passdown_origin", self.discard_passdown_origin),
            )
            if on
        ]
        if features:
            out += f" {len(features)} " + " ".join(features)
        return out

    def devices(self) -> list[Backend]:
        return [self.origin_dev, self.cow]

    def check_fits(self) -> None:
        check_area(self.origin_dev, 0, self.length)
