"""flakey: feature parsing (strings as Linux 6.12 prints them), up/down timing on the fake clock,
and what each feature does while down."""

from __future__ import annotations

import errno
import random
from collections.abc import Callable

import pytest
import trio
import trio.testing

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError
from dmfuse.targets.flakey import Flakey
from tests.conftest import pattern

MiB = 1 << 20


def _target(m: Manager, name: str = "f") -> Flakey:
    live = m.get(name).live
    assert live is not None
    target = live.targets[0]
    assert isinstance(target, Flakey)
    return target


# Table strings as the 6.12 kernel printed them for the same table lines (kdm-vm.sh).
@pytest.mark.parametrize(
    ("args", "printed"),
    [
        ("180 0", "180 0 2 error_reads error_writes"),
        ("180 0 0", "180 0 2 error_reads error_writes"),
        ("0 180 1 drop_writes", "0 180 1 drop_writes"),
        ("0 180 1 error_writes", "0 180 1 error_writes"),
        ("0 180 1 error_reads", "0 180 1 error_reads"),
        ("0 180 2 drop_writes error_reads", "0 180 2 error_reads drop_writes"),
        ("0 180 1 DROP_WRITES", "0 180 1 drop_writes"),
        ("0 180 5 corrupt_bio_byte 32 r 1 0", "0 180 5 corrupt_bio_byte 32 r 1 0"),
        ("0 180 5 corrupt_bio_byte 32 W 255 0", "0 180 5 corrupt_bio_byte 32 w 255 0"),
        ("0 180 2 random_read_corrupt 1000000000", "0 180 2 random_read_corrupt 1000000000"),
        (
            "0 180 4 random_write_corrupt 5 random_read_corrupt 0",
            "0 180 2 random_write_corrupt 5",
        ),
        (
            "0 180 3 error_writes random_write_corrupt 1",
            "0 180 3 error_writes random_write_corrupt 1",
        ),
        ("0 180 3 error_reads random_read_corrupt 1", "0 180 3 error_reads random_read_corrupt 1"),
        (
            "0 180 6 drop_writes corrupt_bio_byte 1 r 0 0",
            "0 180 6 drop_writes corrupt_bio_byte 1 r 0 0",
        ),
        (
            "0 180 10 corrupt_bio_byte 1 r 0 0 corrupt_bio_byte 7 w 9 0",
            "0 180 5 corrupt_bio_byte 7 w 9 0",
        ),
        ("0 180 4 random_read_corrupt 1 random_read_corrupt 2", "0 180 2 random_read_corrupt 2"),
        ("0 180 5 corrupt_bio_byte 1 r 0 4294967296", "0 180 5 corrupt_bio_byte 1 r 0 0"),
        ("4294967296 1", "0 1 2 error_reads error_writes"),
        ("0 180 1 drop_writes trailing words", "0 180 1 drop_writes"),
        ("0 180 4294967297 drop_writes", "0 180 1 drop_writes"),
        (
            "0 180 3 drop_writes random_write_corrupt 5",
            "0 180 3 drop_writes random_write_corrupt 5",
        ),
    ],
)
async def test_table_strings_match_the_kernel(
    make_file: Callable[..., str], args: str, printed: str
) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("f", f"0 64 flakey {a} 0 {args}")
    assert m.table("f")[0]["lines"] == [f"0 64 flakey {a} 0 {printed}"]
    assert m.status("f")[0]["lines"] == ["0 64 flakey "]
    await m.load("f", m.table("f")[0]["lines"][0])  # the table string loads back
    await m.resume("f")
    assert m.table("f")[0]["lines"] == [f"0 64 flakey {a} 0 {printed}"]


