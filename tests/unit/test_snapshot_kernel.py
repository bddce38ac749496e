"""Compatibility with the kernel's dm-snapshot (6.12), both ways.

The COW images in tests/data/kernel/snapshot-*.cow.gz were written by the real kernel in the
VM (tests/data/kernel/snapshot-vm-record.sh, data from snapshot-gen.py).  Here dmfuse replays
the same I/O and must produce the *same bytes*, and loading the kernel's COW must show the same
snapshot contents and status.  The ``kernel`` test goes the other way: the kernel loads a COW
dmfuse wrote.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError
from tests.conftest import pattern
from tests.kernel_vm import CACHE, KDM_DIR, KDM_VM

DATA = Path(__file__).resolve().parents[1] / "data" / "kernel"

KERNEL_SNAP_SHA = "bcaa84a995c1b459d530b8127458f2c5c848220a7e6f67941f94b309f8b4fc5f"
KERNEL_ORIGIN_SHA = "e6041191d8526849bfcaffdf422e79faea8450c8a78de6ad2067ff9dc42206a1"


def sectors(seed: int, count: int) -> bytes:
    """snapshot-gen.py: one 8-byte value repeated per sector, every sector distinct."""
    return b"".join(
        struct.pack("<Q", (s * 2654435761 + seed * 0x9E3779B97F4A7C15) & (2**64 - 1)) * 64
        for s in range(count)
    )


def kernel_cow(name: str) -> bytes:
    return gzip.decompress((DATA / f"snapshot-{name}.cow.gz").read_bytes())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def put(m: Manager, name: str, sector: int, data: bytes) -> None:
    """One 512-byte write at a time, in order, like ``dd bs=512 oflag=direct``."""
    for i in range(0, len(data), 512):
        await m.get(name).write(sector * 512 + i, memoryview(data[i : i + 512]))


def files(tmp_path: Path, origin: bytes, cow_size: int) -> tuple[str, str]:
    o, c = tmp_path / "origin.img", tmp_path / "cow.img"
    o.write_bytes(origin)
    c.write_bytes(bytes(cow_size))
    return os.fspath(o), os.fspath(c)


async def scenario_multiarea(tmp_path: Path) -> tuple[Manager, str, str]:
    """Scenario 1 of the record script: chunk 1, 110 exceptions over four metadata areas."""
    o, c = files(tmp_path, sectors(1, 512), 128 * 1024)
    m = Manager()
    await m.create("base", f"0 512 snapshot-origin {o}")
    await m.create("snap", f"0 512 snapshot {o} {c} P 1")
    assert m.status("snap")[0]["lines"][0] == "0 512 snapshot 2/256 2"
    await put(m, "base", 0, sectors(2, 100))
    await put(m, "snap", 200, sectors(3, 10))
    await put(m, "base", 205, sectors(3, 3))
    return m, o, c


async def test_same_cow_bytes_as_kernel_multiarea(tmp_path: Path) -> None:
    m, o, c = await scenario_multiarea(tmp_path)
    assert m.status("snap")[0]["lines"][0] == "0 512 snapshot 115/256 5"  # kernel's status
    assert sha(bytes(await m.get("snap").read(0, 512 * 512))) == KERNEL_SNAP_SHA
    await m.shutdown()
    assert sha(Path(o).read_bytes()) == KERNEL_ORIGIN_SHA
    assert Path(c).read_bytes() == kernel_cow("p1-multiarea")


async def test_loads_kernel_cow(tmp_path: Path) -> None:
    expected_origin = bytearray(sectors(1, 512))
    expected_origin[: 100 * 512] = sectors(2, 100)
    expected_origin[205 * 512 : 208 * 512] = sectors(3, 3)
    o, c = files(tmp_path, bytes(expected_origin), 0)
    Path(c).write_bytes(kernel_cow("p1-multiarea"))
    assert sha(bytes(expected_origin)) == KERNEL_ORIGIN_SHA
    m = Manager()
    await m.create("snap", f"0 512 snapshot {o} {c} PO 8")  # the header's chunk size wins
    assert m.table("snap")[0]["lines"][0] == f"0 512 snapshot {o} {c} PO 1"
    assert m.status("snap")[0]["lines"][0] == "0 512 snapshot 115/256 5"
    content = bytes(await m.get("snap").read(0, 512 * 512))
    assert sha(content) == KERNEL_SNAP_SHA
    expected_snap = bytearray(sectors(1, 512))
    expected_snap[200 * 512 : 210 * 512] = sectors(3, 10)
    assert content == expected_snap


async def test_same_cow_bytes_as_kernel_chunk8_vector(tmp_path: Path) -> None:
    o, c = files(tmp_path, sectors(4, 512), 64 * 1024)
    m = Manager()
    await m.create("base", f"0 512 snapshot-origin {o}")
    await m.create("s8", f"0 512 snapshot {o} {c} P 8")
    await m.get("base").write(3 * 4096, memoryview(sectors(3, 8)))
    assert m.status("s8")[0]["lines"][0] == "0 512 snapshot 24/128 16"
    await m.shutdown()
    assert Path(c).read_bytes() == kernel_cow("p8-vector")


async def test_same_cow_bytes_as_kernel_invalidation_and_overflow(tmp_path: Path) -> None:
    origin = bytearray(sectors(4, 512))
    origin[3 * 4096 : 4 * 4096] = sectors(3, 8)  # what scenario 2 left on the origin
    o, c3 = files(tmp_path, bytes(origin), 4096)
    c4 = os.fspath(tmp_path / "c4.img")
    Path(c4).write_bytes(bytes(4096))
    m = Manager()
    await m.create("base2", f"0 512 snapshot-origin {o}")
    await m.create("s3", f"0 512 snapshot {o} {c3} P 1")
    await put(m, "base2", 100, sectors(2, 10))
    assert m.status("s3")[0]["lines"][0] == "0 512 snapshot Invalid"
    assert m.get("s3").event_nr == 1
    await m.remove("s3")
    await m.remove("base2")
    await m.create("s4", f"0 512 snapshot {o} {c4} PO 1")
    with pytest.raises(DmError):
        await put(m, "s4", 300, sectors(2, 10))
    assert m.status("s4")[0]["lines"][0] == "0 512 snapshot Overflow"
    await m.create("base2", f"0 512 snapshot-origin {o}")
    await put(m, "base2", 400, sectors(2, 1))
    assert m.status("s4")[0]["lines"][0] == "0 512 snapshot Invalid"
    await m.shutdown()
    assert Path(c3).read_bytes() == kernel_cow("p1-invalid")
    assert Path(c4).read_bytes() == kernel_cow("po1-overflow")
    m = Manager()
    await m.create("s3", f"0 512 snapshot {o} {c3} P 1")  # the kernel's invalid COW
    assert m.status("s3")[0]["lines"][0] == "0 512 snapshot Invalid"


VM_SCRIPT = """\
cd "$(dirname "$0")"
exec > vm.out 2>&1
dmsetup create snap --table "0 512 snapshot /dev/vda /dev/vdb P 0"
echo "status: $(dmsetup status snap)"
echo "table: $(dmsetup table snap)"
echo "snap: $(sha256sum < /dev/mapper/snap | cut -d' ' -f1)"
dmsetup remove snap
"""


@pytest.mark.kernel
async def test_kernel_loads_dmfuse_cow(make_file: Callable[..., str], tmp_path: Path) -> None:
    """A COW written by dmfuse (several areas, origin and snapshot writes in a shuffled order)
    is loaded by the real kernel with identical snapshot contents and status."""
    if not (KDM_DIR / "vmlinuz").exists() or not KDM_VM.exists():
        pytest.skip(f"kernel VM not set up ({KDM_DIR}/vmlinuz missing)")
    work = CACHE / "snapshot-test-work"
    work.mkdir(parents=True, exist_ok=True)
    o, c = files(work, sectors(5, 512), 128 * 1024)
    m = Manager()
    await m.create("base", f"0 512 snapshot-origin {o}")
    await m.create("snap", f"0 512 snapshot {o} {c} P 1")
    for i in range(90):
        sector = (i * 37) % 512
        await put(m, "base" if i % 3 else "snap", sector, sectors(6 + i, 1))
    status = m.status("snap")[0]["lines"][0].split(" ", 3)[3]
    snap_sha = sha(bytes(await m.get("snap").read(0, 512 * 512)))
    await m.shutdown()
    (work / "vm.sh").write_text(VM_SCRIPT)
    env = dict(os.environ, KDM_DIR=str(KDM_DIR))
    result = await trio.run_process(
        [str(KDM_VM), "run", str(work), str(work / "vm.sh"), o, c],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out = (work / "vm.out").read_text()
    assert result.returncode == 0, out
    assert f"status: 0 512 snapshot {status}" in out
    assert "table: 0 512 snapshot 254:0 254:16 P 1" in out
    assert f"snap: {snap_sha}" in out


# Recorded in the VM (kernel 6.12) from the same origin and COW: the kernel's snapshot-merge left
# exactly these bytes on both devices, status "0 512 snapshot-merge 16/1024 16".
KERNEL_MERGED_ORIGIN_SHA = "485838f77fccc58bbf50054c812f3015590c250677c68cd5ebb7c0269c80e423"
KERNEL_MERGED_COW_SHA = "96644abd6302cc54791db3fc68b824896d23d652bd4848eb9ce604b3cffe485d"


async def merge_inputs(where: Path) -> tuple[str, str]:
    """An origin and a COW with scattered and consecutive exceptions (chunk 8), made by dmfuse
    with one-sector writes in order (a write spanning chunks is split into pieces that run
    concurrently, so their allocation order, and the COW layout, would vary)."""
    o, c = os.fspath(where / "o.img"), os.fspath(where / "c.img")
    Path(o).write_bytes(pattern(0, 256 * 1024))
    Path(c).write_bytes(bytes(512 * 1024))
    m = Manager()
    await m.create("snap", f"0 512 snapshot {o} {c} P 8")
    await m.create("base", f"0 512 snapshot-origin {o}")
    for i in range(0, 40, 3):
        await put(m, "base", i * 8 + 1, sectors(7 + i, 10))
    await put(m, "base", 200, sectors(8, 20))
    await put(m, "snap", 300, sectors(9, 7))
    await put(m, "snap", 5, sectors(10, 1))
    await m.shutdown()
    return o, c


async def test_merge_leaves_the_same_bytes_as_the_kernel(tmp_path: Path) -> None:
    o, c = await merge_inputs(tmp_path)
    m = Manager()
    await m.create("base", f"0 512 snapshot-merge {o} {c} P 8")
    await trio.testing.wait_all_tasks_blocked()
    assert m.status("base")[0]["lines"][0] == "0 512 snapshot-merge 16/1024 16"
    await m.shutdown()
    assert sha(Path(o).read_bytes()) == KERNEL_MERGED_ORIGIN_SHA
    assert sha(Path(c).read_bytes()) == KERNEL_MERGED_COW_SHA


MERGE_VM_SCRIPT = """\
cd "$(dirname "$0")"
exec > vm.out 2>&1
dmsetup create base --table "0 512 snapshot-merge /dev/vda /dev/vdb P 8"
for i in $(seq 1 60); do
  set -- $(dmsetup status base); [ "${4%/*}" = "$5" ] && break; sleep 0.5
