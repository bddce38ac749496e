"""Handing big requests to dmfuse.openssl.loops's worker thread when requests overlap.

crypt converts and verity hashes a 1 MiB request in a few hundred microseconds of OpenSSL.
A request alone (sequential I/O at queue depth 1) is best done right away on all cores: the
caller waits for it anyway.  When requests overlap (deep queues), the trio thread is better
kept for receiving and answering FUSE requests while the worker thread does the OpenSSL
work of one request after another on the other core (crypt reads at QD16: ~10% faster).

:class:`Overlap` tells the two apart for one target.  A big request overlaps others if one of
the target's jobs is at the worker, or if more requests are waiting to be received: the FUSE
edge installs a probe for that (:func:`watch_waiting_requests`, a poll of its session fd,
~1 us).  Without a probe (engine-level callers, tests) a big request yields once instead, so
requests already received start and count themselves (~13 us of trio scheduling per request,
measured: 5% of a 1 MiB crypt read at QD1).  Requests under ``MIN_BYTES`` are always done
inline: a handover costs more than they do.

:meth:`Overlap.wait` waits for a job without blocking the trio thread.  All jobs signal one
eventfd; one system task per trio run waits on it and wakes the tasks whose jobs are done
(:class:`_Completions`), so a job costs no fd or epoll registration of its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from dmfuse.openssl.loops import Job

R = TypeVar("R")

MIN_BYTES = 256 << 10

_waiting: Callable[[], bool] | None = None


def watch_waiting_requests(waiting: Callable[[], bool] | None) -> None:
    """Install (or with None remove) the process's probe for requests waiting to be received."""
    global _waiting
    _waiting = waiting


def requests_waiting() -> bool:
    """Whether FUSE requests are waiting to be received (False without a probe)."""
    waiting = _waiting
    return waiting is not None and waiting()


class _Completions:
    """The jobs being waited for in one trio run, and the task that wakes their waiters."""

    def __init__(self, fd: int) -> None:
        self.fd = fd  # the eventfd all jobs share
        self.waiting: dict[Job[Any], trio.Event] = {}

    async def run(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.fd)
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self.fd)  # back to zero: the next done job makes it readable
            for job in [job for job in self.waiting if job.done]:
                self.waiting.pop(job).set()


_COMPLETIONS: trio.lowlevel.RunVar[_Completions] = trio.lowlevel.RunVar("dmfuse_completions")


def _completions(fd: int) -> _Completions:
    try:
        return _COMPLETIONS.get()
    except LookupError:
        completions = _Completions(fd)
        _COMPLETIONS.set(completions)
        trio.lowlevel.spawn_system_task(completions.run, name="dmfuse job completions")
        return completions


class Overlap:
    """Big requests of one target: deciding where each runs, and waiting for jobs."""

    def __init__(self) -> None:
        self._arriving = 0  # big requests deciding (without a probe)
        self._arrived = 0  # big requests that have started deciding, ever
        self._at_worker = 0  # big requests whose job is at the worker thread

    async def use_worker(self, size: int) -> bool:
        """Whether a request of ``size`` bytes should go to the worker thread: it is big and
        other requests overlap it."""
        if size < MIN_BYTES:
            return False
        if self._at_worker:
            return True
        waiting = _waiting
        if waiting is not None:
            return waiting()
        # Overlapping: another big request was deciding when this one arrived, or arrived
        # while this one yielded (counted, not sampled after the yield: the other may be
        # done by then, e.g. its job ran on the calling thread under load).
        others = self._arriving
        self._arriving += 1
        self._arrived += 1
        mine = self._arrived
        try:
            await trio.lowlevel.checkpoint()
            return others > 0 or self._arrived != mine or self._at_worker > 0
        finally:
            self._arriving -= 1

    async def wait(self, job: Job[R]) -> R:
        """The job's result, once it is done.  Not cancellable: the worker uses the
        request's buffers until then."""
        self._at_worker += 1
        try:
            if not job.done:
                done = trio.Event()
                _completions(job.fd).waiting[job] = done
                with trio.CancelScope(shield=True):
                    await done.wait()
        finally:
            self._at_worker -= 1
        return job.finish()
