"""log-writes on a real mount: the CLI, the log of FUSE requests compared with the kernel's log
of the same I/O (plain, flushed and FUA writes: RWF_DSYNC, RWF_SYNC, O_DSYNC descriptors),
crash-consistency replay of ext4 (e2fsck at every flush point), and, when the kernel VM is set
up, a fresh kernel run compared with dmfuse."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dmfuse.targets.log_writes import log_format as fmt
from dmfuse.targets.log_writes import replay as replay_log
from tests.integration.harness import DMFUSE, Mount, run
from tests.kernel_vm import CACHE, KDM_DIR, KDM_VM, require_vm, run_recorded_script

KERNEL = Path(__file__).parent.parent / "data" / "kernel"
MiB = 1 << 20
USED = 174 * 512  # super + the 11 entries of the "compare" sequence (173 log sectors)
FUA_USED = 30 * 512  # super + the 5 entries of the "fua" sequence (before the VM's own marks)
END_MARK = (0, 0, fmt.MARK, 17, b"dm-log-writes-end")


def entries(log: str) -> list[tuple[int, int, int, int, bytes]]:
    reader = replay_log.LogReader(log)
    try:
        return [
            (r.entry.sector, r.entry.nr_sectors, r.entry.flags, r.entry.data_len, r.entry.mark)
            for r in reader.records()
        ]
    finally:
        reader.close()


def run_ops(mnt: Mount, which: str) -> None:
    """logwrites_ops.py against the dmfuse device lw; marks through ``dmfuse message``."""
    mark = [*DMFUSE, "-m", str(mnt.mnt), "message", "lw", "0", "mark"]
    run(sys.executable, str(KERNEL / "logwrites_ops.py"), which, mnt.dev("lw"), *mark)


def dmfuse_log(mnt: Mount, which: str) -> str:
    """Run one ops sequence on a fresh log-writes device and remove it; return the log."""
    dev = mnt.image(f"{which}.dev", MiB)
    log = mnt.image(f"{which}.log", MiB)
    mnt.cli("create", "lw", "--table", f"0 2048 log-writes {dev} {log}")
    run_ops(mnt, which)
    mnt.cli("remove", "lw")
    return log


def kernel_file(name: str) -> bytes:
    return gzip.decompress((KERNEL / name).read_bytes())


def test_fuse_log_equals_reference_log(mnt: Mount, tmp_path: Path) -> None:
    mnt.mount()
    log = dmfuse_log(mnt, "compare")
    kernel = kernel_file("logwrites-compare.log.gz")
    assert Path(log).read_bytes()[:USED] == kernel[:USED]  # headers, sectors, marks and data
    # An O_DIRECT|O_DSYNC write: a FUA write, logged at once ahead of the older plain write,
    # then O_DSYNC's flush, as the kernel logs it (FUA(16), 8, FLUSH, 32, FLUSH).  The super
    # block differs only because the VM added two marks after these entries.
    fua = dmfuse_log(mnt, "fua")
    kernel_fua = kernel_file("logwrites-fua.log.gz")
    assert Path(fua).read_bytes()[512:FUA_USED] == kernel_fua[512:FUA_USED]
    (tmp_path / "kernel-fua.log").write_bytes(kernel_fua)
    assert entries(fua) == [*entries(str(tmp_path / "kernel-fua.log"))[:5], END_MARK]


def test_fua_mix_matches_the_kernel(mnt: Mount, tmp_path: Path) -> None:
    """Plain and RWF_DSYNC writes (the kernel's status: 7 47), then an O_DSYNC descriptor,
    RWF_SYNC, a buffered RWF_DSYNC write and fdatasync: dmfuse's statuses, log and device are
    the kernel's (tests/data/kernel/logwrites_fua_vm.sh, recorded in the kernel VM)."""
    mnt.mount()
    dev = mnt.image("mix.dev", MiB)
    log = mnt.image("mix.log", MiB)
    mnt.cli("create", "lw", "--table", f"0 2048 log-writes {dev} {log}")
    recorded = (KERNEL / "logwrites-fuamix-vm-output.txt").read_text()
    run_ops(mnt, "fua-mix-a")
    status = mnt.cli("status", "lw").stdout
    assert status == "0 2048 log-writes 7 47\n" and f"$ dmsetup status lw\n{status}" in recorded
    run_ops(mnt, "fua-mix-b")
    status = mnt.cli("status", "lw").stdout
    assert status == "0 2048 log-writes 15 95\n" and f"$ dmsetup status lw\n{status}" in recorded
    mnt.cli("remove", "lw")
    assert Path(log).read_bytes() == kernel_file("logwrites-fuamix.log.gz")  # every byte
    assert Path(dev).read_bytes() == kernel_file("logwrites-fuamix.dev.gz")

    # replay-log --check fua: the check runs at each of the four FUA entries
    scratch = tmp_path / "scratch.img"
    scratch.write_bytes(bytes(MiB))
    calls = tmp_path / "calls"
    fsck = f"echo fua >> {calls}"
    rl = [*DMFUSE, "replay-log", "--log", log, "--replay", str(scratch)]
    run(*rl, "--fsck", fsck, "--check", "fua")
    assert calls.read_text().split() == ["fua"] * 4
    assert run(*DMFUSE, "replay-log", "--log", log, "--find", "--next-fua").stdout == "0@10\n"


def test_cli_status_table_and_messages(mnt: Mount) -> None:
    dev = mnt.image("dev.img", MiB)
    log = mnt.image("log.img", MiB)
    mnt.table("lw", "0 2048 log-writes dev.img log.img\n")
    mnt.mount()
    assert mnt.cli("table", "lw").stdout == f"0 2048 log-writes {dev} {log}\n"
    assert mnt.cli("status", "lw").stdout == "0 2048 log-writes 0 0\n"
    with open(mnt.dev("lw"), "r+b", buffering=0) as fh:
        fh.write(b"a" * 4096)
        os.fsync(fh.fileno())
    mnt.cli("message", "lw", "0", "mark", "m1")
    assert mnt.cli("status", "lw").stdout == "0 2048 log-writes 3 11\n"
    bad = mnt.cli("message", "lw", "0", "mark", check=False)
    assert bad.returncode == 1
    assert "expect 2 arguments, got 1" in bad.stderr and bad.stderr.count("\n") == 1
    assert mnt.cli("status", "lw").stdout == "0 2048 log-writes 3 11\n"
    assert entries(log) == [
        (0, 8, 0, 0, b""),
        (0, 0, fmt.FLUSH, 0, b""),
        (0, 0, fmt.MARK, 2, b"m1"),
    ]
    found = run(*DMFUSE, "replay-log", "--log", log, "--find", "--end-mark", "m1")
    assert found.stdout == "2@12\n"


def test_crash_consistency_ext4_fsck_at_every_flush(mnt: Mount, tmp_path: Path) -> None:
    """xfstests' pattern: mkfs, mark, file operations, then e2fsck each flush point's state."""
    if shutil.which("e2fsck") is None:
        pytest.skip("e2fsprogs not installed")
    size = 32 * MiB
    mnt.image("dev.img", size)
    log = mnt.image("log.img", 128 * MiB)
    mnt.table("lw", f"0 {size // 512} log-writes dev.img log.img\n")
    mnt.mount()
    loop = mnt.losetup("lw")
    run("mkfs.ext4", "-q", "-F", "-E", "nodiscard", loop)
    run("sync")  # mkfs ends with an fsync; this makes sure every mkfs write is flushed
    mnt.cli("message", "lw", "0", "mark", "mkfs")
    fs = tmp_path / "fs"
    mnt.mount_fs(loop, fs)
    for i in range(6):  # create + write + fsync
        with (fs / f"f{i}").open("wb") as fh:
            fh.write(os.urandom(64 * 1024 * (i + 1)))
            fh.flush()
            os.fsync(fh.fileno())
    (fs / "d").mkdir()
    os.rename(fs / "f1", fs / "d" / "moved")
    os.unlink(fs / "f2")
    with (fs / "f3").open("r+b") as fh:
        fh.seek(10_000)
        fh.write(b"overwrite" * 1000)
        os.fsync(fh.fileno())
    fd = os.open(fs, os.O_RDONLY)
    os.fsync(fd)  # the rename and unlink reach the journal
    os.close(fd)
    mnt.umount_fs(fs)
    mnt.detach(loop)
    mnt.cli("remove", "lw")  # logs anything unflushed and the end mark

    all_entries = entries(log)
    after = all_entries[[e[4] for e in all_entries].index(b"mkfs") :]
    flushes = sum(1 for e in after if e[2] & fmt.FLUSH)
    assert flushes >= 8  # the file operations above made at least this many flush points

    scratch = tmp_path / "scratch.img"
    scratch.write_bytes(b"")
    os.truncate(scratch, size)
    rl = [*DMFUSE, "replay-log", "--log", log, "--replay", str(scratch)]
    run(*rl, "--end-mark", "mkfs")
    run("e2fsck", "-fn", str(scratch))  # the state at the mark is clean
    # At each flush point: e2fsck -fn on the replayed image itself, then the same after
    # recovering the journal on a copy (what a mount would do): both must find nothing to fix.
    # "checked" counts the flush points really examined.
    copy, checked, out = tmp_path / "copy.img", tmp_path / "checked", tmp_path / "fsck.out"
    fsck = (
        f"e2fsck -fn {scratch} >> {out} 2>&1 && cp --sparse=always {scratch} {copy} && "
        f"{{ e2fsck -E journal_only -y {copy} >/dev/null 2>&1; true; }} && "
        f"e2fsck -fn {copy} >> {out} 2>&1 && echo ok >> {checked}"
    )
    proc = run(*rl, "--start-mark", "mkfs", "--fsck", fsck, "--check", "flush", timeout=600)
    assert proc.returncode == 0
    assert len(checked.read_text().split()) == flushes
    # the final state is the file system we left
    run(*rl, "--start-mark", "mkfs")
    run("e2fsck", "-fn", str(scratch))
    listing = run("debugfs", "-R", "ls -l /d", str(scratch)).stdout
    assert "moved" in listing


@pytest.mark.kernel
def test_kernel_vm_log_matches_dmfuse(mnt: Mount, tmp_path: Path) -> None:
    """Record fresh logs with the kernel's dm-log-writes and compare them with dmfuse's."""
    if not (KDM_DIR / "vmlinuz").exists() or not KDM_VM.exists():
        pytest.skip(f"kernel VM not set up ({KDM_DIR}/vmlinuz missing; see kdm-vm.sh setup)")
    work = tmp_path / "vm"
    work.mkdir()
    for name in ("logwrites_vm.sh", "logwrites_ops.py"):
        shutil.copy(KERNEL / name, work / name)
    disks = []
    for name in ("data1", "log1", "data2", "log2"):
        disks.append(str(work / f"{name}.img"))
        (work / f"{name}.img").write_bytes(bytes(MiB))
    env = dict(os.environ, KDM_DIR=str(KDM_DIR))
    proc = subprocess.run(
        [str(KDM_VM), "run", str(work), str(work / "logwrites_vm.sh"), *disks],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = (work / "out.txt").read_text()
    assert "$ dmsetup status lw\n0 2048 log-writes 9 162\n" in out
    assert "0 2048 log-writes 254:0 254:16" in out
    kernel_compare = (work / "log1.img").read_bytes()
    kernel_fua = (work / "log2.img").read_bytes()

    mnt.mount()
    ours = Path(dmfuse_log(mnt, "compare")).read_bytes()
    assert ours[:USED] == kernel_compare[:USED]
    ours_fua = dmfuse_log(mnt, "fua")  # FUA(16), 8, FLUSH, 32, FLUSH, as the kernel
    assert Path(ours_fua).read_bytes()[512:FUA_USED] == kernel_fua[512:FUA_USED]
    assert entries(ours_fua) == [*entries(str(work / "log2.img"))[:5], END_MARK]
    # and the kernel's own log replays onto the kernel's device (discarded sectors aside)
    replayed = tmp_path / "replayed.img"
    replayed.write_bytes(bytes(MiB))
    assert replay_log.main(["--log", str(work / "log1.img"), "--replay", str(replayed)]) == 0
    mine, theirs = replayed.read_bytes(), (work / "data1.img").read_bytes()
    assert mine[: 272 * 512] == theirs[: 272 * 512] and mine[280 * 512 :] == theirs[280 * 512 :]


@pytest.mark.kernel
async def test_kernel_vm_fua_mix_recording_is_current() -> None:
    """Rerun logwrites_fua_vm.sh in the kernel VM: the same output, log and device."""
    require_vm()
    returncode = await run_recorded_script(
        "logwrites-fua-work",
        KERNEL / "logwrites_fua_vm.sh",
        [KERNEL / "logwrites_ops.py"],
        {"data.img": MiB, "log.img": MiB},
    )
    work = CACHE / "logwrites-fua-work"
    out = (work / "out.txt").read_text()
    assert returncode == 0, out
    assert out == (KERNEL / "logwrites-fuamix-vm-output.txt").read_text()
    assert (work / "log.img").read_bytes() == kernel_file("logwrites-fuamix.log.gz")
    assert (work / "data.img").read_bytes() == kernel_file("logwrites-fuamix.dev.gz")
