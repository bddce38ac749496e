"""The one place an errno is chosen.

Every failure the engine reports is a :class:`DmError` carrying the errno the kernel's dm would
return for the same mistake, plus a one-line human message.  The edges translate: the FUSE layer
turns it into ``FUSEError(errno)``, the control server into ``{"errno": ..., "error": ...}`` and the
CLI into ``dmfuse: <command> <name> failed: <message>`` with exit status 1.
"""

from __future__ import annotations

import errno as _errno
import os


class DmError(Exception):
    """A failed dm operation: ``errno`` says what kind, ``str(self)`` says what exactly."""

    errno: int = _errno.EIO

    def __init__(self, message: str, err: int | None = None) -> None:
        super().__init__(message)
        if err is not None:
            self.errno = err

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else os.strerror(self.errno)


class TableError(DmError):
    """A table line or target argument the kernel would refuse (EINVAL, like ``ti->error``)."""

    errno = _errno.EINVAL


class InvalidArgument(DmError):
    """A command that is wrong for the device's state or arguments (EINVAL)."""

    errno = _errno.EINVAL


class NoSuchDevice(DmError):
    """Unknown device name or uuid (ENXIO, as dm-ioctl)."""

    errno = _errno.ENXIO


class DeviceBusy(DmError):
    """Name/uuid in use, or the device is open (EBUSY)."""

    errno = _errno.EBUSY


class ReadOnlyDevice(DmError):
    """Write to a read-only device (EROFS)."""

    errno = _errno.EROFS


class NotSupported(DmError):
    """An operation some target of the table cannot do (EOPNOTSUPP)."""

    errno = _errno.EOPNOTSUPP


class IOFailure(DmError):
    """A failed read/write/flush/discard (EIO unless the backend gave its own errno)."""

    errno = _errno.EIO


def errno_name(err: int) -> str:
    """``EINVAL`` for 22: used in ``--json`` output so scripts need no errno table."""
    return _errno.errorcode.get(err, str(err))
