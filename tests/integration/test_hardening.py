"""Issue 19: no bad input or misuse may kill, deadlock or corrupt the daemon.

Each case runs against a real mount; every operation that used to hang has a timeout, so a
regression fails instead of waiting forever.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dmfuse import mounts
from dmfuse.control.protocol import MAX_MESSAGE, socket_path
from tests.conftest import pattern
from tests.integration.harness import DMFUSE, Mount, run

MiB = 1 << 20
KERNEL = Path(__file__).parent.parent / "data" / "kernel" / "too-large-device.txt"


def _alive_and_listing(mnt: Mount) -> None:
    """The daemon still answers both the control socket and the mount."""
    mnt.cli("ls", timeout=30)
    for name in os.listdir(mnt.mnt):
        os.stat(mnt.dev(name))


# -- 1: the control socket --------------------------------------------------------------------
def test_a_request_over_the_limit_is_refused_on_its_connection_only(mnt: Mount) -> None:
    mnt.table("z", "0 8 zero")
    mnt.mount()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(socket_path(str(mnt.mnt)))
        sock.settimeout(60)
        chunk = b"x" * MiB
        try:
            for _ in range(MAX_MESSAGE // MiB + 2):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while sending; the reply is already there
        reply = sock.recv(65536)
    assert b'"ok": false' in reply and b"too large" in reply, reply
    _alive_and_listing(mnt)


def test_a_table_bigger_than_the_old_16_mib_limit_loads(mnt: Mount) -> None:
    mnt.mount()
    pad = "#" + "p" * 80  # a comment: cheap to parse, counts for the request size
    lines = 200_000
    table = "".join(f"{i} 1 zero {pad}\n" for i in range(lines))
    assert len(table) > 16 * MiB
    mnt.cli("create", "big", input=table, timeout=120)
    assert os.stat(mnt.dev("big")).st_size == lines * 512
    assert "Number of targets: 200000" in mnt.cli("info", "big").stdout


# -- 2: paths into the own mount ---------------------------------------------------------------
def test_table_paths_landing_in_the_own_mount_are_its_devices(mnt: Mount) -> None:
    data = pattern(0, 64 * 1024)
    mnt.image("g.img", MiB, data)
    mnt.table("good", "0 2048 linear g.img 0")
    mnt.mount()
    root = mnt.root
    (root / "link").symlink_to(mnt.dev("good"))
    (root / "mntlink").symlink_to(mnt.mnt)
    bind = root / "bind"
    bind.mkdir()
    specs = {
        "rel": "mnt/good",  # relative to the client's cwd
        "dots": "mnt/../mnt/./good",
        "link": str(root / "link"),
        "dirlink": "mntlink/good",
        "bound": "bind/good",
    }
    run("mount", "--bind", str(mnt.mnt), str(bind))
    try:
        for name, spec in specs.items():
            proc = subprocess.run(
                [*DMFUSE, "-m", str(mnt.mnt), "create", name, "--table", f"0 128 linear {spec} 0"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=30,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            assert proc.returncode == 0, (spec, proc.stderr)
            deps = mnt.cli("deps", name).stdout
            assert "(253, 0)" in deps, (spec, deps)  # stacked on the device itself, in process
            with open(mnt.dev(name), "rb") as fh:
                assert fh.read(4096) == data[:4096]
        # the mount's directory itself, or a path below a device file, is refused at once
        for spec in ("mnt", "mnt/good/x"):
            proc = mnt.cli("create", "bad", "--table", f"0 8 linear {spec} 0", check=False)
            assert proc.returncode == 1 and "Device lookup failed" in proc.stderr
    finally:  # -c: no stat of the path, which would hang if the daemon did
        run("umount", "-l", "-c", str(bind), check=False, timeout=30)
    _alive_and_listing(mnt)


def test_table_files_naming_the_mount_relatively_come_up_in_order(mnt: Mount) -> None:
    mnt.table("a", "0 8 linear ../mnt/./z 0")  # "a" sorts before what it sits on
    mnt.table("z", "0 8 zero")
    mnt.mount()
    assert "(253, 0)" in mnt.cli("deps", "a").stdout  # z came up first, as minor 0
    with open(mnt.dev("a"), "rb") as fh:
        assert fh.read() == bytes(4096)


# -- 3: one daemon per table dir, mountpoint and persistent file --------------------------------
def test_a_second_mount_of_the_same_tables_or_mountpoint_is_refused(
    mnt: Mount, tmp_path: Path
) -> None:
    mnt.image("o.img", MiB)
    cow = mnt.image("cow.img", MiB)
    log = mnt.image("log.img", MiB)
    mnt.table("snap", "0 2048 snapshot o.img cow.img P 8")
    mnt.table("lw", f"0 2048 log-writes o.img {log}")
    mnt.mount()
    other = tmp_path / "other"
    other.mkdir()
    proc = run(*DMFUSE, "mount", str(mnt.tables), str(other), check=False, timeout=60)
    assert proc.returncode == 1
    assert f"table directory {mnt.tables} is in use by another dmfuse mount" in proc.stderr
    # another table dir, the same mountpoint: no stacking of daemons
    tables2 = tmp_path / "tables2"
    tables2.mkdir()
    proc = run(*DMFUSE, "mount", str(tables2), str(mnt.mnt), check=False, timeout=60)
    assert proc.returncode == 1 and "is already a dmfuse mount" in proc.stderr
    # another table dir naming the same COW store, or the same log
    (tables2 / "s2.table").write_text(f"0 2048 snapshot {mnt.tables}/o.img {cow} P 8\n")
    proc = run(*DMFUSE, "mount", str(tables2), str(other), check=False, timeout=60)
    assert proc.returncode == 1
    assert f"COW device {cow} is in use by another dmfuse mount" in proc.stderr, proc.stderr
    (tables2 / "s2.table").unlink()
    (tables2 / "l2.table").write_text(f"0 2048 log-writes {mnt.tables}/o.img {log}\n")
    proc = run(*DMFUSE, "mount", str(tables2), str(other), check=False, timeout=60)
    assert proc.returncode == 1
    assert f"log device {log} is in use by another dmfuse mount" in proc.stderr, proc.stderr
    assert not os.path.ismount(other)
    # within one daemon a COW is shared by the tables that use it, and freed with the last
    mnt.cli("remove", "snap")
    mnt.unmount()
    (tables2 / "l2.table").unlink()
    (tables2 / "s2.table").write_text(f"0 2048 snapshot {mnt.tables}/o.img {cow} P 8\n")
    run(*DMFUSE, "mount", str(tables2), str(other), timeout=60)
    try:
        assert os.listdir(other) == ["s2"]
    finally:
        run(*DMFUSE, "umount", str(other), timeout=60)


# -- 4: a daemon killed with SIGKILL ------------------------------------------------------------
def _kill_daemon(mnt: Mount) -> None:
    pid = mnt.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    with pytest.raises(OSError) as info:
        os.stat(mnt.mnt)
    assert info.value.errno == errno.ENOTCONN


def test_a_dead_mount_is_cleared_by_umount_and_by_mount(mnt: Mount) -> None:
    mnt.table("z", "0 8 zero")
    mnt.mount()
    _kill_daemon(mnt)
    started = time.monotonic()
    mnt.unmount()  # at once, not after 60 s
    assert time.monotonic() - started < 10
    assert mounts.mount_at(str(mnt.mnt)) is None
    assert not os.path.exists(socket_path(str(mnt.mnt)))
    mnt.mount()
    _kill_daemon(mnt)
    mnt.mount()  # clears its own dead mount, then mounts
    assert os.listdir(mnt.mnt) == ["z"]
    assert len([m for m in mounts.mounts() if m.mount_point == str(mnt.mnt)]) == 1


# -- 6: sizes a file cannot hold -----------------------------------------------------------------
def _kernel_results() -> dict[int, tuple[int, int | None]]:
    """Sectors -> (dmsetup create's exit status, blockdev --getsize64) as Linux 6.12 gave."""
    out: dict[int, tuple[int, int | None]] = {}
    current = 0
    size: int | None = None
    rc = -1
    for line in KERNEL.read_text().splitlines():
        if line.startswith("== zero "):
            if current:
                out[current] = (rc, size)
            current, size = int(line.split()[2]), None
        elif line.startswith("rc="):
            rc = int(line[3:])
        elif line.isdigit():
            size = int(line)
        elif line.startswith("== two"):
            out[current] = (rc, size)
            break
    return out


def test_device_sizes_as_the_kernel_allows(mnt: Mount) -> None:
    kernel = _kernel_results()
    assert len(kernel) == 7 and sum(1 for rc, _ in kernel.values() if rc == 0) == 1
    mnt.mount()
    for i, (sectors, (rc, size)) in enumerate(sorted(kernel.items())):
        proc = mnt.cli("create", f"z{i}", "--table", f"0 {sectors} zero", check=False)
        assert proc.returncode == (0 if rc == 0 else 1), (sectors, proc.stderr)
        if rc == 0:
            assert os.stat(mnt.dev(f"z{i}")).st_size == size
            fd = os.open(mnt.dev(f"z{i}"), os.O_RDONLY)
            try:  # the last sector (a read past LLONG_MAX is the VFS's EINVAL, as on a bdev)
                assert os.pread(fd, 512, size - 512) == bytes(512)
            finally:
                os.close(fd)
        else:
            assert "too large device" in proc.stderr, proc.stderr
    # two lines adding up to one sector too many: the kernel refuses that too
    last = 18014398509481983
    proc = mnt.cli("create", "two", input=f"0 {last} zero\n{last} 1 zero\n", check=False)
    assert proc.returncode == 1 and "line 2: zero: too large device" in proc.stderr
    _alive_and_listing(mnt)


# -- 7: the table directory ----------------------------------------------------------------------
def _mount_fails(mnt: Mount, message: str) -> None:
    proc = run(*DMFUSE, "mount", str(mnt.tables), str(mnt.mnt), check=False, timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert not os.path.ismount(mnt.mnt)


def test_table_files_that_are_not_regular_or_not_text_fail_the_mount(mnt: Mount) -> None:
    os.mkfifo(mnt.tables / "fifo.table")
    _mount_fails(mnt, "fifo.table: not a regular file")
    (mnt.tables / "fifo.table").unlink()
    (mnt.tables / "zero.table").symlink_to("/dev/zero")
    _mount_fails(mnt, "zero.table: not a regular file")
    (mnt.tables / "zero.table").unlink()
    (mnt.tables / "bytes.table").write_bytes(b"# a comment\n0 8 zero\n0 8 \xff\xfe\n")
    _mount_fails(mnt, "bytes.table: line 3: byte 0xff at column 5 is not UTF-8")
    (mnt.tables / "bytes.table").write_bytes(b"# a comment\n\n0 8 zero\n8 8 linear\n")
    _mount_fails(mnt, "bytes.table: line 4: linear: Invalid argument count")


def test_every_device_name_survives_a_remount(mnt: Mount) -> None:
    mnt.table("z", "0 8 zero")
    mnt.mount()
    names = [".hidden", "..x", "with space", "tab\there", "x.table", "ünïcode"]
    for i, name in enumerate(names):
        mnt.cli("create", f"d{i}", "--table", "0 8 zero")
        mnt.cli("rename", f"d{i}", name)
    mnt.cli("rename", "z", "..dots")
    expected = sorted([*names, "..dots"])
    assert sorted(os.listdir(mnt.mnt)) == expected
    mnt.unmount()
    mnt.mount()
    assert sorted(os.listdir(mnt.mnt)) == expected


# -- 10: the namespace is read-only --------------------------------------------------------------
def test_creating_or_removing_names_answers_eacces(mnt: Mount) -> None:
    mnt.table("z", "0 8 zero")
    mnt.mount()
    calls = [
        lambda: os.open(mnt.dev("new"), os.O_CREAT | os.O_WRONLY, 0o600),
        lambda: os.mkdir(mnt.dev("dir")),
        lambda: os.mknod(mnt.dev("node")),
        lambda: os.symlink("z", mnt.dev("sym")),
        lambda: os.link(mnt.dev("z"), mnt.dev("hard")),
        lambda: os.unlink(mnt.dev("z")),
        lambda: os.rename(mnt.dev("z"), mnt.dev("y")),
    ]
    for call in calls:
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EACCES
    fd = os.open(mnt.dev("z"), os.O_CREAT | os.O_RDWR)  # an existing name opens as usual
    os.close(fd)
    assert os.listdir(mnt.mnt) == ["z"]
