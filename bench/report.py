"""Turn the fio JSON of one ``bench/run.sh`` run into a markdown report (stdlib only).

    python3 bench/report.py bench/work/results -o bench/RESULTS.md

Reads ``meta.json`` and ``jobs.tsv`` written by run.sh, and one fio JSON file per job.
Rows are workloads, columns are peers; each cell holds IOPS and MB/s (10^6 bytes/s).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORKLOADS = {
    "seqread": ("seq read", "1M"),
    "seqwrite": ("seq write", "1M"),
    "randread": ("rand read", "4k"),
    "randwrite": ("rand write", "4k"),
}
ENGINES = {"psync": "psync QD1", "libaio": "libaio QD16"}
# (numerator, denominator) peer pairs that get a ratio column when either side was requested.
RATIOS = [
    ("dmfuse", "qsd"),
    ("dmfuse+loop", "qsd+loop"),
    ("dmfuse-direct", "qsd-direct"),
    ("dmfuse-stats", "dmfuse"),
]


@dataclass(frozen=True)
class Result:
    iops: float
    bw_bytes: float
    clat_mean_us: float
    clat_p99_us: float


def load_fio(path: Path) -> Result:
    """The read or write side (whichever did I/O) of the single job in a fio JSON file."""
    text = path.read_text()
    # fio sometimes prints warnings before the JSON document, even with --output.
    data: dict[str, Any] = json.loads(text[text.index("{") :])
    job = data["jobs"][0]
    side = job["write"] if job["write"]["io_bytes"] > job["read"]["io_bytes"] else job["read"]
    clat = side["clat_ns"]
    p99 = clat.get("percentile", {}).get("99.000000", 0.0)
    return Result(
        iops=float(side["iops"]),
        bw_bytes=float(side["bw_bytes"]),
        clat_mean_us=float(clat["mean"]) / 1000.0,
        clat_p99_us=float(p99) / 1000.0,
    )


def fmt_iops(v: float) -> str:
    if v >= 10_000:
        return f"{v / 1000:.1f}k"
    return f"{v:.0f}"


def fmt_mbs(v: float) -> str:
    mbs = v / 1e6
    return f"{mbs:.0f}" if mbs >= 100 else f"{mbs:.1f}"


def fmt_us(v: float) -> str:
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def build(results_dir: Path) -> str:
    meta: dict[str, Any] = json.loads((results_dir / "meta.json").read_text())
    results: dict[tuple[str, str, str], Result] = {}
    failed: list[str] = []
    cached: dict[str, set[str]] = {}
    loads: dict[str, list[float]] = {}
    workloads: list[str] = []
    engines: list[str] = []
    with (results_dir / "jobs.tsv").open(newline="") as f:
        for job in csv.DictReader(f, delimiter="\t"):
            peer, wl, eng = job["peer"], job["workload"], job["engine"]
            if wl not in workloads:
                workloads.append(wl)
            if eng not in engines:
                engines.append(eng)
            cached.setdefault(peer, set()).add(job["cached_bytes"])
            with contextlib.suppress(ValueError):
                loads.setdefault(peer, []).append(float(job["loadavg"]))
            if job["rc"] != "0":
                failed.append(f"{peer} {wl} {eng} (fio exit {job['rc']})")
                continue
            results[(peer, wl, eng)] = load_fio(results_dir / job["file"])

    ran: list[str] = meta["ran"]
    skipped: dict[str, str] = meta["skipped"]
    # Columns: every peer that ran or was asked for (skipped ones show as pending).
    peers = list(ran)
    asked: list[str] = list(meta["peers"])
    if not any(p.startswith("dmfuse") for p in asked):  # the point: always show a dmfuse column
        asked.append("dmfuse")
        skipped["dmfuse"] = "not in PEERS for this run"
    for p in asked:
        if p not in peers:
            peers.append(p)
        if meta["via_loop"] == "1" and p in ("qsd", "dmfuse") and p + "+loop" not in peers:
            peers.append(p + "+loop")
            if p in skipped:
                skipped[p + "+loop"] = f"needs `{p}`"
    ratios = [(a, b) for a, b in RATIOS if a in peers or b in peers]

    lines = ["# dmfuse benchmark results", ""]
    if "dmfuse" in skipped:
        lines += [
            "> **dmfuse numbers are pending**: this run did not measure `dmfuse` "
            f"({skipped['dmfuse']}); its columns and the ratio columns are placeholders.",
            "",
        ]
    lines += [
        f"- Date: {meta['started']} → {meta['finished']}",
        f"- Machine: {meta['nproc']} CPUs ({meta['cpu']}), {meta['mem']} RAM, "
        f"kernel {meta['kernel']}",
        f"- fio: {meta['fio']}",
        f"- Command: `{meta['command']}`",
        f"- Backing image: {meta['size']} ({meta['size_bytes']} bytes) of random data on "
        f"{meta['backing_fs']}",
        f"- Per job: {meta['runtime']} s time-based after {meta['ramp']} s ramp, 1 job, "
        "`--direct=1` on the file fio opens (except `rawbuf`)",
        f"- Backing page cache before every job: **{meta['cache']}** "
        + (
            "(whole file read into the page cache)"
            if meta["cache"] == "warm"
            else "(file evicted from the page cache)"
        ),
    ]
    for p in peers:
        if p in meta["info"]:
            lines.append(f"- `{p}`: {meta['info'][p]}")
    for p in peers:
        if p in skipped:
            lines.append(f"- **`{p}`: pending** — skipped: {skipped[p]}")
    lines.append("")

    header = ["workload", *(f"`{p}`" for p in peers)]
    header += [f"`{a}` / `{b}`" for a, b in ratios]
    rows: list[list[str]] = []
    lat_rows: list[list[str]] = []
    for wl in workloads:
        for eng in engines:
            name, bs = WORKLOADS.get(wl, (wl, "?"))
            label = f"{name} {bs}, {ENGINES.get(eng, eng)}"
            row, lat = [label], [label]
            for p in peers:
                r = results.get((p, wl, eng))
                if r is None:
                    row.append("pending" if p in skipped or p not in ran else "failed")
                    lat.append(row[-1])
                else:
                    row.append(f"{fmt_iops(r.iops)} IOPS, {fmt_mbs(r.bw_bytes)} MB/s")
                    lat.append(f"{fmt_us(r.clat_mean_us)} / {fmt_us(r.clat_p99_us)}")
            for a, b in ratios:
                ra, rb = results.get((a, wl, eng)), results.get((b, wl, eng))
                row.append(f"{ra.iops / rb.iops:.2f}x" if ra and rb and rb.iops else "pending")
            rows.append(row)
            lat_rows.append(lat)

    lines += ["## Throughput (IOPS, MB/s)", ""]
    lines += md_table(header, rows)
    lines += ["", "## Completion latency (mean / p99)", ""]
    lines += md_table(header[: 1 + len(peers)], lat_rows)
    lines += [
        "",
        "## Notes",
        "",
        "- `raw` is fio with O_DIRECT on the backing file itself: it goes to the disk and "
        "never touches the page cache, so the cache policy does not apply to it.",
        "- `qsd` and `dmfuse` get O_DIRECT requests on their FUSE file but do buffered I/O on "
        "the backing file (qsd `cache.direct=off`, dmfuse opens it without O_DIRECT): with a "
        "warm cache their reads, and their writes (no fsync is issued), are served by the page "
        "cache. `rawbuf` (buffered fio on the backing file) is the matching ceiling.",
    ]
    if any(p.endswith("-direct") for p in peers):
        lines.append(
            "- `qsd-direct` (`cache.direct=on,aio=native`) and `dmfuse-direct` (`mount -o "
            "cache=none`) open the backing file O_DIRECT: every request goes to the disk, "
            "as for `raw`, which is their ceiling; the page cache policy does not apply to them."
        )
    if loads:
        every = [v for vs in loads.values() for v in vs]
        lines.append(
            f"- 1-minute load average at job start: {min(every):.2f}-{max(every):.2f}, mean "
            + ", ".join(f"{p}: {sum(v) / len(v):.2f}" for p, v in loads.items())
            + f" (the machine has {meta['nproc']} CPUs and is shared; jobs are interleaved "
            "across peers so that outside load hits all of them alike)."
        )
    res = {p: sorted(v) for p, v in cached.items()}
    lines.append(
        "- Backing file bytes in page cache at job start (fincore): "
        + ", ".join(f"{p}: {'/'.join(v)}" for p, v in res.items())
    )
    if failed:
        lines.append("- Failed jobs: " + "; ".join(failed))
    lines.append(f"- Raw fio JSON: `{os.path.relpath(results_dir)}/` (one file per job).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="results directory written by run.sh")
    ap.add_argument("-o", "--output", default="-", help="markdown file (default: stdout)")
    args = ap.parse_args(argv)
    text = build(args.results)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
