"""The engine through the manager, on real files, without FUSE."""

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


async def test_linear_read_write_and_table_strings(make_file: Callable[..., str]) -> None:
    a = make_file("a.img", MiB)
    m = Manager()
    await m.create("lin", f"0 1024 linear {a} 512")
    dev = m.get("lin")
    assert dev.size == 1024 * 512
    assert bytes(await dev.read(0, 4096)) == pattern(512 * 512, 4096)
    await dev.write(100, memoryview(b"hello"))
    with open(a, "rb") as fh:
        fh.seek(512 * 512 + 100)
        assert fh.read(5) == b"hello"
    assert m.table("lin")[0]["lines"] == [f"0 1024 linear {a} 512"]
    assert m.status("lin")[0]["lines"] == ["0 1024 linear "]
    assert await dev.read(1024 * 512, 10) == bytearray()  # EOF like a file
    with pytest.raises(DmError) as exc:
        await dev.write(1024 * 512, memoryview(b"x"))
    assert exc.value.errno == errno.ENOSPC
    assert await dev.write(1024 * 512 - 2, memoryview(b"xyz")) == 2  # cut at the end


async def test_striped_mapping_matches_formula(make_file: Callable[..., str]) -> None:
    a, b, c = (make_file(n, MiB, seed=i) for i, n in enumerate(("a", "b", "c")))
    m = Manager()
    # 3 stripes, chunk 3 sectors (not a power of two), 1152 sectors = 3 * 384, 384 % 3 == 0
    await m.create("st", f"0 1152 striped 3 3 {a} 8 {b} 0 {c} 16")
    dev = m.get("st")
    data = await dev.read(0, 1152 * 512)
    offs = {0: (a, 8), 1: (b, 0), 2: (c, 16)}
    seeds = {a: 0, b: 1, c: 2}
    for sector in range(0, 1152, 7):
        chunk, within = divmod(sector, 3)
        row, stripe = divmod(chunk, 3)
        path, base = offs[stripe]
        dev_sector = base + row * 3 + within
        assert data[sector * 512 : sector * 512 + 512] == pattern(
            dev_sector * 512, 512, seeds[path]
        )
    status = m.status("st")[0]["lines"][0]
    assert status == f"0 1152 striped 3 {a} {b} {c} 1 AAA"
    assert m.table("st")[0]["lines"][0] == f"0 1152 striped 3 3 {a} 8 {b} 0 {c} 16"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("0 8 linear {a}", "line 1: linear: Invalid argument count"),
        ("0 8 linear {a} x", "line 1: linear: invalid device sector"),
        ("0 8 linear {a} 1x", "line 1: linear: invalid device sector"),
        ("0 8 linear /nonexistent/file 0", "line 1: linear: Device lookup failed"),
        ("0 8 bogus", "unknown target type 'bogus'"),
        ("0 8 zero 1", "line 1: zero: No arguments required"),
        ("0 9 striped 2 1 {a} 0 {a} 0", "not divisible by number of stripes"),
        ("0 12 striped 2 4 {a} 0 {a} 0", "not divisible by chunk size"),
        ("0 16 striped 2 4 {a} 0", "Not enough destinations"),
        ("0 16 striped 0 4", "invalid stripe count"),
        ("0 8 zero\n0 8 zero", "line 2: zero: overlapping"),
    ],
)
async def test_bad_load_changes_nothing(
    make_file: Callable[..., str], table: str, message: str
) -> None:
    a = make_file("a.img", MiB)
    m = Manager()
    await m.create("d", f"0 64 linear {a} 0")
    await m.load("d", "0 32 zero")
    with pytest.raises(DmError, match=message) as exc:
        await m.load("d", table.format(a=a))
    # as the kernel: a missing device is ENOENT, every other bad table EINVAL
    expected = errno.ENOENT if "lookup" in message else errno.EINVAL
    assert exc.value.errno == expected
    assert m.table("d", inactive=True)[0]["lines"] == ["0 32 zero "]
    assert m.table("d")[0]["lines"] == [f"0 64 linear {a} 0"]
    assert m.pool._files  # still one open backend, nothing leaked or closed
    assert len(m.pool._files) == 1


