"""snapshot-merge: the snapshot merged back into its origin in the background."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError
from tests.conftest import pattern

KiB = 1024
SIZE = 256 * KiB


def status(m: Manager, name: str) -> str:
    return str(m.status(name)[0]["lines"][0])


async def read(m: Manager, name: str, offset: int = 0, size: int = SIZE) -> bytes:
    return bytes(await m.get(name).read(offset, size))


async def write(m: Manager, name: str, offset: int, data: bytes) -> None:
    await m.get(name).write(offset, memoryview(data))


async def snapshot_with_changes(m: Manager, o: str, c: str, chunk: int) -> bytes:
    """Origin + snapshot, then origin writes (copy-outs) and snapshot writes; returns the
    snapshot's contents, which a merge must make the origin's."""
    await m.create("snap", f"0 512 snapshot {o} {c} P {chunk}")
    await m.create("base", f"0 512 snapshot-origin {o}")
    for i in range(0, 40, 3):  # scattered origin writes
        await write(m, "base", i * 4096 + 100, b"O" * 5000)
    await write(m, "base", 200 * 512, b"R" * 20 * 512)  # one consecutive run
    await write(m, "snap", 300 * 512, b"S" * 7 * 512)
    await write(m, "snap", 5 * 512, b"T" * 512)
    return await read(m, "snap")


async def start_merge(m: Manager, o: str, c: str, chunk: int) -> None:
    """lvconvert --merge, by hand: suspend both, load snapshot-merge on the origin, resume."""
    await m.suspend("base")
    await m.suspend("snap")
    await m.load("base", f"0 512 snapshot-merge {o} {c} P {chunk}")
    await m.resume("base")


def allocated(m: Manager, name: str) -> tuple[int, int]:
    info = status(m, name).split(" ", 3)[3]
    used, _, meta = info.replace("/", " ").split()
    return int(used), int(meta)


@pytest.mark.parametrize("chunk", [1, 8])
async def test_merge_makes_the_origin_the_snapshot(
    make_file: Callable[..., str], chunk: int
) -> None:
    o = make_file("o.img", SIZE)
    c = make_file("c.img", 512 * KiB, seed=None)
    m = Manager()
    wanted = await snapshot_with_changes(m, o, c, chunk)
    assert wanted != await read(m, "base")
    await start_merge(m, o, c, chunk)
    await trio.testing.wait_all_tasks_blocked()
    used, meta = allocated(m, "base")
    assert used == meta  # merge complete: only the metadata is left
    assert m.table("base")[0]["lines"][0] == f"0 512 snapshot-merge {o} {c} P {chunk}"
    assert await read(m, "base") == wanted
    with pytest.raises(DmError) as exc:  # the old snapshot device gets no more I/O
        await m.resume("snap")
        await read(m, "snap", 0, 512)
    assert exc.value.errno == errno.EIO
    await m.shutdown()
    assert Path(o).read_bytes() == wanted
    m = Manager()  # and the COW holds no exception any more
    await m.create("again", f"0 512 snapshot {o} {c} P 0")
    assert allocated(m, "again") == (2 * chunk, 2 * chunk)


async def test_merge_progress_suspend_resume_and_restart(make_file: Callable[..., str]) -> None:
    o = make_file("o.img", SIZE)
    c = make_file("c.img", 512 * KiB, seed=None)
    m = Manager()
    wanted = await snapshot_with_changes(m, o, c, 1)
    before, _ = allocated(m, "snap")
    await start_merge(m, o, c, 1)
    for _ in range(10):  # let a few runs merge
        await trio.lowlevel.checkpoint()
    await m.suspend("base")  # stops the merge
    paused, meta = allocated(m, "base")
    assert meta < paused < before
    for _ in range(10):
        await trio.lowlevel.checkpoint()
    assert allocated(m, "base")[0] == paused  # nothing merges while suspended
    await m.resume("base")
    for _ in range(10):
        await trio.lowlevel.checkpoint()
    later, _ = allocated(m, "base")
    assert later < paused
    # I/O while merging: a write to a chunk still in the COW and one to a merged chunk
    await write(m, "base", 300 * 512, b"W" * 512)
    await write(m, "base", 0, b"Z" * 512)
    wanted = b"Z" * 512 + wanted[512 : 300 * 512] + b"W" * 512 + wanted[301 * 512 :]
    assert await read(m, "base") == wanted
    await m.shutdown()  # a "restart" mid-merge
    m = Manager()
    await m.create("base", f"0 512 snapshot-merge {o} {c} P 1")
    assert allocated(m, "base")[0] <= later
    await trio.testing.wait_all_tasks_blocked()
    assert allocated(m, "base")[0] == allocated(m, "base")[1]
    assert await read(m, "base") == wanted
    await m.shutdown()
    assert Path(o).read_bytes() == wanted


async def test_merge_keeps_other_snapshots_intact(make_file: Callable[..., str]) -> None:
    o = make_file("o.img", SIZE)
    c = make_file("c.img", 512 * KiB, seed=None)
    c2 = make_file("c2.img", 512 * KiB, seed=None)
    m = Manager()
    wanted = await snapshot_with_changes(m, o, c, 8)
    await m.suspend("base")
    await m.create("other", f"0 512 snapshot {o} {c2} P 8")
    await m.resume("base")
    other = await read(m, "other")
    await start_merge(m, o, c, 8)
    await trio.testing.wait_all_tasks_blocked()
    assert await read(m, "base") == wanted
    assert await read(m, "other") == other  # merging wrote the origin: copies went out first


async def test_merge_arguments(make_file: Callable[..., str]) -> None:
    o = make_file("o.img", SIZE)
    c = make_file("c.img", 64 * KiB, seed=None)
    c2 = make_file("c2.img", 64 * KiB, seed=None)
    c3 = make_file("c3.img", 64 * KiB, seed=None)
    m = Manager()
    with pytest.raises(DmError, match="does not support snapshot-merge"):
        await m.create("x", f"0 512 snapshot-merge {o} {c} N 8")
    await m.create("s2", f"0 512 snapshot {o} {c2} P 8")
    await m.create("base", f"0 512 snapshot-merge {o} {c} P 8")
    assert status(m, "base") == "0 512 snapshot-merge 16/128 16"  # nothing to merge
    assert await read(m, "base", 0, 4096) == pattern(0, 4096)
    # kernel 6.12: refused only when taking over a snapshot's store; a fresh COW passes
    with pytest.raises(DmError, match=r"A snapshot is already merging\."):
        await m.create("y", f"0 512 snapshot-merge {o} {c2} P 8")
    await m.create("m2", f"0 512 snapshot-merge {o} {c3} P 8")
    assert status(m, "m2") == "0 512 snapshot-merge 16/128 16"


async def test_second_load_before_resume_is_refused(make_file: Callable[..., str]) -> None:
    """Kernel 6.12: two inactive tables cannot both wait to take over one COW."""
    o = make_file("o.img", SIZE)
    c = make_file("c.img", 64 * KiB, seed=None)
    m = Manager()
    await m.create("snap", f"0 512 snapshot {o} {c} P 8")
    await m.load("snap", f"0 512 snapshot {o} {c} P 8")
    with pytest.raises(DmError, match="Snapshot cow pairing for exception table handover failed"):
        await m.load("snap", f"0 512 snapshot {o} {c} P 8")
    await m.clear("snap")
    await m.load("snap", f"0 512 snapshot {o} {c} P 8")  # after clear it is accepted again


async def test_merge_failed_status(make_file: Callable[..., str]) -> None:
    o = make_file("o.img", SIZE)
    c = make_file("c.img", 512 * KiB, seed=None)
    m = Manager()
    await m.create("od", f"0 512 linear {o} 0")
    await m.create("snap", f"0 512 snapshot /dev/mapper/od {c} P 8")
    await m.create("base", "0 512 snapshot-origin /dev/mapper/od")
    await write(m, "base", 0, b"x" * 4096)
    await m.load("od", "0 512 error")  # the origin can no longer be written
    await m.resume("od")
    await m.suspend("base")
    await m.suspend("snap")
    await m.load("base", f"0 512 snapshot-merge /dev/mapper/od {c} P 8")
    await m.resume("base")
    await trio.testing.wait_all_tasks_blocked()
    assert status(m, "base") == "0 512 snapshot-merge Merge failed"
    assert await read(m, "base", 0, 4096) == pattern(0, 4096)  # still in the COW, readable
