"""pyfuse3 glue: one flat directory whose regular files are the mapped devices.  EDGE.

Only translation happens here: kernel requests become engine calls, :class:`DmError` and
``OSError`` become ``FUSEError`` with the same errno, anything else is logged and answered EIO
(an exception escaping a handler would kill pyfuse3's main loop and the mount with it).

Device files are opened with ``direct_io``: a mapped device's data can change under the kernel
(table swaps, suspend), so the page cache belongs to whoever sits on top (a loop device, a
filesystem), not to us.  Attributes and names are never cached (timeouts 0), so a resize is
visible to ``stat`` at once; the inode is also invalidated on resize for good measure.
``fsync`` is a dm flush; ``flush`` (close) is not.  ``fallocate`` PUNCH_HOLE|KEEP_SIZE is a
discard that must leave zeros, ZERO_RANGE is write-zeroes; ``lseek`` SEEK_DATA/SEEK_HOLE
report the holes the live table knows of (:meth:`Device.seek`) and ``st_blocks`` estimates its
data (:meth:`Device.allocated`), which ``cp`` and ``tar -S`` check before asking for holes;
fallocate and lseek need the pyfuse3 patch in ``patches/``.

A synchronous write (``O_DSYNC``/``O_SYNC`` in the write's flags: ``pwritev2`` with
``RWF_DSYNC``/``RWF_SYNC``, or a descriptor opened so) is done as the kernel's block device file
does it: the write, as a FUA write (REQ_FUA) when the descriptor is ``O_DIRECT``, then a dm flush
(``generic_write_sync`` -> ``blkdev_fsync``).  On a ``direct_io`` file the kernel sends no fsync
after such a write, so the per-write flags (pyfuse3 patch 0003, ``enable_write_flags``) are
the only sign of it.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import select
import stat
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3

from dmfuse.engine.device import Device
from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError

log = logging.getLogger(__name__)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_DATA = 3
SEEK_HOLE = 4
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR
_O_DSYNC = os.O_DSYNC  # also set in O_SYNC (__O_SYNC | O_DSYNC)
_O_DIRECT = os.O_DIRECT


def _fuse_error(exc: BaseException) -> pyfuse3.FUSEError:
    if isinstance(exc, pyfuse3.FUSEError):
        return exc
    if isinstance(exc, DmError):
        return pyfuse3.FUSEError(exc.errno)
    if isinstance(exc, OSError) and exc.errno:
        return pyfuse3.FUSEError(exc.errno)
    log.error("unexpected error in a FUSE handler", exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


def waiting_requests_probe() -> Callable[[], bool] | None:
    """After ``pyfuse3.init``: a function telling whether FUSE requests are waiting to be
    received (a zero-timeout poll of the session fd), for :mod:`dmfuse.openssl.offload`.  pyfuse3
    does not expose the fd; it is the process's one open ``/dev/fuse`` (None if not exactly
    one is found)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.append(int(name))
        except OSError:  # the listing's own fd, already closed
            continue
    if len(found) != 1:
        return None
    poller = select.poll()
    poller.register(found[0], select.POLLIN)
    return lambda: any(events & select.POLLIN for _, events in poller.poll(0))


_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])


def _guarded(handler: _Handler) -> _Handler:
    """Answer any exception with its errno (EIO if it has none) instead of letting it escape:
    an exception other than FUSEError would end pyfuse3's main loop and the mount with it."""

    @functools.wraps(handler)
    async def run(*args: Any) -> Any:
        try:
            return await handler(*args)
        except Exception as exc:
            raise _fuse_error(exc) from None

    return run  # type: ignore[return-value]


