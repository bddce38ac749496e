"""Types of the C extension built from ``dmfuse/openssl/src/`` (see module.c)."""

from typing import Any, Generic, TypeAlias, TypeVar

import numpy as np
from typing_extensions import Buffer

# numpy arrays export the buffer protocol; typeshed says so only from Python 3.12 on.
_Buf: TypeAlias = Buffer | np.ndarray[Any, Any]
_R = TypeVar("_R")
# A unit cipher's IVs: iv_len bytes per unit, or (first, step): dm-crypt plain64 IVs made in C,
# unit i's IV being the little-endian 64-bit (first + i * step) mod 2^64, zero-padded.
_Ivs: TypeAlias = _Buf | tuple[int, int]

class OpenSSLError(ValueError): ...

class UnitCipher:
    """An OpenSSL cipher (e.g. ``"AES-256-XTS"``) applied unit by unit."""

    iv_len: int
    iv_in_place: int

    def __init__(self, name: str, key: bytes) -> None: ...
    def convert(self, src: _Buf, dst: _Buf, ivs: _Ivs, unit: int, encrypt: bool) -> None:
        """Unit ``i`` of ``src`` into unit ``i`` of ``dst`` (may be ``src``) with IV
        ``ivs[i * iv_len : (i + 1) * iv_len]`` (or plain64, see ``_Ivs``); no padding;
        without the GIL."""
    def convert_from(
        self, fd: int, offset: int, buf: _Buf, ivs: _Ivs, unit: int, encrypt: bool
    ) -> None:
        """Read ``len(buf)`` bytes of ``fd`` at ``offset`` into ``buf``, converting them in
        place piece by piece as they arrive (the pieces shared by the threads).
        ``EOFError`` if the file ends first, ``OSError`` if a read fails."""
    def convert_to(
        self, fd: int, offset: int, src: _Buf, ivs: _Ivs, unit: int, encrypt: bool
    ) -> None:
        """Convert ``src`` (left unchanged) piece by piece and write it to ``fd`` at
        ``offset``.  ``OSError`` if a write fails (part of the data may be written)."""
    def start(self, src: _Buf, dst: _Buf, ivs: _Ivs, unit: int, encrypt: bool) -> Job[None]:
        """:meth:`convert` on the worker thread (jobs in order)."""
    def start_from(
        self, fd: int, offset: int, buf: _Buf, ivs: _Ivs, unit: int, encrypt: bool
    ) -> Job[None]:
        """:meth:`convert_from` on the worker thread; ``finish()`` raises its errors."""
    def start_to(
        self, fd: int, offset: int, src: _Buf, ivs: _Ivs, unit: int, encrypt: bool
    ) -> Job[None]:
        """:meth:`convert_to` on the worker thread; ``finish()`` raises its errors."""

class Job(Generic[_R]):
    """Work on the worker thread (:meth:`UnitCipher.start`, :meth:`BlockHasher.start`)."""

    fd: int  # the eventfd all jobs share: readable once a job is done; -1 once finished
    done: bool  # the worker thread is done with it

    def finish(self) -> _R:
        """Wait if needed, release the buffers, return the result; OpenSSLError if OpenSSL
        failed, EOFError/OSError if the job's file read or write did."""

class BlockHasher:
    """An OpenSSL digest (e.g. ``"SHA256"``) over ``prefix || block || suffix``."""

    digest_size: int

    def __init__(self, name: str, prefix: bytes, suffix: bytes) -> None: ...
    def digests(self, data: _Buf, block: int, lo: int, hi: int) -> bytes:
        """The digests of blocks ``[lo, hi)`` of ``data``, back to back; without the GIL."""
    def start(self, data: _Buf, block: int, lo: int, hi: int) -> Job[bytes]:
        """:meth:`digests` on the worker thread; ``finish()`` returns them."""
