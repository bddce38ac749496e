"""Handing big requests to dmfuse._openssl's worker thread when requests overlap.

crypt converts and verity hashes a 1 MiB request in a few hundred microseconds of OpenSSL.
A request alone (sequential I/O at queue depth 1) is best done right away on all cores: the
caller waits for it anyway.  When requests overlap (deep queues), the trio thread is better
kept for receiving and answering FUSE requests while the worker thread does the OpenSSL
work of one request after another on the other core (crypt reads at QD16: ~10% faster).

:class:`Overlap` tells the two apart for one target: a big request yields once, so requests
already received start and count themselves; it is alone if none did and none is at the
worker.  :meth:`Overlap.wait` waits for a job's eventfd without blocking the trio thread.
Requests under ``MIN_BYTES`` are always done inline: a handover costs more than they do.
"""

from __future__ import annotations

from typing import TypeVar

import trio

from dmfuse._openssl import Job

R = TypeVar("R")

MIN_BYTES = 256 << 10


class Overlap:
    """Big requests of one target: deciding where each runs, and waiting for jobs."""

    def __init__(self) -> None:
        self._arriving = 0  # big requests deciding
        self._at_worker = 0  # big requests whose job is at the worker thread

    async def use_worker(self, size: int) -> bool:
        """Whether a request of ``size`` bytes should go to the worker thread: it is big and
        other big requests are in flight (a big one yields once to find out)."""
        if size < MIN_BYTES:
            return False
        self._arriving += 1
        try:
            await trio.lowlevel.checkpoint()
            return self._arriving > 1 or self._at_worker > 0
        finally:
            self._arriving -= 1

    async def wait(self, job: Job[R]) -> R:
        """The job's result, once it is done.  Not cancellable: the worker uses the
        request's buffers until then."""
        self._at_worker += 1
        try:
            with trio.CancelScope(shield=True):
                await trio.lowlevel.wait_readable(job.fd)
        finally:
            self._at_worker -= 1
        return job.finish()
