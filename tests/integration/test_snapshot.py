"""Snapshots on a real mount: the dmsetup recipe for snapshotting a live device, fio crc32c
verify through loop devices on the origin and on the snapshot, and a remount."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.integration.harness import Mount, run

MiB = 1 << 20
SECTORS = 32768  # 16 MiB


def fio(target: str, seed: int, rw: str = "randwrite") -> None:
    proc = run(
        "fio",
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
        "--verify_fatal=1",
        "--do_verify=1",
        "--output-format=json",
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = json.loads(proc.stdout)["jobs"][0]
    assert job["error"] == 0
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
    mnt.detach(loop)

    # a remount brings the same devices back from the table directory, COW metadata from disk
    snap_status = status(mnt, "snap")
    mnt.unmount()
    mnt.mount()
    assert status(mnt, "snap") == snap_status
    assert digest(mnt.dev("snap")) == snap_after
    assert digest(mnt.dev("base")) == origin_after
    assert digest(base_img) == origin_after
