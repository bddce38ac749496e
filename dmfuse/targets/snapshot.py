"""snapshot, snapshot-origin, snapshot-merge — copy-on-write snapshots of a device (dm-snap).

Tables:
  ``<start> <length> snapshot-origin <origin>``
  ``<start> <length> snapshot <origin> <COW> <P|PO|N> <chunk_size> [<#features> <feature>...]``
  ``<start> <length> snapshot-merge <origin> <COW> <P|PO> <chunk_size> [<#features> ...]``
  ``P`` persistent store in the kernel's on-disk format (survives a remount), ``PO`` the same but
  a full COW on a *snapshot* write gives ``Overflow`` instead of invalidating, ``N`` transient
  (exceptions in memory, COW contents lost with the table).  The store type is read from its
  first letter, case-insensitively, like the kernel (``p``, ``Nfoo`` work; ``PX`` does not).
  ``chunk_size`` in sectors: a power of two, a multiple of both devices' logical block size,
  at most ``INT_MAX >> 9``; ``0`` takes the COW header's (persistent) or the default 32.  A
  persistent header's chunk size overrides the table's.  Features: ``discard_zeroes_cow``,
  ``discard_passdown_origin`` (needs the former).

Usage: the origin's own device is reloaded as ``snapshot-origin <origin>`` and each snapshot is
a device ``snapshot <origin> <COW> P 16``.  Before a write to the origin lands, the old chunk is
copied to every active, valid snapshot of that origin (the write waits until the exception is
committed).  A snapshot reads a chunk from its COW if it has an exception, else from the origin;
a write to a snapshot chunk without an exception copies the origin chunk in (skipped when the
write covers the chunk) and commits the exception first.

Status (INFO): ``<sectors_allocated>/<total_sectors> <metadata_sectors>``, or ``Invalid`` (COW
full or I/O error; snapshot I/O fails with EIO, the origin keeps working and the persistent
header is rewritten ``valid = 0``, a dm event is raised), or ``Overflow`` (``PO``: a snapshot
write needing a new chunk found the COW full; from then on every snapshot write fails with
EIO, reads keep working; no event).
Transient: ``<allocated>/<total> 0``.  ``snapshot-origin`` INFO is empty.
Table: ``<origin> <COW> <P|PO|N> <chunk_size>[ <n> discard_zeroes_cow[ discard_passdown_origin]]``
and ``<origin>``.  Flush: ``snapshot`` flushes the COW, ``snapshot-origin`` the origin.

Merging (``lvconvert --merge`` by hand): suspend the origin's device and the snapshot's, load
``snapshot-merge <origin> <COW> P <chunk>`` on the origin's device, resume it.  It takes the
snapshot's store over (the snapshot device fails I/O with EIO from then on) and copies the COW
chunks back to the origin in the background, last records first, one run of consecutive chunks
at a time; each run's records are cleared and the area rewritten (flushed) once the data is on
the origin.  Progress: ``sectors_allocated`` shrinks until it equals ``metadata_sectors``
(``16/<cow> 16`` with chunk 8 when done).  ``Merge failed`` if a run could not be copied.
Suspend stops the merge, resume restarts it; a remount with the ``snapshot-merge`` table
continues from the records still on disk.  While merging, reads and writes of chunks not yet
merged go to the COW, everything else to the origin (other snapshots of it still get their
copies first, also before the merge itself overwrites an origin chunk).  Refused: ``N`` ("Snapshot
exception store does not support snapshot-merge."), taking over a snapshot's store while another
merge of the origin exists ("A snapshot is already merging.").

Sectors are the mapped device's, as in the kernel (``bio->bi_iter.bi_sector``, no ``ti->begin``
subtracted): a line starting at sector ``start`` maps device sector ``s`` to sector ``s`` of
the origin (all three targets), its chunk is ``s / chunk_size`` and on the COW it lands at
``new_chunk * chunk_size + s % chunk_size``; merged chunks go back to ``chunk * chunk_size`` of
the origin.  The table check only asks the origin for ``length`` sectors (the kernel's
``iterate_devices``), so I/O that reaches past the origin's end fails with EIO.  Checked in
the kernel VM with lines at 1024 and 2048 (tests/unit/test_device_sectors.py): same COW bytes,
statuses and merged origin.

An origin write (or a merge run overwriting the origin) copies out only to the snapshots whose
*device* reaches the written sector: as the kernel's ``__origin_write``, a snapshot is skipped
when the origin sector is at or past the size of the snapshot's whole table (not its line), so
a snapshot device smaller than the origin never gets exceptions for the origin's tail, and a
``snapshot`` line followed by other lines still gets copies for origin sectors up to the
table's end.  Checked in the kernel VM with snapshots of 2048, 4096 and 1024-in-3072 sectors
of a 4096-sector origin (tests/unit/test_snapshot_sizes.py): same statuses and COW bytes.

Reloading a snapshot (a new table using the same COW while the old one exists) hands its
exception store over at resume, as the kernel does: the new table shares the live store (so an
``N`` snapshot keeps its exceptions); the resume is refused while the other table using the COW
is live and not suspended, and the old table then fails I/O with EIO.

Differences from the kernel:
* a ``snapshot`` line whose start is not a multiple of the chunk size: the kernel splits I/O
  at chunk boundaries counted from the line's start but maps each piece by the chunk of its
  first device sector, so a piece straddling two device chunks is remapped as one: one
  exception, the data running on into the next COW chunk, and the second chunk's sectors still
  reading the origin (seen in the VM, tests/data/kernel/offset_vm.sh).  dmfuse cuts at the
  device's chunk boundaries: two exceptions, and the data reads back.
* the kernel's ``snapshot-origin`` splits writes at the smallest chunk of the origin's
  snapshots as of its *own* last resume (``split_boundary``; none if it had no snapshots), so a
  write spanning two chunks to an origin device not resumed since a snapshot was created copies
  out only the first chunk, and the snapshot then shows the new data in the second (seen in the
  VM; lvm resumes the origin after creating a snapshot).  dmfuse splits at the current smallest
  chunk, so every chunk is copied out.
* punch-hole is refused (EOPNOTSUPP) even with ``discard_zeroes_cow``: a discard of a chunk
  without an exception leaves the origin data visible, not zeros.  The target's discard itself
  behaves like the kernel's (zero whole exception chunks, pass down to the origin if asked).
* the ``Invalid or corrupt snapshot`` load failure reports EINVAL (the kernel returns ENXIO).
* snapshot-merge flushes the origin before clearing merged records (the kernel's PREFLUSH on
  the COW does not cover the origin); the resulting bytes are the kernel's (checked in the VM).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import re
import struct
from collections.abc import Hashable, Sequence
from typing import Any

import attrs
import trio

from dmfuse.backends.base import Backend
from dmfuse.backends.claim import claim_exclusive
from dmfuse.backends.file import FileBackend
from dmfuse.errors import DmError, IOFailure, TableError
from dmfuse.snapshot import origin as registry
from dmfuse.snapshot.origin import Origin, storage_key
from dmfuse.snapshot.store import (
    ExceptionStore,
    PersistentStore,
    TransientStore,
    check_chunk_size,
)
from dmfuse.target import DeviceOpener, Flushed, Limits, Target, check_area, register

log = logging.getLogger(__name__)

SECTOR = 512
BLKSSZGET = 0x1268
_KSTRTOUINT = re.compile(r"\+?[0-9]+\n?\Z")


def logical_block_sectors(backend: Backend) -> int:
    """A block device's logical block size in sectors; files count as 512-byte devices."""
    if isinstance(backend, FileBackend) and backend.is_block:
        raw = fcntl.ioctl(backend.fd, BLKSSZGET, b"\0" * 4)
        return max(1, int(struct.unpack("i", raw)[0]) // SECTOR)
    return 1


@register
class SnapshotOrigin(Target):
    name = "snapshot-origin"
    version = (1, 9, 0)

    def __init__(self, length: int, dev: Backend, origin: Origin) -> None:
        super().__init__(length)
        self.dev = dev
        self.origin = origin
        self.limits = Limits(io_boundary=origin.min_chunk(), discard_bios=0, write_zeroes=False)

    @classmethod
    async def construct(
        cls, opener: DeviceOpener, length: int, args: Sequence[str]
    ) -> SnapshotOrigin:
        if len(args) != 1:
            raise TableError("origin: incorrect number of arguments")
        dev = await opener.open(args[0])
        return cls(length, dev, registry.acquire(dev))

    # origin_map only calls bio_set_dev: the origin gets the device's own sector
    async def read(self, offset: int, buf: memoryview) -> None:
        await self.dev.read(self.device_offset(self.dev, offset, len(buf)), buf)

    async def write(self, offset: int, data: memoryview) -> None:
        await self.origin.write(self.dev, self.device_offset(self.dev, offset, len(data)), data)

    def table(self, showkeys: bool = False) -> str:
        return self.dev.display

    def devices(self) -> list[Backend]:
        return [self.dev]

    def check_fits(self) -> None:
        check_area(self.dev, 0, self.length)

    async def destroy(self) -> None:
        registry.release(self.origin)


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
        zeroes_cow, passdown = _parse_features(args[4:])
        origin_dev = await opener.open(args[0])
        # The kernel compares device numbers before opening the COW; the key says the same here.
        cow = await opener.open(args[1])
        if storage_key(cow) == storage_key(origin_dev):
            raise TableError("COW device cannot be the same as origin device")
        kind, chunk_sectors = _parse_store(args[2], args[3], origin_dev, cow)
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
                and any(isinstance(s, SnapshotMerge) for s in existing.snapshots)
            ):
                # only checked for a handover, as the kernel does (a merge of a fresh COW passes)
                raise TableError("A snapshot is already merging.")
        else:
            store = await _open_store(kind, cow, chunk_sectors, origin_dev)
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


