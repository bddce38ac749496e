"""dm-stats: I/O statistics regions of a device, and the ``@stats_*`` messages of dm core.

Pure: no I/O, no trio.  :class:`Stats` belongs to a device (not to a table), so its regions
survive table swaps, suspend and resume, as the kernel's ``md->stats`` do.

Messages (``dmfuse message NAME 0 @stats_...``), as Linux 6.12's drivers/md/dm-stats.c:

``@stats_create <range> <step> [<#features> [precise_timestamps] [histogram:n1,...]]
[<program_id> [<aux_data>]]``
    ``<range>``: ``-`` (the whole device; 1 sector when it has no table) or ``<start>+<length>``
    in sectors (it may extend past the end of the device).  ``<step>``: ``<area_size>`` in
    sectors or ``/<number_of_areas>``.  A numeric word after ``<step>`` is the feature count.
    ``histogram:`` boundaries are strictly increasing and above 0, in ms (ns with
    ``precise_timestamps``).  Replies the new region id: the lowest free one.
``@stats_delete <id>``, ``@stats_clear <id>``, ``@stats_set_aux <id> <aux_data>``
    ENOENT for an id that is not there.  ``@stats_clear`` replies an empty text.
``@stats_list [<program_id>]``
    One line per region: ``<id>: <start>+<length> <step> <program_id> <aux_data>`` and
    `` precise_timestamps``, `` histogram:n1,n2,...`` when set.
``@stats_print <id> [<starting line> <number of lines>]``, ``@stats_print_clear ...``
    One line per area: ``<start>+<step>`` then reads, reads merged, sectors read, ms reading,
    writes, writes merged, sectors written, ms writing, I/O in progress, ms doing I/O
    (io ticks), weighted ms (time in queue), ms reading (io ticks), ms writing (io ticks), and
    with a histogram `` c0:c1:...:cn``.  ``-`` keeps a default; print_clear zeroes the areas it
    printed (not their in-progress counts).

Bad arguments are EINVAL.  Message names are case-insensitive, as in the kernel.

Accounting: each read, write, discard or write-zeroes request is counted at admission (past
the suspend gate, as a bio is when dm takes it in) and at completion, in every area it touches
(reads and writes by direction; a discard counts as a write, as ``bio_data_dir`` says).  A
request is "merged" when it starts where the previous one of the same direction ended, as the
kernel's ``dm_stats_last_position``.  Flushes carry no sectors and are not counted.

Cost: while a device has no region its requests pay one attribute test (and two additions for
the device totals ``info --json`` shows: requests and bytes of reads, writes and discards, no
times: those would need two clock reads a request).  With a region, each request pays two
clock reads and the per-area updates of :meth:`Stats.begin` and :meth:`Stats.end`, about 3-4
µs of Python on the loaded 2-vCPU test machine: measurable at 4k QD16 (``bench/RESULTS.md``,
section "dm-stats"), where a request costs the daemon 15-30 µs in all.

Differences from the kernel:

* dmfuse counts FUSE requests where the kernel counts bios: an I/O the kernel splits (or the
  page cache gathers) differently counts differently; O_DIRECT I/O up to the mount's
  ``max_write`` is one request in both.
* The kernel remembers the last position per CPU; dmfuse has one per device (one CPU).
* Times are measured in ns and shown in ms (truncated) unless ``precise_timestamps``; the
  kernel counts jiffies.  Histograms use the same per-request duration.
* A region has at most 1,048,576 areas and a device 4,194,304 (else ENOMEM); the kernel's
  limit is a quarter of RAM.
* A region created while requests are in flight does not count them (the kernel suspends the
  device briefly to drain them first); the result is the same, exact counts.
* An unknown ``@`` message is EINVAL before any target sees it, as in the kernel's
  ``message_for_md`` (``Unsupported message sent to DM core``); stats messages take no
  lifecycle lock, so they answer while a suspend drains I/O.
"""

from __future__ import annotations

import errno
import time
from bisect import bisect_right

from dmfuse.errors import DmError

MAX_AREAS = 1 << 20
MAX_DEVICE_AREAS = 1 << 22
INT_MAX = (1 << 31) - 1
U64 = (1 << 64) - 1

# per-area counter slots: 4 per direction (READ = 0, WRITE = 4) then the shared ones
IOS, MERGES, SECTORS, TICKS = 0, 1, 2, 3
IN_FLIGHT = 8  # + direction // 4
IO_TICKS_TOTAL, TIME_IN_QUEUE, IO_TICKS_READ, IO_TICKS_WRITE, STAMP = 10, 11, 12, 13, 14
READ, WRITE = 0, 4
# the columns of @stats_print, as ``dmfuse stats --json`` names them
COUNTER_NAMES = (
    "reads",
    "reads_merged",
    "read_sectors",
    "read_time",
    "writes",
    "writes_merged",
    "write_sectors",
    "write_time",
    "in_progress",
    "io_time",
    "weighted_io_time",
    "read_io_time",
    "write_io_time",
)


