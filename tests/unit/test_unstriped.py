"""unstriped: every member of a striped layout reads back as that member's device (and writes land
there), table strings and the 6.12 constructor checks."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError
from tests.conftest import pattern

MiB = 1 << 20


@pytest.mark.parametrize(("stripes", "chunk"), [(2, 8), (3, 3), (4, 1)])
async def test_each_member_of_a_striped_layout_is_its_device(
    make_file: Callable[..., str], stripes: int, chunk: int
) -> None:
    members = [make_file(f"m{i}", MiB, seed=i + 1) for i in range(stripes)]
    per = (MiB // 512 // chunk) * chunk - 2 * chunk  # leaves room for the offsets below
    m = Manager()
    legs = " ".join(f"{path} {2 * chunk}" for path in members)
    await m.create("st", f"0 {per * stripes} striped {stripes} {chunk} {legs}")
    for nr in range(stripes):
        name = f"u{nr}"
        await m.create(name, f"0 {per} unstriped {stripes} {chunk} {nr} /dev/mapper/st 0")
        got = bytes(await m.get(name).read(0, per * 512))
        assert got == pattern(2 * chunk * 512, per * 512, seed=nr + 1)
        assert m.table(name)[0]["lines"] == [
            f"0 {per} unstriped {stripes} {chunk} {nr} /dev/mapper/st 0"
        ]
        assert m.status(name)[0]["lines"] == [f"0 {per} unstriped "]
    # a write through a member lands in that member's device only
    await m.get("u1").write(chunk * 512 - 3, memoryview(b"across"))  # crosses a chunk
    with open(members[1], "rb") as fh:
        fh.seek(2 * chunk * 512 + chunk * 512 - 3)
        assert fh.read(6) == b"across"
    assert bytes(await m.get("st").read(0, 512)) == pattern(2 * chunk * 512, 512, seed=1)


async def test_offset_and_target_relative_sectors(make_file: Callable[..., str]) -> None:
    # Linux 6.12 maps by the target-relative sector (a line starting at 64 maps its sector 0
    # to the layout's first chunk), and the offset is where the layout starts on the device.
    a = make_file("a", MiB)
    m = Manager()
    await m.create("u", f"0 64 zero\n64 128 unstriped 2 8 1 {a} 16")
    got = bytes(await m.get("u").read(64 * 512, 128 * 512))
    want = b"".join(
        pattern((16 + row * 16 + 8) * 512, 8 * 512)  # row r of member 1
        for row in range(16)
    )
    assert got == want


async def test_no_flush_and_no_discard(make_file: Callable[..., str]) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("u", f"0 64 unstriped 2 8 0 {a} 0")
    dev = m.get("u")
    await dev.flush()  # takes no flushes: nothing to do, no error
    with pytest.raises(DmError) as exc:
        await dev.discard(0, 4096)
    assert exc.value.errno == errno.EOPNOTSUPP
    await dev.discard(0, 8 * 512 + 512, zero_fill=True)  # write-zeroes writes zeros per chunk
    assert bytes(await dev.read(0, 9 * 512)) == bytes(9 * 512)
    with open(a, "rb") as fh:
        raw = fh.read(24 * 512)
    assert raw[: 8 * 512] == bytes(8 * 512)
    assert raw[8 * 512 : 16 * 512] == pattern(8 * 512, 8 * 512)  # member 1 untouched
    assert raw[16 * 512 : 17 * 512] == bytes(512)


@pytest.mark.parametrize(
    ("table", "printed"),
    [
        ("0 8192 unstriped 2 8 2 {a} 0", "0 8192 unstriped 2 8 2 {a} 0"),  # off by one, kept
        ("0 8192 unstriped 1 8 5 {a} 0", "0 8192 unstriped 1 8 5 {a} 0"),
        ("0 8200 unstriped 2 8 0 {a} 0", "0 8200 unstriped 2 8 0 {a} 0"),
        ("0 8190 unstriped 2 6 0 {a} 0", "0 8190 unstriped 2 6 0 {a} 0"),
    ],
)
async def test_accepted_like_the_kernel(
    make_file: Callable[..., str], table: str, printed: str
) -> None:
    a = make_file("a", 8 * MiB)
    m = Manager()
    await m.create("u", table.format(a=a))
    assert m.table("u")[0]["lines"] == [printed.format(a=a)]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("0 8192 unstriped 2 8 3 {a} 0", r"Please provide stripe between \[0, # of stripes\]"),
        ("0 8192 unstriped 2 6 0 {a} 0", "Target length not divisible by chunk size"),
        ("0 8191 unstriped 2 8 0 {a} 0", "Target length not divisible by chunk size"),
        ("0 8192 unstriped 0 8 0 {a} 0", "Invalid stripe count"),
        ("0 8192 unstriped 2 0 0 {a} 0", "Invalid chunk_size"),
        ("0 8192 unstriped 2 8 x {a} 0", "Invalid stripe number"),
        ("0 8192 unstriped 2 8 0 {a} x", "Invalid striped device offset"),
        ("0 8192 unstriped 2 8 0 {a} 1x", "Invalid striped device offset"),
        ("0 8192 unstriped 2 8 0 /nonexistent 0", "Couldn't get striped device"),
        ("0 8192 unstriped 2 8 0 {a}", "Invalid number of arguments"),
        ("0 8192 unstriped 4294967296 8 0 {a} 0", "Invalid stripe count"),
    ],
)
async def test_bad_arguments(make_file: Callable[..., str], table: str, message: str) -> None:
    a = make_file("a", 8 * MiB)
    m = Manager()
    with pytest.raises(DmError, match=f"line 1: unstriped: {message}") as exc:
        await m.create("u", table.format(a=a))
    assert exc.value.errno == errno.EINVAL
    assert "u" not in m.devices
