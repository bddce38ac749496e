"""dm-crypt IV generators (``crypt_iv_*_gen`` in dm-crypt.c).  PURE.

Each generator turns the IV sector number of one encryption unit into the ``iv_size`` bytes
handed to the chain mode.  ``iv_size`` is the chain mode's IV size, at least 8 (a 64-bit sector
number must fit).  The IV sector is ``(target sector + iv_offset)`` in 512-byte sectors, shifted
right by ``log2(sector_size / 512)`` with ``iv_large_sectors`` (computed by the caller).

* ``plain``     little-endian 32-bit ``sector & 0xffffffff``, zero padded (wraps at 2 TiB)
* ``plain64``   little-endian 64-bit sector, zero padded (for XTS: the 16-byte tweak)
* ``plain64be`` big-endian 64-bit sector in the *last* 8 bytes
* ``essiv``     ``plain64``, then encrypted with the salt key (done by the caller, one ECB
                call for a whole request: see :mod:`dmfuse.targets.crypt.sectors`)
* ``benbi``     big-endian 64-bit count of cipher blocks, from 1: ``(sector << shift) + 1``
                with ``shift = 9 - log2(cipher block size)``, in the last 8 bytes
* ``null``      all zeros

:func:`iv_array` makes the 16-byte IVs of a whole request at once (numpy, no per-unit Python).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

IvGenerator = Callable[[int], bytes]

_MASK64 = 2**64 - 1


def generator(ivmode: str, iv_size: int, benbi_shift: int = 0) -> IvGenerator:
    """The function ``iv_sector -> IV bytes`` for ``ivmode`` (one of ``IV_MODES``)."""
    pad = iv_size - 8
    if ivmode in ("plain64", "essiv"):
        tail = bytes(pad)
        return lambda sector: (sector & _MASK64).to_bytes(8, "little") + tail
    if ivmode == "plain":
        tail4 = bytes(iv_size - 4)
        return lambda sector: (sector & 0xFFFFFFFF).to_bytes(4, "little") + tail4
    if ivmode == "plain64be":
        head = bytes(pad)
        return lambda sector: head + (sector & _MASK64).to_bytes(8, "big")
    if ivmode == "benbi":
        head = bytes(pad)
        return lambda sector: head + (((sector << benbi_shift) + 1) & _MASK64).to_bytes(8, "big")
    if ivmode == "null":
        zeros = bytes(iv_size)
        return lambda sector: zeros
    raise ValueError(f"no IV generator {ivmode!r}")


def iv_array(ivmode: str, sectors: NDArray[np.uint64], shift: int = 0) -> NDArray[np.uint8]:
    """The 16-byte IVs of many units at once: ``(len(sectors), 16)`` uint8, row ``i`` equal to
    ``generator(ivmode, 16, shift)(sectors[i])`` (sectors are already 64-bit, as the kernel's)."""
    units = len(sectors)
    if ivmode in ("plain64", "essiv", "plain", "null"):
        words = np.zeros((units, 2), dtype="<u8")
        if ivmode == "plain":
            words[:, 0] = sectors & np.uint64(0xFFFFFFFF)
        elif ivmode != "null":
            words[:, 0] = sectors
    elif ivmode in ("plain64be", "benbi"):
        words = np.zeros((units, 2), dtype=">u8")
        if ivmode == "benbi":
            words[:, 1] = (sectors << np.uint64(shift)) + np.uint64(1)
        else:
            words[:, 1] = sectors
    else:
        raise ValueError(f"no IV generator {ivmode!r}")
    return words.view(np.uint8).reshape(units, 16)


def benbi_shift(block_size: int) -> int:
    """``crypt_iv_benbi_ctr``: cipher blocks per 512-byte sector as a shift (block <= 512)."""
    log = block_size.bit_length() - 1
    if 1 << log != block_size:
        raise ValueError("cypher blocksize is not a power of 2")
    if log > 9:
        raise ValueError("cypher blocksize is > 512")
    return 9 - log
