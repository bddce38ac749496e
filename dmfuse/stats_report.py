"""``dmfuse stats``: dm-stats regions as ``dmstats report`` and ``dmstats list`` show them.  PURE.

``dmfuse stats [NAME]`` prints one row per area of every region: the device, region id, area id,
area start and size, then the area's counters since it was created or last cleared (dmstats
report shows rates over an interval; dmfuse shows the counts, which a caller can difference):
reads and writes (``Reads``/``Writes``), merged ones (``RdMrg``/``WrMrg``), bytes (``RdSz``/
``WrSz``), time spent (``RdTime``/``WrTime``), in progress (``InFlt``), busy time (``IOTime``)
and weighted busy time (``QTime``), with the region's histogram counts (``Histogram``) when it
has one.  Sizes use binary units (``k``, ``m``, ``g``: KiB, MiB, GiB) as ``dmstats --units h``;
times are ms, ns for a ``precise_timestamps`` region (``ns`` after the number).

``dmfuse stats --list [NAME]`` prints one row per region as ``dmstats list``: ``Name RgID
RStart RSize #Areas ASize ProgID AuxData``.  ``--json`` prints the data as it is, with each
device's totals (``io``: reads, writes, discards, their sectors and ms, in flight).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SECTOR = 512
REPORT_HEADINGS = [
    "Name",
    "RgID",
    "ArID",
    "ArStart",
    "ArSize",
    "Reads",
    "RdMrg",
    "RdSz",
    "RdTime",
    "Writes",
    "WrMrg",
    "WrSz",
    "WrTime",
    "InFlt",
    "IOTime",
    "QTime",
]
LIST_HEADINGS = ["Name", "RgID", "RStart", "RSize", "#Areas", "ASize", "ProgID", "AuxData"]


def size_text(sectors: int) -> str:
    """Sectors as bytes in binary units: ``0``, ``512``, ``4.00k``, ``1.50m``."""
    value = float(sectors * SECTOR)
    if value < 1024:
        return str(int(value))
    for unit in "kmgtpe":
        value /= 1024
        if value < 1024 or unit == "e":
            break
    return f"{value:.2f}{unit}"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        " ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in rows
    )


def report(devices: Sequence[dict[str, Any]]) -> str:
    rows = [list(REPORT_HEADINGS)]
    with_histogram = any(r["histogram_bounds"] for d in devices for r in d["regions"])
    if with_histogram:
        rows[0].append("Histogram")
    for device in devices:
        for region in device["regions"]:
            unit = "ns" if region["precise_timestamps"] else ""
            for index, area in enumerate(region["areas"]):
                row = [
                    device["name"],
                    str(region["id"]),
                    str(index),
                    size_text(area["start"]),
                    size_text(area["length"]),
                    str(area["reads"]),
                    str(area["reads_merged"]),
                    size_text(area["read_sectors"]),
                    f"{area['read_time']}{unit}",
                    str(area["writes"]),
                    str(area["writes_merged"]),
                    size_text(area["write_sectors"]),
                    f"{area['write_time']}{unit}",
                    str(area["in_progress"]),
                    f"{area['io_time']}{unit}",
                    f"{area['weighted_io_time']}{unit}",
                ]
                if with_histogram:
                    row.append(":".join(map(str, area["histogram"])) or "-")
                rows.append(row)
    return _table(rows) if len(rows) > 1 else "No statistics regions found\n"


def region_list(devices: Sequence[dict[str, Any]]) -> str:
    rows = [list(LIST_HEADINGS)]
    for device in devices:
        for region in device["regions"]:
            rows.append(
                [
                    device["name"],
                    str(region["id"]),
                    size_text(region["start"]),
                    size_text(region["length"]),
                    str(region["areas_count"]),
                    size_text(region["step"]),
                    region["program_id"],
                    region["aux_data"],
                ]
            )
    return _table(rows) if len(rows) > 1 else "No statistics regions found\n"
