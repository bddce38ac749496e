"""Split a byte range of a device into per-target pieces.  PURE.

A piece never crosses the end of a target, nor a multiple of the target's io boundary measured
from the target's own start (the kernel's ``max_io_len``: striped chunks and the like).  Discards
and write-zeroes are "changing-extent-only" operations: split at target ends only, the target
maps the whole range itself (dm-spec §4.1, §4.3).

A piece is ``(target_index, target_offset, length, buffer_offset)``: plain tuples because this
runs for every request.
"""

from __future__ import annotations

from collections.abc import Sequence

Piece = tuple[int, int, int, int]


def split_range(
    starts: Sequence[int],
    ends: Sequence[int],
    boundaries: Sequence[int],
    first: int,
    offset: int,
    length: int,
) -> list[Piece]:
    """Pieces covering ``[offset, offset+length)``; ``first`` is the target holding ``offset``.

    ``boundaries[i]`` is target i's io boundary in bytes, 0 for none.  The caller guarantees
    ``offset + length`` does not exceed the device size.
    """
    pieces: list[Piece] = []
    index = first
    pos = offset
    stop = offset + length
    while pos < stop:
        while ends[index] <= pos:
            index += 1
        rel = pos - starts[index]
        piece_end = min(stop, ends[index])
        boundary = boundaries[index]
        if boundary:
            piece_end = min(piece_end, starts[index] + (rel // boundary + 1) * boundary)
        pieces.append((index, rel, piece_end - pos, pos - offset))
        pos = piece_end
    return pieces
