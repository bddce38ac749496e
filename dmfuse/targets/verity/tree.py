"""Geometry of a dm-verity hash tree, exactly as the kernel computes it.  PURE.

The tree is stored on the hash device from block ``hash_start`` on (blocks of
``hash_block_size`` bytes), top level first.  Level 0 holds the digests of the data blocks, level
``i + 1`` the digests of level ``i``'s hash blocks, and the root digest (from the table) is the
digest of the single block of the top level.  With one data block or none there are no levels:
the root digest is the data block's own digest.

Each hash block holds ``2 ** hash_per_block_bits`` digests, the largest power of two that fits.
Version 1 gives every digest a slot of ``hash_block_size >> hash_per_block_bits`` bytes (a
power of two, zero padded); version 0 packs them ``digest_size`` bytes apart.  Blocks are
hashed whole, padding included.

Kernel names (``dm-verity-target.c``): ``hash_per_block_bits``, ``levels``,
``hash_level_block[]``, ``hash_blocks`` (the end of the tree, counted from the start of the hash
device), ``verity_hash_at_level()`` = :meth:`Geometry.locate`.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

MAX_LEVELS = 63  # DM_VERITY_MAX_LEVELS
_U64 = 2**64


class GeometryError(ValueError):
    """A tree the kernel refuses to set up; the text is the kernel's ``ti->error``."""


@attrs.frozen
class Geometry:
    version: int
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    hash_start: int
    digest_size: int
    hash_per_block_bits: int
    levels: int
    level_block: tuple[int, ...]  # first hash block of each level, level 0 first
    hash_blocks: int  # one past the last block of the tree (absolute on the hash device)

    @classmethod
    def compute(
        cls,
        *,
        version: int,
        data_block_size: int,
        hash_block_size: int,
        data_blocks: int,
        hash_start: int,
        digest_size: int,
    ) -> Geometry:
        bits = (hash_block_size // digest_size).bit_length() - 1  # __fls
        levels = 0
        if data_blocks:
            while bits * levels < 64 and (data_blocks - 1) >> (bits * levels):
                levels += 1
        if levels > MAX_LEVELS:
            raise GeometryError("Too many tree levels")
        level_block = [0] * levels
        position = hash_start
        for level in range(levels - 1, -1, -1):
            level_block[level] = position
            shift = (level + 1) * bits
            position += (data_blocks + (1 << shift) - 1) >> shift
            if position >= _U64:
                raise GeometryError("Hash device offset overflow")
        return cls(
            version=version,
            data_block_size=data_block_size,
            hash_block_size=hash_block_size,
            data_blocks=data_blocks,
            hash_start=hash_start,
            digest_size=digest_size,
            hash_per_block_bits=bits,
            levels=levels,
            level_block=tuple(level_block),
            hash_blocks=position,
        )

    @property
    def slot(self) -> int:
        """Bytes between consecutive digests inside a hash block."""
        if self.version == 0:
            return self.digest_size
        return self.hash_block_size >> self.hash_per_block_bits

    def locate(self, block: int, level: int) -> tuple[int, int]:
        """(hash block number, byte offset in it) of the digest covering data ``block``."""
        position = block >> (level * self.hash_per_block_bits)
        index = position & ((1 << self.hash_per_block_bits) - 1)
        return (
            self.level_block[level] + (position >> self.hash_per_block_bits),
            index * self.slot,
        )

    def level_size(self, level: int) -> int:
        """Number of hash blocks in ``level``."""
        shift = (level + 1) * self.hash_per_block_bits
        return (self.data_blocks + (1 << shift) - 1) >> shift


def build_tree(
    geometry: Geometry,
    read_block: Callable[[int], bytes],
    digest: Callable[[bytes], bytes],
) -> tuple[bytes, dict[int, bytes]]:
    """Compute the root digest and every hash block (by absolute block number).

    A reference writer of the on-disk format (what ``veritysetup format`` writes), used by the
    tests to make trees for any algorithm and geometry; ``read_block(n)`` returns data block n.
    """
    g = geometry
    hashes = [digest(read_block(n)) for n in range(g.data_blocks)]
    if g.levels == 0:
        return (hashes[0] if hashes else digest(bytes(g.data_block_size))), {}
    blocks: dict[int, bytes] = {}
    per = 1 << g.hash_per_block_bits
    for level in range(g.levels):
        made = []
        for i in range(0, len(hashes), per):
            buf = bytearray(g.hash_block_size)
            for j, h in enumerate(hashes[i : i + per]):
                buf[j * g.slot : j * g.slot + g.digest_size] = h
            blocks[g.level_block[level] + i // per] = bytes(buf)
            made.append(bytes(buf))
        hashes = [digest(b) for b in made]
    assert len(hashes) == 1
    return hashes[0], blocks
