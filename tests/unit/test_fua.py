"""FUA writes (the kernel's REQ_FUA) through the engine: ``Device.write(..., fua=True)`` reaches
every target as ``write_fua``; targets that map onto one backend pass it down (a file backend
then writes with ``RWF_DSYNC``), the default writes and then flushes the target's backends,
log-writes logs a FUA entry at once, and a stacked device passes it to the device below."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from dmfuse.engine.manager import Manager
from dmfuse.targets.log_writes import log_format as fmt
from dmfuse.targets.log_writes import replay as replay_log
from tests.conftest import pattern

MiB = 1 << 20


class Syscalls:
    """Records the pwritev flags and fsyncs of backing files (FUA writes run in a thread)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, paths: list[str]) -> None:
        self.inodes = {os.stat(p).st_ino: p for p in paths}
        self.calls: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        real_pwritev, real_fsync = os.pwritev, os.fsync

        def pwritev(fd: int, bufs: list[memoryview], offset: int, flags: int = 0) -> int:
            self._record("pwritev", fd, offset if flags & os.RWF_DSYNC else -1)
            return real_pwritev(fd, bufs, offset, flags)

        def fsync(fd: int) -> None:
            self._record("fsync", fd, 0)
            real_fsync(fd)

        monkeypatch.setattr(os, "pwritev", pwritev)
        monkeypatch.setattr(os, "fsync", fsync)

    def _record(self, call: str, fd: int, arg: int) -> None:
        path = self.inodes.get(os.fstat(fd).st_ino)
        if path is not None:
            with self._lock:
                self.calls.append((call, os.path.basename(path), arg))

    def take(self) -> list[tuple[str, str, int]]:
        calls, self.calls = self.calls, []
        return calls


@pytest.mark.parametrize(
    ("table", "fua_at"),
    [
        ("0 64 linear {a} 16", 16 * 512 + 4096),
        ("0 64 striped 2 8 {b} 0 {a} 32", 32 * 512),  # sector 8 is chunk 1: stripe 1
        ("0 32 unstriped 2 8 1 {a} 0", 3 * 4096),  # its chunk 1 is the device's chunk 3
        ("0 64 dust {a} 0 4096", 4096),
        ("0 64 delay {a} 0 0", 4096),
        ("0 64 flakey {a} 0 180 0", 4096),  # up: exactly linear
    ],
)
async def test_targets_pass_fua_down_to_the_backend(
    make_file: Callable[..., str], monkeypatch: pytest.MonkeyPatch, table: str, fua_at: int
) -> None:
    a, b = make_file("a", MiB), make_file("b", MiB)
    m = Manager()
    await m.create("d", table.format(a=a, b=b))
    dev = m.get("d")
    sys = Syscalls(monkeypatch, [a, b])
    data = pattern(0, 4096, 7)
    await dev.write(4096, memoryview(data))
    assert sys.take() == [("pwritev", "a", -1)]  # a plain write: no RWF_DSYNC, no fsync
    await dev.write(4096, memoryview(data), fua=True)
    assert sys.take() == [("pwritev", "a", fua_at)]  # RWF_DSYNC on the one file written
    assert bytes(await dev.read(4096, 4096)) == data
    await m.remove("d")


