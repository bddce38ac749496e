"""Snapshots on a real mount: the dmsetup recipe for snapshotting a live device, fio crc32c
verify through loop devices on the origin and on the snapshot, and a remount."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import pattern
from tests.integration.harness import Mount, run

MiB = 1 << 20
SECTORS = 32768  # 16 MiB


def fio(target: str, seed: int, rw: str = "randwrite", verify_only: bool = False) -> None:
    proc = run(
        "fio",
        *(["--verify_only"] if verify_only else []),
        "--name=verify",
        f"--filename={target}",
        "--direct=1",
        "--ioengine=libaio",
        "--iodepth=16",
        f"--rw={rw}",
        "--bs=4k",
        "--size=16M",
        f"--randseed={seed}",
        "--verify=crc32c",
        "--verify_state_save=0",
        "--verify_fatal=1",
        "--do_verify=1",
        "--output-format=json",
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = json.loads(proc.stdout)["jobs"][0]
    assert job["error"] == 0
    if verify_only:
        assert job["read"]["io_bytes"] >= 16 * MiB
    else:
        assert job["write"]["io_bytes"] >= 16 * MiB


def digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(MiB):
            h.update(block)
    return h.hexdigest()


def status(mnt: Mount, name: str) -> str:
    return mnt.cli("status", name).stdout.strip()


def test_snapshot_a_live_device_recipe_fio_and_remount(mnt: Mount, tmp_path: Path) -> None:
    base_img = mnt.image("base.img", 16 * MiB)
    cow = mnt.image("cow.img", 17 * MiB)  # every chunk of the origin, plus metadata
    mnt.table("base", f"0 {SECTORS} linear base.img 0")
    mnt.mount()
    loop = mnt.losetup("base", "--direct-io=on")
    fio(loop, seed=1)  # the data the snapshot must keep
    before = digest(mnt.dev("base"))

    # the recipe, while the loop device stays attached to the live origin
    mnt.cli("suspend", "base")
    mnt.cli("create", "base-real", "--table", f"0 {SECTORS} linear {base_img} 0")
    mnt.cli("create", "snap", "--table", f"0 {SECTORS} snapshot /dev/mapper/base-real {cow} P 16")
    mnt.cli("load", "base", "--table", f"0 {SECTORS} snapshot-origin /dev/mapper/base-real")
    mnt.cli("resume", "base")
    assert status(mnt, "snap") == f"0 {SECTORS} snapshot 32/{17 * 2048} 32"
    assert mnt.cli("table", "base").stdout.strip() == (
        f"0 {SECTORS} snapshot-origin /dev/mapper/base-real"
    )
    deps = mnt.cli("deps", "snap").stdout
    assert "dependencies" in deps

    fio(loop, seed=2)  # rewrite the whole origin: every chunk is copied out first
    origin_after = digest(mnt.dev("base"))
    assert origin_after != before
    assert digest(mnt.dev("snap")) == before
    # 2048 chunks of 16 sectors fill 4 areas of 512 records exactly, so area 4 is current and
    # next_free skips its position: (1 + 4 * 513 + 1) chunks allocated, (4 + 2) metadata
    assert status(mnt, "snap") == f"0 {SECTORS} snapshot {2054 * 16}/{17 * 2048} {6 * 16}"

    snap_loop = mnt.losetup("snap", "--direct-io=on")
    fio(snap_loop, seed=3)  # writes to the snapshot land in its COW
    mnt.detach(snap_loop)
    snap_after = digest(mnt.dev("snap"))
    assert digest(mnt.dev("base")) == origin_after

    # a remount brings the same devices back from the table directory, COW metadata from disk
    mnt.detach(loop)
    snap_status = status(mnt, "snap")
    mnt.unmount()
    mnt.mount()
    assert status(mnt, "snap") == snap_status
    assert digest(mnt.dev("snap")) == snap_after
    assert digest(mnt.dev("base")) == origin_after
    assert digest(base_img) == origin_after

    # merge the snapshot back while fio rewrites and verifies the origin through a loop device
    loop = mnt.losetup("base", "--direct-io=on")
    mnt.cli("suspend", "base")
    mnt.cli("suspend", "snap")
    mnt.cli(
        "load", "base", "--table", f"0 {SECTORS} snapshot-merge /dev/mapper/base-real {cow} P 16"
    )
    mnt.cli("resume", "base")
    mnt.cli("remove", "snap")  # as lvconvert --merge does: the snapshot device goes away
    used, _, meta = parse_usage(status(mnt, "base"))
    assert used > meta  # the merge has work to do while fio runs
    fio(loop, seed=4)  # here the merge was still about half way when fio finished
    watched = mnt.cli("status", "base", "--watch", "--interval", "0.1", timeout=300)
    assert watched.stdout.splitlines()[-1].startswith("[" + "#" * 40 + "] 100.0%")
    used, _, meta = parse_usage(status(mnt, "base"))
    assert (used, meta) == (32, 32), status(mnt, "base")  # merged: only metadata left
    fio(loop, seed=4, verify_only=True)  # the merge never overwrote what fio wrote
    merged = digest(mnt.dev("base"))
    mnt.detach(loop)
    mnt.unmount()
    mnt.mount()  # the merge table comes back with nothing left to merge
    assert parse_usage(status(mnt, "base"))[::2] == (32, 32)
    assert digest(base_img) == merged


def parse_usage(line: str) -> tuple[int, int, int]:
    used, rest = line.split()[3].split("/")
    return int(used), int(rest), int(line.split()[4])


WRITER = r"""
import os, random, sys
mnt, journal, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
order = list(range(4096))
random.Random(seed).shuffle(order)
fds = {name: os.open(os.path.join(mnt, name), os.O_RDWR) for name in ("base", "snap")}
jfd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
try:
    for k, block in enumerate(order):
        name = "base" if k % 2 == 0 else "snap"
        os.pwrite(fds[name], marker(name, block), block * 4096)
        if k % 8 == 7:
            for fd in fds.values():
                os.fsync(fd)
            os.write(jfd, b"%d\n" % (k + 1))  # writes acknowledged so far
            os.fsync(jfd)
