"""dm-log-writes: the pure log format, the log-writes target (engine level, no FUSE) and the
``replay-log`` tool, including logs written by the real kernel (tests/data/kernel/, recorded
with logwrites_vm.sh in the kernel VM; the I/O is tests/data/kernel/logwrites_ops.py)."""

from __future__ import annotations

import errno
import gzip
import logging
import os
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError
from dmfuse.targets.log_writes import log_format as fmt
from dmfuse.targets.log_writes import replay as replay_log
from tests.conftest import pattern

KERNEL = Path(__file__).parent.parent / "data" / "kernel"
MiB = 1 << 20

# -- the format ------------------------------------------------------------------------------


def test_super_bytes_match_the_kernel() -> None:
    raw = fmt.encode_super(4, 512)
    assert len(raw) == 512
    assert raw[:8] == bytes.fromhex("72 68 73 77 66 73 6a 00")  # "rhswfsj\0" as oracles.md §3
    assert struct.unpack_from("<QQI", raw, 8) == (1, 4, 512)
    assert raw[28:] == bytes(484)
    assert fmt.decode_super(raw) == fmt.Super(nr_entries=4, sectorsize=512)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "too short"),
        (bytes(512), "magic doesn't match"),
        (struct.pack("<QQQI", fmt.MAGIC, 2, 0, 512), "version mismatch"),
        (struct.pack("<QQQI", fmt.MAGIC, 1, 0, 1000), "invalid sector size"),
    ],
)
def test_bad_super_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(fmt.FormatError, match=message):
        fmt.decode_super(raw)


def test_mark_entry_layout_and_truncation() -> None:
    entry = fmt.mark_entry(b"first_mark", 512)
    raw = fmt.encode_entry(entry, 512)
    assert struct.unpack_from("<QQQQ", raw) == (0, 0, fmt.MARK, 10)
    assert raw[32:42] == b"first_mark" and raw[42:] == bytes(470)
    long = fmt.mark_entry(b"L" * 600, 512)
    assert long.data_len == 479 and long.mark == b"L" * 479  # the kernel kept 479 (VM)
    assert fmt.decode_entry(fmt.encode_entry(long, 512)) == long


@given(
    sector=st.integers(0, 2**64 - 1),
    nr=st.integers(0, 2**32),
    flags=st.integers(0, fmt.FLUSH | fmt.FUA | fmt.DISCARD | fmt.METADATA),
)
def test_entry_round_trip(sector: int, nr: int, flags: int) -> None:
    entry = fmt.Entry(sector=sector, nr_sectors=nr, flags=flags)
    assert fmt.decode_entry(fmt.encode_entry(entry, 4096)) == entry
    assert entry.log_sectors() == 1 + (0 if flags & fmt.DISCARD else nr)


def test_flag_names() -> None:
    assert fmt.flag_names(0) == "NONE"
    assert fmt.flag_names(fmt.FLUSH | fmt.FUA) == "FLUSH|FUA"
    assert fmt.flag_names(fmt.MARK | 0x40) == "MARK|0x40"


# -- logs written by the kernel --------------------------------------------------------------


def _unzip(name: str, dest: Path) -> str:
    path = dest / name.removesuffix(".gz")
    path.write_bytes(gzip.decompress((KERNEL / name).read_bytes()))
    return str(path)


def _entries(log: str) -> list[tuple[int, int, int, int, bytes]]:
    reader = replay_log.LogReader(log)
    try:
        return [
            (r.entry.sector, r.entry.nr_sectors, r.entry.flags, r.entry.data_len, r.entry.mark)
            for r in reader.records()
        ]
    finally:
        reader.close()