class NoSuchRegion(DmError):
    errno = errno.ENOENT


class Region:
    """One statistics region: ``[start, end)`` sectors cut in areas of ``step`` sectors."""

    __slots__ = (
        "areas",
        "aux_data",
        "boundaries",
        "end",
        "histograms",
        "id",
        "n_areas",
        "precise",
        "program_id",
        "start",
        "step",
    )

    def __init__(
        self,
        region_id: int,
        start: int,
        end: int,
        step: int,
        *,
        precise: bool = False,
        boundaries: tuple[int, ...] = (),
        program_id: str = "-",
        aux_data: str = "-",
    ) -> None:
        self.id = region_id
        self.start, self.end, self.step = start, end, step
        self.n_areas = -(-(end - start) // step)
        self.precise = precise
        self.boundaries = boundaries
        self.program_id = program_id
        self.aux_data = aux_data
        # areas are made when first touched: a region of a million areas costs nothing idle
        self.areas: dict[int, list[int]] = {}
        self.histograms: dict[int, list[int]] = {}

    def area(self, index: int, now: int) -> list[int]:
        counters = self.areas.get(index)
        if counters is None:
            counters = self.areas[index] = [0] * 15
            counters[STAMP] = now
            if self.boundaries:
                self.histograms[index] = [0] * (len(self.boundaries) + 1)
        return counters

    def list_line(self) -> str:
        line = (
            f"{self.id}: {self.start}+{self.end - self.start} {self.step} "
            f"{self.program_id} {self.aux_data}"
        )
        if self.precise:
            line += " precise_timestamps"
        if self.boundaries:
            line += " histogram:" + ",".join(map(str, self.boundaries))
        return line + "\n"

    def counters(self, index: int, now: int) -> tuple[list[int], list[int]]:
        """Area ``index``'s 13 printed counters (times in the region's unit) and histogram."""
        c = self.areas.get(index)
        if c is None:
            return [0] * 13, [0] * (len(self.boundaries) + 1) if self.boundaries else []
        _round(c, now)
        scale = 1 if self.precise else 1_000_000
        values = [
            c[IOS],
            c[MERGES],
            c[SECTORS],
            c[TICKS] // scale,
            c[WRITE + IOS],
            c[WRITE + MERGES],
            c[WRITE + SECTORS],
            c[WRITE + TICKS] // scale,
            c[IN_FLIGHT] + c[IN_FLIGHT + 1],
            c[IO_TICKS_TOTAL] // scale,
            c[TIME_IN_QUEUE] // scale,
            c[IO_TICKS_READ] // scale,
            c[IO_TICKS_WRITE] // scale,
        ]
        return values, list(self.histograms.get(index, ()))

    def print_lines(self, first: int, stop: int, now: int) -> str:
        out = []
        for index in range(first, stop):
            values, hist = self.counters(index, now)
            line = f"{self.start + index * self.step}+{self.step} " + " ".join(map(str, values))
            if self.boundaries:
                line += " " + ":".join(map(str, hist))
            out.append(line + "\n")
        return "".join(out)

    def clear(self, first: int, stop: int, now: int) -> None:
        """Zero the counters of areas ``[first, stop)``; requests in flight stay counted."""
        for index in range(first, stop):
            c = self.areas.get(index)
            if c is None:
                continue
            if c[IN_FLIGHT] or c[IN_FLIGHT + 1]:
                _round(c, now)
                c[0:8] = [0] * 8
                c[IO_TICKS_TOTAL : IO_TICKS_WRITE + 1] = [0, 0, 0, 0]
                hist = self.histograms.get(index)
                if hist is not None:
                    hist[:] = [0] * len(hist)
            else:
                del self.areas[index]
                self.histograms.pop(index, None)


def _round(c: list[int], now: int) -> None:
    """dm_stat_round: charge the time since the last event to the busy counters."""
    difference = now - c[STAMP]
    if difference <= 0:
        return
    reading, writing = c[IN_FLIGHT], c[IN_FLIGHT + 1]
    if reading:
        c[IO_TICKS_READ] += difference
    if writing:
        c[IO_TICKS_WRITE] += difference
    if reading or writing:
        c[IO_TICKS_TOTAL] += difference
        c[TIME_IN_QUEUE] += (reading + writing) * difference
    c[STAMP] = now


# A request being accounted: (direction, sector, end sector, start ns, merged, regions).
Token = tuple[int, int, int, int, int, tuple[Region, ...]]


class Stats:
    """The regions of one device, and the accounting of its requests into them."""

    def __init__(self) -> None:
        # Replaced, never changed in place: a request ends in the regions it began in.
        self.regions: tuple[Region, ...] = ()
        self._last_sector = U64
        self._last_direction = -1

    # -- accounting (only called while regions exist) ---------------------------------------
    # The two methods below run twice per request while regions exist: dm_stat_round is
    # written out in them and the usual one-area case takes no range (measured: ~2x faster).
    def begin(self, direction: int, sector: int, end_sector: int, now: int) -> Token:
        """A request of ``[sector, end_sector)`` admitted at ``now`` (monotonic ns)."""
        merged = int(sector == self._last_sector and direction == self._last_direction)
        self._last_sector = end_sector
        self._last_direction = direction
        regions = self.regions
        flight = IN_FLIGHT + (direction >> 2)
        for region in regions:
            start = region.start
            if end_sector <= start or sector >= region.end:
                continue
            step = region.step
            first = (sector - start) // step if sector > start else 0
            last = (min(end_sector, region.end) - 1 - start) // step
            areas = region.areas
            index = first
            while index <= last:
                c = areas.get(index) or region.area(index, now)
                busy = c[8] + c[9]
                if busy:
                    difference = now - c[14]
                    if c[8]:
                        c[12] += difference
                    if c[9]:
                        c[13] += difference
                    c[10] += difference
                    c[11] += busy * difference
                c[14] = now
                c[flight] += 1
                index += 1
        return direction, sector, end_sector, now, merged, regions

    def end(self, token: Token, now: int) -> None:
        """The request of ``token`` done at ``now``."""
        direction, sector, end_sector, began, merged, regions = token
        duration = now - began
        flight = IN_FLIGHT + (direction >> 2)
        ios, merges, sectors, ticks = direction, direction + 1, direction + 2, direction + 3
        for region in regions:
            start = region.start
            if end_sector <= start or sector >= region.end:
                continue
            step, stop = region.step, region.end
            first = (sector - start) // step if sector > start else 0
            last = (min(end_sector, stop) - 1 - start) // step
            areas = region.areas
            index = first
            while index <= last:
                c = areas.get(index) or region.area(index, now)
                busy = c[8] + c[9]
                if busy:  # always, unless a clear or a create raced the request
                    difference = now - c[14]
                    if c[8]:
                        c[12] += difference
                    if c[9]:
                        c[13] += difference
                    c[10] += difference
                    c[11] += busy * difference
                    if c[flight]:
                        c[flight] -= 1
                c[14] = now
                if first == last:
                    c[sectors] += min(end_sector, stop) - max(sector, start)
                else:
                    area_start = start + index * step
                    c[sectors] += min(end_sector, area_start + step, stop) - max(sector, area_start)
                c[ios] += 1
                c[merges] += merged
                c[ticks] += duration
                if region.boundaries:
                    unit = duration if region.precise else duration // 1_000_000
                    region.histograms[index][bisect_right(region.boundaries, unit)] += 1
                index += 1

    # -- regions -----------------------------------------------------------------------------
    def find(self, region_id: int) -> Region:
        for region in self.regions:
            if region.id == region_id:
                return region
        raise NoSuchRegion(f"region {region_id}: no such statistics region")

    def add(self, region: Region) -> None:
        self.regions = tuple(sorted((*self.regions, region), key=lambda r: r.id))

    def delete(self, region: Region) -> None:
        self.regions = tuple(r for r in self.regions if r is not region)

    def free_id(self) -> int:
        used = {r.id for r in self.regions}
        return next(i for i in range(len(used) + 1) if i not in used)

    # -- totals ------------------------------------------------------------------------------
    def summary(self) -> list[dict[str, object]]:
        """The regions as data, for ``dmfuse stats`` (one entry per area)."""
        now = time.monotonic_ns()
        out: list[dict[str, object]] = []
        for region in self.regions:
            areas = []
            for index in range(region.n_areas):
                values, hist = region.counters(index, now)
                start = region.start + index * region.step
                length = min(region.step, region.end - start)
                area: dict[str, object] = {"start": start, "length": length}
                area.update(zip(COUNTER_NAMES, values, strict=True))
                area["histogram"] = hist
                areas.append(area)
            out.append(
                {
                    "id": region.id,
                    "start": region.start,
                    "length": region.end - region.start,
                    "step": region.step,
                    "areas_count": region.n_areas,
                    "program_id": region.program_id,
                    "aux_data": region.aux_data,
                    "precise_timestamps": region.precise,
                    "time_unit": "ns" if region.precise else "ms",
                    "histogram_bounds": list(region.boundaries),
                    "areas": areas,
                }
            )
        return out
