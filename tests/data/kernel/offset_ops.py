"""Data and I/O for the table lines that do not start at sector 0 (offset_vm.sh).  Stdlib only:
it runs in the kernel VM against /dev/mapper/NAME, and tests/unit/test_device_sectors.py imports
``sectors`` to issue the same writes through dmfuse's engine.

    python3 offset_ops.py fill DEVICE SEED NSECTORS     buffered, then fsync
    python3 offset_ops.py write DEVICE SECTOR NSECTORS SEED   one O_DIRECT write
    python3 offset_ops.py fsync DEVICE
"""

from __future__ import annotations

import mmap
import os
import struct
import sys


def sectors(seed: int, first: int, count: int) -> bytes:
    """``count`` sectors from sector ``first``: one 8-byte value repeated per sector, naming the
    sector and the seed, so every sector of every write is distinct."""
    return b"".join(
        struct.pack("<Q", (s * 2654435761 + seed * 0x9E3779B97F4A7C15) & (2**64 - 1)) * 64
        for s in range(first, first + count)
    )


def main(argv: list[str]) -> None:
    op, device, *rest = argv
    if op == "fill":
        seed, count = int(rest[0]), int(rest[1])
        fd = os.open(device, os.O_WRONLY)
        try:
            os.pwrite(fd, sectors(seed, 0, count), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
    elif op == "write":
        sector, count, seed = (int(word) for word in rest)
        buf = mmap.mmap(-1, count * 512)  # page aligned, as O_DIRECT wants
        buf.write(sectors(seed, sector, count))
        fd = os.open(device, os.O_WRONLY | os.O_DIRECT)
        try:
            assert os.pwritev(fd, [buf], sector * 512) == count * 512
        finally:
            os.close(fd)
            buf.close()
    elif op == "fsync":
        fd = os.open(device, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    else:
        raise SystemExit(f"unknown op {op}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except OSError as exc:
        raise SystemExit(f"{sys.argv[1]}: {exc.strerror}") from None
