"""Scratch buffers reused across requests.

A target that must not change the caller's buffer (crypt encrypts every write into a copy)
needs a request-sized scratch buffer.  A fresh ``bytearray`` of 1 MiB is zero-filled memory
that glibc often has just given back to the kernel, so every use page-faults it in again:
measured as a third of a crypt write's time at queue depth 16.  Reusing a few buffers keeps
them mapped.

A buffer must be given back only when nothing refers to it any more: targets and backends
finish with a write's data before their ``write`` returns (log-writes copies what it keeps).
"""

from __future__ import annotations


class BufferPool:
    """Up to ``keep`` spare buffers of at most ``max_bytes`` each (larger ones are not kept)."""

    def __init__(self, keep: int = 4, max_bytes: int = 4 << 20) -> None:
        self.keep = keep
        self.max_bytes = max_bytes
        self._spare: list[bytearray] = []

    def take(self, size: int) -> memoryview:
        """A writable view of ``size`` bytes (old contents: anything)."""
        for i, buf in enumerate(self._spare):
            if len(buf) >= size:
                del self._spare[i]
                return memoryview(buf)[:size]
        return memoryview(bytearray(size))

    def give(self, view: memoryview) -> None:
        """Take back a view returned by :meth:`take`; the caller must not use it again."""
        buf = view.obj
        view.release()
        keep = len(self._spare) < self.keep
        if keep and isinstance(buf, bytearray) and len(buf) <= self.max_bytes:
            self._spare.append(buf)
