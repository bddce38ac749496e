"""Read-modify-write for targets with a block size: targets only see whole blocks, and
concurrent partial writes sharing a block never lose each other's bytes."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Sequence

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError
from dmfuse.target import DeviceOpener, Limits, register
from dmfuse.targets.linear import Linear

BLOCK = 4096


@register
class AlignedLinear(Linear):
    """linear that insists on whole 4 KiB blocks and yields mid-I/O to invite races."""

    name = "test-aligned-linear"
    limits = Limits(block_size=BLOCK)

    @classmethod
    async def construct(
        cls, opener: DeviceOpener, length: int, args: Sequence[str]
    ) -> AlignedLinear:
        base = await Linear.construct(opener, length, args)
        return cls(length, base.dev, base.offset_sectors)

    async def read(self, offset: int, buf: memoryview) -> None:
        assert offset % BLOCK == 0 and len(buf) % BLOCK == 0, (offset, len(buf))
        await trio.lowlevel.checkpoint()
        await super().read(offset, buf)

    async def write(self, offset: int, data: memoryview) -> None:
        assert offset % BLOCK == 0 and len(data) % BLOCK == 0, (offset, len(data))
        await trio.lowlevel.checkpoint()
        await super().write(offset, data)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=2, max_size=12), st.integers(0, 5000))
def test_concurrent_partial_writes_keep_every_byte(lengths: list[int], first: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "a.img")
        with open(path, "wb") as fh:
            fh.write(bytes(64 * 1024))

        async def run() -> None:
            m = Manager()
            await m.create("d", f"0 128 test-aligned-linear {path} 0")
            dev = m.get("d")
            # adjacent, disjoint byte ranges: many share blocks with their neighbours
            ranges, pos = [], first
            for i, n in enumerate(lengths):
                ranges.append((pos, bytes([i + 1]) * n))
                pos += n
            async with trio.open_nursery() as nursery:
                for off, data in ranges:
                    nursery.start_soon(dev.write, off, memoryview(data))
            got = await dev.read(0, 64 * 1024)
            expect = bytearray(64 * 1024)
            for off, data in ranges:
                expect[off : off + len(data)] = data
            assert bytes(got) == bytes(expect)
            # unaligned reads come back exact
            assert bytes(await dev.read(first + 1, 777)) == bytes(expect[first + 1 : first + 778])
            await m.shutdown()

        trio.run(run)


async def test_zero_range_unaligned_and_discard_alignment(make_file: Callable[..., str]) -> None:
    a = make_file("a.img", 64 * 1024)
    m = Manager()
    await m.create("d", f"0 128 test-aligned-linear {a} 0")
    dev = m.get("d")
    before = bytes(await dev.read(0, 64 * 1024))
    await dev.discard(100, 5000, zero_fill=True)
    after = bytes(await dev.read(0, 64 * 1024))
    assert after == before[:100] + bytes(5000) + before[5100:]
    with pytest.raises(DmError) as exc:
        await dev.discard(100, 4096)
    assert exc.value.errno == errno.EINVAL
