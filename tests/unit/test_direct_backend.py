"""The cache=none backend: O_DIRECT files, straight-through aligned I/O, bounced unaligned I/O.

Runs on tmp_path's file system (it must support O_DIRECT; skipped where it does not).  The
4096-byte unit is forced on a file system that would take 512, which exercises the fallback
unit and the read-modify-write of units larger than a sector.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from dmfuse.backends import direct
from dmfuse.backends.direct import (
    BounceBuffers,
    DirectAlignment,
    DirectFileBackend,
    aligned_buffer,
    buffer_address,
)
from dmfuse.engine.opener import BackendPool
from dmfuse.errors import IOFailure, TableError

MiB = 1 << 20
O_DIRECT_OCTAL = 0o40000


def _open(path: Path, alignment: DirectAlignment | None = None) -> DirectFileBackend:
    try:
        return DirectFileBackend(str(path), str(path), writable=True, alignment=alignment)
    except TableError as exc:
        pytest.skip(str(exc))


def _fd_flags(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    raise AssertionError("no flags line")


@pytest.fixture
def bounces(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Sizes of the bounce buffers taken while the test runs."""
    taken: list[int] = []
    pool = BounceBuffers()
    original = pool.take

    def take(size: int):  # type: ignore[no-untyped-def]
        taken.append(size)
        return original(size)

    monkeypatch.setattr(pool, "take", take)
    monkeypatch.setattr(direct, "BOUNCE", pool)
    yield taken


