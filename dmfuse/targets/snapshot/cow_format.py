"""The kernel's persistent snapshot exception store, on-disk format (dm-snap-persistent.c).  PURE.

Everything is little-endian and counted in *chunks* of ``chunk_size`` sectors:

* chunk 0, the header: ``u32 magic = 0x70416e53`` ("SnAp"), ``u32 valid``, ``u32 version = 1``,
  ``u32 chunk_size`` (sectors); the rest of the chunk is left as it was on disk.
* metadata area ``i`` is chunk ``1 + i * (E + 1)`` where ``E = chunk_bytes // 16`` exceptions
  fit in one area; the ``E`` chunks after an area are data chunks.
* an area is ``E`` records ``{u64 old_chunk, u64 new_chunk}``; the list ends at the first record
  whose ``new_chunk`` is 0 (the header, never a data chunk).  A completely full area means
  "continue with the next area", so the next area is zeroed on disk before a full one is written.
* a magic of 0 means a fresh COW device; any other wrong magic is a corrupt store.

Allocation (``next_free``) starts at chunk 2 and skips every metadata area position.
"""

from __future__ import annotations

import struct

import attrs

SNAP_MAGIC = 0x70416E53
DISK_VERSION = 1
HEADER = struct.Struct("<IIII")
RECORD = struct.Struct("<QQ")
HEADER_CHUNKS = 1  # NUM_SNAPSHOT_HDR_CHUNKS
FIRST_FREE = HEADER_CHUNKS + 1  # after the header and area 0


class CorruptStore(ValueError):
    """The header's magic is neither 0 (fresh) nor "SnAp"."""


@attrs.frozen
class Header:
    valid: bool
    version: int
    chunk_sectors: int


def decode_header(chunk0: bytes | bytearray) -> Header | None:
    """The header of a COW device, or None for a fresh one (magic 0)."""
    magic, valid, version, chunk_sectors = HEADER.unpack_from(chunk0)
    if magic == 0:
        return None
    if magic != SNAP_MAGIC:
        raise CorruptStore("Invalid or corrupt snapshot")
    return Header(valid=valid != 0, version=version, chunk_sectors=chunk_sectors)


def encode_header(chunk0: bytearray, *, valid: bool, chunk_sectors: int) -> None:
    """Write the 16 header bytes into ``chunk0`` in place (the rest of the chunk is kept)."""
    HEADER.pack_into(chunk0, 0, SNAP_MAGIC, 1 if valid else 0, DISK_VERSION, chunk_sectors)


def exceptions_per_area(chunk_bytes: int) -> int:
    return chunk_bytes // RECORD.size


def area_location(area: int, per_area: int) -> int:
    """The chunk holding metadata area ``area``."""
    return HEADER_CHUNKS + (per_area + 1) * area


def skip_metadata(next_free: int, per_area: int) -> int:
    """``next_free`` moved past a metadata area position if it landed on one."""
    if next_free % (per_area + 1) == HEADER_CHUNKS:
        return next_free + 1
    return next_free


def decode_area(area: bytes | bytearray, per_area: int) -> tuple[list[tuple[int, int]], bool]:
    """The records of one area up to the terminator, and whether the area is full."""
    records: list[tuple[int, int]] = []
    for old, new in RECORD.iter_unpack(area[: per_area * RECORD.size]):
        if new == 0:
            return records, False
        records.append((old, new))
    return records, True


def put_record(area: bytearray, index: int, old: int, new: int) -> None:
    RECORD.pack_into(area, index * RECORD.size, old, new)


def metadata_sectors(current_area: int, chunk_sectors: int) -> int:
    """Status arithmetic: the header plus areas ``0..current_area``."""
    return (current_area + 1 + HEADER_CHUNKS) * chunk_sectors
