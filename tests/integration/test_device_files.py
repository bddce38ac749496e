"""Device files on a real mount: pread/pwrite/fsync/fallocate/lseek, sizes, permissions."""

from __future__ import annotations

import errno
import os
import stat
import subprocess

import pytest

from dmfuse.backends.file import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate
from tests.conftest import pattern
from tests.integration.harness import DMFUSE, Mount, run

MiB = 1 << 20


def test_mount_shows_tables_as_files_and_io_reaches_backing(mnt: Mount) -> None:
    a = mnt.image("a.img", 4 * MiB, pattern(0, 4 * MiB, 1))
    b = mnt.image("b.img", 4 * MiB, pattern(0, 4 * MiB, 2))
    mnt.table("span", "# comment\n0 4096 linear a.img 2048\n4096 8192 linear b.img 0\n")
    mnt.table("z", "0 100 zero")
    mnt.mount()
    assert sorted(os.listdir(mnt.mnt)) == ["span", "z"]
    st = os.stat(mnt.dev("span"))
    assert stat.S_ISREG(st.st_mode) and st.st_size == 12288 * 512
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert os.stat(mnt.dev("z")).st_size == 100 * 512
    fd = os.open(mnt.dev("span"), os.O_RDWR)
    try:
        # across the boundary between the two targets, unaligned
        got = os.pread(fd, 5000, 4096 * 512 - 1234)
        assert got == pattern(2048 * 512 + 4096 * 512 - 1234, 1234, 1) + pattern(0, 5000 - 1234, 2)
        assert os.pwrite(fd, b"X" * 3000, 4096 * 512 - 1000) == 3000
        os.fsync(fd)
        os.fdatasync(fd)
        assert os.pread(fd, 10, 12288 * 512) == b""  # EOF like a file
        with pytest.raises(OSError) as exc:
            os.pwrite(fd, b"x", 12288 * 512)
        assert exc.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    with open(a, "rb") as fh:
        fh.seek((2048 + 4096) * 512 - 1000)
        assert fh.read(1000) == b"X" * 1000
    with open(b, "rb") as fh:
        assert fh.read(2000) == b"X" * 2000
    assert os.pread(os.open(mnt.dev("z"), os.O_RDONLY), 512, 0) == bytes(512)


def test_fallocate_punch_and_zero_range(mnt: Mount) -> None:
    mnt.image("a.img", 4 * MiB, pattern(0, 4 * MiB))
    mnt.table("d", "0 2048 linear a.img 0\n2048 2048 zero\n")
    mnt.table("e", "0 2048 linear a.img 4096\n2048 8 error\n")
    mnt.mount()
    dev = mnt.dev("d")
    run("fallocate", "-p", "-o", "4096", "-l", "8192", dev)
    run("fallocate", "-z", "-o", "65536", "-l", "1000", dev)
    with open(dev, "rb") as fh:
        data = fh.read(2 * MiB)
    expect = bytearray(pattern(0, 1 * MiB)) + bytes(1 * MiB)
    expect[4096:12288] = bytes(8192)
    expect[65536:66536] = bytes(1000)
    assert data == bytes(expect)
    # punch across the linear|zero boundary works; touching the error target is refused
    run("fallocate", "-p", "-o", str(1 * MiB - 4096), "-l", "8192", dev)
    before = open(mnt.dev("e"), "rb").read(4096)
    fd = os.open(mnt.dev("e"), os.O_RDWR)
    try:
        with pytest.raises(OSError) as exc:
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 2056 * 512)
        assert exc.value.errno == errno.EOPNOTSUPP
    finally:
        os.close(fd)
    assert open(mnt.dev("e"), "rb").read(4096) == before
    # mode 0 (allocate) is not something a block device does
    proc = run("fallocate", "-o", "0", "-l", "4096", dev, check=False)
    assert proc.returncode != 0


