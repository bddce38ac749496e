"""Our pyfuse3 patch (patches/pyfuse3-3.5.0-*fallocate-lseek.patch) on a real mount.

A minimal pyfuse3 filesystem (tests/integration/_fallocate_fs.py) runs in a subprocess; it
logs every fallocate and lseek call it receives. With the patch, ``fallocate -p``/``-z`` and
SEEK_DATA/SEEK_HOLE reach Python; a filesystem that does not override the handlers gets
pyfuse3's ENOSYS defaults, after which the kernel behaves as without the patch.
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


@pytest.fixture
def start_fs(tmp_path: Path) -> Iterator[Callable[[bool], FuseFs]]:
    """Mount the helper filesystem (``defaults=True``: fallocate/lseek not overridden)."""
    running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(defaults: bool) -> FuseFs:
        fs = FuseFs(tmp_path / ("defaults" if defaults else "handlers"))
        fs.mnt.mkdir(parents=True)
        stderr_path = fs.mnt.parent / "fs.stderr"
        cmd = [sys.executable, helper.__file__, str(fs.mnt), str(fs.log_path)]
        if defaults:
            cmd.append("--defaults")
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


async def test_fallocate_and_lseek_reach_python(start_fs: Callable[[bool], FuseFs]) -> None:
    fs = start_fs(False)
    expected = bytearray(helper.initial_data())
    assert fs.read_all() == expected

    proc = await fallocate_cli("-p", "-o", "4096", "-l", "8192", fs.file)
    assert proc.returncode == 0, proc.stderr
    proc = await fallocate_cli("-z", "-o", "65536", "-l", "1000", fs.file)
    assert proc.returncode == 0, proc.stderr
    expected[4096 : 4096 + 8192] = bytes(8192)
    expected[65536 : 65536 + 1000] = bytes(1000)

    calls = fs.calls()
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


async def test_defaults_keep_the_kernel_fallback(start_fs: Callable[[bool], FuseFs]) -> None:
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
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await ops.fallocate(0, MODE_PUNCH_HOLE_KEEP_SIZE, 0, 4096)
    assert exc.value.errno == errno.ENOSYS
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await ops.lseek(0, 0, SEEK_DATA)
    assert exc.value.errno == errno.ENOSYS
