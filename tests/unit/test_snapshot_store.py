"""The persistent store's commit rule, seen from the COW device: what is written, in what order.

A kill -9 of the daemon cannot lose what reached the host's page cache, so the order that makes
the store crash-safe (data, flush, metadata area, flush) is checked here on a recording device.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable

import pytest
import trio

from dmfuse.backends.base import Backend
from dmfuse.backends.file import FileBackend
from dmfuse.errors import DmError, IOFailure
from dmfuse.targets.snapshot.store import PersistentStore

CHUNK = 8 * 512


class Recording(Backend):
    """A file backend that logs every write (chunk number) and flush; can fail writes."""

    def __init__(self, path: str, chunk: int = CHUNK) -> None:
        self.chunk = chunk
        self.inner = FileBackend(path, path, writable=True)
        self.display = path
        self.log: list[str] = []
        self.fail_writes_at: int | None = None

    def size(self) -> int:
        return self.inner.size()

    async def read(self, offset: int, buf: memoryview) -> None:
        await self.inner.read(offset, buf)

    async def write(self, offset: int, data: memoryview) -> None:
        if self.fail_writes_at == offset // self.chunk:
            raise IOFailure("injected")
        self.log.append(f"write {offset // self.chunk}")
        await self.inner.write(offset, data)
        await trio.lowlevel.checkpoint()  # a real device takes time: let others run

    async def flush(self, datasync: bool = False) -> None:
        self.log.append("flush")
        await self.inner.flush()
        await trio.lowlevel.checkpoint()

    async def discard(self, offset: int, length: int) -> None:
        await self.inner.discard(offset, length)

    async def close(self) -> None:
        await self.inner.close()


async def test_fresh_store_and_commit_order(make_file: Callable[..., str]) -> None:
    cow = Recording(make_file("c.img", 64 * 1024, seed=None))
    store = await PersistentStore.open(cow, 8, 1)
    assert cow.log == ["write 0", "write 1", "flush"]  # header, zeroed area 0
    cow.log.clear()
    new = store.allocate()
    assert new == 2
    await cow.write(new * CHUNK, memoryview(b"d" * CHUNK))  # the copied data
    await store.commit(7, new)
    assert cow.log == ["write 2", "flush", "write 1", "flush"]
    assert store.lookup(7) == 2


async def test_concurrent_commits_share_one_area_write(make_file: Callable[..., str]) -> None:
    cow = Recording(make_file("c.img", 64 * 1024, seed=None))
    store = await PersistentStore.open(cow, 8, 1)
    cow.log.clear()

    async def first_write(old: int) -> None:
        new = store.allocate()
        assert new is not None
        await cow.write(new * CHUNK, memoryview(b"d" * CHUNK))
        await store.commit(old, new)

    async with trio.open_nursery() as nursery:
        for old in range(5):
            nursery.start_soon(first_write, old)
    assert cow.log.count("write 1") <= 2  # five records, at most two area writes
    for n in range(2, 7):  # every data chunk: written, then a flush, then an area write
        i = cow.log.index(f"write {n}")
        j = cow.log.index("flush", i)
        assert "write 1" in cow.log[j:]
    assert cow.log[-2:] == ["write 1", "flush"]
    raw = open(cow.inner.path, "rb").read(2 * CHUNK)
    records = sorted(struct.unpack_from("<QQ", raw, CHUNK + 16 * i) for i in range(5))
    assert [old for old, _ in records] == list(range(5))


async def test_full_area_zeroes_the_next_one_first(make_file: Callable[..., str]) -> None:
    cow = Recording(make_file("c.img", 1024 * 1024, seed=None), chunk=512)
    store = await PersistentStore.open(cow, 1, 1)  # chunk 1 sector: 32 records per area
    for old in range(32):
        new = store.allocate()
        assert new is not None
        cow.log.clear()
        await store.commit(old, new)
    # the 32nd record fills area 0 (chunk 1): area 1 (chunk 34) is zeroed before it is written
    assert cow.log == ["write 34", "flush", "write 1", "flush"]
    assert store.usage() == (35, 2048, 3)


async def test_failed_metadata_write_invalidates(make_file: Callable[..., str]) -> None:
    cow = Recording(make_file("c.img", 64 * 1024, seed=None))
    store = await PersistentStore.open(cow, 8, 1)
    events: list[str] = []
    store.on_invalid = lambda: events.append("event")
    new = store.allocate()
    assert new is not None
    cow.fail_writes_at = 1  # the area
    with pytest.raises(DmError) as exc:
        await store.commit(3, new)
    assert exc.value.errno == errno.EIO
    assert not store.valid and events == ["event"]
    assert store.lookup(3) is None
    assert struct.unpack_from("<I", open(cow.inner.path, "rb").read(8), 4) == (0,)
