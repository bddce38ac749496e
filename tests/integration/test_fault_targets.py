"""Fault targets on a real mount: the xfstests pattern of swapping a flakey ``drop_writes`` table in
and out while I/O runs, and the CLI's strings and message replies for delay, flakey, dust and
unstriped."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest
import trio

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError
from tests.conftest import pattern
from tests.integration.harness import Mount, run
from tests.kernel_vm import KDM_DIR, KDM_VM

MiB = 1 << 20
BLOCK = 4096


def _record(i: int) -> bytes:
    return b"R%07d" % i * (BLOCK // 8)


class Writer(threading.Thread):
    """Writes numbered blocks 1, 2, 3... and after each one the header block 0 (its number),
    then fsyncs; remembers when each record's write started and when it was acknowledged."""

    def __init__(self, path: str, limit: int) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.limit = limit
        self.stop = threading.Event()
        self.acked: list[tuple[int, float, float]] = []  # (record, started, acknowledged)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                i = 1
                while not self.stop.is_set() and i < self.limit:
                    started = time.monotonic()
                    assert os.pwrite(fd, _record(i), i * BLOCK) == BLOCK
                    assert os.pwrite(fd, _record(i), 0) == BLOCK
                    os.fsync(fd)
                    self.acked.append((i, started, time.monotonic()))
                    i += 1
            finally:
                os.close(fd)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        target = len(self.acked) + count
        while len(self.acked) < target:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, "the writer made no progress"
            time.sleep(0.01)


