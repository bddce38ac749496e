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
clock reads, a note at admission (:meth:`Stats.begin`: the "merged" test, the request put in
``pending``) and the per-area updates at completion (:meth:`Stats.end`; busy time and time in
queue are charged there as the union and the sum of the requests' spans, which is what the
kernel's per-event dm_stat_round adds up to; requests in flight count in "in progress" and
their time so far at print), about 3 µs of Python on the loaded 2-vCPU test machine:
measurable at 4k QD16 (``bench/RESULTS.md``, section "dm-stats"), where a request costs the
daemon 18-40 µs in all.

Differences from the kernel:

* dmfuse counts FUSE requests where the kernel counts bios: an I/O the kernel splits (or the
  page cache gathers) differently counts differently; O_DIRECT I/O up to the mount's
  ``max_write`` is one request in both.
* The kernel remembers the last position per CPU; dmfuse has one per device (one CPU).
* Times are measured in ns and shown in ms (truncated) unless ``precise_timestamps``; the
  kernel counts jiffies.  Histograms use the same per-request duration.
* A region has at most 65,536 areas and a device 262,144 (else ENOMEM; printing them holds up
  the daemon's requests, ~0.2 s per 65,536 lines); the kernel's limit is a quarter of RAM.
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
from collections.abc import Iterable

from dmfuse.errors import DmError

# A print runs on the trio thread: 65,536 areas print in ~0.2 s on the test machine.
MAX_AREAS = 1 << 16
MAX_DEVICE_AREAS = 1 << 18
INT_MAX = (1 << 31) - 1
U64 = (1 << 64) - 1

# per-area counter slots: 4 per direction (READ = 0, WRITE = 4) then the shared ones
IOS, MERGES, SECTORS, TICKS = 0, 1, 2, 3
BUSY_END = 8  # + direction // 4: the end of the last request counted, by direction
IO_TICKS_TOTAL, TIME_IN_QUEUE, IO_TICKS_READ, IO_TICKS_WRITE = 10, 11, 12, 13
BUSY_END_ANY, CLEARED = 14, 15  # the same for both directions; when last cleared
AREA_SLOTS = 16
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

    def area(self, index: int) -> list[int]:
        counters = self.areas.get(index)
        if counters is None:
            counters = self.areas[index] = [0] * AREA_SLOTS
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

    def counters(
        self, index: int, now: int, pending: Iterable[Token] = ()
    ) -> tuple[list[int], list[int]]:
        """Area ``index``'s 13 printed counters (times in the region's unit) and histogram;
        ``pending``: the requests in flight (their time so far counts, as dm_stat_round's)."""
        c = self.areas.get(index) or [0] * AREA_SLOTS
        c = list(c)
        start = self.start + index * self.step
        stop = min(start + self.step, self.end)
        in_progress = 0
        for direction, sector, end_sector, began, _merged, regions in pending:
            if self not in regions or end_sector <= start or sector >= stop:
                continue
            in_progress += 1
            _busy(c, direction, began, now)
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
            in_progress,
            c[IO_TICKS_TOTAL] // scale,
            c[TIME_IN_QUEUE] // scale,
            c[IO_TICKS_READ] // scale,
            c[IO_TICKS_WRITE] // scale,
        ]
        hist = self.histograms.get(index)
        return values, list(hist) if hist else [0] * (
            len(self.boundaries) + 1
        ) if self.boundaries else []

    def print_lines(self, first: int, stop: int, now: int, pending: Iterable[Token]) -> str:
        out = []
        pending = list(pending)
        for index in range(first, stop):
            values, hist = self.counters(index, now, pending)
            line = f"{self.start + index * self.step}+{self.step} " + " ".join(map(str, values))
            if self.boundaries:
                line += " " + ":".join(map(str, hist))
            out.append(line + "\n")
        return "".join(out)

    def clear(self, first: int, stop: int, now: int) -> None:
        """Zero the counters of areas ``[first, stop)``; requests in flight stay counted
        (from now on: their busy time before the clear is gone, as in the kernel)."""
        for index in range(first, stop):
            c = self.areas.get(index)
            if c is None:
                continue
            c[0:8] = [0] * 8
            c[IO_TICKS_TOTAL : IO_TICKS_WRITE + 1] = [0, 0, 0, 0]
            c[BUSY_END] = max(c[BUSY_END], now)
            c[BUSY_END + 1] = max(c[BUSY_END + 1], now)
            c[BUSY_END_ANY] = max(c[BUSY_END_ANY], now)
            c[CLEARED] = now
            hist = self.histograms.get(index)
            if hist is not None:
                hist[:] = [0] * len(hist)


