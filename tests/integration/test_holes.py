"""Holes of device files on a real mount, as hole-aware tools see them.

``qemu-img map`` asks SEEK_DATA/SEEK_HOLE directly; ``cp`` and ``tar -S`` ask only when
``st_blocks`` says the file is sparse, so these also check the device file's ``st_blocks``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from tests.integration.harness import Mount, run
from tests.sparse import expected_seek, extents, file_holes, sparse_image

KiB = 1024
MiB = 1 << 20


def qemu_map(path: str) -> list[tuple[int, int, bool]]:
    out = run("qemu-img", "map", "--output=json", "-f", "raw", path).stdout
    runs = [(e["start"], e["length"], e["data"]) for e in json.loads(out)]
    for entry in json.loads(out):
        assert entry["zero"] is not entry["data"], entry  # raw: a hole reads as zeros
    return runs


def _images(mnt: Mount) -> tuple[Callable[[int], bool], Callable[[int], bool]]:
    a = sparse_image(
        mnt.image("a.img", 0), 4 * MiB, [(0, 64 * KiB), (1 * MiB, 200 * KiB), (3 * MiB, 4 * KiB)]
    )
    b = sparse_image(
        mnt.image("b.img", 0), 4 * MiB, [(512 * KiB, 96 * KiB), (2 * MiB, MiB)], seed=1
    )
    return file_holes(a), file_holes(b)


# linear a from 512K (2.5 MiB) | zero 1 MiB | striped 3 x 16K chunks over a@3M, b@0, b@2M
# (3 x 768K) | error 64K | linear b from 1M (1 MiB)
TABLE = (
    "0 5120 linear a.img 1024\n"
    "5120 2048 zero\n"
    "7168 4608 striped 3 32 a.img 6144 b.img 0 b.img 4096\n"
    "11776 128 error\n"
    "11904 2048 linear b.img 2048\n"
)
SIZE = 13952 * 512


def _model(a_hole: Callable[[int], bool], b_hole: Callable[[int], bool]) -> Callable[[int], bool]:
    def is_hole(o: int) -> bool:
        if o < 2560 * KiB:
            return a_hole(512 * KiB + o)
        if o < 3584 * KiB:
            return True
        if o < 5888 * KiB:
            chunk, within = divmod(o - 3584 * KiB, 16 * KiB)
            row, stripe = divmod(chunk, 3)
            where = row * 16 * KiB + within
            return [a_hole(3 * MiB + where), b_hole(where), b_hole(2 * MiB + where)][stripe]
        if o < 5952 * KiB:
            return False  # error: not a known hole
        return b_hole(1 * MiB + o - 5952 * KiB)

    return is_hole


def test_qemu_img_map_shows_the_tables_holes(mnt: Mount) -> None:
    is_hole = _model(*_images(mnt))
    mnt.table("d", TABLE)
    mnt.mount()
    dev = mnt.dev("d")
    assert os.path.getsize(dev) == SIZE
    want = extents(is_hole, SIZE)
    assert sum(1 for *_, data in want if data) >= 6 and len(want) >= 12  # a model with both
    assert qemu_map(dev) == want
    # ...and the holes it reports read as zeros
    fd = os.open(dev, os.O_RDONLY)
    try:
        for start, length, data in want:
            if not data and start < 5888 * KiB:
                assert os.pread(fd, length, start) == bytes(length), start
    finally:
        os.close(fd)


def test_cp_and_tar_make_sparse_copies_with_the_same_bytes(mnt: Mount, tmp_path: Path) -> None:
    is_hole = _model(*_images(mnt))
    mnt.table("d", "".join(TABLE.splitlines(keepends=True)[:3]))  # the pieces with holes
    mnt.mount()
    dev = mnt.dev("d")
    size = os.path.getsize(dev)
    assert size == 5888 * KiB
    with open(dev, "rb") as fh:
        content = fh.read()
    data_bytes = sum(n for _, n, data in extents(is_hole, size) if data)
    assert data_bytes < size // 4
    # st_blocks says "sparse" (what makes cp and tar look for holes at all)
    assert os.stat(dev).st_blocks * 512 < size
    for mode in ("auto", "always"):
        copy = tmp_path / f"copy-{mode}"
        # --sparse=auto punches only the holes SEEK_HOLE reports: a dense copy otherwise
        run("cp", f"--sparse={mode}", dev, str(copy))
        assert copy.read_bytes() == content
        assert os.stat(copy).st_blocks * 512 <= data_bytes, mode
    archive = tmp_path / "d.tar"
    run("tar", "-S", "-C", str(mnt.mnt), "-cf", str(archive), "d")
    assert os.path.getsize(archive) < data_bytes + 64 * KiB  # holes are not stored
    out = tmp_path / "out"
    out.mkdir()
    run("tar", "-C", str(out), "-xf", str(archive))
    assert (out / "d").read_bytes() == content


def test_stacked_device_shows_the_lower_devices_holes(mnt: Mount) -> None:
    is_hole = _model(*_images(mnt))
    mnt.table("d", TABLE)
    # top: d from 1 MiB (the middle of the first linear) to its end, then d's first MiB
    mnt.table("top", "0 11904 linear /dev/mapper/d 2048\n11904 2048 linear /dev/mapper/d 0\n")
    mnt.mount()
    top = mnt.dev("top")

    def top_hole(o: int) -> bool:
        return is_hole(MiB + o) if o < 11904 * 512 else is_hole(o - 11904 * 512)

    size = os.path.getsize(top)
    assert size == SIZE
    assert qemu_map(top) == extents(top_hole, size)
    fd = os.open(top, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_HOLE) == expected_seek(top_hole, size, 0, hole=True)
    finally:
        os.close(fd)


def test_punched_range_becomes_a_hole(mnt: Mount) -> None:
    sparse_image(mnt.image("a.img", 0), 2 * MiB, [(0, 2 * MiB)])  # all data
    sparse_image(mnt.image("b.img", 0), 1 * MiB, [(0, 1 * MiB)])
    mnt.table("d", "0 2048 linear a.img 1024\n2048 2048 striped 2 32 b.img 0 b.img 1024\n")
    mnt.mount()
    dev = mnt.dev("d")
    assert qemu_map(dev) == [(0, 2 * MiB, True)]
    # a discard punches the backing file, and then the device reports the hole it left
    run("fallocate", "-p", "-o", str(256 * KiB), "-l", str(128 * KiB), dev)
    assert qemu_map(dev) == [
        (0, 256 * KiB, True),
        (256 * KiB, 128 * KiB, False),
        (384 * KiB, 2 * MiB - 384 * KiB, True),
    ]
    # the striped half: 16K chunks alternate between b@0 and b@512K; punch one chunk of each
    run("fallocate", "-p", "-o", str(MiB + 32 * KiB), "-l", str(32 * KiB), dev)
    assert qemu_map(dev)[2:] == [
        (384 * KiB, MiB - 384 * KiB + 32 * KiB, True),
        (MiB + 32 * KiB, 32 * KiB, False),
        (MiB + 64 * KiB, MiB - 64 * KiB, True),
    ]
    with open(mnt.tables / "b.img", "rb") as fh:  # where the chunks landed on b
        assert fh.read()[16 * KiB : 32 * KiB] == bytes(16 * KiB)
    fd = os.open(dev, os.O_RDONLY)
    try:
        assert os.lseek(fd, MiB, os.SEEK_HOLE) == MiB + 32 * KiB
        assert os.lseek(fd, MiB + 40 * KiB, os.SEEK_DATA) == MiB + 64 * KiB
    finally:
        os.close(fd)
