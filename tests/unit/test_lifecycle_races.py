"""Lifecycle commands racing each other and I/O, in process (the manager without FUSE).

The kernel serialises suspend/resume/message/rename/remove of a device under its
``suspend_lock``; these interleavings broke when dmfuse did not.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.lowlevel
import trio.testing

from dmfuse.engine.device import Device
from dmfuse.engine.manager import Manager
from tests.conftest import pattern

MiB = 1 << 20


def yield_in_presuspend(m: Manager, name: str) -> None:
    """Make the device's target yield in presuspend, as snapshot-merge does (stopping its
    merge task): the window in which a second suspend used to install a second gate."""
    live = m.get(name).live
    assert live is not None
    target = live.targets[0]

    async def presuspend() -> None:
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()

    target.presuspend = presuspend  # type: ignore[method-assign]


async def linear_yielding_in_presuspend(make_file: Callable[..., str]) -> tuple[Manager, Device]:
    """A manager with one linear device ``d`` whose presuspend yields."""
    m = Manager()
    await m.create("d", f"0 2048 linear {make_file('a.img', MiB)} 0")
    yield_in_presuspend(m, "d")
    return m, m.get("d")


async def test_two_suspends_then_resume_let_every_held_reader_finish(
    make_file: Callable[..., str],
) -> None:
    m, dev = await linear_yielding_in_presuspend(make_file)
    got: list[bytes] = []

    async def reader() -> None:
        got.append(bytes(await dev.read(4096, 512)))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(m.suspend, "d")
            nursery.start_soon(m.suspend, "d")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(reader)
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert not got  # held by the suspend
            await m.resume("d")
    assert got == [pattern(4096, 512)] * 2
    assert not m.info("d")[0]["suspended"]


async def test_suspend_storm_with_readers_never_strands_a_request(
    make_file: Callable[..., str],
) -> None:
    m, dev = await linear_yielding_in_presuspend(make_file)
    reads = [0] * 4

    async def reader(i: int, stop: trio.Event) -> None:
        while not stop.is_set():
            assert bytes(await dev.read(0, 512)) == pattern(0, 512)
            reads[i] += 1
            await trio.lowlevel.checkpoint()  # a read of cached data never yields by itself

    async def storm(rounds: int) -> None:
        for i in range(rounds):
            await (m.suspend if i % 2 == 0 else m.resume)("d")
            await trio.lowlevel.checkpoint()

    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(reader, i, stop)
            async with trio.open_nursery() as storms:
                for n in (50, 51, 52):
                    storms.start_soon(storm, n)
            await m.resume("d")  # after the last command: the device is live
            before = list(reads)
            while any(now < then + 3 for now, then in zip(reads, before, strict=True)):
                await trio.lowlevel.checkpoint()  # every reader gets through again
            stop.set()
    assert not m.info("d")[0]["suspended"]


async def test_resume_waits_for_a_draining_suspend(make_file: Callable[..., str]) -> None:
    """I/O held below: ``suspend top`` waits for it; a ``load``+``resume top`` issued meanwhile
    waits for that suspend instead of swapping tables under the in-flight request."""
    a, b = make_file("a.img", MiB), make_file("b.img", MiB, seed=1)
    m = Manager()
    await m.create("low", f"0 2048 linear {a} 0")
    await m.create("top", "0 2048 linear /dev/mapper/low 0")
    top = m.get("top")
    await m.suspend("low")
    got: list[bytes] = []
    order: list[str] = []

    async def read_top() -> None:
        got.append(bytes(await top.read(0, 512)))
        order.append("read")

    async def suspend_top() -> None:
        await m.suspend("top")
        order.append(f"suspend (suspended={m.info('top')[0]['suspended']})")

    async def reload_top() -> None:
        await m.load("top", f"0 2048 linear {b} 0")  # goes ahead: only the inactive slot
        order.append("load")
        await m.resume("top")
        order.append("resume")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_top)
            await trio.testing.wait_all_tasks_blocked()  # held on low's gate
            nursery.start_soon(suspend_top)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(reload_top)
            await trio.testing.wait_all_tasks_blocked()
            assert order == ["load"]  # the resume waits for the draining suspend
            assert top.live is not None and top.live.lines[0].args[0] == "/dev/mapper/low"
            await m.resume("low")
    assert order == ["load", "read", "suspend (suspended=True)", "resume"]
    assert got == [pattern(0, 512)]  # read through the old table
    assert bytes(await top.read(0, 512)) == pattern(0, 512, 1)  # the new table is live
    assert not m.info("top")[0]["suspended"]
