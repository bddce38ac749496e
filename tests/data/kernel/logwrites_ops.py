"""The I/O sequence behind the reference log-writes logs.  Stdlib only: it runs in the kernel VM
(against /dev/mapper/NAME) and on the host (against a dmfuse device file), so both logs record
the same requests.

    python3 logwrites_ops.py compare|fua|fua-mix-a|fua-mix-b DEVICE MARK_CMD...

``MARK_CMD`` is the command that adds a mark (the mark name is appended), e.g.
``dmsetup message lw 0 mark`` or ``dmfuse -m MNT message lw 0 mark``.  Writes use O_DIRECT so
each one is exactly one request (one buffered write in fua-mix-b, whose page is written back by
its own RWF_DSYNC); a discard is BLKDISCARD on a block device and a punch-hole on a dmfuse
device file (both are one discard of the same range).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import stat
import struct
import subprocess
import sys

BLKDISCARD = 0x1277
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def fill(sector: int, nbytes: int, seed: int) -> bytes:
    """Every 512-byte sector says which sector and which write it came from."""
    out = bytearray()
    for i in range(nbytes // 512):
        out += (f"s{sector + i:06d}w{seed:02d}".encode() * 64)[:512]
    return bytes(out)


class Ops:
    def __init__(self, device: str, mark_cmd: list[str]) -> None:
        self.device = device
        self.mark_cmd = mark_cmd
        self.fd = os.open(device, os.O_RDWR | os.O_DIRECT)
        self.is_blk = stat.S_ISBLK(os.fstat(self.fd).st_mode)

    def write(
        self,
        sector: int,
        nbytes: int,
        seed: int,
        dsync: bool = False,
        rwf: int = 0,
        direct: bool = True,
    ) -> None:
        """``dsync``: through a descriptor opened O_DSYNC; ``rwf``: pwritev2 flags
        (RWF_DSYNC, RWF_SYNC); ``direct=False``: through a descriptor without O_DIRECT."""
        buf = mmap.mmap(-1, nbytes)  # page aligned, as O_DIRECT wants
        buf.write(fill(sector, nbytes, seed))
        fd = self.fd
        if dsync or not direct:  # O_DIRECT|O_DSYNC: a FUA write on a block device
            flags = os.O_RDWR | (os.O_DIRECT if direct else 0) | (os.O_DSYNC if dsync else 0)
            fd = os.open(self.device, flags)
        try:
            assert os.pwritev(fd, [buf], sector * 512, rwf) == nbytes
        finally:
            if fd != self.fd:
                os.close(fd)
            buf.close()

    def fdatasync(self) -> None:
        os.fdatasync(self.fd)

    def flush(self) -> None:
        os.fsync(self.fd)

    def discard(self, sector: int, nsectors: int) -> None:
        if self.is_blk:
            fcntl.ioctl(self.fd, BLKDISCARD, struct.pack("QQ", sector * 512, nsectors * 512))
            return
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if libc.fallocate(self.fd, mode, sector * 512, nsectors * 512) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def mark(self, name: str) -> None:
        subprocess.run([*self.mark_cmd, name], check=True)


def compare(ops: Ops) -> None:
    """Writes, flushes, marks, a discard and a write left unflushed at remove time."""
    ops.write(24, 4096, 1)
    ops.write(64, 8192, 2)
    ops.flush()
    ops.mark("first_mark")
    ops.write(256, 65536, 3)
    ops.discard(272, 8)
    ops.write(1000, 512, 4)
    ops.flush()
    ops.mark("second")
    ops.write(1500, 4096, 5)  # never flushed: logged only when the target is destroyed


def fua(ops: Ops) -> None:
    """A FUA write between plain writes (the kernel logs it at once, before them)."""
    ops.write(8, 4096, 6)
    ops.write(16, 4096, 7, dsync=True)
    ops.write(32, 4096, 8)
    ops.flush()


def fua_mix_a(ops: Ops) -> None:
    """Plain and RWF_DSYNC writes (O_DIRECT): each RWF_DSYNC write is a FUA write, logged at
    once, and the flush after it (generic_write_sync) logs the plain writes before it."""
    ops.write(8, 4096, 10)
    ops.write(16, 4096, 11, rwf=os.RWF_DSYNC)
    ops.write(32, 4096, 12)
    ops.write(40, 4096, 13)
    ops.write(48, 4096, 14, rwf=os.RWF_DSYNC)


def fua_mix_b(ops: Ops) -> None:
    """An O_DSYNC descriptor, RWF_SYNC, a buffered RWF_DSYNC write (no FUA: the page is
    written back, then flushed), a plain write made durable by fdatasync, one left unflushed."""
    ops.write(64, 4096, 15, dsync=True)
    ops.write(72, 4096, 16, rwf=os.RWF_SYNC)
    ops.write(80, 4096, 17, rwf=os.RWF_DSYNC, direct=False)
    ops.write(96, 8192, 18)
    ops.fdatasync()
    ops.write(128, 4096, 19)  # logged only when the target is destroyed


SEQUENCES = {"compare": compare, "fua": fua, "fua-mix-a": fua_mix_a, "fua-mix-b": fua_mix_b}

if __name__ == "__main__":
    which, device, *cmd = sys.argv[1:]
    SEQUENCES[which](Ops(device, cmd))