@register
class SnapshotMerge(Snapshot):
    """``snapshot-merge``: the origin's device while the snapshot is merged back into it."""

    name = "snapshot-merge"
    version = (1, 5, 0)
    merging = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = attrs.evolve(self.limits, flush_bios=2)
        self.merge_failed = False
        self._merge_scope: trio.CancelScope | None = None
        self._merge_done: trio.Event | None = None

    # -- I/O: unmerged chunks live in the COW, everything else on the origin -----------------
    async def _read_chunk(self, at: int, buf: memoryview) -> None:
        chunk_size = self.chunk
        chunk, within = divmod(at, chunk_size)
        if self.store.lookup(chunk) is not None:
            start = chunk * chunk_size
            async with self.origin.locks.hold(start, start + chunk_size):  # not mid-merge
                new = self.store.lookup(chunk)
                if new is not None:
                    await self.cow.read(new * chunk_size + within, buf)
                    return
        await self.origin_dev.read(at, buf)

    async def write(self, offset: int, data: memoryview) -> None:
        self._check_usable()
        for at, piece in self._pieces(offset, data):
            await self._write_chunk(at, piece)

    async def _write_chunk(self, at: int, data: memoryview) -> None:
        chunk_size = self.chunk
        chunk, within = divmod(at, chunk_size)
        if self.store.lookup(chunk) is not None:
            start = chunk * chunk_size
            async with self.origin.locks.hold(start, start + chunk_size):
                new = self.store.lookup(chunk)
                if new is not None:
                    await self.cow.write(new * chunk_size + within, data)
                    return
        # an origin write: other snapshots of the origin get their copies first
        at = self.device_offset(self.origin_dev, at - self.begin, len(data))  # EIO past its end
        await self.origin.write(self.origin_dev, at, data)

    async def flush(self, flushed: Flushed) -> None:
        await flushed.flush(self.origin_dev)
        await flushed.flush(self.cow)

    def needs_copy(self, offset: int) -> bool:
        return False  # the merging snapshot is the source of the origin's data, never a copy

    # -- the background merge ----------------------------------------------------------------
    async def resume(self) -> None:
        await super().resume()
        if self._merge_done is None and not self.handed_off:
            self._merge_scope = trio.CancelScope()
            self._merge_done = trio.Event()
            trio.lowlevel.spawn_system_task(self._merge_task, name="snapshot-merge")

    async def presuspend(self) -> None:
        await self._stop_merge()

    async def destroy(self) -> None:
        await self._stop_merge()
        await super().destroy()

    async def _stop_merge(self) -> None:
        scope, done = self._merge_scope, self._merge_done
        if scope is not None and done is not None:
            scope.cancel()
            await done.wait()
        self._merge_scope = self._merge_done = None

    async def _merge_task(self) -> None:
        scope, done = self._merge_scope, self._merge_done
        assert scope is not None and done is not None
        try:
            with scope:
                await self._merge_all()
        except Exception:  # a system task must never raise: it would end the whole daemon
            log.exception("snapshot merge failed")
            self.merge_failed = True
        finally:
            done.set()

    async def _merge_all(self) -> None:
        store = self.store
        assert isinstance(store, PersistentStore)
        while store.valid:
            try:
                old, new, count = await store.prepare_merge()
            except DmError:
                log.warning("Read error in exception store: shutting down merge")
                self.merge_failed = True
                return
            if not count:
                log.info("Merge complete.")
                return
            try:
                await self._merge_run(store, old, new, count)
            except (DmError, OSError) as exc:
                log.error("Merge failed: %s", exc)  # noqa: TRY400 (the errno says it all)
                self.merge_failed = True
                return
            await trio.lowlevel.checkpoint()

    async def _merge_run(self, store: PersistentStore, old: int, new: int, count: int) -> None:
        """Copy ``count`` consecutive chunks COW -> origin, then forget their records."""
        chunk_size = store.chunk
        dest = old * chunk_size
        size = count * chunk_size
        length = max(0, min(size, self.origin_dev.size() - dest))
        async with self.origin.locks.hold(dest, dest + size):
            # origin_write_extent: every other snapshot keeps the origin data it had
            for snap in list(self.origin.snapshots):
                for at in range(dest, dest + size, snap.chunk):
                    if snap.needs_copy(at):
                        await snap.copy_out(at)
            data = bytearray(length)
            await self.cow.read(new * chunk_size, memoryview(data))
            with trio.CancelScope(shield=True):  # a record is cleared only after its data is safe
                await self.origin_dev.write(dest, memoryview(data))
                await self.origin_dev.flush()
                await store.commit_merge(count)
                for index in range(count):
                    store.exceptions.pop(old + index, None)

    def status(self) -> str:
        if self.merge_failed and self.store.valid and not self.handed_off:
            return "Merge failed"
        return super().status()


