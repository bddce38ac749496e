"""An origin write copies out only to the snapshots whose device reaches the written sector:
the kernel's ``__origin_write`` skips a snapshot when ``sector >= dm_table_get_size(snap->ti->
table)`` (the origin sector against the snapshot's *whole table*, not its line).

The reference is the real kernel (6.12): tests/data/kernel/snapsize_vm.sh ran the same I/O
(tests/data/kernel/offset_ops.py) in the kernel VM on a 4096-sector origin with three
snapshots: ``small`` (table of 2048 sectors), ``big`` (4096) and ``split`` (a 1024-sector
snapshot line followed by a zero line: table of 3072).  snapsize-vm-output.txt holds what it
printed (statuses, SHA-256 of every device); here the engine replays that I/O on files and must
leave the same statuses and bytes.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dmfuse.engine.manager import Manager
from tests.kernel_vm import CACHE, require_vm, run_recorded_script, same_kernel

KERNEL = Path(__file__).resolve().parents[1] / "data" / "kernel"
sys.path.insert(0, str(KERNEL))
try:
    from offset_ops import sectors  # type: ignore[import-not-found]
finally:
    sys.path.remove(str(KERNEL))

MiB = 1 << 20
COW = 256 * 1024
OUTPUT = (KERNEL / "snapsize-vm-output.txt").read_text()

TABLES = {
    "small": "0 2048 snapshot {o} {c} P 8",
    "big": "0 4096 snapshot {o} {c} P 8",
    "split": "0 1024 snapshot {o} {c} P 8\n1024 2048 zero",
}
# (sector, count, seed) written to the origin's device, as snapsize_vm.sh
WRITES = [(1000, 8, 21), (2040, 16, 22), (3000, 4, 23), (3500, 4, 24), (3068, 8, 25)]
# origin chunks (8 sectors) each snapshot gets an exception for, in order
COPIED = {
    "small": [125, 255],  # 256 (sector 2048) is past its 2048 sectors
    "big": [125, 255, 256, 375, 437, 383, 384],
    "split": [125, 255, 256, 375, 383],  # past its line (1024) but inside its table (3072)
}


def kernel_sha(name: str) -> str:
    """The SHA-256 the kernel VM printed for ``name`` (``SHA name hex`` lines)."""
    for line in OUTPUT.splitlines():
        words = line.split()
        if words[:2] == ["SHA", name]:
            return words[2]
    raise KeyError(name)


def kernel_statuses() -> list[str]:
    """The ``dmsetup status small big split`` lines, before and after the writes."""
    names = tuple(f"{n}: " for n in TABLES)
    return [line for line in OUTPUT.splitlines() if line.startswith(names)]


def sha(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def cow_records(cow: bytes) -> list[tuple[int, int]]:
    """The first metadata area (chunk 1, chunk size 8 sectors): (old_chunk, new_chunk)."""
    area = cow[4096 : 2 * 4096]
    records = [struct.unpack_from("<QQ", area, i) for i in range(0, len(area), 16)]
    return [(old, new) for old, new in records if new]


def statuses(m: Manager) -> list[str]:
    """``dmsetup status small big split``: ``name: start length type status`` per line."""
    out = []
    for name in TABLES:
        for line in m.status(name)[0]["lines"]:
            out.append(f"{name}: {line}".rstrip())
    return out


async def test_origin_write_skips_snapshots_smaller_than_the_sector(
    make_file: Callable[..., str],
) -> None:
    o = make_file("origin.img", 2 * MiB, seed=None)
    Path(o).write_bytes(sectors(5, 0, 4096))
    cows = {name: make_file(f"{name}.cow", COW, seed=None) for name in TABLES}
    m = Manager()
    await m.create("base", f"0 4096 snapshot-origin {o}")
    for name, table in TABLES.items():
        await m.create(name, table.format(o=o, c=cows[name]))
    before = statuses(m)
    for sector, count, seed in WRITES:
        data = memoryview(sectors(seed, sector, count))
        await m.get("base").write(sector * 512, data)
    after = statuses(m)
    # 16 metadata sectors (header, one area) + 8 per exception
    assert after == [
        "small: 0 2048 snapshot 32/512 16",
        "big: 0 4096 snapshot 72/512 16",
        "split: 0 1024 snapshot 56/512 16",
        "split: 1024 2048 zero",
    ]
    assert before + after == [line.rstrip() for line in kernel_statuses()]  # the kernel's

    # every snapshot still shows the origin as it was, over the whole of its device
    old = sectors(5, 0, 4096)
    devs = {name: bytes(await m.get(name).read(0, m.get(name).size)) for name in TABLES}
    assert devs["small"] == old[: 2048 * 512]
    assert devs["big"] == old
    assert devs["split"] == old[: 1024 * 512] + bytes(2048 * 512)
    for name, data in devs.items():
        assert sha(data) == kernel_sha(f"{name}-dev")
    new = bytearray(old)
    for sector, count, seed in WRITES:
        new[sector * 512 : (sector + count) * 512] = sectors(seed, sector, count)
    base = bytes(await m.get("base").read(0, 4096 * 512))
    assert base == new
    assert sha(base) == kernel_sha("base-dev")

    for name in ("split", "big", "small", "base"):
        await m.remove(name)
    assert sha(Path(o).read_bytes()) == kernel_sha("origin")
    for name, chunks in COPIED.items():
        cow = Path(cows[name]).read_bytes()
        assert cow_records(cow) == [(c, 2 + i) for i, c in enumerate(chunks)]
        for i, c in enumerate(chunks):
            assert cow[(2 + i) * 4096 : (3 + i) * 4096] == old[c * 4096 : (c + 1) * 4096]
        assert sha(cow) == kernel_sha(f"{name}-cow")


@pytest.mark.kernel
async def test_kernel_vm_recording_is_current() -> None:
    """Rerun snapsize_vm.sh in the kernel VM: the same output as recorded."""
    require_vm()
    disks = {"a": 2 * MiB, "b": COW, "c": COW, "d": COW}
    returncode = await run_recorded_script(
        "snapshot-sizes-work", KERNEL / "snapsize_vm.sh", [KERNEL / "offset_ops.py"], disks
    )
    work = CACHE / "snapshot-sizes-work"
    out = (work / "snapsize-vm.out").read_text()
    assert returncode == 0, out
    assert same_kernel(out) == same_kernel(OUTPUT)
