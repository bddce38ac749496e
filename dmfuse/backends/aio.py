"""Linux native AIO (``io_submit``) for ``O_DIRECT`` backends, completions through an eventfd.

A direct read or write waits for the disk.  Done inline, it would hold the trio thread (and
every other request) for that long, so deep queues would run one request at a time; handing
it to a worker thread costs more than the disk takes here (measured, see
:mod:`dmfuse.backends.direct`).  Native AIO on an ``O_DIRECT`` file is really asynchronous:
the request is submitted from the trio thread (one system call), the task waits, and the
kernel signals the eventfd given in the ``iocb`` when it is done.  One system task per trio run
owns the AIO context, drains completions (``io_getevents`` with no wait) and wakes the tasks,
as :mod:`dmfuse.openssl.offload` does for crypt's jobs, and qemu does with ``aio=native``.

Only the ``x86_64`` and ``aarch64`` system call numbers are known; elsewhere, or if
``io_setup`` fails (``/proc/sys/fs/aio-max-nr`` used up), :func:`context` returns None and
callers do the I/O inline; so does ``DMFUSE_NO_AIO=1`` in the daemon's environment (for
measuring one against the other).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import platform

import trio

log = logging.getLogger(__name__)

DEPTH = 128  # requests in flight per context; more wait for a slot
IOCB_CMD_PREAD = 0
IOCB_CMD_PWRITE = 1
IOCB_FLAG_RESFD = 1
_SYSCALLS = {  # io_setup, io_destroy, io_getevents, io_submit
    "x86_64": (206, 207, 208, 209),
    "aarch64": (0, 1, 4, 2),
}

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _Iocb(ctypes.Structure):
    _fields_ = [  # struct iocb (little-endian layout: aio_key before aio_rw_flags)
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _IoEvent(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _syscall(number: int, *args: object) -> int:
    ret = int(_libc.syscall(number, *args))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


class _Slot:
    """One iocb and the task waiting for it."""

    __slots__ = ("done", "iocb", "pointer", "result")

    def __init__(self, index: int) -> None:
        self.iocb = _Iocb()
        self.iocb.aio_data = index
        self.iocb.aio_flags = IOCB_FLAG_RESFD
        self.pointer = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(self.iocb))
        self.done = trio.Event()
        self.result = 0


class AioContext:
    """An AIO context with ``DEPTH`` slots, owned by one trio run."""

    def __init__(self, numbers: tuple[int, int, int, int]) -> None:
        self._setup, self._destroy, self._getevents, self._submit = numbers
        self.ctx = ctypes.c_ulong(0)
        _syscall(self._setup, DEPTH, ctypes.byref(self.ctx))
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._slots = [_Slot(i) for i in range(DEPTH)]
        for slot in self._slots:
            slot.iocb.aio_resfd = self.efd
        self._free = list(range(DEPTH))
        self._slots_left = trio.Semaphore(DEPTH)
        self._events = (_IoEvent * DEPTH)()
        self._no_wait = _Timespec(0, 0)
        self.inflight = 0

    async def pread(self, fd: int, address: int, length: int, offset: int) -> int:
        return await self._run(IOCB_CMD_PREAD, fd, address, length, offset)

    async def pwrite(self, fd: int, address: int, length: int, offset: int) -> int:
        return await self._run(IOCB_CMD_PWRITE, fd, address, length, offset)

    async def _run(self, opcode: int, fd: int, address: int, length: int, offset: int) -> int:
        """Submit one request and wait for its result (bytes done).  Not cancellable: the
        kernel uses the caller's buffer until it completes."""
        with trio.CancelScope(shield=True):
            try:
                self._slots_left.acquire_nowait()
            except trio.WouldBlock:
                await self._slots_left.acquire()
            index = self._free.pop()
            slot = self._slots[index]
            iocb = slot.iocb
            iocb.aio_lio_opcode = opcode
            iocb.aio_fildes = fd
            iocb.aio_buf = address
            iocb.aio_nbytes = length
            iocb.aio_offset = offset
            slot.done = trio.Event()
            try:
                _syscall(self._submit, self.ctx, 1, slot.pointer)
            except BaseException:
                self._release(index)
                raise
            self.inflight += 1
            await slot.done.wait()
            result = slot.result
            self._release(index)
        if result < 0:
            raise OSError(-result, os.strerror(-result))
        return result

    def _release(self, index: int) -> None:
        self._free.append(index)
        self._slots_left.release()

    async def serve(self) -> None:
        """Wake the tasks whose requests completed; on exit wait for all and free the context."""
        try:
            while True:
                await trio.lowlevel.wait_readable(self.efd)
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self.efd)
                self._reap(0)
        finally:
            while self.inflight:  # the kernel still writes into buffers: wait for it
                self._reap(1)
            _syscall(self._destroy, self.ctx)
            os.close(self.efd)

    def _reap(self, at_least: int) -> None:
        while True:
            timeout = None if at_least else ctypes.byref(self._no_wait)
            got = _syscall(
                self._getevents, self.ctx, at_least, DEPTH, ctypes.byref(self._events), timeout
            )
            for event in self._events[:got]:
                slot = self._slots[event.data]
                slot.result = event.res
                slot.done.set()
            self.inflight -= got
            if got < DEPTH or not self.inflight:
                return
            at_least = 0


_CONTEXT: trio.lowlevel.RunVar[AioContext | None] = trio.lowlevel.RunVar("dmfuse_aio")


def context() -> AioContext | None:
    """This trio run's AIO context (made at first use), or None where there is no AIO."""
    try:
        return _CONTEXT.get()
    except LookupError:
        pass
    numbers = _SYSCALLS.get(platform.machine())
    aio = None
    if numbers is not None and os.environ.get("DMFUSE_NO_AIO") != "1":
        try:
            aio = AioContext(numbers)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ENOSYS, errno.EPERM):
                raise
            log.warning("no native AIO (%s): direct I/O runs inline", exc.strerror)
    _CONTEXT.set(aio)
    if aio is not None:
        trio.lowlevel.spawn_system_task(aio.serve, name="dmfuse aio completions")
    return aio
