"""A constructed table: targets built from parsed lines, ready for I/O.

This is where requests are split (see :mod:`dmfuse.mapping`) and fanned out.  One piece takes
the fast path (awaited directly, no nursery); several run concurrently, each recording its own
failure, and the request reports one error: the last one recorded, like dm's bio completion.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial

import trio

from dmfuse.backends.base import Backend
from dmfuse.errors import DmError, IOFailure, NotSupported
from dmfuse.mapping import Piece, split_range
from dmfuse.table import Layout, TableLine, format_line
from dmfuse.target import Flushed, Target

log = logging.getLogger(__name__)


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
        self.readonly = readonly
        self.layout = Layout(lines)
        self.size = self.layout.size
        self._starts = self.layout.starts
        self._ends = self.layout.ends
        self._boundaries = [t.limits.io_boundary for t in targets]
        # The table's I/O unit: block sizes are powers of two, so the largest covers them all.
        self.block = max((t.limits.block_size for t in targets), default=1)
        self._no_boundaries = [0] * len(targets)
        # Reads into a buffer this aligned reach O_DIRECT backends without a bounce copy.
        self.buffer_align = max((b.buffer_alignment() for b in backends), default=1)
        self._release = release

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

    async def write(self, offset: int, data: memoryview) -> None:
        pieces = self.pieces(offset, len(data))
        if len(pieces) == 1:
            index, rel, _, _ = pieces[0]
            await self.targets[index].write(rel, data)
            return
        targets = self.targets
        await _fan_out(
            [partial(targets[i].write, rel, data[at : at + n]) for i, rel, n, at in pieces]
        )

    async def flush(self, *, suspend: bool = False) -> None:
        flushed = Flushed(suspend)
        await _fan_out([partial(t.flush, flushed) for t in self.targets if t.limits.flush_bios])

    def _extent_pieces(self, offset: int, length: int) -> list[Piece]:
        first = self.layout.locate(offset)
        return split_range(self._starts, self._ends, self._no_boundaries, first, offset, length)

    async def discard(self, offset: int, length: int) -> None:
        """A punch-hole: every touched target must take discards and leave zeros, else nothing."""
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

    def check_fits(self) -> None:
        for target in self.targets:
            target.check_fits()

    async def destroy(self) -> None:
        for target in self.targets:
            try:
                await target.destroy()
            except Exception:
                log.exception("destroying %s target failed", target.name)
        for backend in self.backends:
            await self._release(backend)
        self.backends = []


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