# What the kernel logged for logwrites_ops.py "compare" (decoded once, checked by hand against
# the I/O: 4k@24, 8k@64, fsync, mark, 64k@256, discard 8@272, 512@1000, fsync, mark, 4k@1500).
KERNEL_COMPARE = [
    (24, 8, 0, 0, b""),
    (64, 16, 0, 0, b""),
    (0, 0, fmt.FLUSH, 0, b""),
    (0, 0, fmt.MARK, 10, b"first_mark"),
    (256, 128, 0, 0, b""),
    (272, 8, fmt.DISCARD, 0, b""),
    (1000, 1, 0, 0, b""),
    (0, 0, fmt.FLUSH, 0, b""),
    (0, 0, fmt.MARK, 6, b"second"),
    (1500, 8, 0, 0, b""),
    (0, 0, fmt.MARK, 17, b"dm-log-writes-end"),
]
KERNEL_FUA = [
    (16, 8, fmt.FUA, 0, b""),  # logged at once, ahead of the earlier plain write
    (8, 8, 0, 0, b""),
    (0, 0, fmt.FLUSH, 0, b""),  # O_DSYNC's own flush after the FUA write
    (32, 8, 0, 0, b""),
    (0, 0, fmt.FLUSH, 0, b""),
    (0, 0, fmt.MARK, 10, b"upper_case"),
    (0, 0, fmt.MARK, 479, b"L" * 479),
    (0, 0, fmt.MARK, 17, b"dm-log-writes-end"),
]
# logwrites_ops.py "fua-mix-a" then "fua-mix-b" (logwrites_fua_vm.sh): a sync write on a block
# device is the write (REQ_FUA if O_DIRECT), then generic_write_sync's flush.
KERNEL_FUA_MIX = [
    (16, 8, fmt.FUA, 0, b""),  # O_DIRECT + RWF_DSYNC: logged at once...
    (8, 8, 0, 0, b""),
    (0, 0, fmt.FLUSH, 0, b""),  # ...and the flush after it logs the older plain write
    (48, 8, fmt.FUA, 0, b""),
    (32, 8, 0, 0, b""),
    (40, 8, 0, 0, b""),
    (0, 0, fmt.FLUSH, 0, b""),  # status here: 7 47
    (64, 8, fmt.FUA, 0, b""),  # O_DIRECT|O_DSYNC descriptor
    (0, 0, fmt.FLUSH, 0, b""),
    (72, 8, fmt.FUA, 0, b""),  # RWF_SYNC
    (0, 0, fmt.FLUSH, 0, b""),
    (80, 8, 0, 0, b""),  # buffered RWF_DSYNC: the page is written back (no FUA), then flushed
    (0, 0, fmt.FLUSH, 0, b""),
    (96, 16, 0, 0, b""),
    (0, 0, fmt.FLUSH, 0, b""),  # fdatasync; status here: 15 95
    (128, 8, 0, 0, b""),  # never flushed: logged at remove
    (0, 0, fmt.MARK, 17, b"dm-log-writes-end"),
]


@pytest.mark.parametrize(
    ("which", "expected"),
    [("compare", KERNEL_COMPARE), ("fua", KERNEL_FUA), ("fuamix", KERNEL_FUA_MIX)],
)
def test_kernel_log_parses(tmp_path: Path, which: str, expected: list[object]) -> None:
    assert _entries(_unzip(f"logwrites-{which}.log.gz", tmp_path)) == expected


def _discarded(log: str) -> set[int]:
    return {
        sector
        for sector, nr, flags, _, _ in _entries(log)
        if flags & fmt.DISCARD
        for sector in range(sector, sector + nr)
    }