def test_flakey_drop_writes_swapped_in_and_out_while_writing(mnt: Mount) -> None:
    size = 64 * MiB
    img = mnt.image("a.img", size)
    sectors = size // 512
    working = f"0 {sectors} flakey {img} 0 180 0"
    dropping = f"0 {sectors} flakey {img} 0 0 180 1 drop_writes"
    mnt.table("flk", working + "\n")
    mnt.mount()
    writer = Writer(mnt.dev("flk"), size // BLOCK)
    writer.start()
    try:
        writer.wait_for(50)
        swap_in = time.monotonic()
        mnt.cli("suspend", "flk")
        mnt.cli("load", "flk", "--table", dropping)
        mnt.cli("resume", "flk")
        dropped_from = time.monotonic()
        assert mnt.cli("table", "flk").stdout == dropping + "\n"
        writer.wait_for(50)
        dropped_until = time.monotonic()
        mnt.cli("suspend", "flk")
        mnt.cli("load", "flk", "--table", working)
        mnt.cli("resume", "flk")
        swapped_back = time.monotonic()
        assert mnt.cli("table", "flk").stdout == f"{working} 2 error_reads error_writes\n"
        writer.wait_for(50)
    finally:
        writer.stop.set()
        writer.join(60)
    assert writer.error is None, writer.error

    with open(img, "rb") as fh:
        data = fh.read()
    before = [i for i, _, acked in writer.acked if acked < swap_in]
    during = [
        i for i, started, acked in writer.acked if started > dropped_from and acked < dropped_until
    ]
    after = [i for i, started, _ in writer.acked if started > swapped_back]
    assert len(before) >= 50 and len(during) >= 40 and len(after) >= 40
    for i in before + after:  # acknowledged outside the drop window: present, in place
        assert data[i * BLOCK : (i + 1) * BLOCK] == _record(i), f"record {i} lost"
    for i in during:  # acknowledged but dropped, as the table said
        assert data[i * BLOCK : (i + 1) * BLOCK] == bytes(BLOCK), f"record {i} not dropped"
    for i, _, _ in writer.acked:  # nothing else ever lands anywhere: each block is its own
        block = data[i * BLOCK : (i + 1) * BLOCK]
        assert block in (_record(i), bytes(BLOCK))
    last = writer.acked[-1][0]
    assert data[:BLOCK] == _record(last)  # header: the last write wins, nothing reordered
    assert data[(last + 1) * BLOCK :].count(0) == len(data) - (last + 1) * BLOCK


def _fsync_write(path: Path, data: bytes) -> None:
    with path.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def test_ext4_keeps_fsynced_data_when_the_plug_is_pulled(mnt: Mount, tmp_path: Path) -> None:
    """xfstests' dm-flakey recipe: fsync, switch to drop_writes, write more, unmount, switch
    back, mount: the fsynced file is whole, the later one is gone, fsck finds nothing."""
    size = 64 * MiB
    img = mnt.image("fs.img", size)
    working = f"0 {size // 512} flakey {img} 0 180 0"
    dropping = f"0 {size // 512} flakey {img} 0 0 180 1 drop_writes"
    mnt.table("flk", working + "\n")
    mnt.mount()
    loop = mnt.losetup("flk")
    run("mkfs.ext4", "-q", "-F", loop)
    where = tmp_path / "fs"
    mnt.mount_fs(loop, where)
    kept = pattern(0, 3 * MiB + 123, seed=5)
    _fsync_write(where / "kept", kept)
    mnt.cli("suspend", "flk")  # pull the plug: from here on every write is lost
    mnt.cli("load", "flk", "--table", dropping)
    mnt.cli("resume", "flk")
    _fsync_write(where / "lost", pattern(0, MiB, seed=6))  # acknowledged, then dropped
    (where / "kept").unlink()  # so is this
    os.sync()
    mnt.umount_fs(where)
    mnt.cli("suspend", "flk")
    mnt.cli("load", "flk", "--table", working)
    mnt.cli("resume", "flk")
    mnt.mount_fs(loop, where)  # replays the journal up to the last write that reached the disk
    assert (where / "kept").read_bytes() == kept
    assert not (where / "lost").exists()
    mnt.umount_fs(where)
    run("e2fsck", "-fn", loop)


def test_cli_strings_and_messages(mnt: Mount) -> None:
    a = mnt.image("a.img", 4 * MiB, pattern(0, 4 * MiB))
    b = mnt.image("b.img", 4 * MiB, pattern(0, 4 * MiB, seed=1))
    mnt.mount()
    mnt.cli("create", "dl", "--table", f"0 2048 delay {a} 0 0 {b} 8 20 {a} 16 30")
    assert mnt.cli("table", "dl").stdout == f"0 2048 delay {a} 0 0 {b} 8 20 {a} 16 30\n"
    assert mnt.cli("status", "dl").stdout == "0 2048 delay 0 0 0\n"
    assert mnt.cli("deps", "dl").stdout == f"2 dependencies\t: ({a}) ({b})\n"  # once each

    mnt.cli("create", "fl", "--table", f"0 2048 flakey {a} 0 180 0")
    assert mnt.cli("table", "fl").stdout == (
        f"0 2048 flakey {a} 0 180 0 2 error_reads error_writes\n"
    )
    assert mnt.cli("status", "fl").stdout == "0 2048 flakey \n"
    bad = mnt.cli(
        "load", "fl", "--table", f"0 2048 flakey {a} 0 0 180 1 ignore_zero_blocks", check=False
    )
    assert bad.returncode == 1
    assert "line 1: flakey: Unrecognised flakey feature requested" in bad.stderr
    assert "INACTIVE" not in mnt.cli("info", "fl").stdout  # a refused load changes nothing

    mnt.cli("create", "du", "--table", f"0 2048 dust {a} 0 512")
    assert mnt.cli("message", "du", "0", "addbadblock", "60").stdout == ""
    assert mnt.cli("message", "du", "0", "queryblock", "60").stdout == (
        "dust_query_block: block 60 found in badblocklist\n"
    )
    mnt.cli("message", "du", "0", "addbadblock", "61")
    assert mnt.cli("message", "du", "0", "listbadblocks").stdout == "60\n61\n"
    assert mnt.cli("message", "du", "0", "countbadblocks").stdout == (
        "countbadblocks: 2 badblock(s) found\n"
    )
    mnt.cli("message", "du", "0", "enable")
    assert mnt.cli("status", "du").stdout == f"0 2048 dust {a} fail_read_on_bad_block verbose\n"
    fd = os.open(mnt.dev("du"), os.O_RDWR)
    try:
        try:
            os.pread(fd, 512, 60 * 512)
            raise AssertionError("read of a bad block succeeded")
        except OSError as exc:
            assert exc.errno == 5
        assert os.pread(fd, 512, 59 * 512) == pattern(59 * 512, 512)
        os.pwrite(fd, b"\x01" * 512, 60 * 512)  # a write remaps the block
        assert os.pread(fd, 512, 60 * 512) == b"\x01" * 512
    finally:
        os.close(fd)
    assert mnt.cli("message", "du", "0", "clearbadblocks").stdout == (
        "dust_clear_badblocks: badblocks cleared\n"
    )
    err = mnt.cli("message", "du", "0", "removebadblock", "5", check=False)
    assert err.returncode == 1
    assert "dust_remove_block: block 5 not found in badblocklist" in err.stderr

    mnt.cli("create", "st", "--table", f"0 4096 striped 2 8 {a} 0 {b} 0")
    mnt.cli("create", "un", "--table", "0 2048 unstriped 2 8 1 /dev/mapper/st 0")
    assert mnt.cli("table", "un").stdout == "0 2048 unstriped 2 8 1 /dev/mapper/st 0\n"
    with open(mnt.dev("un"), "rb") as fh:
        assert fh.read() == pattern(0, MiB, seed=1)


# Table lines run through the real kernel (6.12, kdm-vm.sh) and through dmfuse: the same
# accepted/refused verdict, the same ``dmsetup table`` and ``status`` strings, the same error.
KERNEL_CASES = [
    "delay {A} 0 0",
    "delay {A} 8 500 {B} 16 20",
    "delay {A} 8 500 {B} 16 20 {A} 0 70",
    "delay {A} 8",
    "delay {A} 1x 500",
    "delay {A} 8 5x",
    "delay {A} 8 -1",
    "delay {A} 8 4294967296",
    "delay {A} 8 1 {B} 1 5 {A} 0 x",
    "flakey {A} 0 180 0",
    "flakey {A} 0 180 0 0",
    "flakey {A} 0 0 180 2 drop_writes error_reads",
    "flakey {A} 0 0 180 1 DROP_WRITES",
    "flakey {A} 0 0 180 5 corrupt_bio_byte 32 w 255 0",
    "flakey {A} 0 0 180 4 random_write_corrupt 5 random_read_corrupt 0",
    "flakey {A} 0 0 180 3 error_reads random_read_corrupt 1",
    "flakey {A} 0 0 180 4 random_read_corrupt 1 random_read_corrupt 2",
    "flakey {A} 0 0 180 1 drop_writes trailing words",
    "flakey {A} 0 0 180 1 ignore_zero_blocks",
    "flakey {A} 0 0 180 2 drop_writes error_writes",
    "flakey {A} 0 0 180 2 error_reads error_reads",
    "flakey {A} 0 0 180 6 drop_writes corrupt_bio_byte 1 w 0 0",
    "flakey {A} 0 0 180 4 corrupt_bio_byte 1 r 0",
    "flakey {A} 0 0 180 1 corrupt_bio_byte",
    "flakey {A} 0 0 180 2 corrupt_bio_byte 1",
    "flakey {A} 0 0 180 6 corrupt_bio_byte 1 w 0 0 error_writes",
    "flakey {A} 0 0 180 3 drop_writes random_write_corrupt 5",
    "flakey {A} 0 0 180 4294967297 drop_writes",
    "flakey {A} 0 4294967295 2",
    "flakey {A} 0 0 180 5 corrupt_bio_byte 1 r 256 0",
    "flakey {A} 0 0 180 2 random_read_corrupt 1000000001",
    "flakey {A} 0 0 180 2 drop_writes",
    "flakey {A} 0 4294967295 1",
    "flakey {A} 0 4294967296 1",
    "flakey {A} 0 1 1x",
    "flakey {A} 0 180",
    "unstriped 2 8 1 {A} 0",
    "unstriped 2 8 2 {A} 0",
    "unstriped 2 8 3 {A} 0",
    "unstriped 2 6 0 {A} 0",
    "unstriped 0 8 0 {A} 0",
    "unstriped 2 8 0 {A} x",
]
KERNEL_SECTORS = 8184  # divides by 2, 6 and 8


def _kernel_script() -> str:
    lines = [
        "#!/bin/bash",
        "A=/dev/vda B=/dev/vdb",
        "run() {",
        '  if dmsetup create k --table "0 ' + str(KERNEL_SECTORS) + ' $1" >/dev/null 2>&1; then',
        '    echo "OK|$(dmsetup table k)|$(dmsetup status k)"; dmsetup remove k',
        "  else",
        "    echo \"FAIL|$(dmesg | grep 'device-mapper: table:' | tail -1)\"",
        "  fi",
        "}",
    ]
    lines += [f'run "{case.format(A="$A", B="$B")}"' for case in KERNEL_CASES]
    return "\n".join(lines) + "\n"


def _kernel_verdicts(output: str) -> list[str]:
    out = []
    for line in output.splitlines():
        if line.startswith("OK|"):
            out.append(line.replace("254:0", "{A}").replace("254:16", "{B}"))
        elif line.startswith("FAIL|"):
            error = re.sub(r"^.*device-mapper: table: [0-9:]+: [a-z-]+: ", "", line)
            out.append("FAIL|" + re.sub(r" \(-E[A-Z]+\)$", "", error))
    return out


async def _dmfuse_verdicts(a: str, b: str) -> list[str]:
    m = Manager()
    out = []
    for case in KERNEL_CASES:
        table = f"0 {KERNEL_SECTORS} " + case.format(A=a, B=b)
        try:
            await m.create("k", table)
        except DmError as exc:
            out.append("FAIL|" + re.sub(r"^line 1: [a-z-]+: ", "", exc.message))
            continue
        shown = m.table("k")[0]["lines"][0] + "|" + m.status("k")[0]["lines"][0]
        out.append("OK|" + shown.replace(a, "{A}").replace(b, "{B}"))
        await m.remove("k")
    return out


@pytest.mark.kernel
async def test_strings_and_errors_match_the_kernel_vm(tmp_path: Path) -> None:
    if not (KDM_DIR / "vmlinuz").exists() or not KDM_VM.exists():
        pytest.skip(f"kernel VM not set up ({KDM_DIR}/vmlinuz missing; see kdm-vm.sh setup)")
    work = tmp_path / "vm"
    work.mkdir()
    disks = []
    for name in ("a.img", "b.img"):
        disk = work / name
        with disk.open("wb") as fh:
            fh.truncate(8 * MiB)
        disks.append(str(disk))
    (work / "run.sh").write_text(_kernel_script())
    env = dict(os.environ, KDM_DIR=str(KDM_DIR), KDM_TIMEOUT="900")
    with trio.fail_after(1000):
        proc = await trio.run_process(
            [str(KDM_VM), "run", str(work), str(work / "run.sh"), *disks],
            capture_stdout=True,
            capture_stderr=True,
            env=env,
            check=False,
        )
    kernel = _kernel_verdicts(proc.stdout.decode(errors="replace"))
    assert len(kernel) == len(KERNEL_CASES), proc.stdout.decode(errors="replace")[-3000:]
    ours = await _dmfuse_verdicts(*disks)
    assert ours == kernel
