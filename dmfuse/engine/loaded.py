"""A constructed table: targets built from parsed lines, ready for I/O.

This is where requests are split (see :mod:`dmfuse.mapping`) and fanned out.  One piece takes
the fast path (awaited directly, no nursery); several run concurrently, each recording its own
failure, and the request reports one error: the last one recorded, like dm's bio completion.

SEEK_DATA/SEEK_HOLE (:meth:`LoadedTable.seek`) bisect to the target holding the offset and ask
targets in order; the walk is bounded (:data:`SEEK_TARGETS`), so a seek costs the same on a
table of ten lines or a million.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio

from dmfuse.backends.base import Backend
from dmfuse.backends.file import seek_in_files
from dmfuse.errors import DmError, IOFailure, NotSupported, TableError
from dmfuse.mapping import Piece, split_range
from dmfuse.table import Layout, TableLine, format_line
from dmfuse.target import Flushed, Target

log = logging.getLogger(__name__)

# Distinct backends asked for their allocation on a stat of the device file (the rest count full).
ALLOCATED_BACKENDS = 64
# Targets one seek asks before it stops and answers conservatively (see LoadedTable.seek).
SEEK_TARGETS = 256


class LoadedTable:
    """Targets of one table plus the layout used to route I/O to them."""

    def __init__(
        self,
        lines: Sequence[TableLine],
        targets: Sequence[Target],
        backends: Sequence[Backend],
        readonly: bool,
        release: Callable[[Backend], Awaitable[None]],
    ) -> None:
        self.lines = list(lines)
        self.targets = list(targets)
        self.backends = list(backends)  # one reference each, released on destroy
        self._distinct = list({id(b): b for b in self.backends}.values())
        self.readonly = readonly
        self.layout = Layout(lines)
        self.size = self.layout.size
        self._starts = self.layout.starts
        self._ends = self.layout.ends
        self._boundaries = [t.limits.io_boundary for t in targets]
        self.block = 1
        self.discards = True
        self._stack_limits()
        self._no_boundaries = [0] * len(targets)
        # Reads into a buffer this aligned reach O_DIRECT backends without a bounce copy.
        self.buffer_align = max((b.buffer_alignment() for b in backends), default=1)
        self._release = release
        # A flush goes once to each distinct backend of the targets that flush the plain way
        # (a 100k-line table over one file is one fsync), plus to every target with its own
        # flush (log-writes, snapshot...), all at once.
        plain: dict[int, Backend] = {}
        self._flush_targets: list[Target] = []
        for target in targets:
            if not target.limits.flush_bios:
                continue
            if type(target).flush is Target.flush:
                for backend in target.devices():
                    plain.setdefault(id(backend), backend)
            else:
                self._flush_targets.append(target)
        self._flush_backends = list(plain.values())
        self._opaque_bytes, self._sources = _data_sources(targets)
        self._file_spans = [_file_span(t) for t in targets]

    # -- I/O ---------------------------------------------------------------------------------
    def pieces(self, offset: int, length: int) -> list[Piece]:
        first = self.layout.locate(offset)
        return split_range(self._starts, self._ends, self._boundaries, first, offset, length)

    async def read(self, offset: int, buf: memoryview) -> None:
        pieces = self.pieces(offset, len(buf))
        if len(pieces) == 1:
            index, rel, _, _ = pieces[0]
            await self.targets[index].read(rel, buf)
            return
        targets = self.targets
        await _fan_out(
            [partial(targets[i].read, rel, buf[at : at + n]) for i, rel, n, at in pieces]
        )

    async def write(self, offset: int, data: memoryview, fua: bool = False) -> None:
        """Write ``data``; with ``fua`` every piece is a FUA write (each target's
        ``write_fua``), as dm clones REQ_FUA onto every bio it splits off."""
        pieces = self.pieces(offset, len(data))
        if len(pieces) == 1:
            index, rel, _, _ = pieces[0]
            if fua:
                await self.targets[index].write_fua(rel, data)
            else:
                await self.targets[index].write(rel, data)
            return
        targets = self.targets
        await _fan_out(
            [
                partial(targets[i].write_fua if fua else targets[i].write, rel, data[at : at + n])
                for i, rel, n, at in pieces
            ]
        )

    async def flush(self, *, suspend: bool = False, datasync: bool = False) -> None:
        flushed = Flushed(suspend, datasync)
        jobs = [partial(t.flush, flushed) for t in self._flush_targets]
        jobs += [partial(flushed.flush, b) for b in self._flush_backends]
        if jobs:
            await _fan_out(jobs)

    def _extent_pieces(self, offset: int, length: int) -> list[Piece]:
        first = self.layout.locate(offset)
        return split_range(self._starts, self._ends, self._no_boundaries, first, offset, length)

    async def discard(self, offset: int, length: int) -> None:
        """A punch-hole: the table must take discards, and every touched target must leave
        zeros; else nothing is discarded."""
        if not self.discards:
            raise NotSupported("the table does not support discards")
        pieces = self._extent_pieces(offset, length)
        for index, _, _, _ in pieces:
            limits = self.targets[index].limits
            if not limits.discard_bios or not limits.discard_zeroes:
                line = self.lines[index]
                raise NotSupported(
                    f"target {line.target_type} at sector {line.start} cannot discard to zeros"
                )
        targets = self.targets
        await _fan_out([partial(targets[i].discard, rel, n) for i, rel, n, _ in pieces])

    async def write_zeroes(self, offset: int, length: int) -> None:
        pieces = self._extent_pieces(offset, length)
        targets = self.targets
        await _fan_out([partial(targets[i].write_zeroes, rel, n) for i, rel, n, _ in pieces])

    def distinct_backends(self) -> list[Backend]:
        """Each backend once (``backends`` holds one reference per open: a 100k-line table
        over one file lists it 100k times)."""
        return self._distinct

    async def seek(self, offset: int, *, hole: bool, end: int | None = None) -> int:
        """SEEK_DATA (``hole=False``) or SEEK_HOLE from ``offset`` (``< size``): the first
        byte at or after it that may be data, or that is known to be a hole (reads as zeros);
        ``size`` if there is none.  With ``end``, targets from ``end`` on are not asked (an
        upper device asks about one range of this one) and an answer ``>= end`` means none.

        A target answers inside itself or says "none here" (its length), and the walk moves
        to the next target; a run of lines that remap straight onto regular files (linear) is
        asked in one worker-thread call.  After :data:`SEEK_TARGETS` targets without an
        answer the walk stops and answers conservatively, never claiming a hole it has not
        seen: SEEK_DATA says the next target's start (maybe data), SEEK_HOLE says ``size``
        (data up to the end).
        """
        targets, starts = self.targets, self._starts
        index = self.layout.locate(offset)
        rel = offset - starts[index]
        stop = min(len(targets), index + SEEK_TARGETS)
        if end is not None and end < self.size:
            stop = min(stop, self.layout.locate(end - 1) + 1)
        file_spans = self._file_spans
        while index < stop:
            if file_spans[index] is not None:  # lines straight onto files: ask them together
                spans: list[tuple[int, int, int]] = []
                bases: list[int] = []
                run = index
                while run < stop and (span := file_spans[run]) is not None:
                    fd, base = span
                    spans.append((fd, base + rel, base + self._ends[run] - starts[run]))
                    bases.append(base)
                    run, rel = run + 1, 0
                hit, found = await seek_in_files(spans, hole=hole)
                if hit < len(spans):
                    return starts[index + hit] + found - bases[hit]
                index = run
                continue
            target = targets[index]
            found = await (target.seek_hole(rel) if hole else target.seek_data(rel))
            if found < target.length:
                return starts[index] + found
            index += 1
            rel = 0
        if not hole and index < len(targets):
            return starts[index]
        return self.size

    def allocated(self) -> int:
        """Estimated data bytes (the device file's ``st_blocks * 512``): targets whose bytes
        are data count in full, ``zero`` not at all, and a backend whose holes show through
        counts at most what it has allocated.  An estimate, not a promise (``SEEK_HOLE`` is
        the exact answer): it only tells ``cp`` and ``tar -S`` whether probing for holes is
        worth it, so it costs one ``fstat`` per distinct backend, at most
        :data:`ALLOCATED_BACKENDS` of them."""
        total = self._opaque_bytes
        for count, (backend, mapped) in enumerate(self._sources):
            held = backend.allocated() if count < ALLOCATED_BACKENDS else None
            total += mapped if held is None else min(mapped, held)
        return total

    # -- description -------------------------------------------------------------------------
    def table_lines(self, showkeys: bool = False) -> list[str]:
        return [
            format_line(ln.start, ln.length, ln.target_type, t.table(showkeys))
            for ln, t in zip(self.lines, self.targets, strict=True)
        ]

    def status_lines(self) -> list[str]:
        return [
            format_line(ln.start, ln.length, ln.target_type, t.status())
            for ln, t in zip(self.lines, self.targets, strict=True)
        ]

    def _stack_limits(self) -> None:
        """What the table can take, as the kernel's ``dm_calculate_queue_limits`` stacks it
        from every target and every device below (so again at resume: a lower device may
        have a new table by then).

        ``block``: the device's logical block size, the largest of its targets' and their
        devices' (powers of two, so the largest covers them all); the device does the
        read-modify-write around it.  ``discards``: only if every target and every device
        below takes discards (``dm_table_supports_discards``); otherwise the whole device
        refuses them, also on the parts that could.
        """
        blocks = [t.limits.block_size for t in self.targets]
        blocks += [b.block_size() for b in self._distinct]
        self.block = max(blocks, default=1)
        self.discards = all(t.limits.discard_bios for t in self.targets) and all(
            b.discards() for b in self._distinct
        )

    def check_fits(self) -> None:
        self._stack_limits()
        for target in self.targets:
            target.check_fits()
        if self.block > 512:  # validate_hardware_logical_block_alignment
            for number, line in enumerate(self.lines):
                if (line.start * 512) % self.block or (line.length * 512) % self.block:
                    raise TableError(
                        f"table line {number} (start sect {line.start} len {line.length}) "
                        f"not aligned to h/w logical block size {self.block}"
                    )

    async def destroy(self) -> None:
        for target in self.targets:
            try:
                await target.destroy()
            except Exception:
                log.exception("destroying %s target failed", target.name)
        for backend in self.backends:
            await self._release(backend)
        self.backends = []
        self._distinct = []


def _file_span(target: Target) -> tuple[int, int] | None:
    """``(fd, base)`` of a target that is a plain remap onto a regular file, else None."""
    remap = target.remap()
    if remap is None:
        return None
    backend, base = remap
    fd = backend.seek_fd()
    return None if fd is None else (fd, base)


def _data_sources(targets: Sequence[Target]) -> tuple[int, list[tuple[Backend, int]]]:
    """Bytes that are data whatever the backends hold, and bytes mapped per distinct backend."""
    opaque = 0
    mapped: dict[int, tuple[Backend, int]] = {}
    for target in targets:
        sources = target.data_sources()
        if sources is None:
            opaque += target.length
            continue
        for backend, length in sources:
            _, before = mapped.get(id(backend), (backend, 0))
            mapped[id(backend)] = (backend, before + length)
    return opaque, list(mapped.values())


async def _fan_out(jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run jobs concurrently; raise the last failure (as one error, never an ExceptionGroup)."""
    if len(jobs) == 1:
        await jobs[0]()
        return
    failures: list[BaseException] = []

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        try:
            await job()
        except (DmError, OSError) as exc:
            failures.append(exc)
        except Exception as exc:
            log.exception("unexpected failure in a target")
            failures.append(IOFailure(f"internal error: {exc!r}"))

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(run, job)
    if failures:
        raise failures[-1]