done
echo "final: $(dmsetup status base)"
dmsetup remove base
echo "origin: $(sha256sum < /dev/vda | cut -d' ' -f1)"
echo "cow: $(sha256sum < /dev/vdb | cut -d' ' -f1)"
"""


@pytest.mark.kernel
async def test_kernel_merges_dmfuse_cow() -> None:
    """The kernel's snapshot-merge of a COW dmfuse wrote gives the recorded bytes."""
    if not (KDM_DIR / "vmlinuz").exists() or not KDM_VM.exists():
        pytest.skip(f"kernel VM not set up ({KDM_DIR}/vmlinuz missing)")
    work = CACHE / "snapshot-test-work"
    work.mkdir(parents=True, exist_ok=True)
    o, c = await merge_inputs(work)
    (work / "vm.sh").write_text(MERGE_VM_SCRIPT)
    result = await trio.run_process(
        [str(KDM_VM), "run", str(work), str(work / "vm.sh"), o, c],
        env=dict(os.environ, KDM_DIR=str(KDM_DIR)),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out = (work / "vm.out").read_text()
    assert result.returncode == 0, out
    assert "final: 0 512 snapshot-merge 16/1024 16" in out
    assert f"origin: {KERNEL_MERGED_ORIGIN_SHA}" in out
    assert f"cow: {KERNEL_MERGED_COW_SHA}" in out