# Errors as the 6.12 kernel reported them (kdm-vm.sh, dmesg).
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("{a} 0 180", "Invalid argument count"),
        ("{a} x 180 0", "Invalid device sector"),
        ("{a} 0 1x 0", "Invalid up interval"),
        ("{a} 0 1 1x", "Invalid up interval"),  # sic: 6.12 uses the up interval's text
        ("{a} 0 0 0", r"Total \(up \+ down\) interval is zero"),
        ("{a} 0 4294967295 1", r"Total \(up \+ down\) interval is zero"),
        ("{a} 0 4294967295 2", "Interval overflow"),
        ("{a} 0 0 180 1 ignore_zero_blocks", "Unrecognised flakey feature requested"),
        ("{a} 0 0 180 1 bogus", "Unrecognised flakey feature requested"),
        (
            "{a} 0 0 180 2 drop_writes error_writes",
            "Feature error_writes conflicts with feature drop_writes",
        ),
        (
            "{a} 0 0 180 2 error_writes drop_writes",
            "Feature drop_writes conflicts with feature error_writes",
        ),
        ("{a} 0 0 180 2 drop_writes drop_writes", "Feature drop_writes duplicated"),
        ("{a} 0 0 180 2 error_reads error_reads", "Feature error_reads duplicated"),
        ("{a} 0 0 180 2 error_writes error_writes", "Feature error_writes duplicated"),
        (
            "{a} 0 0 180 6 drop_writes corrupt_bio_byte 1 w 0 0",
            "drop_writes is incompatible with corrupt_bio_byte with the WRITE flag set",
        ),
        (
            "{a} 0 0 180 6 corrupt_bio_byte 1 w 0 0 error_writes",
            "error_writes is incompatible with corrupt_bio_byte with the WRITE flag set",
        ),
        ("{a} 0 0 180 4 corrupt_bio_byte 1 r 0", "Invalid corrupt bio flags mask"),
        ("{a} 0 0 180 1 corrupt_bio_byte", "Feature corrupt_bio_byte requires parameters"),
        ("{a} 0 0 180 2 corrupt_bio_byte 1", r"Invalid corrupt bio direction \(r or w\)"),
        ("{a} 0 0 180 -1", "Invalid number of feature args"),
        ("{a} 0 0 180 5 corrupt_bio_byte 0 r 0 0", "Invalid corrupt bio byte"),
        ("{a} 0 0 180 5 corrupt_bio_byte 1 x 0 0", r"Invalid corrupt bio direction \(r or w\)"),
        (
            "{a} 0 0 180 5 corrupt_bio_byte 1 r 256 0",
            r"Invalid corrupt value to write into bio byte \(0-255\)",
        ),
        ("{a} 0 0 180 2 random_read_corrupt 1000000001", "Invalid random corrupt argument"),
        ("{a} 0 0 180 1 random_read_corrupt", "Feature random_read_corrupt requires a parameter"),
        ("{a} 0 0 180 12 drop_writes", "Invalid number of feature args"),
        ("{a} 0 0 180 2 drop_writes", "Invalid number of feature args"),
        ("{a} 0 0 180 x", "Invalid number of feature args"),
        ("/nonexistent 0 1 1", "Device lookup failed"),
        ("/nonexistent 0 1 1 1 bogus", "Unrecognised flakey feature requested"),
    ],
)
async def test_bad_arguments(make_file: Callable[..., str], args: str, message: str) -> None:
    a = make_file("a", MiB)
    m = Manager()
    with pytest.raises(DmError, match=f"line 1: flakey: {message}") as exc:
        await m.create("f", f"0 64 flakey {args.format(a=a)}")
    # a missing device is ENOENT, as the kernel's dm_get_device; everything else EINVAL
    assert exc.value.errno == (errno.ENOENT if "lookup failed" in message else errno.EINVAL)
    assert "f" not in m.devices
    assert not m.pool._files


