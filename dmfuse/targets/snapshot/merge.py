"""The snapshot-merge target (its man page: the package docstring)."""

from __future__ import annotations

import logging
from typing import Any

import attrs
import trio

from dmfuse.errors import DmError
from dmfuse.target import Flushed, register
from dmfuse.targets.snapshot.store import PersistentStore
from dmfuse.targets.snapshot.target import Snapshot

log = logging.getLogger(__name__)


@register
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