def _parse_features(words: Sequence[str]) -> tuple[bool, bool]:
    """``parse_snapshot_features``: a group of at most 2; words after the group are ignored."""
    if not words:
        return False, False
    count_text = words[0]
    if not re.fullmatch(r"[0-9]+", count_text) or int(count_text) > 2:
        raise TableError("Invalid number of feature arguments")
    count = int(count_text)
    if len(words) - 1 < count:
        raise TableError("Invalid number of feature arguments")
    zeroes = passdown = False
    for word in words[1 : 1 + count]:
        lowered = word.lower()
        if lowered == "discard_zeroes_cow":
            zeroes = True
        elif lowered == "discard_passdown_origin":
            passdown = True
        else:
            raise TableError("Unrecognised feature requested")
    if passdown and not zeroes:
        raise TableError("discard_passdown_origin feature depends on discard_zeroes_cow")
    return zeroes, passdown


def _parse_store(type_word: str, chunk_word: str, origin: Backend, cow: Backend) -> tuple[str, int]:
    """``dm_exception_store_create``: every failure is "Couldn't create exception store"."""
    letter = type_word[0].upper()
    options = type_word[1:]
    if letter == "P":
        if options and options[0].upper() != "O":
            log.error("Unsupported persistent store option: %s", options)
            raise TableError("Couldn't create exception store")
        kind = "PO" if options else "P"
    elif letter == "N":
        kind = "N"
    else:
        log.error("Exception store type is not P or N")
        raise TableError("Couldn't create exception store")
    if not _KSTRTOUINT.match(chunk_word) or int(chunk_word.strip()) > 2**32 - 1:
        log.error("Invalid chunk size")
        raise TableError("Couldn't create exception store")
    chunk_sectors = int(chunk_word.strip())
    if chunk_sectors:
        try:
            check_chunk_size(chunk_sectors, _min_chunk(origin, cow))
        except TableError as exc:
            log.warning("%s", exc)
            raise TableError("Couldn't create exception store") from None
    elif kind == "N":
        raise TableError("Chunk size not set")
    return kind, chunk_sectors


def _min_chunk(origin: Backend, cow: Backend) -> int:
    return max(logical_block_sectors(origin), logical_block_sectors(cow))


async def _open_store(
    kind: str, cow: Backend, chunk_sectors: int, origin: Backend
) -> ExceptionStore:
    # Another daemon using the same COW would allocate the same chunks (a transient store too).
    claim_exclusive(cow, "COW device")
    if kind == "N":
        return TransientStore(cow, chunk_sectors)
    return await PersistentStore.open(cow, chunk_sectors, _min_chunk(origin, cow))
