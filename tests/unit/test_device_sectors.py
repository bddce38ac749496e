"""log-writes, snapshot-origin, snapshot and snapshot-merge map by the *device's* sector, as the
kernel does (``bio->bi_iter.bi_sector``, no ``ti->begin`` subtracted), on table lines that do
not start at sector 0.

The reference is the real kernel (6.12): tests/data/kernel/offset_vm.sh ran the same I/O
(tests/data/kernel/offset_ops.py) in the kernel VM; offset-vm-output.txt holds what it printed
(statuses, SHA-256 of every device), offset-lw.log.gz the log device and offset-snap.cow.gz
the COW before the merge.  Here the engine replays that I/O on files and must leave the same
bytes.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError
from dmfuse.targets.log_writes import log_format as fmt
from dmfuse.targets.log_writes import replay as replay_log
from tests.kernel_vm import CACHE, require_vm, run_recorded_script, same_kernel

KERNEL = Path(__file__).resolve().parents[1] / "data" / "kernel"
sys.path.insert(0, str(KERNEL))
try:
    from offset_ops import sectors  # type: ignore[import-not-found]
finally:
    sys.path.remove(str(KERNEL))

MiB = 1 << 20
OUTPUT = (KERNEL / "offset-vm-output.txt").read_text()


def kernel_sha(name: str) -> str:
    """The SHA-256 the kernel VM printed for ``name`` (``SHA name hex`` lines)."""
    for line in OUTPUT.splitlines():
        words = line.split()
        if words[:2] == ["SHA", name]:
            return words[2]
    raise KeyError(name)


def sha(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def status_line(m: Manager, name: str) -> str:
    return str(m.status(name)[0]["lines"][-1])


async def put(m: Manager, name: str, sector: int, count: int, seed: int) -> None:
    """``offset_ops.py write``: one write of ``count`` sectors."""
    await m.get(name).write(sector * 512, memoryview(sectors(seed, sector, count)))


def entries(log: str) -> list[tuple[int, int, int, bytes]]:
    reader = replay_log.LogReader(log)
    try:
        return [
            (r.entry.sector, r.entry.nr_sectors, r.entry.flags, r.entry.mark)
            for r in reader.records()
        ]
    finally:
        reader.close()


# -- log-writes ------------------------------------------------------------------------------


async def test_log_writes_logs_and_writes_device_sectors(make_file: Callable[..., str]) -> None:
    dev = make_file("dev.img", 2 * MiB, seed=None)
    log = make_file("log.img", MiB, seed=None)
    m = Manager()
    await m.create("lw", f"0 2048 zero\n2048 2048 log-writes {dev} {log}")
    await put(m, "lw", 2056, 8, 1)
    await put(m, "lw", 2148, 2, 2)
    await m.get("lw").flush()
    assert await m.message("lw", 2048, "mark one") is None
    await put(m, "lw", 4000, 8, 3)
    assert status_line(m, "lw") == "2048 2048 log-writes 4 14"  # the kernel's
    await m.remove("lw")

    # dev gets the device sector (2056), not the line-relative one (8)
    raw = Path(dev).read_bytes()
    assert raw[2056 * 512 : 2064 * 512] == sectors(1, 2056, 8)
    assert raw[2148 * 512 : 2150 * 512] == sectors(2, 2148, 2)
    assert raw[4000 * 512 : 4008 * 512] == sectors(3, 4000, 8)
    assert raw[: 2048 * 512] == bytes(2048 * 512)
    assert sha(raw) == kernel_sha("lw-dev")

    # and the log records the device sector
    assert entries(log) == [
        (2056, 8, 0, b""),
        (2148, 2, 0, b""),
        (0, 0, fmt.FLUSH, b""),
        (0, 0, fmt.MARK, b"one"),
        (4000, 8, 0, b""),
        (0, 0, fmt.MARK, b"dm-log-writes-end"),
    ]
    assert Path(log).read_bytes() == gzip.decompress((KERNEL / "offset-lw.log.gz").read_bytes())


async def test_log_writes_past_the_end_of_its_device_is_eio(
    make_file: Callable[..., str],
) -> None:
    """The table check asks ``dev`` for ``length`` sectors only (iterate_devices: 0..len), so
    the kernel loads this table and then fails the I/O beyond the device with EIO."""
    dev = make_file("dev.img", MiB, seed=None)
    log = make_file("log.img", MiB, seed=None)
    m = Manager()
    await m.create("lw2", f"0 2048 zero\n2048 2048 log-writes {dev} {log}")
    for op in (put(m, "lw2", 2048, 1, 4), m.get("lw2").read(2048 * 512, 512)):
        with pytest.raises(DmError) as exc:
            await op
        assert exc.value.errno == errno.EIO
    assert "write past the device rc=1" in OUTPUT
    assert "read past the device rc=1" in OUTPUT
    await m.remove("lw2")
    assert os.path.getsize(dev) == MiB  # not grown
    assert sha(Path(dev).read_bytes()) == kernel_sha("lw2-dev")


# -- snapshot-origin, snapshot, snapshot-merge -------------------------------------------------

ORIGIN_TABLE = "0 1024 zero\n1024 3072 snapshot-origin {o}"
SNAP_TABLE = "0 2048 zero\n2048 2048 snapshot {o} {c} P 8"
MERGE_TABLE = "0 1024 zero\n1024 3072 snapshot-merge {o} {c} P 8"


def cow_records(cow: bytes) -> list[tuple[int, int]]:
    """The first metadata area (chunk 1, chunk size 8 sectors): (old_chunk, new_chunk)."""
    area = cow[4096 : 2 * 4096]
    records = [struct.unpack_from("<QQ", area, i) for i in range(0, len(area), 16)]
    return [(old, new) for old, new in records if new]


async def test_snapshot_origin_and_merge_use_device_sectors(
    make_file: Callable[..., str],
) -> None:
    o = make_file("origin.img", 2 * MiB, seed=None)
    c = make_file("cow.img", 256 * 1024, seed=None)
    Path(o).write_bytes(sectors(5, 0, 4096))
    m = Manager()
    await m.create("base", ORIGIN_TABLE.format(o=o))
    await m.create("snap", SNAP_TABLE.format(o=o, c=c))
    assert status_line(m, "snap") == "2048 2048 snapshot 16/512 16"
    await put(m, "base", 2064, 8, 11)  # origin chunk 258 (2064 / 8): copied out first
    await put(m, "base", 1500, 4, 12)  # before the snapshot's line, inside its table: chunk 187
    await put(m, "snap", 2088, 4, 13)  # part of chunk 261: the origin chunk copied in first
    await put(m, "snap", 2112, 8, 14)  # all of chunk 264
    await put(m, "base", 2112, 8, 15)  # chunk 264 has its exception: no copy
    assert status_line(m, "snap") == "2048 2048 snapshot 48/512 16"  # the kernel's

    snap = bytes(await m.get("snap").read(0, 4096 * 512))
    base = bytes(await m.get("base").read(0, 4096 * 512))
    # the snapshot shows the origin as it was, by device sector; its own writes on top
    before = bytearray(sectors(5, 0, 4096))
    before[2088 * 512 : 2092 * 512] = sectors(13, 2088, 4)
    before[2112 * 512 : 2120 * 512] = sectors(14, 2112, 8)
    assert snap[2048 * 512 :] == before[2048 * 512 :]
    assert snap[: 2048 * 512] == bytes(2048 * 512)
    assert sha(snap) == kernel_sha("snap-dev")
    # the origin got the device sectors of its writes (no offset argument, no begin subtracted)
    assert base[2064 * 512 : 2072 * 512] == sectors(11, 2064, 8)
    assert base[1500 * 512 : 1504 * 512] == sectors(12, 1500, 4)
    assert sha(base) == kernel_sha("base-dev")
    await m.remove("snap")
    await m.remove("base")
    assert sha(Path(o).read_bytes()) == kernel_sha("origin-1")

    cow = Path(c).read_bytes()
    assert cow_records(cow) == [(258, 2), (187, 3), (261, 4), (264, 5)]  # device chunks
    assert cow[2 * 4096 : 3 * 4096] == sectors(5, 2064, 8)  # chunk 258's old data
    assert cow == gzip.decompress((KERNEL / "offset-snap.cow.gz").read_bytes())

    # merge back through a snapshot-merge line at 1024: chunk n goes to origin sector 8n
    await m.create("merge", MERGE_TABLE.format(o=o, c=c))
    await trio.testing.wait_all_tasks_blocked()
    assert status_line(m, "merge") == "1024 3072 snapshot-merge 16/512 16"
    assert sha(bytes(await m.get("merge").read(0, 4096 * 512))) == kernel_sha("merge-dev")
    await m.remove("merge")
    merged = Path(o).read_bytes()
    assert merged[2048 * 512 :] == before[2048 * 512 :]
    assert merged[1496 * 512 : 1504 * 512] == sectors(5, 1496, 8)  # chunk 187 restored
    assert sha(merged) == kernel_sha("origin-2")
    assert sha(Path(c).read_bytes()) == kernel_sha("cow-2")


async def test_snapshot_line_not_chunk_aligned_cuts_at_device_chunks(
    make_file: Callable[..., str],
) -> None:
    """A line at 2052 with chunk 8: a write of target sectors 0..7 covers device chunks 256 and
    257; each gets its own exception.  The kernel (recorded) remaps it as one: one exception
    (chunk 256, taken as a whole-chunk write, so nothing copied in) whose data runs on into the
    next COW chunk, and device sectors 2056..2059 still read the origin's old data."""
    assert "2052 2044 snapshot 8/512 0" in OUTPUT
    assert kernel_sha("u-2048") == sha(bytes(4 * 512) + sectors(6, 2052, 4) + sectors(5, 2056, 8))
    kernel_cow = bytes(4 * 512) + sectors(6, 2052, 8)
    assert kernel_sha("u-cow") == sha(kernel_cow + bytes(256 * 1024 - len(kernel_cow)))

    o = make_file("origin.img", 2 * MiB, seed=None)
    c = make_file("cow.img", 256 * 1024, seed=None)
    Path(o).write_bytes(sectors(5, 0, 4096))
    m = Manager()
    await m.create("snap", f"0 2052 zero\n2052 2044 snapshot {o} {c} N 8")
    await put(m, "snap", 2052, 8, 6)
    assert status_line(m, "snap") == "2052 2044 snapshot 16/512 0"
    target = m.get("snap").live
    assert target is not None
    store = target.targets[1].store  # type: ignore[attr-defined]
    assert sorted(store.exceptions) == [256, 257]
    got = bytes(await m.get("snap").read(2048 * 512, 16 * 512))
    assert got == bytes(4 * 512) + sectors(6, 2052, 8) + sectors(5, 2060, 4)  # 2048..2051: zero
    await m.shutdown()
    assert Path(o).read_bytes() == sectors(5, 0, 4096)  # the origin is untouched


@pytest.mark.kernel
async def test_kernel_vm_recording_is_current() -> None:
    """Rerun offset_vm.sh in the kernel VM: the same output, log and COW as recorded."""
    require_vm()
    disks = {"a": 2 * MiB, "b": MiB, "c": 2 * MiB, "d": 256 * 1024, "e": MiB, "f": MiB}
    disks["g"] = 256 * 1024
    returncode = await run_recorded_script(
        "device-sectors-work", KERNEL / "offset_vm.sh", [KERNEL / "offset_ops.py"], disks
    )
    work = CACHE / "device-sectors-work"
    out = (work / "offset-vm.out").read_text()
    assert returncode == 0, out
    assert same_kernel(out) == same_kernel(OUTPUT)
    assert (work / "b").read_bytes() == gzip.decompress((KERNEL / "offset-lw.log.gz").read_bytes())
    cow = (work / "cow-1.img").read_bytes()
    assert cow == gzip.decompress((KERNEL / "offset-snap.cow.gz").read_bytes())
