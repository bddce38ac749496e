"""Sparse backing images with known data extents, and the lseek answers a model expects."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from tests.conftest import pattern

# ext4/tmpfs allocate in 4 KiB blocks: extents and table pieces in tests are multiples of it.
BLOCK = 4096


def sparse_image(path: str, size: int, extents: Sequence[tuple[int, int]], seed: int = 0) -> str:
    """A file of ``size`` bytes that is a hole except ``extents`` ``(offset, length)``,
    which hold ``pattern`` bytes (never a zero block, so a data block never reads as zeros)."""
    with open(path, "wb") as fh:
        fh.truncate(size)
        for offset, length in extents:
            fh.seek(offset)
            fh.write(pattern(offset, length, seed))
    return path


def file_holes(path: str) -> Callable[[int], bool]:
    """Whether byte ``o`` of ``path`` is in a hole, as its filesystem says (the ground truth
    a model of the device is built from)."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        runs: list[tuple[int, int]] = []  # data runs
        at = 0
        while at < size:
            try:
                start = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            runs.append((start, end))
            at = end
    finally:
        os.close(fd)

    def is_hole(offset: int) -> bool:
        return not any(start <= offset < end for start, end in runs)

    return is_hole


def expected_seek(is_hole: Callable[[int], bool], size: int, offset: int, *, hole: bool) -> int:
    """lseek SEEK_DATA/SEEK_HOLE from ``offset`` on a device whose block-granular hole map is
    ``is_hole`` (checked per block): ``size`` when none (for SEEK_DATA the caller makes
    that ENXIO)."""
    at = offset
    while at < size:
        if is_hole(at) == hole:
            return at
        at = (at // BLOCK + 1) * BLOCK
    return size


def extents(is_hole: Callable[[int], bool], size: int) -> list[tuple[int, int, bool]]:
    """``(start, length, data)`` runs of a hole map, as ``qemu-img map`` merges them."""
    runs: list[tuple[int, int, bool]] = []
    for at in range(0, size, BLOCK):
        data = not is_hole(at)
        if runs and runs[-1][2] == data:
            start, length, _ = runs[-1]
            runs[-1] = (start, length + BLOCK, data)
        else:
            runs.append((at, BLOCK, data))
    return runs
