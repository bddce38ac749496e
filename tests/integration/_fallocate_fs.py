"""A minimal pyfuse3 filesystem for tests/integration/test_pyfuse3_patch.py.

Run as ``python _fallocate_fs.py MOUNTPOINT LOGFILE [--defaults] [--direct-io]``. The root
directory holds one regular file, ``file``, of 1 MiB kept in a bytearray. Every fallocate,
lseek, write and fsync call the filesystem receives is appended to LOGFILE as one JSON line,
and implemented: punch hole and zero range write zeros, punch hole also records a hole, and
SEEK_DATA/SEEK_HOLE answer from that hole map (with the implicit hole at end of file).  It sets
``enable_write_flags``, so every write is logged with its open flags.

With ``--defaults`` the filesystem does not override ``fallocate``, ``lseek`` or ``fsync`` and
does not set ``enable_write_flags``: pyfuse3's default implementations (raising ENOSYS) answer, the
kernel falls back, and ``write`` is called with three arguments as before (logged without
flags).  With ``--direct-io`` the file is opened with ``direct_io`` (no page cache).

The process stays in the foreground and exits when the filesystem is unmounted.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys

import pyfuse3
import trio

FILE_NAME = b"file"
FILE_INODE = pyfuse3.ROOT_INODE + 1
FILE_SIZE = 1 << 20
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


def initial_data() -> bytearray:
    """Non-zero everywhere, so zeros written by fallocate show."""
    return bytearray((i % 251) + 1 for i in range(FILE_SIZE))


class Holes:
    """Sorted, disjoint, non-adjacent [start, end) byte ranges that are holes."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []

    def _without(self, start: int, end: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for s, e in self.ranges:
            if e <= start or s >= end:
                out.append((s, e))
                continue
            if s < start:
                out.append((s, start))
            if e > end:
                out.append((end, e))
        return out

    def add(self, start: int, end: int) -> None:
        merged = [*self._without(start, end), (start, end)]
        merged.sort()
        self.ranges = []
        for s, e in merged:
            if self.ranges and self.ranges[-1][1] >= s:
                self.ranges[-1] = (self.ranges[-1][0], max(self.ranges[-1][1], e))
            else:
                self.ranges.append((s, e))

    def remove(self, start: int, end: int) -> None:
        self.ranges = self._without(start, end)

    def seek_data(self, offset: int, size: int) -> int:
        if offset >= size:
            raise pyfuse3.FUSEError(errno.ENXIO)
        for s, e in self.ranges:
            if s <= offset < e:
                if e >= size:
                    raise pyfuse3.FUSEError(errno.ENXIO)
                return e
        return offset

    def seek_hole(self, offset: int, size: int) -> int:
        if offset >= size:
            raise pyfuse3.FUSEError(errno.ENXIO)
        for s, e in self.ranges:
            if e > offset:
                return max(s, offset)
        return size


class DefaultsFs(pyfuse3.Operations):
    """One 1 MiB file; fallocate and lseek are left to pyfuse3's defaults."""

    def __init__(self, log_path: str, direct_io: bool = False) -> None:
        super().__init__()
        self.log_path = log_path
        self.direct_io = direct_io
        self.data = initial_data()
        self.holes = Holes()

    def log(self, **fields: int | str) -> None:
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(fields) + "\n")

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
            attr.st_size = 0
        elif inode == FILE_INODE:
            attr.st_mode = stat.S_IFREG | 0o644
            attr.st_nlink = 1
            attr.st_size = len(self.data)
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr.st_uid = os.getuid()
        attr.st_gid = os.getgid()
        attr.st_blksize = 4096
        attr.st_blocks = (attr.st_size + 511) // 512
        attr.entry_timeout = 0
        attr.attr_timeout = 0
        return attr

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != FILE_NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(FILE_INODE)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, FILE_NAME, self._attrs(FILE_INODE), 1)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode != FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, direct_io=self.direct_io)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return bytes(self.data[off : off + size])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self.log(op="write", offset=off, length=len(buf))
        return self._store(off, buf)

    def _store(self, off: int, buf: bytes) -> int:
        end = off + len(buf)
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[off:end] = buf
        self.holes.remove(off, end)
        return len(buf)


class HandlersFs(DefaultsFs):
    """The same file with fallocate and lseek implemented (and logged), and write flags."""

    enable_write_flags = True

    async def write(self, fh: int, off: int, buf: bytes, flags: int | None = None) -> int:
        # None (never sent with enable_write_flags) shows a pyfuse3 that ignores the attribute
        self.log(op="write", offset=off, length=len(buf), flags=-1 if flags is None else flags)
        return self._store(off, buf)

    async def fsync(self, fh: int, datasync: bool) -> None:
        self.log(op="fsync", datasync=int(datasync))

    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        self.log(op="fallocate", fh=fh, mode=mode, offset=offset, length=length)
        end = offset + length
        if mode & FALLOC_FL_PUNCH_HOLE:  # the kernel only sends it with KEEP_SIZE
            end = min(end, len(self.data))
            self.data[offset:end] = bytes(max(0, end - offset))
            self.holes.add(offset, end)
        elif mode & FALLOC_FL_ZERO_RANGE:
            if end > len(self.data) and not mode & FALLOC_FL_KEEP_SIZE:
                self.data.extend(bytes(end - len(self.data)))
            end = min(end, len(self.data))
            self.data[offset:end] = bytes(max(0, end - offset))
            self.holes.remove(offset, end)
        elif mode & ~FALLOC_FL_KEEP_SIZE:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        else:  # plain allocation: everything in memory is allocated already
            if end > len(self.data) and not mode & FALLOC_FL_KEEP_SIZE:
                self.data.extend(bytes(end - len(self.data)))
            self.holes.remove(offset, end)

    async def lseek(self, fh: int, offset: int, whence: int) -> int:
        self.log(op="lseek", fh=fh, offset=offset, whence=whence)
        if whence == os.SEEK_DATA:
            return self.holes.seek_data(offset, len(self.data))
        if whence == os.SEEK_HOLE:
            return self.holes.seek_hole(offset, len(self.data))
        raise pyfuse3.FUSEError(errno.EINVAL)


def main() -> None:
    args = sys.argv[1:]
    defaults = "--defaults" in args
    direct_io = "--direct-io" in args
    mountpoint, log_path = (a for a in args if not a.startswith("--"))
    ops = (DefaultsFs if defaults else HandlersFs)(log_path, direct_io)
    options = set(pyfuse3.default_options)
    options.add("fsname=pyfuse3-patch-test")
    pyfuse3.init(ops, mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    except BaseException:
        pyfuse3.close(unmount=False)
        raise
    pyfuse3.close()


if __name__ == "__main__":
    main()