async def test_resume_of_table_too_big_keeps_old_table(make_file: Callable[..., str]) -> None:
    a = make_file("a.img", MiB)
    m = Manager()
    await m.create("d", f"0 64 linear {a} 0")
    await m.load("d", f"0 4096 linear {a} 0")
    with pytest.raises(DmError, match="too small for target") as exc:
        await m.resume("d")
    assert exc.value.errno == errno.EINVAL
    dev = m.get("d")
    # as the kernel: the old table stays live and the device stays suspended
    assert dev.size == 64 * 512 and dev.suspended and dev.inactive is None
    await m.resume("d")
    assert not dev.suspended
    assert bytes(await dev.read(0, 512)) == pattern(0, 512)
    # a device's first table is checked at load: create fails and leaves nothing
    with pytest.raises(DmError, match="too small"):
        await m.create("e", f"0 4096 linear {a} 0")
    assert "e" not in m.devices
    await m.create("f", None)
    with pytest.raises(DmError, match="too small"):
        await m.load("f", f"0 4096 linear {a} 0")
    assert m.get("f").inactive is None
    assert len(m.pool._files) == 1  # the failed tables released their files


async def test_resize_only_on_resume(make_file: Callable[..., str]) -> None:
    a = make_file("a.img", MiB)
    resized = []
    m = Manager()
    await m.create("d", f"0 64 linear {a} 0")
    m.get("d").on_resize = resized.append
    await m.load("d", f"0 128 linear {a} 0")
    assert m.get("d").size == 64 * 512
    await m.resume("d")
    assert m.get("d").size == 128 * 512
    assert resized == [m.get("d")]