except OSError:
    pass  # the daemon was killed under us
"""


def marker(name: str, block: int) -> bytes:
    return (f"{name[0].upper()}{block:07d}".encode()) * 512


def test_kill_9_during_writes_keeps_every_fsynced_write(mnt: Mount, tmp_path: Path) -> None:
    """kill -9 the daemon while origin and snapshot are written and fsync'ed; after a remount
    every write acknowledged by a completed fsync is there, on both devices, and the snapshot
    never shows origin data written after it was taken."""
    original = pattern(0, 16 * MiB)
    mnt.image("base.img", 16 * MiB, data=original)
    mnt.image("cow.img", 20 * MiB)
    mnt.table("base-real", f"0 {SECTORS} linear base.img 0")
    mnt.table("snap", f"0 {SECTORS} snapshot /dev/mapper/base-real cow.img P 8")
    mnt.table("base", f"0 {SECTORS} snapshot-origin /dev/mapper/base-real")
    mnt.mount()
    journal = tmp_path / "journal"
    script = tmp_path / "writer.py"
    script.write_text(
        "def marker(name, block):\n"
        "    return (name[0].upper() + '%07d' % block).encode() * 512\n" + WRITER
    )
    writer = subprocess.Popen([sys.executable, str(script), str(mnt.mnt), str(journal), "42"])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # a real workload: let some fsyncs complete
            lines = journal.read_text().split() if journal.exists() else []
            if len(lines) >= 20:
                break
            time.sleep(0.1)
        pid = mnt.daemon_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        writer.wait(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    run("fusermount3", "-u", "-z", str(mnt.mnt), check=False)
    mnt.mounted = False
    acked = int(journal.read_text().split()[-1])
    assert 160 <= acked < 4096  # killed mid-run, after some fsyncs

    mnt.mount()
    order = list(range(4096))
    random.Random(42).shuffle(order)
    with open(mnt.dev("base"), "rb") as fh:
        base = fh.read()
    with open(mnt.dev("snap"), "rb") as fh:
        snap = fh.read()
    for k, block in enumerate(order):
        at = slice(block * 4096, (block + 1) * 4096)
        old = original[at]
        name = "base" if k % 2 == 0 else "snap"
        new = marker(name, block)
        if k < acked:  # acknowledged: must be there
            assert (base if name == "base" else snap)[at] == new, (name, k, block)
        elif k >= acked + 16:  # never attempted (the writer journals after each fsync)
            assert (base if name == "base" else snap)[at] == old, (name, k, block)
        else:
            assert (base if name == "base" else snap)[at] in (old, new), (name, k, block)
        if name == "base":  # the snapshot keeps the data from before, whatever happened
            assert snap[at] == old, ("snap sees origin write", k, block)
        else:
            assert base[at] == old, ("origin sees snapshot write", k, block)
    assert mnt.cli("status", "snap").stdout.split()[3] != "Invalid"


def test_kill_9_mid_merge_then_the_merge_finishes(mnt: Mount) -> None:
    """The daemon dies in the middle of a merge; after a remount the merge table continues from
    the records still on disk and the origin ends up exactly as the snapshot was."""
    original = pattern(0, 16 * MiB)
    mnt.image("base.img", 16 * MiB, data=original)
    mnt.image("cow.img", 20 * MiB)
    mnt.table("base-real", f"0 {SECTORS} linear base.img 0")
    mnt.table("snap", f"0 {SECTORS} snapshot /dev/mapper/base-real cow.img P 8")
    mnt.table("base", f"0 {SECTORS} snapshot-origin /dev/mapper/base-real")
    mnt.mount()
    expected = bytearray(original)
    blocks = list(range(4096))
    random.Random(7).shuffle(blocks)  # COW chunks in random order: one merge run per chunk
    fd = os.open(mnt.dev("snap"), os.O_WRONLY)
    try:
        for block in blocks[:3000]:
            data = marker("snap", block)
            os.pwrite(fd, data, block * 4096)
            expected[block * 4096 : (block + 1) * 4096] = data
        os.fsync(fd)
    finally:
        os.close(fd)
    mnt.cli("suspend", "base")
    mnt.cli("suspend", "snap")
    cow = mnt.tables / "cow.img"
    mnt.cli(
        "load", "base", "--table", f"0 {SECTORS} snapshot-merge /dev/mapper/base-real {cow} P 8"
    )
    mnt.cli("resume", "base")
    mnt.cli("remove", "snap")
    start = parse_usage(status(mnt, "base"))[0]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # let part of it merge, then pull the plug
        used = parse_usage(status(mnt, "base"))[0]
        if used < start - 800:
            break
        time.sleep(0.05)
    pid = mnt.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    run("fusermount3", "-u", "-z", str(mnt.mnt), check=False)
    mnt.mounted = False
    mnt.mount()  # over the killed daemon's leftover pid file and socket
    left = parse_usage(status(mnt, "base"))
    assert left[2] < left[0] < start  # resumed part way
    mnt.cli("status", "base", "--watch", "--interval", "0.1", timeout=300)
    assert parse_usage(status(mnt, "base"))[::2] == (16, 16)  # header + area 0, chunk 8
    with open(mnt.dev("base"), "rb") as fh:
        assert fh.read() == expected
