"""The CLI against a running daemon: dmsetup's commands, outputs and errors."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time

from dmfuse.control.protocol import socket_path
from tests.conftest import pattern
from tests.integration.harness import Mount

MiB = 1 << 20


def test_create_load_resume_info_table_status(mnt: Mount) -> None:
    a = mnt.image("a.img", 4 * MiB, pattern(0, 4 * MiB))
    mnt.mount()
    assert mnt.cli("ls").stdout == "No devices found\n"
    mnt.cli("create", "lin", "--table", f"0 2048 linear {a} 0", "--uuid", "U-1")
    assert os.stat(mnt.dev("lin")).st_size == MiB
    assert mnt.cli("table", "lin").stdout == f"0 2048 linear {a} 0\n"
    assert mnt.cli("status", "lin").stdout == "0 2048 linear \n"
    assert mnt.cli("info", "lin").stdout == (
        "Name:              lin\n"
        "State:             ACTIVE\n"
        "Read Ahead:        256\n"
        "Tables present:    LIVE\n"
        "Open count:        0\n"
        "Event number:      0\n"
        "Major, minor:      253, 0\n"
        "Number of targets: 1\n"
        "UUID: U-1\n"
        "\n"
    )
    # multi-line table on stdin, like xfstests does
    mnt.cli("load", "lin", input=f"0 2048 linear {a} 2048\n2048 2048 zero\n")
    assert "Tables present:    LIVE & INACTIVE" in mnt.cli("info", "lin").stdout
    assert mnt.cli("table", "--inactive", "lin").stdout == (
        f"0 2048 linear {a} 2048\n2048 2048 zero \n"
    )
    assert os.stat(mnt.dev("lin")).st_size == MiB  # load alone never resizes
    mnt.cli("resume", "lin")
    assert os.stat(mnt.dev("lin")).st_size == 2 * MiB  # stat sees the resume at once
    with open(mnt.dev("lin"), "rb") as fh:
        assert fh.read(512) == pattern(MiB, 512)
    mnt.cli("create", "z", "--table", "0 8 zero")
    assert mnt.cli("table").stdout == (
        f"lin: 0 2048 linear {a} 2048\nlin: 2048 2048 zero \nz: 0 8 zero \n"
    )
    assert mnt.cli("status", "--target", "zero").stdout == "lin: 2048 2048 zero \nz: 0 8 zero \n"
    assert mnt.cli("ls").stdout == "lin\t(253:0)\nz\t(253:1)\n"
    assert mnt.cli("info", "-c").stdout.splitlines()[0].split() == [
        "Name",
        "Maj",
        "Min",
        "Stat",
        "Open",
        "Targ",
        "Event",
        "UUID",
    ]
    infos = json.loads(mnt.cli("--json", "info", "lin").stdout)
    assert infos[0]["name"] == "lin" and infos[0]["targets"] == 2
    assert "zero" in mnt.cli("targets").stdout and "striped" in mnt.cli("targets").stdout
    assert mnt.cli("version").stdout.startswith("Library version:")
    assert mnt.cli("deps", "lin").stdout == f"1 dependencies\t: ({a})\n"


def test_failures_are_one_line_and_change_nothing(mnt: Mount) -> None:
    a = mnt.image("a.img", MiB)
    mnt.table("d", f"0 2048 linear {a} 0")
    mnt.mount()
    cases = [
        (("load", "d", "--table", "0 100 linear"), "dmfuse: load d failed: line 1: linear: "),
        (("load", "d", "--table", "0 10 zero\n20 10 zero"), "gap in table"),
        (("load", "d", "--table", "0 10 nosuch"), "unknown target type"),
        (("load", "d", "--table", f"0 10 linear {a}.missing 0"), "Device lookup failed"),
        (("load", "nodev", "--table", "0 8 zero"), "dmfuse: load nodev failed: "),
        (("create", "d", "--table", "0 8 zero"), "already exists"),
        (("message", "d", "0", "hello"), "does not accept messages"),
        (("message", "d", "4096", "hello"), "outside device"),
        (("rename", "d", "a/b"), "invalid device name"),
        (("info", "nodev"), "No such device"),
    ]
    for args, fragment in cases:
        proc = mnt.cli(*args, check=False)
        assert proc.returncode == 1, args
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("dmfuse: "), proc.stderr
        assert fragment in proc.stderr, (args, proc.stderr)
        assert proc.stdout == ""
    assert mnt.cli("table", "d").stdout == f"0 2048 linear {a} 0\n"
    assert "Tables present:    LIVE\n" in mnt.cli("info", "d").stdout
    # a table that does not fit its file fails at resume, the old table stays live
    mnt.cli("load", "d", "--table", f"0 4096 linear {a} 0")
    proc = mnt.cli("resume", "d", check=False)
    assert proc.returncode == 1 and "too small for target" in proc.stderr
    assert mnt.cli("table", "d").stdout == f"0 2048 linear {a} 0\n"
    assert "State:             SUSPENDED\n" in mnt.cli("info", "d").stdout  # as the kernel
    mnt.cli("resume", "d")
    assert "State:             ACTIVE\n" in mnt.cli("info", "d").stdout
    assert (mnt.tables / "d.table").read_text().strip().endswith(f"0 2048 linear {a} 0")


def test_suspend_holds_a_reader_until_resume(mnt: Mount) -> None:
    a = mnt.image("a.img", MiB, pattern(0, MiB, 1))
    b = mnt.image("b.img", MiB, pattern(0, MiB, 2))
    mnt.table("d", f"0 2048 linear {a} 0")
    mnt.mount()
    fd = os.open(mnt.dev("d"), os.O_RDONLY)
    got: list[bytes] = []
    mnt.cli("suspend", "d")
    assert "State:             SUSPENDED" in mnt.cli("info", "d").stdout
    reader = threading.Thread(target=lambda: got.append(os.pread(fd, 512, 0)))
    reader.start()
    time.sleep(0.5)
    assert got == [] and reader.is_alive()  # held, not failed
    # status/table/load still work while suspended
    assert mnt.cli("status", "d").stdout == "0 2048 linear \n"
    mnt.cli("load", "d", "--table", f"0 2048 linear {b} 0")
    mnt.cli("resume", "d")
    reader.join(10)
    os.close(fd)
    assert got == [pattern(0, 512, 2)]


def test_remove_rules_and_writeback(mnt: Mount) -> None:
    a = mnt.image("a.img", MiB)
    mnt.table("d", f"0 2048 linear {a} 0")
    mnt.mount()
    fd = os.open(mnt.dev("d"), os.O_RDONLY)
    proc = mnt.cli("remove", "d", check=False)
    assert proc.returncode == 1 and "busy" in proc.stderr.lower()
    mnt.cli("remove", "--deferred", "d")
    assert "State:             ACTIVE (DEFERRED REMOVE)" in mnt.cli("info", "d").stdout
    os.close(fd)
    deadline = time.monotonic() + 5
    while "d" in os.listdir(mnt.mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(mnt.mnt) == []
    assert not (mnt.tables / "d.table").exists()  # removed from the table directory too
    # create, rename, force remove of an open device
    mnt.cli("create", "e", "--table", f"0 2048 linear {a} 0")
    mnt.cli("rename", "e", "f")
    assert "Event number:      1" in mnt.cli("info", "f").stdout
    assert sorted(p.name for p in mnt.tables.glob("*.table")) == ["f.table"]
    fd = os.open(mnt.dev("f"), os.O_RDONLY)
    proc = mnt.cli("remove", "--force", "f", check=False)
    assert proc.returncode == 1
    assert mnt.cli("table", "f").stdout == "0 2048 error \n"
    try:
        os.pread(fd, 512, 0)
        raise AssertionError("read from a wiped device succeeded")
    except OSError as exc:
        assert exc.errno == 5
    os.close(fd)
    mnt.cli("remove", "f")
    assert os.listdir(mnt.mnt) == []


def test_remount_brings_back_what_was_live(mnt: Mount) -> None:
    a = mnt.image("a.img", MiB)
    mnt.table("d", "0 2048 linear a.img 0")  # relative to the table directory
    mnt.mount()
    mnt.cli("create", "z", "--table", "0 16 zero", "--readonly")
    mnt.cli("load", "d", "--table", f"0 1024 linear {a} 1024")
    mnt.cli("resume", "d")
    mnt.cli("create", "empty", "--notable")
    mnt.unmount()
    assert not os.path.ismount(mnt.mnt)
    mnt.mount()
    assert sorted(os.listdir(mnt.mnt)) == ["d", "empty", "z"]
    assert mnt.cli("table", "d").stdout == f"0 1024 linear {a} 1024\n"
    assert "(READ-ONLY)" in mnt.cli("info", "z").stdout
    assert "Tables present:    None" in mnt.cli("info", "empty").stdout


def test_control_socket_is_private(mnt: Mount) -> None:
    mnt.mount()
    path = socket_path(str(mnt.mnt))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


def test_unmount_fails_held_io_and_exits(mnt: Mount) -> None:
    mnt.image("a.img", MiB)
    mnt.table("d", "0 2048 linear a.img 0")
    mnt.mount()
    fd = os.open(mnt.dev("d"), os.O_RDONLY)
    mnt.cli("suspend", "d")
    errors: list[int] = []

    def read() -> None:
        try:
            os.pread(fd, 512, 0)
        except OSError as exc:
            errors.append(exc.errno or 0)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    assert reader.is_alive()
    mnt.unmount()  # dmfuse umount: held I/O fails, the daemon flushes, closes and exits
    reader.join(10)
    with contextlib.suppress(OSError):  # the connection is gone: ENOTCONN
        os.close(fd)
    assert errors == [5]
    assert not os.path.ismount(mnt.mnt)
