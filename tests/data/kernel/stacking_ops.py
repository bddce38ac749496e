"""Mixed unaligned reads and writes on a device, the same on the kernel and on dmfuse.

Usage: stacking_ops.py DEVICE  -- prints one line per read (length and sha256) and the sha256
of the whole device after an fsync.  On a kernel block device the I/O goes through its page
cache (buffered, so any offset works); on a dmfuse device file straight to the daemon."""

import hashlib
import os
import sys

fd = os.open(sys.argv[1], os.O_RDWR)
size = os.lseek(fd, 0, os.SEEK_END)


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


writes = [(0, 100), (4000, 5000), (size - 1, 1), (4096, 8192), (12345, 3000), (size - 700, 700)]
for i, (offset, length) in enumerate(writes):
    assert os.pwrite(fd, pattern(length, i), offset) == length
reads = [(0, 100), (3333, 7000), (size - 1, 1), (4095, 2), (0, size), (size - 5000, 6000)]
for offset, length in reads:
    data = os.pread(fd, length, offset)
    print(f"read {offset} {length}: {len(data)} {hashlib.sha256(data).hexdigest()}")
os.fsync(fd)
os.close(fd)
with open(sys.argv[1], "rb") as fh:
    print(f"device: {hashlib.sha256(fh.read()).hexdigest()}")
