"""SEEK_DATA/SEEK_HOLE from the table (engine, targets, backends), without FUSE."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from dmfuse.backends import file as file_backend
from dmfuse.backends.file import seek_in_file
from dmfuse.engine import loaded
from dmfuse.engine.manager import Manager
from dmfuse.targets.zero import Zero
from tests.sparse import BLOCK, expected_seek, file_holes, sparse_image

KiB = 1024
MiB = 1 << 20
S = 512  # sector


def test_seek_in_file_answers_inside_the_range_and_never_a_false_hole(tmp_path: Path) -> None:
    path = sparse_image(str(tmp_path / "a.img"), MiB, [(64 * KiB, 64 * KiB), (512 * KiB, BLOCK)])
    with open(path, "rb+") as fh:
        fh.truncate(600 * KiB)  # the file ends inside what a table may map
    fd = os.open(path, os.O_RDONLY)
    try:
        # data and holes inside the file, capped at the range's end
        assert seek_in_file(fd, 0, MiB, hole=False) == 64 * KiB
        assert seek_in_file(fd, 0, 32 * KiB, hole=False) == 32 * KiB  # none before end
        assert seek_in_file(fd, 70 * KiB, MiB, hole=False) == 70 * KiB
        assert seek_in_file(fd, 70 * KiB, MiB, hole=True) == 128 * KiB
        assert seek_in_file(fd, 70 * KiB, 100 * KiB, hole=True) == 100 * KiB
        assert seek_in_file(fd, 0, MiB, hole=True) == 0
        # the file's end is not a hole: past it reads fail, so it counts as data
        assert seek_in_file(fd, 520 * KiB, MiB, hole=False) == 600 * KiB
        assert seek_in_file(fd, 520 * KiB, 580 * KiB, hole=False) == 580 * KiB
        assert seek_in_file(fd, 512 * KiB, MiB, hole=True) == 516 * KiB
        assert seek_in_file(fd, 600 * KiB, MiB, hole=False) == 600 * KiB
        assert seek_in_file(fd, 600 * KiB, MiB, hole=True) == MiB
        os.truncate(path, 516 * KiB)  # now the last block of data runs to the file's end
        assert seek_in_file(fd, 512 * KiB, MiB, hole=True) == MiB
    finally:
        os.close(fd)


async def _check_against_model(
    dev_seek: Callable[..., object], is_hole: Callable[[int], bool], size: int
) -> None:
    offsets = sorted({*range(0, size, 4 * KiB), *range(1000, size, 37 * KiB), size - 1})
    for offset in offsets:
        for hole in (False, True):
            found, got_size = await dev_seek(offset, hole=hole)  # type: ignore[misc]
            assert got_size == size
            want = expected_seek(is_hole, size, offset, hole=hole)
            assert found == want, (offset, hole)


async def test_linear_zero_striped_match_a_model_of_the_backing_holes(
    tmp_path: Path,
) -> None:
    a = sparse_image(str(tmp_path / "a.img"), 2 * MiB, [(0, 64 * KiB), (300 * KiB, 8 * KiB)])
    b = sparse_image(
        str(tmp_path / "b.img"), 2 * MiB, [(128 * KiB, 64 * KiB), (1 * MiB, 192 * KiB)]
    )
    a_hole, b_hole = file_holes(a), file_holes(b)
    # linear a@64K for 1 MiB | zero 256 KiB | striped 2 x 32 KiB chunks (a@1M, b@512K),
    # 1 MiB | error 64 KiB (data: not a known hole) | linear b from 0, 512 KiB
    table = (
        f"0 2048 linear {a} 128\n"
        "2048 512 zero\n"
        f"2560 2048 striped 2 64 {a} 2048 {b} 1024\n"
        "4608 128 error\n"
        f"4736 1024 linear {b} 0\n"
    )

    def is_hole(o: int) -> bool:
        if o < 1 * MiB:
            return a_hole(64 * KiB + o)
        if o < 1280 * KiB:
            return True
        if o < 2304 * KiB:
            chunk, within = divmod(o - 1280 * KiB, 32 * KiB)
            row, stripe = divmod(chunk, 2)
            where = row * 32 * KiB + within
            return a_hole(1 * MiB + where) if stripe == 0 else b_hole(512 * KiB + where)
        if o < 2368 * KiB:
            return False
        return b_hole(o - 2368 * KiB)

    m = Manager()
    await m.create("d", table)
    dev = m.get("d")
    assert dev.size == 5760 * S
    await _check_against_model(dev.seek, is_hole, dev.size)
    # the model has both kinds in every piece it claims to cover
    kinds = {(o // (256 * KiB), is_hole(o)) for o in range(0, dev.size, BLOCK)}
    assert len(kinds) > 12
    # st_blocks: zero counts nothing, each backend at most what it has allocated, error all
    held = sum(os.stat(p).st_blocks * 512 for p in (a, b))
    assert dev.allocated() == held + 64 * KiB


async def test_stacked_device_reports_the_lower_holes(tmp_path: Path) -> None:
    a = sparse_image(str(tmp_path / "a.img"), MiB, [(256 * KiB, 64 * KiB)])
    a_hole = file_holes(a)
    m = Manager()
    await m.create("low", f"0 1024 linear {a} 1024\n1024 1024 zero")  # a@512K, then zero
    await m.create("low2", f"0 2048 linear {a} 0")
    # top: low from 128K for 768K, then low2 from 0 (the data at 256K of a)
    await m.create("top", "0 1536 linear /dev/mapper/low 256\n1536 1024 linear /dev/mapper/low2 0")
    top = m.get("top")

    def is_hole(o: int) -> bool:
        if o < 768 * KiB:
            low = 128 * KiB + o
            return True if low >= 512 * KiB else a_hole(512 * KiB + low)
        return a_hole(o - 768 * KiB)

    await _check_against_model(top.seek, is_hole, top.size)
    # striped over two stacked devices: chunks of 16K alternate between low and low2
    await m.create("st", "0 2048 striped 2 32 /dev/mapper/low 0 /dev/mapper/low2 0")
    st = m.get("st")

    def st_hole(o: int) -> bool:
        chunk, within = divmod(o, 16 * KiB)
        row, stripe = divmod(chunk, 2)
        where = row * 16 * KiB + within
        if stripe == 0:
            return True if where >= 512 * KiB else a_hole(512 * KiB + where)
        return a_hole(where)

    await _check_against_model(st.seek, st_hole, st.size)
    assert any(not st_hole(o) for o in range(0, st.size, BLOCK))
    assert await top.seek(0, hole=False) == (768 * KiB + 256 * KiB, top.size)
    # the lower device shrinking under the upper one: its end is no hole, past it is data
    await m.load("low2", f"0 512 linear {a} 0")
    await m.resume("low2")
    found, _ = await top.seek(768 * KiB + 320 * KiB, hole=True)
    assert found == top.size  # data (reads fail there) up to the end of the upper device
    found, _ = await top.seek(768 * KiB + 300 * KiB, hole=False)
    assert found == 768 * KiB + 300 * KiB


async def test_targets_without_hole_knowledge_are_all_data(tmp_path: Path) -> None:
    empty = sparse_image(str(tmp_path / "e.img"), MiB, [])  # all hole on disk
    key = "01" * 16 + "02" * 16
    m = Manager()
    # ciphertext holes are not plaintext zeros; flakey/delay pass-through claims nothing
    for name, table in {
        "c": f"0 2048 crypt aes-xts-plain64 {key} 0 {empty} 0",
        "dl": f"0 2048 delay {empty} 0 0",
        "er": "0 2048 error",
    }.items():
        await m.create(name, table)
        dev = m.get(name)
        assert await dev.seek(4096, hole=False) == (4096, MiB)
        assert await dev.seek(4096, hole=True) == (MiB, MiB)
        assert dev.allocated() == MiB


async def test_seek_past_the_end_and_on_a_device_without_table() -> None:
    m = Manager()
    await m.create("z", "0 8 zero")
    dev = m.get("z")
    assert await dev.seek(0, hole=False) == (4096, 4096)  # no data: the caller says ENXIO
    assert await dev.seek(0, hole=True) == (0, 4096)
    assert await dev.seek(4096, hole=True) == (4096, 4096)  # offset >= size: caller's ENXIO
    assert dev.allocated() == 0
    await m.create("empty", None)
    with pytest.raises(Exception) as exc:
        await m.get("empty").seek(0, hole=False)
    assert getattr(exc.value, "errno", None) == errno.EIO


async def test_walk_is_bounded_and_stops_conservatively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loaded, "SEEK_TARGETS", 16)
    a = sparse_image(str(tmp_path / "a.img"), MiB, [(0, MiB)])  # all data
    m = Manager()
    # 40 zero lines, then data: SEEK_DATA gives up after 16 lines and says "maybe data"
    zeros = "".join(f"{i * 8} 8 zero\n" for i in range(40))
    await m.create("z", zeros + f"320 8 linear {a} 0\n328 8 zero\n")
    dev = m.get("z")
    assert await dev.seek(0, hole=False) == (16 * 4096, 336 * S)
    assert await dev.seek(30 * 4096 + 100, hole=False) == (40 * 4096, 336 * S)  # in reach
    # 40 data lines, then a hole: SEEK_HOLE gives up and claims no hole before the end
    datas = "".join(f"{i * 8} 8 linear {a} {i * 8}\n" for i in range(40))
    await m.create("d", datas + "320 8 zero\n328 8 error\n")
    dev = m.get("d")
    assert await dev.seek(0, hole=True) == (336 * S, 336 * S)
    assert await dev.seek(30 * 4096, hole=True) == (40 * 4096, 336 * S)


async def test_a_run_of_linear_lines_over_files_costs_one_thread_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hops: list[int] = []
    first_answer = file_backend._first_answer

    def counting(spans: list[tuple[int, int, int]], hole: bool) -> tuple[int, int]:
        hops.append(len(spans))
        return first_answer(spans, hole)

    monkeypatch.setattr(file_backend, "_first_answer", counting)
    a = sparse_image(str(tmp_path / "a.img"), MiB, [(70 * BLOCK + 512, 512)])
    b = sparse_image(str(tmp_path / "b.img"), MiB, [(0, MiB)])
    m = Manager()
    # 100 lines of 4K: a's blocks in reverse order, then a zero line, then b
    lines = "".join(f"{i * 8} 8 linear {a} {(99 - i) * 8}\n" for i in range(100))
    await m.create("d", lines + f"800 8 zero\n808 16 linear {b} 0\n")
    dev = m.get("d")
    assert await dev.seek(100, hole=False) == (29 * BLOCK, 824 * S)  # whole blocks on disk
    assert hops == [100]  # line 29 is a's block 70; the first line asked from byte 100
    hops.clear()
    assert await dev.seek(30 * BLOCK, hole=False) == (101 * BLOCK, 824 * S)  # past the zero
    assert hops == [70, 1]
    hops.clear()
    assert await dev.seek(29 * BLOCK + 600, hole=True) == (30 * BLOCK, 824 * S)
    assert await dev.seek(101 * BLOCK + 7, hole=True) == (824 * S, 824 * S)
    assert hops == [71, 1]


async def test_a_stacked_seek_asks_only_the_lower_lines_it_maps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []

    async def counting(self: Zero, offset: int) -> int:
        asked.append(offset)
        return self.length

    monkeypatch.setattr(Zero, "seek_data", counting)
    a = sparse_image(str(tmp_path / "a.img"), MiB, [(0, MiB)])
    m = Manager()
    await m.create("z", "".join(f"{i * 8} 8 zero\n" for i in range(100)))
    # top maps 5 lines of z (from the middle of its 3rd line), then data
    await m.create("top", f"0 36 linear /dev/mapper/z 20\n36 8 linear {a} 0\n")
    assert await m.get("top").seek(0, hole=False) == (36 * S, 44 * S)
    assert len(asked) == 5


async def test_seek_waits_while_suspended_like_io(tmp_path: Path) -> None:
    a = sparse_image(str(tmp_path / "a.img"), MiB, [(512 * KiB, 64 * KiB)])
    m = Manager()
    await m.create("d", f"0 2048 linear {a} 0")
    dev = m.get("d")
    await m.suspend("d")
    await m.load("d", "0 2048 zero")
    answers: list[tuple[int, int]] = []

    async def seek() -> None:
        answers.append(await dev.seek(0, hole=False))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(seek)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == []  # held at the gate
        await m.resume("d")
    assert answers == [(MiB, MiB)]  # answered by the new table: all hole
