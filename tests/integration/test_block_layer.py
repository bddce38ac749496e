"""The way people use dmfuse: loop devices, filesystems, fio, discard, live swaps and resizes."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from tests.integration.harness import Mount, run

MiB = 1 << 20


def striped_and_linear(a: str, b: str, sectors: int, chunk: int) -> tuple[str, str]:
    """The same data as a 2-way striped table and as the equivalent many-line linear table."""
    striped = f"0 {sectors} striped 2 {chunk} {a} 0 {b} 0\n"
    lines = []
    for k in range(sectors // chunk):
        row, stripe = divmod(k, 2)
        lines.append(f"{k * chunk} {chunk} linear {(a, b)[stripe]} {row * chunk}")
    return striped, "\n".join(lines) + "\n"


def test_mkfs_and_fsck_on_striped_device(mnt: Mount, tmp_path: Path) -> None:
    mnt.image("c.img", 64 * MiB)
    mnt.image("d.img", 64 * MiB)
    mnt.table("st", "0 262144 striped 2 128 c.img 0 d.img 0")
    mnt.mount()
    loop = mnt.losetup("st")
    mnt.ext4_round_trip(loop, tmp_path / "fs")
    mnt.detach(loop)


def test_resize_seen_by_stat_and_losetup(mnt: Mount) -> None:
    a = mnt.image("a.img", 16 * MiB)
    mnt.table("d", "0 8192 linear a.img 0")
    mnt.mount()
    loop = mnt.losetup("d")
    assert run("blockdev", "--getsize64", loop).stdout.strip() == str(4 * MiB)
    mnt.cli("load", "d", "--table", f"0 24576 linear {a} 0")
    mnt.cli("resume", "d")
    assert os.stat(mnt.dev("d")).st_size == 12 * MiB
    run("losetup", "-c", loop)
    assert run("blockdev", "--getsize64", loop).stdout.strip() == str(12 * MiB)
    mnt.cli("load", "d", "--table", f"0 4096 linear {a} 0")  # shrink too
    mnt.cli("resume", "d")
    run("losetup", "-c", loop)
    assert run("blockdev", "--getsize64", loop).stdout.strip() == str(2 * MiB)
    mnt.detach(loop)


def test_blkdiscard_on_loop_reads_back_zeros(mnt: Mount) -> None:
    mnt.image("a.img", 32 * MiB, os.urandom(32 * MiB))
    mnt.image("b.img", 32 * MiB, os.urandom(32 * MiB))
    mnt.table("d", "0 32768 linear a.img 0\n32768 32768 striped 2 64 a.img 32768 b.img 0\n")
    mnt.mount()
    loop = mnt.losetup("d")
    run("blkdiscard", "-f", "-o", str(8 * MiB), "-l", str(16 * MiB), loop)
    run("blkdiscard", "-f", "-o", str(24 * MiB), "-l", str(4 * MiB), loop)  # again: still on
    with open(loop, "rb") as fh:
        fh.seek(8 * MiB)
        assert fh.read(20 * MiB) == bytes(20 * MiB)
        assert fh.read(MiB) != bytes(MiB)
    mnt.detach(loop)


def test_fio_verify_while_tables_swap_and_grow(mnt: Mount) -> None:
    a = mnt.image("a.img", 64 * MiB)
    b = mnt.image("b.img", 64 * MiB)
    small = striped_and_linear(a, b, 131072, 128)  # 64 MiB
    big = striped_and_linear(a, b, 196608, 128)  # 96 MiB: the device grows mid-run
    (mnt.tables / "d.table").write_text(small[0])
    mnt.mount()
    loop = mnt.losetup("d", "--direct-io=on")
    stop = threading.Event()
    fio_done = threading.Event()
    swaps: list[tuple[int, bool]] = []  # (device size after the swap, fio still running)
    failures: list[str] = []

    def swapper() -> None:
        layouts = small
        while not stop.is_set():
            for text in (layouts[1], layouts[0]):  # linear, then striped again
                load = mnt.cli("load", "d", input=text, check=False)
                resume = mnt.cli("resume", "d", check=False)
                if load.returncode or resume.returncode:
                    failures.append(load.stderr + resume.stderr)
                swaps.append((os.stat(mnt.dev("d")).st_size, not fio_done.is_set()))
            layouts = big
            stop.wait(0.1)

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        proc = run(
            "fio",
            "--name=verify",
            f"--filename={loop}",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=16",
            "--rw=randwrite",
            "--bs=4k",
            "--size=48M",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--output-format=json",
            timeout=600,
            check=False,
        )
    finally:
        stop.set()
        thread.join()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = json.loads(proc.stdout)["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] >= 48 * MiB
    assert failures == []
    # swapped before growing, and grew and swapped again while fio was running
    assert (64 * MiB, True) in swaps and (96 * MiB, True) in swaps, swaps
    run("losetup", "-c", loop)
    assert run("blockdev", "--getsize64", loop).stdout.strip() == str(96 * MiB)
    mnt.detach(loop)


def test_fusermount_and_sigterm_end_the_daemon_cleanly(mnt: Mount) -> None:
    a = mnt.image("a.img", MiB)
    mnt.table("d", "0 2048 linear a.img 0")
    mnt.mount()
    with open(mnt.dev("d"), "r+b") as fh:
        fh.write(b"persist")
    pid = mnt.daemon_pid()
    assert pid is not None
    run("fusermount3", "-u", str(mnt.mnt))
    _wait_gone(pid)
    mnt.mounted = False
    assert open(a, "rb").read(7) == b"persist"
    mnt.mount()
    pid = mnt.daemon_pid()
    assert pid is not None
    os.kill(pid, 15)
    _wait_gone(pid)
    mnt.mounted = False
    assert not os.path.ismount(mnt.mnt)


def _wait_gone(pid: int) -> None:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        status = Path(f"/proc/{pid}/status")
        if status.exists() and "zombie" in status.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"daemon {pid} did not exit")
