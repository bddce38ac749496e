"""Resolving the device arguments of a table line to opened, shared backends.

A device argument is one of (dm-spec §1.5 and the project's stacking rule):
* ``/dev/mapper/NAME`` or ``MOUNTPOINT/NAME`` — another device of this mount, in process;
* ``253:MINOR`` — the same, by the number ``ls`` shows;
* ``MAJOR:MINOR`` — a block device of the host (found through ``/sys/dev/block``);
* a path to a regular file or block device; relative paths resolve against the caller's
  directory (the table directory for table files, the client's cwd for the CLI).  A path that
  lands in this mount by any other way (relative, ``..``, symlinks, bind mounts) is the
  in-process device too, found without a system call into the mount (:mod:`.ownpath`).
The same file used twice (in one table or several) with the same cache policy is opened once and
reference counted, so a flush syncs it once; under two policies (``cache=none`` in one table
file's header only) it is opened once per policy (:mod:`dmfuse.backends.direct`).
Opening a table that would stack a device on itself is refused.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path

from dmfuse.backends.base import Backend
from dmfuse.backends.claim import release_claim
from dmfuse.backends.direct import DirectFileBackend
from dmfuse.backends.file import FileBackend, blocking
from dmfuse.backends.mapped import MAPPED_MAJOR, MappedBackend
from dmfuse.engine.device import Device
from dmfuse.engine.ownpath import own_device_name, own_mount_points
from dmfuse.errors import TableError
from dmfuse.mount_options import DEFAULT_CACHE

_DEVNO = re.compile(r"([0-9]+):([0-9]+)\Z")


class BackendPool:
    """The mount's opened files, shared between tables (key: inode, access mode, cache policy)."""

    def __init__(self) -> None:
        self._files: dict[tuple[int, int, bool, str], FileBackend] = {}
        self._keys: dict[int, tuple[int, int, bool, str]] = {}  # id(backend) -> its key above

    async def open_file(
        self, path: str, display: str, writable: bool, cache: str = DEFAULT_CACHE
    ) -> FileBackend:
        try:
            st = await blocking(os.stat, path)
        except OSError as exc:
            raise TableError(
                f"Device lookup failed: {display}: {exc.strerror}", exc.errno
            ) from None
        _check_kind(st, display)
        key = (st.st_dev, st.st_ino, writable, cache)
        backend = self._files.get(key)
        if backend is None:
            opened = DirectFileBackend if cache == "none" else FileBackend
            try:
                backend = await blocking(
                    functools.partial(opened, path, display, writable=writable)
                )
            except OSError as exc:
                raise TableError(
                    f"Device lookup failed: {display}: {exc.strerror}", exc.errno
                ) from None
            other = self._files.get(key)  # opened by another table while we waited
            if other is not None:
                await backend.close()
                backend = other
            else:
                self._files[key] = backend
                self._keys[id(backend)] = key
        backend.refs += 1
        return backend

    async def release(self, backend: Backend) -> None:
        backend.refs -= 1
        if backend.refs > 0:
            return
        key = self._keys.pop(id(backend), None)
        if key is not None:
            del self._files[key]
        release_claim(backend)
        await backend.close()


def _check_kind(st: os.stat_result, display: str) -> None:
    """Only files and block devices: opening a FIFO read-only would wait for a writer for good,
    and the kernel's lookup_bdev refuses anything but a block device (ENOTBLK)."""
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise TableError(
            f"Device lookup failed: {display}: not a block device or regular file", errno.ENOTBLK
        )


class TableOpener:
    """The :class:`DeviceOpener` handed to constructors while one table is built."""

    def __init__(
        self,
        pool: BackendPool,
        *,
        owner: str,
        readonly: bool,
        cache: str = DEFAULT_CACHE,
        cwd: str,
        mountpoint: str,
        lookup: Callable[[str], Device | None],
        by_minor: Callable[[int], Device | None],
    ) -> None:
        self.pool = pool
        self.owner = owner
        self.readonly = readonly
        self.cache = cache
        self.cwd = cwd
        self.mountpoint = mountpoint.rstrip("/")
        self._lookup = lookup
        self._by_minor = by_minor
        self.opened: list[Backend] = []
        self._by_path: dict[str, Backend] = {}  # files this table opened, by resolved path
        self._own_mount_points: dict[str, str] | None = None  # read once per table, if needed
        self._landing: dict[str, str | None] = {}  # path -> the own device it reaches

    async def open(self, spec: str) -> Backend:
        device = self._mapped_device(spec)
        if device is not None:
            _check_cycle(self.owner, device)
            backend: Backend = MappedBackend(device, spec)
            backend.refs = 1
        else:
            path = self._host_path(spec)
            # A file prints as its absolute path so ``table`` output loads from any directory.
            opened = self._by_path.get(path)
            if opened is not None:  # named again in this table: no stat (a thread hop) again
                opened.refs += 1
                backend = opened
            else:
                backend = await self.pool.open_file(path, path, not self.readonly, self.cache)
                self._by_path[path] = backend
        self.opened.append(backend)
        return backend

    def _mapped_device(self, spec: str) -> Device | None:
        name = None
        if spec.startswith("/dev/mapper/"):
            name = spec[len("/dev/mapper/") :]
        elif self.mountpoint and spec.startswith(self.mountpoint + "/"):
            name = spec[len(self.mountpoint) + 1 :]
        elif (m := _DEVNO.match(spec)) and int(m.group(1)) == MAPPED_MAJOR:
            device = self._by_minor(int(m.group(2)))
            if device is None:
                raise TableError(f"Device lookup failed: {spec}: no such dmfuse device")
            return device
        elif not _DEVNO.match(spec):
            name = self._own_device_name(os.path.normpath(os.path.join(self.cwd, spec)), spec)
        if name is None:
            return None
        device = self._lookup(name)
        if device is None:
            raise TableError(f"Device lookup failed: {spec}: no such dmfuse device")
        return device

    def _own_device_name(self, path: str, spec: str) -> str | None:
        if not self.mountpoint:
            return None
        if path not in self._landing:
            if self._own_mount_points is None:
                self._own_mount_points = own_mount_points(self.mountpoint)
            self._landing[path] = own_device_name(path, self._own_mount_points, spec)
        return self._landing[path]

    def _host_path(self, spec: str) -> str:
        m = _DEVNO.match(spec)
        if m:
            link = Path(f"/sys/dev/block/{spec}")
            if not link.exists():
                raise TableError(f"Device lookup failed: {spec}: no such block device")
            return "/dev/" + link.resolve().name
        return os.path.normpath(os.path.join(self.cwd, spec))

    async def abandon(self) -> None:
        """Release everything opened so far (a constructor failed)."""
        for backend in self.opened:
            await self.pool.release(backend)
        self.opened = []


def check_no_cycle(owner: str, backends: list[Backend]) -> None:
    """Refuse a table for ``owner`` whose backends stack (directly or below) on ``owner``.

    Checked when each device is opened and again just before the table is installed: two
    tables built at the same time could otherwise each pass while stacking on the other."""
    for backend in backends:
        if isinstance(backend, MappedBackend):
            _check_cycle(owner, backend.device)


def _check_cycle(owner: str, device: Device) -> None:
    seen: set[str] = set()
    stack = [device]
    while stack:
        dev = stack.pop()
        if dev.name == owner:
            raise TableError(f"{device.name}: stacking would create a cycle through {owner}")
        if dev.name in seen:
            continue
        seen.add(dev.name)
        for table in (dev.live, dev.inactive):
            if table is None:
                continue
            for backend in table.distinct_backends():
                if isinstance(backend, MappedBackend):
                    stack.append(backend.device)