def test_seek_data_and_hole(mnt: Mount) -> None:
    # As lseek(2) on a regular file: the table's holes (here a sparse backing file's and a
    # zero target's) are holes, the end of the file counts as one, ENXIO at or past the end
    # and when no data follows.
    a = mnt.image("a.img", MiB)
    with open(a, "r+b") as fh:
        fh.seek(256 * 1024)
        fh.write(pattern(0, 64 * 1024))
    mnt.table("d", "0 2048 linear a.img 0\n2048 2048 zero\n4096 8 linear a.img 512\n")
    mnt.mount()
    size = 4104 * 512
    fd = os.open(mnt.dev("d"), os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_DATA) == 256 * 1024
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 0
        assert os.lseek(fd, 300 * 1024, os.SEEK_DATA) == 300 * 1024
        assert os.lseek(fd, 300 * 1024, os.SEEK_HOLE) == 320 * 1024
        assert os.lseek(fd, 320 * 1024, os.SEEK_DATA) == 2 * MiB  # over the zero target
        assert os.lseek(fd, 2 * MiB + 1000, os.SEEK_HOLE) == size  # EOF is a hole
        assert os.lseek(fd, 2 * MiB + 1000, os.SEEK_DATA) == 2 * MiB + 1000
        assert os.lseek(fd, 0, os.SEEK_CUR) == 2 * MiB + 1000  # the position moved
        for offset, whence in ((size, os.SEEK_DATA), (size, os.SEEK_HOLE), (-1, os.SEEK_DATA)):
            with pytest.raises(OSError) as exc:
                os.lseek(fd, offset, whence)
            assert exc.value.errno == errno.ENXIO
        assert os.pread(fd, 256 * 1024, 0) == bytes(256 * 1024)  # the holes read as zeros
    finally:
        os.close(fd)
    mnt.cli("create", "z", "--table", "0 2048 zero")
    fd = os.open(mnt.dev("z"), os.O_RDONLY)
    try:
        with pytest.raises(OSError) as exc:
            os.lseek(fd, 0, os.SEEK_DATA)  # only holes: no data before the end
        assert exc.value.errno == errno.ENXIO
        assert os.lseek(fd, 4096, os.SEEK_HOLE) == 4096
    finally:
        os.close(fd)


def test_readonly_device_refuses_write_open(mnt: Mount) -> None:
    mnt.image("a.img", MiB)
    mnt.table("ro", "# dmfuse: readonly\n0 2048 linear a.img 0")
    mnt.mount()
    assert stat.S_IMODE(os.stat(mnt.dev("ro")).st_mode) == 0o400
    with pytest.raises(OSError) as exc:
        os.open(mnt.dev("ro"), os.O_RDWR)
    assert exc.value.errno == errno.EROFS
    assert len(open(mnt.dev("ro"), "rb").read()) == MiB


def test_error_target_reads_fail_with_eio(mnt: Mount) -> None:
    mnt.image("a.img", MiB)
    mnt.table("d", "0 8 linear a.img 0\n8 8 error")
    mnt.mount()
    fd = os.open(mnt.dev("d"), os.O_RDONLY)
    try:
        assert len(os.pread(fd, 4096, 0)) == 4096
        with pytest.raises(OSError) as exc:
            os.pread(fd, 512, 4096)
        assert exc.value.errno == errno.EIO
    finally:
        os.close(fd)


def test_bad_table_directory_fails_mount_cleanly(mnt: Mount) -> None:
    mnt.image("a.img", MiB)
    mnt.table("good", "0 8 linear a.img 0")
    mnt.table("bad", "0 8 linear a.img\n")
    proc = subprocess.run(
        [*DMFUSE, "mount", str(mnt.tables), str(mnt.mnt)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1
    assert "bad.table" in proc.stderr and "Invalid argument count" in proc.stderr
    assert not os.path.ismount(mnt.mnt)


def test_stacking_cycle_in_table_directory_is_refused(mnt: Mount) -> None:
    mnt.table("x", "0 8 linear /dev/mapper/y 0")
    mnt.table("y", "0 8 linear /dev/mapper/x 0")
    proc = subprocess.run(
        [*DMFUSE, "mount", str(mnt.tables), str(mnt.mnt)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1 and "cycle" in proc.stderr
    assert not os.path.ismount(mnt.mnt)


def test_o_dsync_writes_are_flushed(mnt: Mount) -> None:
    # log-writes shows flushes: an O_DSYNC write must be followed by one, a plain write not
    mnt.image("a.img", MiB)
    mnt.image("log.img", MiB)
    mnt.table("lw", "0 2048 log-writes a.img log.img")
    mnt.mount()
    for flags in (os.O_WRONLY, os.O_WRONLY | os.O_DSYNC):
        fd = os.open(mnt.dev("lw"), flags)
        os.pwrite(fd, b"x" * 4096, 0)
        os.close(fd)
    status = mnt.cli("status", "lw").stdout.split()
    # "<entries> <next sector>": entries are counted once a flush commits them; without the
    # flush after the O_DSYNC write nothing is committed (0)
    entries = int(status[3])
    assert entries >= 3, status
