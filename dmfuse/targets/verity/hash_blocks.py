"""The hash blocks read so far, least recently used first (the kernel's dm-bufio client).

A block is ``verified`` once its digest matched the level above (or the root): the fast paths
of :class:`~dmfuse.targets.verity.target.Verity` slice expected digests out of verified
level-0 blocks, ``get`` and ``move_to_end`` of the ``OrderedDict`` itself (C, no wrapper).
"""

from __future__ import annotations

from collections import OrderedDict

from dmfuse.backends.base import Backend


class HashBlock:
    __slots__ = ("data", "verified")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.verified = False


class HashBlockCache(OrderedDict[int, HashBlock]):
    """At most ``max_blocks`` blocks of ``block_size`` bytes of ``dev``, by block index."""

    def __init__(self, dev: Backend, block_size: int, max_blocks: int) -> None:
        super().__init__()
        self.dev = dev
        self.block_size = block_size
        self.max_blocks = max_blocks

    async def load(self, index: int) -> HashBlock:
        """The block at ``index``, read from the device on a miss (evicting the oldest)."""
        hb = self.get(index)
        if hb is not None:
            self.move_to_end(index)
            return hb
        size = self.block_size
        buf = bytearray(size)
        await self.dev.read(index * size, memoryview(buf))
        hb = self.get(index)  # another reader may have loaded it meanwhile
        if hb is None:
            hb = self[index] = HashBlock(bytes(buf))
            if len(self) > self.max_blocks:
                self.popitem(last=False)
        return hb
