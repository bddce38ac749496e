"""delay: argument forms, table/status strings, holding I/O and release on suspend (fake clock)."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
import trio
import trio.testing

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError
from tests.conftest import pattern

MiB = 1 << 20


async def test_table_strings_for_3_6_and_9_arguments(make_file: Callable[..., str]) -> None:
    a, b = make_file("a", MiB), make_file("b", MiB, seed=1)
    m = Manager()
    for args in (f"{a} 8 0", f"{a} 8 500 {b} 16 20", f"{a} 8 500 {b} 16 20 {a} 0 70"):
        await m.create("d", f"0 64 delay {args}")
        assert m.table("d")[0]["lines"] == [f"0 64 delay {args}"]
        assert m.status("d")[0]["lines"] == ["0 64 delay 0 0 0"]
        assert [d["name"] for d in m.deps("d")[0]["deps"]] == sorted({a, b} & set(args.split()))
        await m.remove("d")


async def test_reads_and_writes_go_to_their_devices(make_file: Callable[..., str]) -> None:
    a, b = make_file("a", MiB), make_file("b", MiB, seed=1)
    m = Manager()
    await m.create("d", f"0 64 delay {a} 8 0 {b} 16 0")
    dev = m.get("d")
    assert bytes(await dev.read(1000, 3000)) == pattern(8 * 512 + 1000, 3000)
    await dev.write(512, memoryview(b"written"))
    with open(b, "rb") as fh:
        fh.seek(16 * 512 + 512)
        assert fh.read(7) == b"written"
    assert bytes(await dev.read(512, 7)) == pattern(8 * 512 + 512, 7)  # reads still from a


async def test_read_is_held_for_its_delay(
    make_file: Callable[..., str], autojump_clock: trio.testing.MockClock
) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("d", f"0 64 delay {a} 0 1500")
    dev = m.get("d")
    start = trio.current_time()
    assert bytes(await dev.read(0, 512)) == pattern(0, 512)
    assert trio.current_time() - start == pytest.approx(1.5)
    start = trio.current_time()
    await dev.write(0, memoryview(b"x"))  # 3 arguments: writes use the same delay
    await dev.flush()
    assert trio.current_time() - start == pytest.approx(3.0)


async def test_held_read_does_not_block_other_io_and_is_counted(
    make_file: Callable[..., str], autojump_clock: trio.testing.MockClock
) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("d", f"0 64 delay {a} 0 10000 {a} 0 0")
    dev = m.get("d")
    done: list[float] = []
    start = trio.current_time()

    async def slow_read() -> None:
        await dev.read(0, 512)
        done.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_read)
        nursery.start_soon(slow_read)
        await trio.testing.wait_all_tasks_blocked()
        assert m.status("d")[0]["lines"] == ["0 64 delay 2 0 0"]
        await dev.write(0, memoryview(b"quick"))  # not delayed, not stuck behind the reads
        await dev.flush()
        assert trio.current_time() == start
        assert not done
    assert done == [pytest.approx(10.0)] * 2
    assert m.status("d")[0]["lines"] == ["0 64 delay 0 0 0"]


async def test_flushes_use_the_third_triple(
    make_file: Callable[..., str], autojump_clock: trio.testing.MockClock
) -> None:
    a, b = make_file("a", MiB), make_file("b", MiB)
    m = Manager()
    await m.create("d", f"0 64 delay {a} 0 0 {a} 0 0 {b} 0 4000")
    dev = m.get("d")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dev.flush)
        await trio.testing.wait_all_tasks_blocked()
        assert m.status("d")[0]["lines"] == ["0 64 delay 0 0 1"]
        start = trio.current_time()
        await dev.write(0, memoryview(b"w"))
        await dev.discard(4096, 4096)  # discards are writes: second triple, no delay
        assert trio.current_time() == start
    assert m.status("d")[0]["lines"] == ["0 64 delay 0 0 0"]


async def test_suspend_releases_held_io_at_once_and_resume_delays_again(
    make_file: Callable[..., str], autojump_clock: trio.testing.MockClock
) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("d", f"0 64 delay {a} 0 100000 {a} 0 100000 {a} 0 100000")
    dev = m.get("d")
    finished: list[str] = []
    start = trio.current_time()

    async def run(what: str) -> None:
        if what == "read":
            await dev.read(0, 512)
        elif what == "write":
            await dev.write(0, memoryview(b"w"))
        else:
            await dev.flush()
        finished.append(what)

    async with trio.open_nursery() as nursery:
        for what in ("read", "write", "flush"):
            nursery.start_soon(run, what)
        await trio.testing.wait_all_tasks_blocked()
        assert m.status("d")[0]["lines"] == ["0 64 delay 1 1 1"]
        await m.suspend("d")  # presuspend lets them all go; suspend waits for them to finish
        assert sorted(finished) == ["flush", "read", "write"]
        assert trio.current_time() == start
        assert m.status("d")[0]["lines"] == ["0 64 delay 0 0 0"]
        await m.resume("d")
    start = trio.current_time()
    await dev.read(0, 512)
    assert trio.current_time() - start == pytest.approx(100.0)


async def test_noflush_suspend_also_releases(
    make_file: Callable[..., str], autojump_clock: trio.testing.MockClock
) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("d", f"0 64 delay {a} 0 100000")
    dev = m.get("d")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dev.read, 0, 512)
        await trio.testing.wait_all_tasks_blocked()
        await m.suspend("d", noflush=True)
    assert trio.current_time() < 1
    await m.resume("d")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("{a} 8", "Requires exactly 3, 6 or 9 arguments"),
        ("{a} 8 500 {a}", "Requires exactly 3, 6 or 9 arguments"),
        ("{a} 8 500 {a} 0 1 {a} 0 1 {a}", "Requires exactly 3, 6 or 9 arguments"),
        ("{a} 1x 500", "Invalid device sector"),
        ("{a} 8 5x", "Invalid delay"),
        ("{a} 8 -1", "Invalid delay"),
        ("/nonexistent 8 1", "Device lookup failed"),
        ("{a} 8 1 {a} 1x 5", "Invalid device sector"),
        ("{a} 8 1 {a} 1 5 {a} 0 x", "Invalid delay"),
        ("{a} 0 1 /nonexistent 0 1", "Device lookup failed"),
    ],
)
async def test_bad_arguments(make_file: Callable[..., str], args: str, message: str) -> None:
    a = make_file("a", MiB)
    m = Manager()
    with pytest.raises(DmError, match=f"line 1: delay: {message}") as exc:
        await m.create("d", f"0 64 delay {args.format(a=a)}")
    # a missing device is ENOENT, as the kernel's dm_get_device; everything else EINVAL
    assert exc.value.errno == (errno.ENOENT if "lookup failed" in message else errno.EINVAL)
    assert "d" not in m.devices
    assert not m.pool._files  # nothing left open


async def test_delay_keeps_32_bits_like_the_kernel(make_file: Callable[..., str]) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("d", f"0 64 delay {a} 0 4294967295")
    assert m.table("d")[0]["lines"] == [f"0 64 delay {a} 0 4294967295"]
    await m.create("e", f"0 64 delay {a} 0 4294967296")  # 6.12 prints this back as 0
    assert m.table("e")[0]["lines"] == [f"0 64 delay {a} 0 0"]
