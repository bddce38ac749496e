"""Our pyfuse3 patches (patches/pyfuse3-3.5.0-0001-fallocate-lseek.patch, -0003-write-flags)
on a real mount.

A minimal pyfuse3 filesystem (tests/integration/_fallocate_fs.py) runs in a subprocess; it
logs every fallocate, lseek, write and fsync call it receives. With the patches,
``fallocate -p``/``-z`` and SEEK_DATA/SEEK_HOLE reach Python, and so do the flags of every
write (O_DSYNC/O_SYNC of ``pwritev2`` RWF_DSYNC/RWF_SYNC or of the file descriptor) when the
filesystem sets ``enable_write_flags``; a filesystem that does not override the handlers gets
pyfuse3's ENOSYS defaults, after which the kernel behaves as without the patch, and one that
does not opt in to write flags has ``write`` called with three arguments, as before.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from tests.integration import _fallocate_fs as helper

SEEK_DATA = 3
SEEK_HOLE = 4
MODE_PUNCH_HOLE_KEEP_SIZE = 3  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, as fallocate -p
MODE_ZERO_RANGE = 16  # FALLOC_FL_ZERO_RANGE, as fallocate -z
SIZE = helper.FILE_SIZE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
    reason="mounting a FUSE filesystem needs root and /dev/fuse",
)


class FuseFs:
    def __init__(self, root: Path) -> None:
        self.mnt = root / "mnt"
        self.log_path = root / "calls.jsonl"
        self.file = str(self.mnt / helper.FILE_NAME.decode())

    def calls(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def read_all(self) -> bytes:
        # A fresh open: pyfuse3 files are opened without keep_cache, so this reads through.
        with open(self.file, "rb") as fh:
            return fh.read()


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as fh:
        return any(line.split()[1] == str(path) for line in fh)


def stop(proc: subprocess.Popen[bytes], mnt: Path) -> None:
    """Unmount (the filesystem then exits by itself), kill it if it does not, never leak."""
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)


StartFs = Callable[..., FuseFs]


@pytest.fixture
def start_fs(tmp_path: Path) -> Iterator[StartFs]:
    """Mount the helper filesystem (``defaults=True``: fallocate/lseek not overridden, no write
    flags; ``direct_io=True``: the file is opened with ``direct_io``)."""
    running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(defaults: bool, direct_io: bool = False) -> FuseFs:
        name = ("defaults" if defaults else "handlers") + ("-direct" if direct_io else "")
        fs = FuseFs(tmp_path / name)
        fs.mnt.mkdir(parents=True)
        stderr_path = fs.mnt.parent / "fs.stderr"
        cmd = [sys.executable, helper.__file__, str(fs.mnt), str(fs.log_path)]
        if defaults:
            cmd.append("--defaults")
        if direct_io:
            cmd.append("--direct-io")
        with open(stderr_path, "wb") as stderr:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=stderr)
        running.append((proc, fs.mnt))
        deadline = time.monotonic() + 30
        while not is_mounted(fs.mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"filesystem did not mount:\n{stderr_path.read_text()}")
            time.sleep(0.05)
        return fs

    try:
        yield start
    finally:
        for proc, mnt in reversed(running):
            stop(proc, mnt)


async def fallocate_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        ["fallocate", *args],
        check=False,
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ, "LC_ALL": "C"},
    )


def fallocate_errno(path: str, mode: int, offset: int, length: int) -> int:
    """fallocate(2) on *path*: 0, or the errno it failed with."""
    fd = os.open(path, os.O_RDWR)
    try:
        if _libc.fallocate(fd, mode, offset, length) == 0:
            return 0
        return ctypes.get_errno()
    finally:
        os.close(fd)


def seek(path: str, offset: int, whence: int) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, offset, whence)
    finally:
        os.close(fd)


async def test_fallocate_and_lseek_reach_python(start_fs: StartFs) -> None:
    fs = start_fs(False)
    expected = bytearray(helper.initial_data())
    assert fs.read_all() == expected

    proc = await fallocate_cli("-p", "-o", "4096", "-l", "8192", fs.file)
    assert proc.returncode == 0, proc.stderr
    proc = await fallocate_cli("-z", "-o", "65536", "-l", "1000", fs.file)
    assert proc.returncode == 0, proc.stderr
    expected[4096 : 4096 + 8192] = bytes(8192)
    expected[65536 : 65536 + 1000] = bytes(1000)

    calls = [c for c in fs.calls() if c["op"] == "fallocate"]  # fallocate(1) also fsyncs
    assert [(c["op"], c["mode"], c["offset"], c["length"]) for c in calls] == [
        ("fallocate", MODE_PUNCH_HOLE_KEEP_SIZE, 4096, 8192),
        ("fallocate", MODE_ZERO_RANGE, 65536, 1000),
    ]
    data = fs.read_all()
    assert len(data) == SIZE
    assert data[4096 : 4096 + 8192] == bytes(8192)
    assert data[65536 : 65536 + 1000] == bytes(1000)
    assert data == expected

    # SEEK_DATA/SEEK_HOLE are answered by the filesystem's hole map: the punched hole shows
    # (the kernel's generic fallback would say "all data, hole at EOF").
    assert seek(fs.file, 0, os.SEEK_DATA) == 0
    assert seek(fs.file, 0, os.SEEK_HOLE) == 4096
    assert seek(fs.file, 5000, os.SEEK_HOLE) == 5000
    assert seek(fs.file, 4096, os.SEEK_DATA) == 4096 + 8192
    assert seek(fs.file, 4096 + 8192, os.SEEK_HOLE) == SIZE
    with pytest.raises(OSError) as exc:
        seek(fs.file, SIZE, os.SEEK_DATA)
    assert exc.value.errno == errno.ENXIO
    # SEEK_SET/SEEK_CUR/SEEK_END are the kernel's own business and never reach Python.
    assert seek(fs.file, 100, os.SEEK_SET) == 100
    assert seek(fs.file, 0, os.SEEK_END) == SIZE

    lseeks = [(c["offset"], c["whence"]) for c in fs.calls() if c["op"] == "lseek"]
    assert lseeks == [
        (0, SEEK_DATA),
        (0, SEEK_HOLE),
        (5000, SEEK_HOLE),
        (4096, SEEK_DATA),
        (4096 + 8192, SEEK_HOLE),
        (SIZE, SEEK_DATA),
    ]

    # Punching at the end of the file: SEEK_DATA from inside the last hole finds none.
    proc = await fallocate_cli("-p", "-o", str(SIZE - 4096), "-l", "8192", fs.file)
    assert proc.returncode == 0, proc.stderr
    assert seek(fs.file, 12288, os.SEEK_HOLE) == SIZE - 4096
    with pytest.raises(OSError) as exc:
        seek(fs.file, SIZE - 100, os.SEEK_DATA)
    assert exc.value.errno == errno.ENXIO
    assert fs.read_all()[SIZE - 4096 :] == bytes(4096)


async def test_defaults_keep_the_kernel_fallback(start_fs: StartFs) -> None:
    fs = start_fs(True)
    original = bytes(helper.initial_data())

    # pyfuse3's default fallocate raises ENOSYS; the kernel turns that into EOPNOTSUPP, and
    # remembers it for the connection.
    for _ in range(2):
        assert fallocate_errno(fs.file, MODE_PUNCH_HOLE_KEEP_SIZE, 4096, 8192) == errno.EOPNOTSUPP
        assert fallocate_errno(fs.file, MODE_ZERO_RANGE, 65536, 1000) == errno.EOPNOTSUPP
        proc = await fallocate_cli("-p", "-o", "4096", "-l", "8192", fs.file)
        assert proc.returncode != 0
        assert b"unsupported" in proc.stderr, proc.stderr  # util-linux words EOPNOTSUPP so
        proc = await fallocate_cli("-z", "-o", "65536", "-l", "1000", fs.file)
        assert proc.returncode != 0
        assert b"not supported" in proc.stderr, proc.stderr
    assert fs.read_all() == original

    # The default lseek raises ENOSYS too: the kernel's generic behaviour, all data with the
    # only hole at end of file.
    for _ in range(2):
        assert seek(fs.file, 0, os.SEEK_DATA) == 0
        assert seek(fs.file, 4096, os.SEEK_DATA) == 4096
        assert seek(fs.file, 0, os.SEEK_HOLE) == SIZE
        with pytest.raises(OSError) as exc:
            seek(fs.file, SIZE, os.SEEK_DATA)
        assert exc.value.errno == errno.ENXIO

    assert fs.calls() == []


async def test_default_operations_raise_enosys() -> None:
    ops = pyfuse3.Operations()
    assert ops.enable_write_flags is False
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await ops.fallocate(0, MODE_PUNCH_HOLE_KEEP_SIZE, 0, 4096)
    assert exc.value.errno == errno.ENOSYS
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await ops.lseek(0, 0, SEEK_DATA)
    assert exc.value.errno == errno.ENOSYS


SYNC_BITS = os.O_SYNC | os.O_DSYNC


def write_sequence(path: str) -> None:
    """A plain write, RWF_DSYNC, RWF_SYNC, then writes through O_DSYNC and O_SYNC handles."""
    fd = os.open(path, os.O_RDWR)
    try:
        assert os.pwritev(fd, [b"a" * 4096], 0) == 4096
        assert os.pwritev(fd, [b"b" * 4096], 4096, os.RWF_DSYNC) == 4096
        assert os.pwritev(fd, [b"c" * 4096], 8192, os.RWF_SYNC) == 4096
    finally:
        os.close(fd)
    for at, flag in ((12288, os.O_DSYNC), (16384, os.O_SYNC)):
        fd = os.open(path, os.O_WRONLY | flag)
        try:
            assert os.pwrite(fd, b"d" * 4096, at) == 4096
        finally:
            os.close(fd)


@pytest.mark.parametrize("direct_io", [False, True], ids=["page-cache", "direct-io"])
async def test_write_flags_reach_python(start_fs: StartFs, direct_io: bool) -> None:
    fs = start_fs(False, direct_io)
    write_sequence(fs.file)
    writes = [c for c in fs.calls() if c["op"] == "write"]
    assert -1 not in [c["flags"] for c in writes], "write() was called without its flags"
    assert [(c["offset"], c["length"], c["flags"] & SYNC_BITS) for c in writes] == [
        (0, 4096, 0),
        (4096, 4096, os.O_DSYNC),
        (8192, 4096, os.O_SYNC),  # O_SYNC is __O_SYNC | O_DSYNC
        (12288, 4096, os.O_DSYNC),
        (16384, 4096, os.O_SYNC),
    ]
    # the rest are the descriptor's own flags, as the kernel's fuse_write_flags() sends them
    accmodes = [c["flags"] & os.O_ACCMODE for c in writes]
    assert accmodes == [os.O_RDWR] * 3 + [os.O_WRONLY] * 2
    fsyncs = [c["datasync"] for c in fs.calls() if c["op"] == "fsync"]
    if direct_io:
        # No page cache, no fsync: the flags are all the filesystem learns of a sync write.
        assert fsyncs == []
    else:
        # Through the page cache the kernel follows each sync write with an fsync itself.
        assert fsyncs == [1, 0, 1, 0]
    data = fs.read_all()
    assert data[:4096] == b"a" * 4096 and data[4096:8192] == b"b" * 4096
    assert data[8192:12288] == b"c" * 4096 and data[12288:20480] == b"d" * 8192


async def test_write_without_opt_in_is_called_as_before(start_fs: StartFs) -> None:
    fs = start_fs(True, True)
    write_sequence(fs.file)
    assert [c for c in fs.calls() if c["op"] == "write"] == [
        {"op": "write", "offset": at, "length": 4096} for at in range(0, 20480, 4096)
    ]
    assert fs.read_all()[12288:20480] == b"d" * 8192