async def test_up_and_down_intervals_follow_the_clock_from_construction(
    make_file: Callable[..., str], autojump_clock: trio.testing.MockClock
) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await trio.sleep(1000.3)  # the clock counts from the table, not from anything earlier
    await m.create("f", f"0 64 flakey {a} 0 3 2")
    dev = m.get("f")
    start = trio.current_time()
    seen = []
    for tenth in range(0, 120, 5):  # 0 .. 11.5 s
        await trio.sleep_until(start + tenth / 10)
        try:
            await dev.read(0, 512)
            seen.append("u")
        except DmError as exc:
            assert exc.errno == errno.EIO
            seen.append("d")
    # whole seconds since construction % 5 >= 3 -> down
    assert "".join(seen) == "uuuuuudddd" + "uuuuuudddd" + "uuuu"


async def test_no_features_fail_reads_writes_and_flushes_while_down(
    make_file: Callable[..., str],
) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("f", f"0 64 flakey {a} 0 0 180")
    dev = m.get("f")
    for op in (
        lambda: dev.read(0, 512),
        lambda: dev.write(0, memoryview(b"x")),
        dev.flush,
        lambda: dev.discard(0, 4096),
    ):
        with pytest.raises(DmError) as exc:
            await op()
        assert exc.value.errno == errno.EIO
    with open(a, "rb") as fh:
        assert fh.read(4096) == pattern(0, 4096)


async def test_always_up_is_linear(make_file: Callable[..., str]) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("f", f"0 64 flakey {a} 16 180 0")
    dev = m.get("f")
    assert bytes(await dev.read(100, 1000)) == pattern(16 * 512 + 100, 1000)
    await dev.write(512, memoryview(b"up"))
    await dev.flush()
    with open(a, "rb") as fh:
        fh.seek(16 * 512 + 512)
        assert fh.read(2) == b"up"


class SpyFlushes:
    """Counts backend flushes by wrapping the backend's flush."""

    def __init__(self, target: Flakey) -> None:
        self.count = 0
        original = target.dev.flush

        async def flush(datasync: bool = False) -> None:
            self.count += 1
            await original(datasync)

        target.dev.flush = flush  # type: ignore[method-assign]


async def test_drop_writes_drops_writes_discards_and_flushes_but_reads_pass(
    make_file: Callable[..., str],
) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("f", f"0 64 flakey {a} 0 0 180 1 drop_writes")
    dev = m.get("f")
    spy = SpyFlushes(_target(m))
    assert bytes(await dev.read(0, 4096)) == pattern(0, 4096)
    assert await dev.write(0, memoryview(b"\xff" * 4096)) == 4096  # acknowledged
    await dev.discard(4096, 4096)
    await dev.discard(8192, 4096, zero_fill=True)
    await dev.flush()
    assert spy.count == 0  # the flush never reached the device
    with open(a, "rb") as fh:
        assert fh.read(3 * 4096) == pattern(0, 3 * 4096)
    await m.suspend("f")  # dmfuse's own suspend-time sync is not a flush bio: it runs
    assert spy.count == 1
    await m.resume("f")


async def test_error_writes_and_error_reads(make_file: Callable[..., str]) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("f", f"0 64 flakey {a} 0 0 180 1 error_writes")
    dev = m.get("f")
    assert bytes(await dev.read(0, 512)) == pattern(0, 512)
    for op in (lambda: dev.write(0, memoryview(b"x")), dev.flush):
        with pytest.raises(DmError) as exc:
            await op()
        assert exc.value.errno == errno.EIO
    await m.suspend("f")  # the suspend-time sync does not fail the suspend
    await m.resume("f")
    await m.create("r", f"0 64 flakey {a} 0 0 180 1 error_reads")
    dev = m.get("r")
    with pytest.raises(DmError):
        await dev.read(0, 512)
    await dev.write(0, memoryview(b"ok"))  # writes pass with error_reads alone
    await dev.flush()
    with open(a, "rb") as fh:
        assert fh.read(2) == b"ok"