async def test_default_write_fua_writes_then_flushes_each_device_once(
    make_file: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # snapshot-origin keeps the default: the write (copy-outs included), then its devices flushed
    a = make_file("a", MiB)
    m = Manager()
    await m.create("o", f"0 2048 snapshot-origin {a}")
    sys = Syscalls(monkeypatch, [a])
    await m.get("o").write(0, memoryview(pattern(0, 4096, 3)), fua=True)
    assert sys.take() == [("pwritev", "a", -1), ("fsync", "a", 0)]
    await m.remove("o")


async def test_fua_write_across_targets_is_fua_in_every_piece(
    make_file: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = make_file("a", MiB), make_file("b", MiB)
    m = Manager()
    await m.create("d", f"0 8 linear {a} 0\n8 8 linear {b} 0")
    sys = Syscalls(monkeypatch, [a, b])
    await m.get("d").write(2048, memoryview(pattern(0, 4096, 1)), fua=True)
    assert sorted(sys.take()) == [("pwritev", "a", 2048), ("pwritev", "b", 0)]
    await m.remove("d")


def _entries(log: str) -> list[tuple[int, int, int]]:
    reader = replay_log.LogReader(log)
    try:
        return [(r.entry.sector, r.entry.nr_sectors, r.entry.flags) for r in reader.records()]
    finally:
        reader.close()


def _super_entries(log: str) -> int:
    return fmt.decode_super(Path(log).read_bytes()[:512]).nr_entries


async def test_log_writes_logs_a_fua_write_at_once_ahead_of_unflushed_writes(
    make_file: Callable[..., str],
) -> None:
    dev, log = make_file("dev", MiB, seed=None), make_file("log", MiB, seed=None)
    m = Manager()
    await m.create("lw", f"0 2048 log-writes {dev} {log}")
    d = m.get("lw")
    await d.write(8 * 512, memoryview(pattern(0, 4096, 1)))
    await d.write(16 * 512, memoryview(pattern(0, 4096, 2)), fua=True)
    # normal_end_io: the FUA entry goes to the log at once and rewrites the super block
    assert m.status("lw")[0]["lines"] == ["0 2048 log-writes 1 9"]
    assert _entries(log) == [(16, 8, fmt.FUA)] and _super_entries(log) == 1
    raw = Path(log).read_bytes()
    assert raw[2 * 512 : 2 * 512 + 4096] == pattern(0, 4096, 2)
    await d.flush()  # logs the older plain write, then the FLUSH
    assert m.status("lw")[0]["lines"] == ["0 2048 log-writes 3 19"]
    # an unaligned FUA write is logged as the whole sectors it rewrote, still FUA
    await d.write(40 * 512 + 100, memoryview(b"x" * 10), fua=True)
    await m.remove("lw")
    assert _entries(log) == [
        (16, 8, fmt.FUA),
        (8, 8, 0),
        (0, 0, fmt.FLUSH),
        (40, 1, fmt.FUA),
        (0, 0, fmt.MARK),
    ]


async def test_fua_on_a_stacked_device_reaches_the_device_below(
    make_file: Callable[..., str],
) -> None:
    dev, log = make_file("dev", MiB, seed=None), make_file("log", MiB, seed=None)
    m = Manager()
    await m.create("low", f"0 2048 log-writes {dev} {log}")
    await m.create("top", "0 1024 linear /dev/mapper/low 1024")
    top = m.get("top")
    await top.write(0, memoryview(pattern(0, 4096, 4)), fua=True)
    await top.write(4096, memoryview(pattern(0, 4096, 5)))
    await m.remove("top")
    await m.remove("low")
    # the kernel's linear keeps REQ_FUA on the remapped bio: log-writes below sees a FUA write
    assert _entries(log) == [(1024, 8, fmt.FUA), (1032, 8, 0), (0, 0, fmt.MARK)]


async def test_flakey_corrupt_flags_can_select_fua_writes(make_file: Callable[..., str]) -> None:
    a = make_file("a", MiB)
    m = Manager()
    # always down; corrupt byte 1 of writes whose flags include REQ_FUA (1 << 17)
    await m.create("f", f"0 64 flakey {a} 0 0 180 5 corrupt_bio_byte 1 w 170 131072")
    dev = m.get("f")
    await dev.write(0, memoryview(b"\x01" * 512))
    await dev.write(512, memoryview(b"\x01" * 512), fua=True)
    with open(a, "rb") as fh:
        assert fh.read(1024) == b"\x01" * 512 + b"\xaa" + b"\x01" * 511
    await m.create("g", f"0 64 flakey {a} 0 0 180 1 drop_writes")
    await m.get("g").write(0, memoryview(b"\x02" * 512), fua=True)  # dropped like any write
    with open(a, "rb") as fh:
        assert fh.read(1) == b"\x01"


async def test_a_flush_after_only_fua_writes_does_not_sync_again(
    make_file: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an O_DIRECT|O_DSYNC write on the device file does: a FUA write, then a flush.
    a = make_file("a", MiB)
    m = Manager()
    await m.create("d", f"0 2048 linear {a} 0")
    dev = m.get("d")
    sys = Syscalls(monkeypatch, [a])
    await dev.flush()
    assert sys.take() == [("fsync", "a", 0)]  # the first flush syncs: nothing is known yet
    await dev.flush()
    assert sys.take() == []  # nothing written since a completed sync
    await dev.write(0, memoryview(pattern(0, 4096, 1)), fua=True)
    await dev.flush()
    assert sys.take() == [("pwritev", "a", 0)]  # RWF_DSYNC made it durable: one sync in all
    await dev.write(4096, memoryview(pattern(0, 4096, 2)))
    await dev.write(8192, memoryview(pattern(0, 4096, 3)), fua=True)
    await dev.flush()
    assert sys.take() == [("pwritev", "a", -1), ("pwritev", "a", 8192), ("fsync", "a", 0)]
    await dev.discard(0, 4096)
    await dev.flush()
    assert sys.take() == [("fsync", "a", 0)]  # a punched hole is a change to sync too
    await dev.discard(0, 4096, zero_fill=True)
    await dev.flush()
    assert sys.take() == [("fsync", "a", 0)]
    await m.remove("d")


async def test_a_backend_written_from_c_always_syncs(
    make_file: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # crypt writes through the backend's fd from C, past the count: every flush must sync
    a = make_file("a", MiB)
    m = Manager()
    key = bytes(range(32)).hex()
    await m.create("c", f"0 2048 crypt aes-xts-plain64 {key} 0 {a} 0")
    sys = Syscalls(monkeypatch, [a])
    await m.get("c").flush()
    await m.get("c").flush()
    assert sys.take() == [("fsync", "a", 0), ("fsync", "a", 0)]
    await m.remove("c")