@pytest.mark.parametrize("which", ["compare", "fua", "fuamix"])
def test_kernel_log_replays_to_the_kernel_device(tmp_path: Path, which: str) -> None:
    log = _unzip(f"logwrites-{which}.log.gz", tmp_path)
    kernel_dev = Path(_unzip(f"logwrites-{which}.dev.gz", tmp_path)).read_bytes()
    target = tmp_path / "replayed.img"
    target.write_bytes(bytes(MiB))
    assert replay_log.main(["--log", log, "--replay", str(target)]) == 0
    got = target.read_bytes()
    discarded = _discarded(log)
    for sector in range(MiB // 512):
        mine, theirs = got[sector * 512 : sector * 512 + 512], kernel_dev[sector * 512 :][:512]
        if sector in discarded:
            # qemu's virtio disk ignores discards (the kernel device keeps the old data);
            # replay makes a discarded range read zeros
            assert mine == bytes(512)
        else:
            assert mine == theirs, f"sector {sector}"
    assert discarded == (set(range(272, 280)) if which == "compare" else set())


def test_replay_to_marks_limits_and_find(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _unzip("logwrites-compare.log.gz", tmp_path)
    assert replay_log.main(["--log", log, "--find", "--end-mark", "second"]) == 0
    assert capsys.readouterr().out == "8@163\n"
    assert replay_log.main(["--log", log, "--find", "--next-flush"]) == 0
    assert capsys.readouterr().out == "2@28\n"
    assert (
        replay_log.main(["--log", log, "--find", "--start-mark", "first_mark", "--next-flush"]) == 0
    )
    assert capsys.readouterr().out == "7@162\n"
    assert replay_log.main(["--log", log, "--find", "--end-mark", "nope"]) == 1
    assert "Couldn't find starting point" in capsys.readouterr().err
    assert replay_log.main(["--log", log, "--num-entries"]) == 0
    assert capsys.readouterr().out == "11\n"

    dev = tmp_path / "d.img"
    dev.write_bytes(bytes(MiB))
    assert replay_log.main(["--log", log, "--replay", str(dev), "--end-mark", "first_mark"]) == 0
    data = dev.read_bytes()
    assert data[24 * 512 : 32 * 512] != bytes(4096) and data[64 * 512 :][:8192] != bytes(8192)
    assert data[256 * 512 :][:512] == bytes(512)  # written after the mark: not replayed
    # --limit N replays N entries from the start point
    assert (
        replay_log.main(
            ["--log", log, "--replay", str(dev), "--start-mark", "first_mark", "--limit", "1"]
        )
        == 0
    )
    data = dev.read_bytes()
    assert data[256 * 512 :][:512] != bytes(512) and data[1000 * 512 :][:512] == bytes(512)


def test_fsck_runs_at_every_flush_and_stops_on_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _unzip("logwrites-compare.log.gz", tmp_path)
    dev = tmp_path / "d.img"
    dev.write_bytes(bytes(MiB))
    calls = tmp_path / "calls"
    # the "fsck" records which sectors hold data when it runs: replay is incremental
    probe = (
        f"{sys.executable} -c \"import sys; d=open('{dev}','rb').read(); "
        f"open('{calls}','a').write(str(d[1000*512]!=0)+'\\n')\""
    )
    args = ["--log", log, "--replay", str(dev), "--fsck", probe, "--check", "flush"]
    assert replay_log.main(args) == 0
    assert calls.read_text().split() == ["False", "True"]  # flush 1 before, flush 2 after 1000
    failing = ["--log", log, "--replay", str(dev), "--fsck", "exit 3", "--check", "flush"]
    assert replay_log.main(failing) == 1
    assert "Fsck errored out on entry 2" in capsys.readouterr().err
    calls.unlink()
    dev.write_bytes(bytes(MiB))
    assert replay_log.main([*args[:-1], "4"]) == 0  # every 4 entries: after entries 3 and 7
    assert calls.read_text().split() == ["False", "True"]


def test_fsck_runs_at_every_fua_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--check fua: the state a crash leaves right after each FUA write, whose data is there
    while plain writes completed before it (logged after it) are not yet."""
    log = _unzip("logwrites-fuamix.log.gz", tmp_path)
    dev = tmp_path / "d.img"
    dev.write_bytes(bytes(MiB))
    calls = tmp_path / "calls"
    probe = (
        f"{sys.executable} -c \"d=open('{dev}','rb').read(); open('{calls}','a').write("
        f"','.join(str(s) for s in (8, 16, 32, 48, 64, 72, 80) if d[s*512]) + chr(10))\""
    )
    args = ["--log", log, "--replay", str(dev), "--fsck", probe, "--check", "fua"]
    assert replay_log.main(args) == 0
    assert calls.read_text().split() == ["16", "8,16,48", "8,16,32,48,64", "8,16,32,48,64,72"]
    failing = ["--log", log, "--replay", str(dev), "--fsck", "exit 1", "--check", "fua"]
    assert replay_log.main(failing) == 1
    assert "Fsck errored out on entry 0" in capsys.readouterr().err


def test_fua_no_discard_start_entry_and_verbose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fua = _unzip("logwrites-fua.log.gz", tmp_path)
    assert replay_log.main(["--log", fua, "--find", "--next-fua"]) == 0
    assert capsys.readouterr().out == "0@10\n"
    assert replay_log.main(["--log", fua, "--find", "--start-entry", "1", "--next-flush"]) == 0
    assert capsys.readouterr().out == "2@20\n"
    log = _unzip("logwrites-compare.log.gz", tmp_path)
    dev = tmp_path / "d.img"
    dev.write_bytes(b"\xff" * MiB)
    args = ["--log", log, "--replay", str(dev), "--start-entry", "4", "--limit", "2"]
    assert replay_log.main([*args, "--no-discard", "-vv"]) == 0
    assert capsys.readouterr().out == (
        "replaying 4@29: sector 256, size 65536, flags 0(NONE)\n"
        "skipping 5@158: sector 272, size 4096, flags 4(DISCARD)\n"
    )
    data = dev.read_bytes()
    assert data[272 * 512 : 280 * 512] != b"\xff" * 4096  # written by entry 4, not discarded
    assert data[:512] == b"\xff" * 512  # entries 0-3 not replayed
    assert replay_log.main([*args, "-v"]) == 0
    assert "DISCARD" in capsys.readouterr().out
    assert dev.read_bytes()[272 * 512 : 280 * 512] == bytes(4096)  # the discard zeroed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--log", "/nonexistent"], "cannot open log /nonexistent"),
        (["--log", "{zero}", "--num-entries"], "not a log-writes log: magic doesn't match"),
        (["--log", "{log}", "--replay", "/nonexistent/x"], "cannot open replay device"),
        (
            ["--log", "{log}", "--replay", "{zero}", "--start-mark", "x"],
            "Couldn't find starting mark",
        ),
        (["--log", "{log}"], "nothing to do"),
    ],
)
def test_replay_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    zero = tmp_path / "zero.img"
    zero.write_bytes(bytes(4096))
    log = _unzip("logwrites-compare.log.gz", tmp_path)
    assert replay_log.main([a.format(zero=zero, log=log) for a in argv]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_replay_usage_errors() -> None:
    with pytest.raises(SystemExit) as exc:
        replay_log.main(["--log", "x", "--fsck", "true"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        replay_log.main(["--log", "x", "--check", "sometimes", "--fsck", "true"])


# -- the target, through the engine ----------------------------------------------------------


async def _setup(make_file: Callable[..., str], log_size: int = MiB) -> tuple[Manager, str, str]:
    dev = make_file("dev.img", MiB, seed=None)
    log = make_file("log.img", log_size, seed=None)
    m = Manager()
    await m.create("lw", f"0 2048 log-writes {dev} {log}")
    return m, dev, log


async def test_flush_logs_completed_writes_then_flush(make_file: Callable[..., str]) -> None:
    m, dev, log = await _setup(make_file)
    d = m.get("lw")
    assert m.table("lw")[0]["lines"] == [f"0 2048 log-writes {dev} {log}"]
    assert m.status("lw")[0]["lines"] == ["0 2048 log-writes 0 0"]
    await d.write(24 * 512, memoryview(pattern(0, 4096)))
    await d.write(64 * 512, memoryview(pattern(0, 8192, 1)))
    assert m.status("lw")[0]["lines"] == ["0 2048 log-writes 0 0"]  # not flushed: not logged
    await d.flush()
    assert m.status("lw")[0]["lines"] == ["0 2048 log-writes 3 27"]
    assert await m.message("lw", 0, "mark first_mark") is None
    await d.write(256 * 512, memoryview(pattern(0, 65536, 3)))
    await d.discard(272 * 512, 4096)
    await d.write(1000 * 512, memoryview(pattern(0, 512, 4)))
    await d.flush()
    await m.message("lw", 0, "mark second")
    await d.write(1500 * 512, memoryview(pattern(0, 4096, 5)))
    assert m.status("lw")[0]["lines"] == ["0 2048 log-writes 9 162"]  # as the kernel (VM)
    assert _entries(log) == KERNEL_COMPARE[:9]  # the super counts up to the last mark
    await m.remove("lw")
    assert _entries(log) == KERNEL_COMPARE
    raw = Path(log).read_bytes()
    assert raw[2 * 512 : 2 * 512 + 4096] == pattern(0, 4096)  # the data follows its header


async def test_same_log_as_the_kernel_byte_for_byte(
    make_file: Callable[..., str], tmp_path: Path
) -> None:
    """The ops of logwrites_ops.py 'compare' (same data): our log is the kernel's log."""
    sys.path.insert(0, str(KERNEL))
    try:
        import logwrites_ops  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(KERNEL))
    m, _, log = await _setup(make_file)
    d = m.get("lw")

    class EngineOps:
        async def write(self, sector: int, nbytes: int, seed: int) -> None:
            await d.write(sector * 512, memoryview(logwrites_ops.fill(sector, nbytes, seed)))

    ops = EngineOps()
    await ops.write(24, 4096, 1)
    await ops.write(64, 8192, 2)
    await d.flush()
    await m.message("lw", 0, "mark first_mark")
    await ops.write(256, 65536, 3)
    await d.discard(272 * 512, 8 * 512)
    await ops.write(1000, 512, 4)
    await d.flush()
    await m.message("lw", 0, "mark second")
    await ops.write(1500, 4096, 5)
    await m.remove("lw")
    kernel = Path(_unzip("logwrites-compare.log.gz", tmp_path)).read_bytes()
    mine = Path(log).read_bytes()
    used = 174 * 512  # super + 11 entries (173 log sectors); the rest is stale on both
    assert mine[:used] == kernel[:used]


async def test_unaligned_write_is_logged_as_whole_sectors(make_file: Callable[..., str]) -> None:
    m, _, log = await _setup(make_file)
    d = m.get("lw")
    await d.write(700, memoryview(b"x" * 100))
    await d.flush()
    await m.remove("lw")
    assert _entries(log)[0] == (1, 1, 0, 0, b"")
    raw = Path(log).read_bytes()
    assert raw[1024 : 1024 + 512] == bytes(188) + b"x" * 100 + bytes(224)


async def test_suspend_flush_is_not_logged_and_reload_ends_the_log(
    make_file: Callable[..., str],
) -> None:
    m, dev, log = await _setup(make_file)
    d = m.get("lw")
    await d.write(0, memoryview(pattern(0, 512)))
    await m.suspend("lw")  # dmfuse syncs backing files here; the kernel sends no flush
    await m.resume("lw")
    assert m.status("lw")[0]["lines"] == ["0 2048 log-writes 0 0"]
    await m.load("lw", f"0 2048 linear {dev} 0")
    await m.resume("lw")  # the old table is destroyed: unflushed write, then the end mark
    assert _entries(log) == [(0, 1, 0, 0, b""), (0, 0, fmt.MARK, 17, b"dm-log-writes-end")]


async def test_write_zeroes_is_logged_as_a_zero_write(make_file: Callable[..., str]) -> None:
    m, _, log = await _setup(make_file)
    d = m.get("lw")
    await d.discard(8 * 512, 4096, zero_fill=True)
    await d.flush()
    await m.remove("lw")
    assert _entries(log)[:2] == [(8, 8, 0, 0, b""), (0, 0, fmt.FLUSH, 0, b"")]


async def test_full_log_disables_logging(
    make_file: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    m, _, log = await _setup(make_file, log_size=20 * 512)
    d = m.get("lw")
    await d.write(0, memoryview(pattern(0, 4096)))  # 9 log sectors: next 10
    await d.write(8 * 512, memoryview(pattern(0, 4096)))  # would make next 19
    await d.write(16 * 512, memoryview(pattern(0, 512)))  # next 21 >= 20: full
    with caplog.at_level(logging.ERROR):
        await d.flush()
    assert "ran out of space" in caplog.text
    # the kernel advances next_sector before its check and never takes it back: 21 - 1
    assert m.status("lw")[0]["lines"] == ["0 2048 log-writes 2 20 logging_disabled"]
    await m.message("lw", 0, "mark after")  # accepted, not logged
    await m.remove("lw")
    # no mark or FUA was logged, so no super was ever written: the log is not readable
    assert Path(log).read_bytes()[:8] == bytes(8)
    with pytest.raises(replay_log.ReplayError, match="magic doesn't match"):
        _entries(log)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mark", "expect 2 arguments, got 1"),
        ("mark a b", "expect 2 arguments, got 3"),
        ("foo bar", "Unrecognised log writes target message received: foo"),
    ],
)
async def test_bad_messages(make_file: Callable[..., str], text: str, message: str) -> None:
    m, _, log = await _setup(make_file)
    with pytest.raises(DmError, match=message) as exc:
        await m.message("lw", 0, text)
    assert exc.value.errno == errno.EINVAL
    assert m.status("lw")[0]["lines"] == ["0 2048 log-writes 0 0"]
    await m.message("lw", 0, "MARK upper")  # the kernel compares case-insensitively
    assert _entries(log) == [(0, 0, fmt.MARK, 5, b"upper")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("", "Invalid argument count"),
        ("{dev}", "Invalid argument count"),
        ("/nonexistent {log}", "log-writes: Device lookup failed"),
        ("{dev} /nonexistent", "log-writes: Log device lookup failed"),
    ],
)
async def test_bad_tables(make_file: Callable[..., str], args: str, message: str) -> None:
    dev = make_file("dev.img", MiB, seed=None)
    log = make_file("log.img", MiB, seed=None)
    m = Manager()
    with pytest.raises(DmError, match=message) as exc:
        await m.create("lw", f"0 2048 log-writes {args.format(dev=dev, log=log)}".strip())
    # a missing device is ENOENT, as the kernel's dm_get_device; everything else EINVAL
    assert exc.value.errno == (errno.ENOENT if "lookup failed" in message else errno.EINVAL)
    assert "lw" not in m.devices and not m.pool._files
    with pytest.raises(DmError, match="too small for target"):
        await m.create("lw", f"0 4096 log-writes {dev} {log}")
    await m.create("lw", f"0 2048 log-writes {dev} {log} extra")  # ignored, as the kernel
    assert m.table("lw")[0]["lines"] == [f"0 2048 log-writes {dev} {log}"]
    assert os.path.getsize(log) == MiB