def _busy(c: list[int], direction: int, began: int, now: int) -> None:
    """Charge a request busy from ``began`` to ``now`` to the busy-time counters.

    The kernel's dm_stat_round adds the time between events while requests are in flight;
    requests are charged here as they end (``now`` never goes back), which adds up to the
    same: busy time is the union of the requests' spans (each adds what lies past the end of
    the last one counted), time in queue the sum of the spans (since the last clear)."""
    last = c[BUSY_END_ANY]
    if now > last:
        c[IO_TICKS_TOTAL] += now - (began if began > last else last)
        c[BUSY_END_ANY] = now
    slot = BUSY_END + (direction >> 2)
    last = c[slot]
    if now > last:
        c[IO_TICKS_READ + (direction >> 2)] += now - (began if began > last else last)
        c[slot] = now
    cleared = c[CLEARED]
    c[TIME_IN_QUEUE] += now - (began if began > cleared else cleared)


# A request being accounted: (direction, sector, end sector, start ns, merged, regions).
Token = tuple[int, int, int, int, int, tuple[Region, ...]]


class Stats:
    """The regions of one device, and the accounting of its requests into them."""

    def __init__(self) -> None:
        # Replaced, never changed in place: a request ends in the regions it began in.
        self.regions: tuple[Region, ...] = ()
        self.pending: dict[int, Token] = {}  # requests in flight, by id() of their token
        self._last_sector = U64
        self._last_direction = -1

    # -- accounting (only called while regions exist) ---------------------------------------
    # The two methods below run once per request each while regions exist: admission only
    # takes note, completion charges the areas (measured: the cheapest split in Python).
    def begin(self, direction: int, sector: int, end_sector: int, now: int) -> Token:
        """A request of ``[sector, end_sector)`` admitted at ``now`` (monotonic ns)."""
        merged = int(sector == self._last_sector and direction == self._last_direction)
        self._last_sector = end_sector
        self._last_direction = direction
        token = (direction, sector, end_sector, now, merged, self.regions)
        self.pending[id(token)] = token
        return token

    def end(self, token: Token, now: int) -> None:
        """The request of ``token`` done at ``now``."""
        del self.pending[id(token)]
        direction, sector, end_sector, began, merged, regions = token
        duration = now - began
        ios, merges, sectors, ticks = direction, direction + 1, direction + 2, direction + 3
        busy_end, io_ticks = BUSY_END + (direction >> 2), IO_TICKS_READ + (direction >> 2)
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
                c = areas.get(index) or region.area(index)
                if first == last:
                    c[sectors] += min(end_sector, stop) - max(sector, start)
                else:
                    area_start = start + index * step
                    c[sectors] += min(end_sector, area_start + step, stop) - max(sector, area_start)
                c[ios] += 1
                c[merges] += merged
                c[ticks] += duration
                # _busy(c, direction, began, now), written out
                seen = c[14]
                if now > seen:
                    c[10] += now - (began if began > seen else seen)
                    c[14] = now
                seen = c[busy_end]
                if now > seen:
                    c[io_ticks] += now - (began if began > seen else seen)
                    c[busy_end] = now
                cleared = c[15]
                c[11] += now - (began if began > cleared else cleared)
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
                values, hist = region.counters(index, now, self.pending.values())
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
