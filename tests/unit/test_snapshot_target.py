"""snapshot and snapshot-origin through the manager, on real files, without FUSE."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

import pytest
import trio

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError
from tests.conftest import pattern

KiB = 1024
ORIGIN_SECTORS = 512  # 256 KiB origin


def status(m: Manager, name: str) -> str:
    return str(m.status(name)[0]["lines"][0])


def table(m: Manager, name: str) -> str:
    return str(m.table(name)[0]["lines"][0])


async def setup(m: Manager, origin: str, cows: list[tuple[str, str]], *, kind: str = "P") -> None:
    """The dmsetup recipe: snapshots first, then the origin device as snapshot-origin."""
    for i, (cow, chunk) in enumerate(cows):
        await m.create(f"snap{i}", f"0 {ORIGIN_SECTORS} snapshot {origin} {cow} {kind} {chunk}")
    await m.create("base", f"0 {ORIGIN_SECTORS} snapshot-origin {origin}")


async def read(m: Manager, name: str, offset: int, size: int) -> bytes:
    return bytes(await m.get(name).read(offset, size))


async def write(m: Manager, name: str, offset: int, data: bytes) -> None:
    await m.get(name).write(offset, memoryview(data))


async def test_fresh_persistent_status_table_and_header(make_file: Callable[..., str]) -> None:
    o = make_file("o.img", 256 * KiB)
    c = make_file("c.img", 128 * KiB, seed=None)
    m = Manager()
    await setup(m, o, [(c, "8")])
    assert status(m, "snap0") == "0 512 snapshot 16/256 16"
    assert table(m, "snap0") == f"0 512 snapshot {o} {c} P 8"
    assert status(m, "base") == "0 512 snapshot-origin "
    assert table(m, "base") == f"0 512 snapshot-origin {o}"
    # dm-spec §8.1: write origin chunk 3 -> header, area 0 at sector 8 = {3, 2}, data at 16
    await write(m, "base", 3 * 4096, b"N" * 4096)
    raw = open(c, "rb").read()
    assert raw[:16] == bytes.fromhex("536e4170010000000100000008000000")
    assert struct.unpack_from("<QQ", raw, 8 * 512) == (3, 2)
    assert struct.unpack_from("<QQ", raw, 8 * 512 + 16) == (0, 0)
    assert raw[16 * 512 : 16 * 512 + 4096] == pattern(3 * 4096, 4096)
    assert status(m, "snap0") == "0 512 snapshot 24/256 16"


async def test_copy_on_write_to_every_snapshot(make_file: Callable[..., str]) -> None:
    o = make_file("o.img", 256 * KiB)
    c1 = make_file("c1.img", 128 * KiB, seed=None)
    c2 = make_file("c2.img", 128 * KiB, seed=None)
    m = Manager()
    await setup(m, o, [(c1, "8"), (c2, "32")])  # 4 KiB and 16 KiB chunks
    assert m.get("base").live is not None
    await write(m, "base", 5000, b"x" * 10000)  # crosses chunks of both snapshots
    expected_new = bytearray(pattern(0, 256 * KiB))
    expected_new[5000:15000] = b"x" * 10000
    assert await read(m, "base", 0, 256 * KiB) == expected_new
    for snap in ("snap0", "snap1"):
        assert await read(m, snap, 0, 256 * KiB) == pattern(0, 256 * KiB)
    # snap0 copied chunks 1,2,3 (4 KiB); snap1 chunk 0 (16 KiB)
    assert status(m, "snap0") == "0 512 snapshot 40/256 16"
    assert status(m, "snap1") == "0 512 snapshot 96/256 64"
    # a rewrite copies nothing more
    await write(m, "base", 5000, b"y" * 100)
    assert status(m, "snap0") == "0 512 snapshot 40/256 16"
    # writes to a snapshot land in its COW only
    await write(m, "snap0", 100_000, b"s" * 3000)
    assert (await read(m, "snap0", 100_000, 3000)) == b"s" * 3000
    assert (await read(m, "snap1", 100_000, 3000)) == pattern(100_000, 3000)
    assert (await read(m, "base", 100_000, 3000)) == pattern(100_000, 3000)
    # and a later origin write there does not disturb the snapshot's own data
    await write(m, "base", 100_000, b"o" * 3000)
    assert (await read(m, "snap0", 99_000, 5000)) == (
        pattern(99_000, 1000) + b"s" * 3000 + pattern(103_000, 1000)
    )
    assert (await read(m, "snap1", 100_000, 3000)) == pattern(100_000, 3000)


async def test_persistent_survives_restart_with_area_rollover(
    make_file: Callable[..., str],
) -> None:
    """Chunk 1 sector: 32 records per area, so 100 exceptions fill three areas and start a 4th."""
    o = make_file("o.img", 256 * KiB)
    c = make_file("c.img", 128 * KiB, seed=None)
    m = Manager()
    await setup(m, o, [(c, "1")])
    for sector in range(100):
        await write(m, "base", sector * 512, bytes([sector]) * 512)
    await write(m, "snap0", 200 * 512, b"S" * 512)
    before = await read(m, "snap0", 0, 256 * KiB)
    assert before[: 100 * 512] == pattern(0, 100 * 512)
    # 100 + 1 data chunks + header + 4 areas: next_free 106; metadata (3 + 2) sectors
    assert status(m, "snap0") == "0 512 snapshot 106/256 5"
    await m.shutdown()
    m2 = Manager()
    await m2.create("snap", f"0 {ORIGIN_SECTORS} snapshot {o} {c} P 0")  # chunk from the header
    assert table(m2, "snap") == f"0 512 snapshot {o} {c} P 1"
    assert status(m2, "snap") == "0 512 snapshot 106/256 5"
    assert await read(m2, "snap", 0, 256 * KiB) == before


async def test_header_chunk_size_overrides_table(make_file: Callable[..., str]) -> None:
    o = make_file("o.img", 256 * KiB)
    c = make_file("c.img", 128 * KiB, seed=None)
    m = Manager()
    await m.create("s", f"0 512 snapshot {o} {c} P 0")
    assert table(m, "s") == f"0 512 snapshot {o} {c} P 32"  # the default chunk size
    await m.remove("s")
    await m.create("s", f"0 512 snapshot {o} {c} PO 8")
    assert table(m, "s") == f"0 512 snapshot {o} {c} PO 32"


async def test_full_cow_invalidates_origin_keeps_working(make_file: Callable[..., str]) -> None:
    o = make_file("o.img", 256 * KiB)
    c = make_file("c.img", 4 * KiB, seed=None)  # 8 sectors: header, area, 6 data chunks
    m = Manager()
    await setup(m, o, [(c, "1")])
    events = m.get("snap0").event_nr
    for sector in range(10):
        await write(m, "base", (100 + sector) * 512, b"o" * 512)  # never fails
    assert await read(m, "base", 100 * 512, 10 * 512) == b"o" * 5120
    assert status(m, "snap0") == "0 512 snapshot Invalid"
    assert m.get("snap0").event_nr == events + 1
    with pytest.raises(DmError) as exc:
        await read(m, "snap0", 0, 512)
    assert exc.value.errno == errno.EIO
    with pytest.raises(DmError):
        await write(m, "snap0", 0, b"x")
    assert struct.unpack_from("<IIII", open(c, "rb").read(16)) == (0x70416E53, 0, 1, 1)
    await m.remove("snap0")
    await m.create("again", f"0 512 snapshot {o} {c} P 1")  # loads, stays invalid
    assert status(m, "again") == "0 512 snapshot Invalid"


async def test_po_overflow(make_file: Callable[..., str]) -> None:
    o = make_file("o.img", 256 * KiB)
    c = make_file("c.img", 4 * KiB, seed=None)
    m = Manager()
    await m.create("s", f"0 512 snapshot {o} {c} PO 1")
    for sector in range(6):
        await write(m, "s", (300 + sector) * 512, b"w" * 512)
    with pytest.raises(DmError) as exc:
        await write(m, "s", 306 * 512, b"w" * 512)
    assert exc.value.errno == errno.EIO
    assert status(m, "s") == "0 512 snapshot Overflow"
    assert await read(m, "s", 300 * 512, 512) == b"w" * 512  # reads keep working
    assert await read(m, "s", 0, 512) == pattern(0, 512)
    with pytest.raises(DmError):  # every write fails once overflowed (kernel 6.12)
        await write(m, "s", 301 * 512, b"z" * 512)
    assert m.get("s").event_nr == 0
    await m.create("base", f"0 512 snapshot-origin {o}")
    await write(m, "base", 400 * 512, b"o" * 512)  # no room to copy out: now invalid
    assert status(m, "s") == "0 512 snapshot Invalid"


async def test_transient_status_and_reload_keeps_exceptions(
    make_file: Callable[..., str],
) -> None:
    o = make_file("o.img", 256 * KiB)
    c = make_file("c.img", 64 * KiB, seed=None)
    m = Manager()
    await m.create("n", f"0 512 snapshot {o} {c} n +8")
    assert status(m, "n") == "0 512 snapshot 0/128 0"
    assert table(m, "n") == f"0 512 snapshot {o} {c} N 8"
    await write(m, "n", 0, b"t" * 512)
    assert status(m, "n") == "0 512 snapshot 8/128 0"
    # reload + resume hands the in-memory store to the new table
    await m.load("n", f"0 512 snapshot {o} {c} N 8 1 discard_zeroes_cow")
    await m.resume("n")
    assert table(m, "n") == f"0 512 snapshot {o} {c} N 8 1 discard_zeroes_cow"
    assert await read(m, "n", 0, 1024) == b"t" * 512 + pattern(512, 512)
    assert status(m, "n") == "0 512 snapshot 8/128 0"


async def test_handover_needs_the_source_suspended(make_file: Callable[..., str]) -> None:
    o = make_file("o.img", 256 * KiB)
    c = make_file("c.img", 64 * KiB, seed=None)
    m = Manager()
    await m.create("a", f"0 512 snapshot {o} {c} N 8")
    await write(m, "a", 0, b"a" * 512)
    await m.create("b", None)
    await m.load("b", f"0 512 snapshot {o} {c} N 8")
    with pytest.raises(DmError, match="until source is suspended"):
        await m.resume("b")
    await m.suspend("a")
    await m.resume("b")
    assert await read(m, "b", 0, 512) == b"a" * 512
    assert status(m, "a") == "0 512 snapshot Invalid"  # the source gets no more I/O
    await m.resume("a")  # resumes, but stays invalid
    with pytest.raises(DmError):
        await read(m, "a", 0, 512)
    await m.suspend("b")
    await m.resume("b")
    assert await read(m, "b", 0, 512) == b"a" * 512


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("{o}", "requires 4 or more arguments"),
        ("{o} {c} P", "requires 4 or more arguments"),
        ("{o} {c} X 8", "Couldn't create exception store"),
        ("{o} {c} P 7", "Couldn't create exception store"),
        ("{o} {c} P abc", "Couldn't create exception store"),
        ("{o} {c} P 0x10", "Couldn't create exception store"),
        ("{o} {c} P 4194304", "Couldn't create exception store"),
        ("{o} {c} PX 8", "Couldn't create exception store"),
        ("{o} {c} N 0", "Chunk size not set"),
        ("{o} {c} P 8 1 bogus", "Unrecognised feature requested"),
        ("{o} {c} P 8 3 a b c", "Invalid number of feature arguments"),
        ("{o} {c} P 8 2 discard_zeroes_cow", "Invalid number of feature arguments"),
        (
            "{o} {c} P 8 1 discard_passdown_origin",
            "discard_passdown_origin feature depends on discard_zeroes_cow",
        ),
        ("{o} {o} P 8", "COW device cannot be the same as origin device"),
        ("{o} {bad} P 8", "Failed to read snapshot metadata"),
    ],
)
async def test_bad_snapshot_arguments(
    make_file: Callable[..., str], args: str, message: str
) -> None:
    o = make_file("o.img", 256 * KiB)
    c = make_file("c.img", 64 * KiB, seed=None)
    bad = make_file("bad.img", 4 * KiB, seed=None)
    with open(bad, "r+b") as fh:
        fh.write(b"XXXX")
    m = Manager()
    with pytest.raises(DmError) as exc:
        await m.create("s", "0 512 snapshot " + args.format(o=o, c=c, bad=bad))
    assert exc.value.errno == errno.EINVAL
    assert str(exc.value) == f"line 1: snapshot: {message}"
    assert "s" not in m.devices
    assert os.path.getsize(c) == 64 * KiB and open(c, "rb").read() == bytes(64 * KiB)


async def test_accepted_variants_and_origin_arguments(make_file: Callable[..., str]) -> None:
    o = make_file("o.img", 256 * KiB)
    c = make_file("c.img", 64 * KiB, seed=None)
    m = Manager()
    for args, shown in [
        ("Nfoo 8", "N 8"),
        ("N 8 0 extra words", "N 8"),
        (
            "N 8 2 DISCARD_ZEROES_COW discard_passdown_origin",
            "N 8 2 discard_zeroes_cow discard_passdown_origin",
        ),
    ]:
        await m.create("t", f"0 512 snapshot {o} {c} {args}")
        assert table(m, "t") == f"0 512 snapshot {o} {c} {shown}"
        await m.remove("t")
    for args in ("", f" {o} {c}"):
        with pytest.raises(DmError, match="origin: incorrect number of arguments"):
            await m.create("t", f"0 512 snapshot-origin{args}")
    with pytest.raises(DmError, match="too small"):
        await m.create("t", f"0 1024 snapshot {o} {c} N 8")


async def test_concurrent_origin_and_snapshot_writes_copy_once(
    make_file: Callable[..., str],
) -> None:
    o = make_file("o.img", 256 * KiB)
    c = make_file("c.img", 256 * KiB, seed=None)
    m = Manager()
    await setup(m, o, [(c, "8")])
    async with trio.open_nursery() as nursery:
        for i in range(16):
            nursery.start_soon(write, m, "base", (i % 4) * 4096 + i * 10, b"o" * 10)
            nursery.start_soon(write, m, "snap0", 8 * 4096 + i * 100, b"s" * 100)
    snap = await read(m, "snap0", 0, 12 * 4096)
    assert snap[: 8 * 4096] == pattern(0, 8 * 4096)
    assert snap[8 * 4096 : 8 * 4096 + 1600] == b"s" * 1600
    assert snap[8 * 4096 + 1600 :] == pattern(8 * 4096 + 1600, 4 * 4096 - 1600)
    assert status(m, "snap0") == "0 512 snapshot 56/512 16"  # 5 chunks, each copied once


async def test_cow_write_error_invalidates_with_one_event(make_file: Callable[..., str]) -> None:
    o = make_file("o.img", 256 * KiB)
    c = make_file("c.img", 128 * KiB, seed=None)
    m = Manager()
    await m.create("cow", f"0 256 linear {c} 0")
    await m.create("snap0", f"0 {ORIGIN_SECTORS} snapshot {o} /dev/mapper/cow P 8")
    await m.create("base", f"0 {ORIGIN_SECTORS} snapshot-origin {o}")
    await write(m, "base", 0, b"a" * 4096)
    await m.load("cow", "0 256 error")  # the COW device starts failing
    await m.resume("cow")
    await write(m, "base", 4096, b"b" * 4096)  # the origin write itself succeeds
    assert await read(m, "base", 4096, 4096) == b"b" * 4096
    assert status(m, "snap0") == "0 512 snapshot Invalid"
    assert m.get("snap0").event_nr == 1
    await write(m, "base", 8192, b"c" * 4096)
    assert m.get("snap0").event_nr == 1  # no copies are tried for an invalid snapshot


async def test_discard_zeroes_cow_chunks(make_file: Callable[..., str]) -> None:
    o = make_file("o.img", 256 * KiB)
    c = make_file("c.img", 128 * KiB, seed=None)
    m = Manager()
    await m.create("s", f"0 512 snapshot {o} {c} N 8 1 discard_zeroes_cow")
    await write(m, "s", 0, b"w" * 4096)
    with pytest.raises(DmError) as exc:  # a punch-hole must leave zeros: refused
        await m.get("s").discard(0, 8192)
    assert exc.value.errno == errno.EOPNOTSUPP
    live = m.get("s").live
    assert live is not None
    await live.targets[0].discard(0, 8192)  # the target's own discard, as the kernel's
    assert await read(m, "s", 0, 8192) == bytes(4096) + pattern(4096, 4096)