class DeviceFiles(pyfuse3.Operations):
    """The mount's directory.  Also the manager's listener for name and size changes."""

    enable_writeback_cache = False
    enable_write_flags = True  # write() gets each write's open flags (pyfuse3 patch 0003)

    def __init__(self, manager: Manager) -> None:
        super().__init__()
        self.manager = manager
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.started = time.time_ns()
        self._inodes: dict[int, Device] = {}
        self._inode_of: dict[int, int] = {}  # id(device) -> inode
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self._handles: dict[int, Device] = {}
        self._next_fh = 1
        self.mounted = False

    # -- listener ----------------------------------------------------------------------------
    def device_added(self, device: Device) -> None:
        inode = self._next_inode
        self._next_inode += 1
        self._inodes[inode] = device
        self._inode_of[id(device)] = inode

    def device_removed(self, device: Device) -> None:
        inode = self._inode_of.pop(id(device), None)
        if inode is not None:
            del self._inodes[inode]
            self._invalidate_entry(device.name)

    def device_renamed(self, device: Device, old_name: str) -> None:
        self._invalidate_entry(old_name)

    def device_resized(self, device: Device) -> None:
        inode = self._inode_of.get(id(device))
        if inode is not None and self.mounted:
            try:
                pyfuse3.invalidate_inode(inode, attr_only=True)
            except OSError as exc:  # ENOENT: the kernel does not know the inode yet
                log.debug("invalidate_inode(%d): %s", inode, exc)

    def _invalidate_entry(self, name: str) -> None:
        if self.mounted:
            pyfuse3.invalidate_entry_async(pyfuse3.ROOT_INODE, name.encode(), ignore_enoent=True)

    # -- attributes --------------------------------------------------------------------------
    def _attr(self, inode: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self.started
        attr.attr_timeout = 0
        attr.entry_timeout = 0
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
            return attr
        device = self._device(inode)
        attr.st_mode = stat.S_IFREG | (0o400 if device.readonly else 0o600)
        attr.st_nlink = 1
        attr.st_size = device.size
        attr.st_blksize = max(4096, device.logical_block_size)
        attr.st_blocks = -(-device.allocated() // 512)  # fewer than size/512: has holes
        return attr

    def _device(self, inode: int) -> Device:
        device = self._inodes.get(inode)
        if device is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return device

    @_guarded
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    @_guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        if parent_inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if name in (b".", b".."):
            return self._attr(pyfuse3.ROOT_INODE)
        device = self.manager.devices.get(os.fsdecode(name))
        if device is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self._inode_of[id(device)])

    @_guarded
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        if fields.update_size:
            raise pyfuse3.FUSEError(errno.EPERM)  # a device's size is its table's
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._attr(inode)  # times: accepted and ignored, like a block device node

    @_guarded
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        # The loop driver enables discard on a backing file only if statfs works on it.
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        total = sum(d.size for d in self.manager.devices.values()) // 4096
        data.f_blocks = total
        data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.manager.devices) + 1
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 127
        return data

    # -- directory ---------------------------------------------------------------------------
    @_guarded
    async def opendir(self, inode: int, ctx: Any) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = sorted((self._inode_of[id(d)], d.name) for d in self.manager.devices.values())
        for inode, name in entries:
            if inode <= start_id:
                continue
            if not pyfuse3.readdir_reply(token, name.encode(), self._attr(inode), inode):
                break

    @_guarded
    async def releasedir(self, fh: int) -> None:
        return None

    # -- the namespace is read-only ------------------------------------------------------------
    # Names come and go with ``dmfuse create/remove/rename`` only.  Creating, linking, removing
    # or renaming a name here answers EACCES, as a directory without write permission does
    # (ENOSYS, the default, would make the kernel fall back to mknod and read as "not
    # implemented").
    @_guarded
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EACCES)

    @_guarded
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EACCES)

    @_guarded
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EACCES)

    @_guarded
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EACCES)

    @_guarded
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EACCES)

    @_guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.EACCES)

    @_guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.EACCES)

    @_guarded
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        raise pyfuse3.FUSEError(errno.EACCES)

    # -- files -------------------------------------------------------------------------------
    @_guarded
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        device = self._device(inode)
        if flags & _WRITE_FLAGS and device.readonly:
            raise pyfuse3.FUSEError(errno.EROFS)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = device
        device.open_count += 1
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False, nonseekable=False)

    @_guarded
    async def release(self, fh: int) -> None:
        device = self._handles.pop(fh, None)
        if device is None:
            return
        device.open_count -= 1
        try:
            await self.manager.closed(device)
        except Exception:
            log.exception("deferred remove of %s failed", device.name)

    async def flush(self, fh: int) -> None:
        return None  # close(2) is not a dm flush

    # read, write and fsync run per request: they catch inline rather than through @_guarded,
    # which would add a coroutine frame to every request.
    # pyfuse3 replies from any buffer: a bytearray (or an aligned view) saves copying into bytes.
    async def read(self, fh: int, off: int, size: int) -> bytearray | memoryview:  # type: ignore[override]
        try:
            return await self._handles[fh].read(off, size)
        except Exception as exc:
            raise _fuse_error(exc) from None

    async def write(self, fh: int, off: int, buf: bytes, flags: int = 0) -> int:
        try:
            if flags & _O_DSYNC:
                return await self._sync_write(self._handles[fh], off, memoryview(buf), flags)
            return await self._handles[fh].write(off, memoryview(buf))
        except Exception as exc:
            raise _fuse_error(exc) from None

    async def _sync_write(self, device: Device, off: int, data: memoryview, flags: int) -> int:
        """O_DSYNC/O_SYNC, as on a block device: blkdev_direct_write makes an O_DIRECT write
        REQ_FUA, and generic_write_sync flushes after it, O_DIRECT or not.  A file backend
        syncs once: the FUA write is durable by itself, and the flush then finds nothing
        left to sync there (FileBackend skips it)."""
        written = await device.write(off, data, fua=bool(flags & _O_DIRECT))
        await device.flush(datasync=flags & os.O_SYNC != os.O_SYNC)  # O_SYNC has O_DSYNC's bit
        return written

    async def fsync(self, fh: int, datasync: bool) -> None:
        try:
            await self._handles[fh].flush(datasync=bool(datasync))
        except Exception as exc:
            raise _fuse_error(exc) from None

    @_guarded
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        device = self._handles[fh]
        if mode & FALLOC_FL_PUNCH_HOLE:
            if not mode & FALLOC_FL_KEEP_SIZE:
                raise pyfuse3.FUSEError(errno.EINVAL)
            await device.discard(offset, length)
        elif mode & FALLOC_FL_ZERO_RANGE:
            await device.discard(offset, length, zero_fill=True)
        else:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)  # a block device cannot allocate

    @_guarded
    async def lseek(self, fh: int, offset: int, whence: int) -> int:
        # As lseek(2) on a regular file: the table says where its holes are (zero targets,
        # holes of sparse backing files); EOF counts as a hole; ENXIO at or past the end, and
        # for SEEK_DATA when only holes follow.
        if whence not in (SEEK_DATA, SEEK_HOLE):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if offset < 0:
            raise pyfuse3.FUSEError(errno.ENXIO)
        found, size = await self._handles[fh].seek(offset, hole=whence == SEEK_HOLE)
        if offset >= size or (found >= size and whence == SEEK_DATA):
            raise pyfuse3.FUSEError(errno.ENXIO)
        return found