@pytest.fixture
def always_aio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Aligned requests through AIO even alone (the daemon does so only when requests
    overlap: FUSE requests waiting, or AIO in flight; tests have no FUSE probe)."""
    monkeypatch.setattr(direct, "overlapped_aio", direct.context)


@pytest.mark.parametrize("aio", [False, True])
@pytest.mark.parametrize("unit", [None, 4096])
async def test_byte_granular_io_matches_a_model(
    tmp_path: Path, unit: int | None, aio: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if aio:
        monkeypatch.setattr(direct, "overlapped_aio", direct.context)
    path = tmp_path / "img"
    size = 8 * MiB
    seed = random.Random(7)
    model = bytearray(seed.randbytes(size))
    path.write_bytes(model)
    backend = _open(path, DirectAlignment(unit, unit) if unit else None)
    try:
        for _ in range(400):
            off = seed.randrange(size - 1)
            n = seed.randrange(1, min(size - off, 300_000) + 1)
            if seed.random() < 0.5:
                data = seed.randbytes(n)
                await backend.write(off, memoryview(data))
                model[off : off + n] = data
            else:
                buf = bytearray(n)
                await backend.read(off, memoryview(buf))
                assert buf == model[off : off + n], (off, n)
        # Offsets derived from the unit: the first and last bytes of units, single bytes.
        for off in (0, 511, 512, 4095, 4096, 4097, size - 1):
            await backend.write(off, memoryview(bytes([off & 0xFF])))
            model[off] = off & 0xFF
    finally:
        await backend.close()
    assert path.read_bytes() == model
    assert path.stat().st_size == size


async def test_opened_o_direct_and_crypt_gets_no_fd(tmp_path: Path) -> None:
    path = tmp_path / "img"
    path.write_bytes(bytes(MiB))
    backend = _open(path)
    try:
        assert _fd_flags(backend.fd) & O_DIRECT_OCTAL
        assert backend.file_fd() is None  # crypt must not do unaligned I/O on it from C
        assert backend.cache == "none"
        assert backend.buffer_alignment() == backend.align.memory
    finally:
        await backend.close()


async def test_aligned_requests_go_straight_through(tmp_path: Path, bounces: list[int]) -> None:
    path = tmp_path / "img"
    path.write_bytes(bytes(4 * MiB))
    backend = _open(path, DirectAlignment(4096, 4096))
    try:
        buf = aligned_buffer(MiB, 4096)
        buf[:] = b"\xab" * MiB
        await backend.write(MiB, buf)
        back = aligned_buffer(MiB, 4096)
        await backend.read(MiB, back)
        assert bounces == []
        assert bytes(back) == b"\xab" * MiB
        # The same bytes as `bytes` (FUSE's write buffers: never aligned) are copied once.
        await backend.write(2 * MiB, memoryview(bytes(buf)))
        assert bounces == [MiB]
        # An aligned range into an unaligned buffer, and an unaligned range: bounced.
        await backend.read(0, aligned_buffer(MiB + 1, 4096)[1:])
        await backend.read(100, back[:1000])
        assert bounces == [MiB, MiB, 4096]
    finally:
        await backend.close()


async def test_unaligned_file_end_never_grows_the_file(tmp_path: Path) -> None:
    """A file size that is not a multiple of the unit: the last partial unit is written
    through the page cache (O_DIRECT off for that write): an aligned direct write there
    would extend the file."""
    path = tmp_path / "img"
    size = MiB + 512
    path.write_bytes(bytes(size))
    backend = _open(path, DirectAlignment(4096, 4096))
    try:
        await backend.write(size - 512, memoryview(b"\x11" * 512))
        await backend.write(size - 5000, memoryview(b"\x22" * 4000))
        assert _fd_flags(backend.fd) & O_DIRECT_OCTAL  # switched back on after that write
        tail = bytearray(5000)
        await backend.read(size - 5000, memoryview(tail))  # direct read across the end
        assert tail == b"\x22" * 4000 + b"\x00" * 488 + b"\x11" * 512
        with pytest.raises(IOFailure, match="beyond end"):
            await backend.read(size - 10, memoryview(bytearray(20)))
    finally:
        await backend.close()
    assert path.stat().st_size == size
    data = path.read_bytes()
    assert data[-5000:] == b"\x22" * 4000 + b"\x00" * 488 + b"\x11" * 512


async def test_pool_keys_include_the_policy(tmp_path: Path) -> None:
    path = tmp_path / "img"
    path.write_bytes(bytes(MiB))
    pool = BackendPool()
    try:
        direct_one = await pool.open_file(str(path), str(path), True, "none")
    except TableError as exc:
        pytest.skip(str(exc))
    again = await pool.open_file(str(path), str(path), True, "none")
    cached = await pool.open_file(str(path), str(path), True, "writeback")
    assert again is direct_one
    assert cached is not direct_one and not isinstance(cached, DirectFileBackend)
    assert _fd_flags(direct_one.fd) & O_DIRECT_OCTAL
    assert not _fd_flags(cached.fd) & O_DIRECT_OCTAL
    # Written through one, read through the other: the kernel keeps them coherent.
    await cached.write(4096, memoryview(b"cached"))
    got = bytearray(6)
    await direct_one.read(4096, memoryview(got))
    assert got == b"cached"
    for backend in (direct_one, again, cached):
        await pool.release(backend)


def test_aligned_buffer_and_address() -> None:
    for size in (1, 4096, MiB + 3):
        for align in (512, 4096):
            view = aligned_buffer(size, align)
            address = buffer_address(view)
            assert address is not None and address % align == 0
            assert len(view) == size and not any(view)
    assert buffer_address(memoryview(b"read-only")) is None


def test_bounce_buffers_are_page_aligned_reused_and_bounded() -> None:
    pool = BounceBuffers(keep=2, max_bytes=MiB)
    a = pool.take(5000)
    with memoryview(a) as view:
        address = buffer_address(view)
    assert address is not None and address % os.sysconf("SC_PAGE_SIZE") == 0
    pool.give(a)
    assert pool.take(4096) is a  # reused, not mapped again
    b, c = pool.take(100), pool.take(100)
    for area in (a, b, c):
        pool.give(area)
    assert len(pool._spare) == 2 and c.closed  # never more than `keep` kept
    big = pool.take(2 * MiB)
    pool.give(big)
    assert big.closed  # above max_bytes: unmapped


async def test_deep_queues_run_concurrently_through_aio(tmp_path: Path, always_aio: None) -> None:
    """Aligned requests are submitted with io_submit and run side by side; mixed with
    read-modify-writes, the data still matches a model."""
    aio = direct.context()
    if aio is None:
        pytest.skip("no native AIO here")
    path = tmp_path / "img"
    size = 4 * MiB
    model = bytearray(pattern_bytes(size))
    path.write_bytes(model)
    backend = _open(path, DirectAlignment(4096, 4096))
    submitted = 0
    pread, pwrite = aio.pread, aio.pwrite

    async def counting_pread(*args: int) -> int:
        nonlocal submitted
        submitted += 1
        return await pread(*args)

    async def counting_pwrite(*args: int) -> int:
        nonlocal submitted
        submitted += 1
        return await pwrite(*args)

    aio.pread, aio.pwrite = counting_pread, counting_pwrite  # type: ignore[method-assign]
    seed = random.Random(3)
    reads: list[tuple[int, memoryview]] = []
    try:
        async with trio.open_nursery() as nursery:
            for k in range(64):  # disjoint 64 KiB slots: no two requests overlap
                off = k * 65536 + (0 if k % 3 else seed.randrange(1, 4000))
                n = 4096 * seed.randrange(1, 15) - (0 if k % 3 else 1)
                if k % 2:
                    data = seed.randbytes(n)
                    model[off : off + n] = data
                    nursery.start_soon(backend.write, off, memoryview(data))
                else:
                    buf = aligned_buffer(n, 4096)
                    reads.append((off, buf))
                    nursery.start_soon(backend.read, off, buf)
        for off, buf in reads:
            assert bytes(buf) == model[off : off + len(buf)], off
    finally:
        aio.pread, aio.pwrite = pread, pwrite  # type: ignore[method-assign]
        await backend.close()
    assert submitted >= 40  # the aligned two thirds went through AIO
    assert path.read_bytes() == model


async def test_read_modify_write_waits_for_inflight_writes_of_its_units(
    tmp_path: Path, always_aio: None
) -> None:
    aio = direct.context()
    if aio is None:
        pytest.skip("no native AIO here")
    path = tmp_path / "img"
    path.write_bytes(bytes(MiB))
    backend = _open(path, DirectAlignment(4096, 4096))
    release = trio.Event()
    pwrite = aio.pwrite

    async def held_pwrite(*args: int) -> int:
        await release.wait()  # the aligned write is "at the disk" until released
        return await pwrite(*args)

    aio.pwrite = held_pwrite  # type: ignore[method-assign]
    done: list[str] = []

    async def run(name: str, offset: int, data: bytes) -> None:
        await backend.write(offset, memoryview(data))
        done.append(name)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, "aligned", 8192, b"\xaa" * 4096)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(run, "partial", 8192 + 10, b"\xbb" * 100)
            nursery.start_soon(run, "elsewhere", 100, b"\xcc" * 100)  # other units: no wait
            await trio.testing.wait_all_tasks_blocked()
            assert done == ["elsewhere"]  # the partial write waits for the aligned one
            release.set()
    finally:
        aio.pwrite = pwrite  # type: ignore[method-assign]
        await backend.close()
    assert done == ["elsewhere", "aligned", "partial"]
    unit = path.read_bytes()[8192 : 8192 + 4096]
    assert unit == b"\xaa" * 10 + b"\xbb" * 100 + b"\xaa" * (4096 - 110)


def pattern_bytes(size: int) -> bytes:
    return bytes(i * 7 % 251 for i in range(size))