async def test_suspend_holds_reader_until_resume_with_new_table(
    make_file: Callable[..., str],
) -> None:
    a = make_file("a.img", MiB, seed=1)
    b = make_file("b.img", MiB, seed=2)
    m = Manager()
    await m.create("d", f"0 64 linear {a} 0")
    dev = m.get("d")
    await m.suspend("d")
    got: list[bytes] = []

    async def reader() -> None:
        got.append(bytes(await dev.read(0, 512)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # held, not failed
        await m.load("d", f"0 64 linear {b} 0")
        await m.resume("d")
    assert got == [pattern(0, 512, 2)]  # the held read ran against the new table


async def test_suspend_waits_for_inflight_io(make_file: Callable[..., str]) -> None:
    a = make_file("a.img", MiB)
    m = Manager()
    await m.create("d", f"0 64 linear {a} 0")
    dev = m.get("d")
    dev.inflight += 1  # pretend a request is in flight
    done = []

    async def suspender() -> None:
        await m.suspend("d")
        done.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(suspender)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        dev._done()
    assert done == [True] and dev.suspended


async def test_remove_rules(make_file: Callable[..., str]) -> None:
    a = make_file("a.img", MiB)
    m = Manager()
    await m.create("d", f"0 64 linear {a} 0")
    dev = m.get("d")
    dev.open_count = 1
    with pytest.raises(DmError) as exc:
        await m.remove("d")
    assert exc.value.errno == errno.EBUSY
    assert await m.remove("d", deferred=True) == "deferred"
    assert m.info("d")[0]["deferred_remove"]
    dev.open_count = 0
    await m.closed(dev)
    assert "d" not in m.devices
    with pytest.raises(DmError) as exc:
        m.get("d")
    assert exc.value.errno == errno.ENXIO


async def test_force_remove_of_open_device_leaves_error_table(
    make_file: Callable[..., str],
) -> None:
    a = make_file("a.img", MiB)
    m = Manager()
    await m.create("d", f"0 64 linear {a} 0")
    dev = m.get("d")
    dev.open_count = 1
    with pytest.raises(DmError):
        await m.remove("d", force=True)
    assert m.table("d")[0]["lines"] == ["0 64 error "]
    with pytest.raises(DmError) as exc:
        await dev.read(0, 512)
    assert exc.value.errno == errno.EIO


async def test_rename_bumps_event_and_wait_returns(make_file: Callable[..., str]) -> None:
    a = make_file("a.img", MiB)
    m = Manager()
    await m.create("d", f"0 64 linear {a} 0")
    assert m.info("d")[0]["event_nr"] == 0
    async with trio.open_nursery() as nursery:
        waited: list[int] = []

        async def waiter() -> None:
            waited.append((await m.wait("d", 0))["event_nr"])

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await m.rename("d", "e")
    assert waited == [1]
    assert m.info("e")[0]["event_nr"] == 1
    with pytest.raises(DmError) as exc:
        await m.rename("e", "a/b")
    assert exc.value.errno == errno.EINVAL


async def test_message_rules(make_file: Callable[..., str]) -> None:
    a = make_file("a.img", MiB)
    m = Manager()
    await m.create("d", f"0 64 linear {a} 0")
    with pytest.raises(DmError, match="does not accept messages"):
        await m.message("d", 0, "foo")
    with pytest.raises(DmError, match="outside device"):
        await m.message("d", 64, "foo")


async def test_stacking_and_cycles(make_file: Callable[..., str]) -> None:
    a = make_file("a.img", MiB)
    m = Manager()
    await m.create("low", f"0 128 linear {a} 0")
    await m.create("top", "0 64 linear /dev/mapper/low 64")
    top = m.get("top")
    assert bytes(await top.read(0, 512)) == pattern(64 * 512, 512)
    assert m.get("low").open_count == 1
    with pytest.raises(DmError) as exc:
        await m.remove("low")
    assert exc.value.errno == errno.EBUSY
    with pytest.raises(DmError, match="cycle"):
        await m.load("low", "0 64 linear /dev/mapper/top 0")
    with pytest.raises(DmError, match="cycle"):
        await m.load("top", "0 64 linear /dev/mapper/top 0")
    assert m.deps("top")[0]["deps"] == [{"name": "/dev/mapper/low", "devno": (253, 0)}]
    await m.remove("top")
    assert m.get("low").open_count == 0
    await m.remove("low")


async def test_flush_syncs_each_backend_once(
    make_file: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_file("a.img", MiB)
    b = make_file("b.img", MiB)
    m = Manager()
    await m.create(
        "d",
        f"0 64 linear {a} 0\n64 64 linear {a} 64\n128 64 zero\n192 64 striped 2 8 {a} 512 {b} 0",
    )
    calls: list[int] = []
    import os

    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    await m.get("d").flush()
    assert len(calls) == 2  # a and b, once each


async def test_punch_hole_reads_zero_and_refuses_targets_that_cannot(
    make_file: Callable[..., str],
) -> None:
    a = make_file("a.img", MiB)
    m = Manager()
    await m.create("d", f"0 64 linear {a} 0\n64 64 zero\n128 64 error")
    dev = m.get("d")
    await dev.discard(4096, 64 * 512)
    assert bytes(await dev.read(4096, 64 * 512)) == bytes(64 * 512)
    assert bytes(await dev.read(0, 4096)) == pattern(0, 4096)
    before = bytes(await dev.read(0, 64 * 512))
    with pytest.raises(DmError) as exc:
        await dev.discard(0, 192 * 512)
    assert exc.value.errno == errno.EOPNOTSUPP
    assert bytes(await dev.read(0, 64 * 512)) == before  # nothing changed


async def test_striped_discard_maps_ranges_per_stripe(make_file: Callable[..., str]) -> None:
    a = make_file("a.img", MiB, seed=3)
    b = make_file("b.img", MiB, seed=4)
    m = Manager()
    await m.create("st", f"0 256 striped 2 8 {a} 0 {b} 0")
    dev = m.get("st")
    before = bytes(await dev.read(0, 256 * 512))
    await dev.discard(3 * 512, 40 * 512)
    await dev.discard(100 * 512, 100, zero_fill=True)
    after = bytes(await dev.read(0, 256 * 512))
    expect = bytearray(before)
    expect[3 * 512 : 43 * 512] = bytes(40 * 512)
    expect[100 * 512 : 100 * 512 + 100] = bytes(100)
    assert after == bytes(expect)


async def test_readonly_device_refuses_writes(make_file: Callable[..., str]) -> None:
    a = make_file("a.img", MiB)
    m = Manager()
    await m.create("ro", f"0 64 linear {a} 0", readonly=True)
    with pytest.raises(DmError) as exc:
        await m.get("ro").write(0, memoryview(b"x"))
    assert exc.value.errno == errno.EROFS
    assert m.info("ro")[0]["readonly"]


async def test_a_flush_of_a_long_table_syncs_its_one_file_once(
    make_file: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush goes once to each distinct backend, not once per target (100k linear lines
    over one file took 2.4 s per fsync, a flush task per line)."""
    a = make_file("a.img", MiB)
    m = Manager()
    await m.create("long", "".join(f"{i * 2} 2 linear {a} {i * 2}\n" for i in range(1000)))
    live = m.get("long").live
    assert live is not None
    (backend,) = live.distinct_backends()
    calls: list[bool] = []
    real = backend.flush

    async def counting(datasync: bool = False) -> None:
        calls.append(datasync)
        await real(datasync)

    monkeypatch.setattr(backend, "flush", counting)
    await m.get("long").flush()
    await m.get("long").flush(datasync=True)
    assert calls == [False, True]
    await m.shutdown()