# -- replay model: replaying to flush point k gives the device as it was at that flush ----------

_OP = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 60), st.integers(1, 4), st.integers(0, 255)),
    st.tuples(st.just("discard"), st.integers(0, 60), st.integers(1, 4), st.just(0)),
    st.tuples(st.just("flush"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("mark"), st.just(0), st.just(0), st.just(0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_OP, max_size=25))
def test_replay_to_each_flush_point_matches_the_device_then(
    ops: list[tuple[str, int, int, int]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        dev, log = os.path.join(tmp, "dev"), os.path.join(tmp, "log")
        for path in (dev, log):
            with open(path, "wb") as fh:
                fh.truncate(MiB)
        snapshots = trio.run(_run_model, dev, log, ops)
        # the end mark flushes nothing: what was unflushed at remove is logged before it
        records = _entries(log)
        flushes = [i for i, e in enumerate(records) if e[2] & fmt.FLUSH]
        assert len(flushes) == len(snapshots) - 1
        scratch = os.path.join(tmp, "scratch")
        for k, want in enumerate(snapshots[:-1]):
            with open(scratch, "wb") as fh:
                fh.truncate(64 * 512)
            limit = flushes[k] + 1
            assert replay_log.main(["--log", log, "--replay", scratch, "--limit", str(limit)]) == 0
            assert Path(scratch).read_bytes() == want, f"flush point {k}"
        with open(scratch, "wb") as fh:
            fh.truncate(64 * 512)
        assert replay_log.main(["--log", log, "--replay", scratch]) == 0
        assert Path(scratch).read_bytes() == snapshots[-1]  # the whole log: the final device


async def _run_model(dev: str, log: str, ops: list[tuple[str, int, int, int]]) -> list[bytes]:
    """Run ops through the engine; return the device (first 64 sectors) at each flush, and at
    the end."""
    m = Manager()
    await m.create("lw", f"0 2048 log-writes {dev} {log}")
    d = m.get("lw")
    snapshots = []
    for n, (op, sector, count, value) in enumerate(ops):
        if op == "write":
            await d.write(sector * 512, memoryview(bytes([value]) * (count * 512)))
        elif op == "discard":
            await d.discard(sector * 512, count * 512)
        elif op == "flush":
            await d.flush()
            snapshots.append(bytes(await d.read(0, 64 * 512)))
        else:
            await m.message("lw", 0, f"mark m{n}")
    snapshots.append(bytes(await d.read(0, 64 * 512)))
    await m.remove("lw")
    return snapshots
