"""Exclusive claims on persistent backing files (snapshot COW stores, log-writes logs).

Two daemons writing the same COW store would both allocate the same chunks; the kernel keeps
that from happening by claiming the block devices of a table, dmfuse by an exclusive ``flock``
on each file that holds on-disk metadata, for as long as a table of this process uses it.

The lock is taken on a file description of its own (``/proc/self/fd/N`` reopened), one per
inode and process, so a read-only and a read-write backend of the same file in one daemon do
not conflict, and it goes when the last backend using it is released.  A device of the same
mount (a :class:`MappedBackend`) needs none: the daemon is already the only user.
"""

from __future__ import annotations

import fcntl
import os

from dmfuse.backends.base import Backend
from dmfuse.backends.file import FileBackend
from dmfuse.errors import DeviceBusy


class _Claim:
    __slots__ = ("fd", "holders")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.holders: set[int] = set()  # id() of the backends relying on it


_claims: dict[tuple[int, int], _Claim] = {}  # (st_dev, st_ino) -> its lock
_claim_of: dict[int, tuple[int, int]] = {}  # id(backend) -> the key above


def lock_or_busy(fd: int, what: str) -> None:
    """An exclusive, non-blocking ``flock`` on ``fd`` for this process; if another process
    holds one, close ``fd`` and raise :class:`DeviceBusy` naming ``what``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DeviceBusy(f"{what} is in use by another dmfuse mount") from None


def claim_exclusive(backend: Backend, what: str) -> None:
    """Make ``backend``'s file this process's alone, or raise :class:`DeviceBusy` (EBUSY)."""
    if not isinstance(backend, FileBackend) or id(backend) in _claim_of:
        return
    st = os.fstat(backend.fd)
    key = (st.st_dev, st.st_ino)
    claim = _claims.get(key)
    if claim is None:
        fd = os.open(f"/proc/self/fd/{backend.fd}", os.O_RDONLY | os.O_CLOEXEC)
        lock_or_busy(fd, f"{what} {backend.display}")
        claim = _claims[key] = _Claim(fd)
    claim.holders.add(id(backend))
    _claim_of[id(backend)] = key


def release_claim(backend: Backend) -> None:
    """``backend`` is being closed: drop its part in a claim (the lock with the last one)."""
    key = _claim_of.pop(id(backend), None)
    if key is None:
        return
    claim = _claims[key]
    claim.holders.discard(id(backend))
    if not claim.holders:
        del _claims[key]
        os.close(claim.fd)  # closing the description releases the flock