async def test_corrupt_bio_byte_on_reads_counts_from_each_piece(
    make_file: Callable[..., str],
) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("f", f"0 64 flakey {a} 0 0 180 5 corrupt_bio_byte 3 r 7 0")
    dev = m.get("f")
    got = bytes(await dev.read(1024, 1024))
    want = bytearray(pattern(1024, 1024))
    want[2] = 7
    assert got == bytes(want)
    assert bytes(await dev.read(0, 2)) == pattern(0, 2)  # piece shorter than N: untouched
    with open(a, "rb") as fh:
        assert fh.read(4096) == pattern(0, 4096)  # only what was read is corrupted


async def test_corrupt_bio_byte_on_writes_corrupts_a_copy(make_file: Callable[..., str]) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("f", f"0 64 flakey {a} 0 0 180 5 corrupt_bio_byte 1 w 170 0")
    dev = m.get("f")
    data = bytearray(b"\x01" * 512)
    await dev.write(512, memoryview(data))
    assert data == b"\x01" * 512  # the caller's buffer is untouched
    with open(a, "rb") as fh:
        fh.seek(512)
        assert fh.read(512) == b"\xaa" + b"\x01" * 511
    assert bytes(await dev.read(512, 512)) == b"\xaa" + b"\x01" * 511  # reads not corrupted


async def test_corrupt_flags_match_writes_only_with_mask_1(make_file: Callable[..., str]) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("f", f"0 64 flakey {a} 0 0 180 5 corrupt_bio_byte 1 w 170 1")
    await m.get("f").write(0, memoryview(b"\x01\x01"))
    await m.create("g", f"0 64 flakey {a} 0 0 180 5 corrupt_bio_byte 2 w 170 2")
    await m.get("g").write(0, memoryview(b"\x02\x02"))  # mask 2 matches no FUSE request
    with open(a, "rb") as fh:
        assert fh.read(2) == b"\x02\x02"
    await m.create("h", f"0 64 flakey {a} 0 0 180 5 corrupt_bio_byte 1 r 170 1")
    assert bytes(await m.get("h").read(0, 2)) == b"\x02\x02"  # a read's op is 0: no match


async def test_random_corruption_replaces_one_byte(make_file: Callable[..., str]) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("f", f"0 64 flakey {a} 0 0 180 2 random_read_corrupt 1000000000")
    target = _target(m)
    target.rng = random.Random(7)
    expect = random.Random(7)
    expect.randrange(1_000_000_000)
    pos, value = expect.randrange(4096), expect.randrange(256)
    want = bytearray(pattern(0, 4096))
    want[pos] = value
    assert bytes(await m.get("f").read(0, 4096)) == bytes(want)

    await m.create("w", f"0 64 flakey {a} 0 0 180 2 random_write_corrupt 1000000000")
    target = _target(m, "w")
    target.rng = random.Random(9)
    expect = random.Random(9)
    expect.randrange(1_000_000_000)
    pos, value = expect.randrange(4096), expect.randrange(256)
    data = bytes(4096)
    await m.get("w").write(8192, memoryview(data))
    written = bytearray(4096)
    written[pos] = value
    with open(a, "rb") as fh:
        fh.seek(8192)
        assert fh.read(4096) == bytes(written)

    await m.create("n", f"0 64 flakey {a} 0 0 180 2 random_read_corrupt 0")
    assert m.table("n")[0]["lines"][0].endswith("2 error_reads error_writes")


async def test_random_probability_is_out_of_a_billion(make_file: Callable[..., str]) -> None:
    a = make_file("a", MiB)
    m = Manager()
    await m.create("f", f"0 64 flakey {a} 0 0 180 2 random_read_corrupt 250000000")
    target = _target(m)
    target.rng = random.Random(1)
    dev = m.get("f")
    clean = pattern(0, 512)
    hits = 0
    for _ in range(400):
        if bytes(await dev.read(0, 512)) != clean:
            hits += 1
    # p = 1/4; a replaced byte equal to the old one (1/256) reads clean
    assert 70 <= hits <= 130
