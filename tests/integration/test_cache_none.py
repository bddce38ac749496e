"""``dmfuse mount -o cache=none``: backing files opened O_DIRECT, on a real mount.

Checked from outside the daemon: the flags of its descriptors (``/proc/PID/fdinfo``, O_DIRECT
is 040000 octal), the page cache of the backing files (``fincore``), and the data (byte
offsets, odd sizes, fio crc32c verify, mkfs.ext4 + e2fsck through a loop device, crypt's
ciphertext, a snapshot's COW).  The same checks on a default mount show the page cache filled
and no O_DIRECT, so they measure what they claim.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from dmfuse.control.protocol import pid_path, socket_path
from tests.conftest import pattern
from tests.integration.harness import DMFUSE, Mount, run
from tests.unit.test_crypt import K64, xts_decrypt
from tests.unit.test_verity import veritysetup_format

MiB = 1 << 20
O_DIRECT_OCTAL = 0o40000


def uncached_image(mnt: Mount, name: str, size: int, seed: int = 0) -> str:
    """A backing file holding a pattern, with none of it left in the page cache."""
    path = mnt.image(name, size, data=pattern(0, size, seed=seed))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    assert cached_pages(path) == 0
    return path


def cached_pages(path: str) -> int:
    out = run("fincore", "--raw", "--noheadings", "--output", "PAGES", path).stdout
    return int(out.split()[0])


def open_flags(mnt: Mount, path: str) -> list[int]:
    """The open flags of each of the daemon's descriptors for ``path``."""
    pid = mnt.daemon_pid()
    assert pid is not None
    flags = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != path:
                continue
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except FileNotFoundError:
            continue
        flags += [int(ln.split()[1], 8) for ln in text.splitlines() if ln.startswith("flags:")]
    return flags


def random_io(device: str, model: bytearray, seed: int, rounds: int = 300) -> None:
    """Byte-granular writes and reads of random sizes; reads must match ``model``."""
    rnd = random.Random(seed)
    size = len(model)
    fd = os.open(device, os.O_RDWR)
    try:
        for _ in range(rounds):
            off = rnd.randrange(size - 1)
            n = rnd.choice([1, 3, 511, 512, 513, 4095, 4097, rnd.randrange(1, 200_000)])
            n = min(n, size - off)
            data = rnd.randbytes(n)
            assert os.pwrite(fd, data, off) == n
            model[off : off + n] = data
            off = rnd.randrange(size - 1)
            n = min(rnd.randrange(1, 300_000), size - off)
            assert os.pread(fd, n, off) == model[off : off + n], (off, n)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_bad_cache_option_mounts_nothing(mnt: Mount) -> None:
    mnt.image("a.img", MiB)
    mnt.table("a", "0 2048 linear a.img 0")
    for extra in ([], ["-f"]):
        proc = run(
            *DMFUSE, "mount", *extra, "-o", "cache=bogus", str(mnt.tables), str(mnt.mnt),
            check=False,
        )  # fmt: skip
        assert proc.returncode == 1
        assert proc.stderr == (
            f"dmfuse: mount {mnt.mnt} failed: mount option cache=bogus: unknown cache policy "
            "(writeback or none)\n"
        )
        assert not os.path.ismount(mnt.mnt)
        assert not os.path.exists(socket_path(str(mnt.mnt)))
        assert not os.path.exists(pid_path(str(mnt.mnt)))
    # The same word in a table file's header fails the mount naming the file.
    mnt.table("a", "# dmfuse: cache=bogus\n0 2048 linear a.img 0")
    proc = run(*DMFUSE, "mount", str(mnt.tables), str(mnt.mnt), check=False)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"dmfuse: mount {mnt.mnt} failed: a.table: table header cache=bogus: unknown cache "
        "policy (writeback or none)\n"
    )
    assert not os.path.ismount(mnt.mnt)


@pytest.mark.parametrize("policy", ["none", "writeback"])
def test_byte_granular_io_o_direct_and_page_cache(mnt: Mount, policy: str) -> None:
    a = uncached_image(mnt, "a.img", 16 * MiB, seed=1)
    b = uncached_image(mnt, "b.img", 8 * MiB, seed=2)
    c = uncached_image(mnt, "c.img", 8 * MiB, seed=3)
    mnt.table("lin", "0 32768 linear a.img 0")
    mnt.table("st", "0 32768 striped 2 8 b.img 0 c.img 0")  # 4 KiB chunks
    mnt.mount("-o", f"cache={policy}")
    lin = bytearray(pattern(0, 16 * MiB, seed=1))
    random_io(mnt.dev("lin"), lin, seed=5)
    st = bytearray(16 * MiB)
    with open(mnt.dev("st"), "rb") as fh:
        st[:] = fh.read()
    random_io(mnt.dev("st"), st, seed=6)

    flags = {p: open_flags(mnt, p) for p in (a, b, c)}
    pages = {p: cached_pages(p) for p in (a, b, c)}
    info = mnt.cli("info", "lin").stdout
    infos = json.loads(mnt.cli("--json", "info").stdout)
    if policy == "none":
        assert all(any(f & O_DIRECT_OCTAL for f in fl) for fl in flags.values()), flags
        assert pages == {a: 0, b: 0, c: 0}
        assert "Backing cache:     none\n" in info
        assert [i["cache"] for i in infos] == ["none", "none"]
    else:  # the same I/O without the policy fills the page cache: the checks above can fail
        assert not any(f & O_DIRECT_OCTAL for fl in flags.values() for f in fl), flags
        assert all(n > 0 for n in pages.values()), pages
        assert "cache" not in info.lower()
        assert [i["cache"] for i in infos] == ["writeback", "writeback"]
    mnt.unmount()
    assert Path(a).read_bytes() == lin
    halves = Path(b).read_bytes(), Path(c).read_bytes()
    stripes = b"".join(halves[k % 2][(k // 2) * 4096 : (k // 2 + 1) * 4096] for k in range(4096))
    assert stripes == st


def test_fio_verify_and_mkfs_fsck_through_loop(mnt: Mount, tmp_path: Path) -> None:
    img = uncached_image(mnt, "a.img", 64 * MiB)
    mnt.table("d", "0 131072 linear a.img 0")
    mnt.mount("-o", "cache=none")
    proc = run(
        "fio", "--name=verify", f"--filename={mnt.dev('d')}", "--direct=1",
        "--ioengine=libaio", "--iodepth=16", "--rw=randwrite", "--bsrange=512-128k",
        "--size=32M", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
        "--output-format=json",
        timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = json.loads(proc.stdout)["jobs"][0]
    assert job["error"] == 0 and job["write"]["io_bytes"] >= 32 * MiB
    loop = mnt.losetup("d")
    mnt.ext4_round_trip(loop, tmp_path / "fs")
    mnt.detach(loop)
    assert cached_pages(img) == 0


@pytest.mark.parametrize("unit", [512, 4096])
def test_crypt_over_cache_none(mnt: Mount, unit: int) -> None:
    """crypt's C file I/O would be unaligned: over cache=none it converts in memory and goes
    through the backend's bounce buffers, and writes the ciphertext it always writes."""
    disk = uncached_image(mnt, "c.img", 4 * MiB)
    opts = f" 1 sector_size:{unit}" if unit != 512 else ""
    mnt.table("c", f"0 8192 crypt aes-xts-plain64 {K64} 0 c.img 0{opts}\n")
    mnt.mount("-o", "cache=none")
    model = bytearray(4 * MiB)
    with open(mnt.dev("c"), "rb") as fh:
        model[:] = fh.read()
    random_io(mnt.dev("c"), model, seed=unit, rounds=150)
    assert any(f & O_DIRECT_OCTAL for f in open_flags(mnt, disk))
    assert cached_pages(disk) == 0
    mnt.unmount()
    raw = Path(disk).read_bytes()
    assert xts_decrypt(raw, bytes(range(64)), 0, unit=unit) == model
    mnt.mount()  # and the default policy reads back the same plaintext
    with open(mnt.dev("c"), "rb") as fh:
        assert fh.read() == model


def test_snapshot_cow_over_cache_none(mnt: Mount) -> None:
    original = pattern(0, 16 * MiB)
    base = uncached_image(mnt, "base.img", 16 * MiB)
    cow = uncached_image(mnt, "cow.img", 20 * MiB, seed=9)
    run("dd", "if=/dev/zero", f"of={cow}", "bs=4096", "count=1", "conv=notrunc,fsync")
    os.posix_fadvise(fd := os.open(cow, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    mnt.table("base-real", "0 32768 linear base.img 0")
    mnt.table("snap", "0 32768 snapshot /dev/mapper/base-real cow.img P 8")
    mnt.table("base", "0 32768 snapshot-origin /dev/mapper/base-real")
    mnt.mount("-o", "cache=none")
    model = bytearray(original)
    random_io(mnt.dev("base"), model, seed=11, rounds=100)
    with open(mnt.dev("snap"), "rb") as fh:
        assert fh.read() == original  # the COW kept every chunk the origin overwrote
    assert cached_pages(base) == 0 and cached_pages(cow) == 0
    assert any(f & O_DIRECT_OCTAL for f in open_flags(mnt, cow))
    mnt.unmount()
    mnt.mount("-o", "cache=none")  # the COW's metadata was written through O_DIRECT too
    with open(mnt.dev("snap"), "rb") as fh:
        assert fh.read() == original
    with open(mnt.dev("base"), "rb") as fh:
        assert fh.read() == model
    assert mnt.cli("status", "snap").stdout.split()[3] != "Invalid"


def test_table_header_overrides_the_mount_policy(mnt: Mount) -> None:
    img = uncached_image(mnt, "a.img", 8 * MiB)
    mnt.table("d", "# dmfuse: cache=none\n0 8192 linear a.img 0")
    mnt.table("e", "0 8192 linear a.img 8192")
    mnt.mount()
    flags = open_flags(mnt, img)
    assert sorted(bool(f & O_DIRECT_OCTAL) for f in flags) == [False, True], flags
    assert "Backing cache:     none\n" in mnt.cli("info", "d").stdout
    assert "cache" not in mnt.cli("info", "e").stdout.lower()
    data = pattern(100, 10_000, seed=4)
    with open(mnt.dev("d"), "r+b", buffering=0) as fh:
        fh.seek(100)
        fh.write(data)
    assert Path(img).read_bytes()[100:10_100] == data
    mnt.cli("rename", "d", "d2")  # written back with its policy
    assert (mnt.tables / "d2.table").read_text().startswith("# dmfuse: cache=none\n")
    mnt.cli("load", "d2", "--table", f"0 8192 linear {img} 0")
    mnt.cli("resume", "d2")
    assert "Backing cache:     none\n" in mnt.cli("info", "d2").stdout


def test_4k_sector_block_device(mnt: Mount, tmp_path: Path) -> None:
    """A block device that takes only 4 KiB-aligned direct I/O: byte-granular requests on
    the device file still work (bounced to whole 4 KiB units)."""
    backing = tmp_path / "disk4k.img"
    backing.write_bytes(pattern(0, 8 * MiB, seed=8))
    loop = run("losetup", "-f", "--show", "--sector-size", "4096", str(backing)).stdout.strip()
    try:
        fd = os.open(loop, os.O_RDWR | os.O_DIRECT)
        try:  # the kernel refuses 512-byte direct I/O here, so the test means something
            with pytest.raises(OSError):
                os.preadv(fd, [memoryview(bytearray(4096 + 512))[:512]], 512)
        finally:
            os.close(fd)
        mnt.table("d", f"0 16384 linear {loop} 0")
        mnt.mount("-o", "cache=none")
        model = bytearray(pattern(0, 8 * MiB, seed=8))
        random_io(mnt.dev("d"), model, seed=12, rounds=200)
        mnt.unmount()
        with open(loop, "rb") as fh:
            assert fh.read() == model
    finally:
        run("losetup", "-d", loop, check=False)


def test_verity_over_cache_none(mnt: Mount, tmp_path: Path) -> None:
    """Read-only backends (data and hash tree) opened O_RDONLY|O_DIRECT: reads verify, at
    byte offsets too, and a corrupted block fails its read."""
    if shutil.which("veritysetup") is None:
        pytest.skip("veritysetup not installed")
    data = Path(uncached_image(mnt, "data.img", 2 * MiB, seed=21))
    hash_path = mnt.tables / "hash.img"
    root = veritysetup_format(data, hash_path, "--salt=0011")
    for path in (data, hash_path):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    mnt.table(
        "v",
        f"# dmfuse: readonly\n0 4096 verity 1 data.img hash.img 4096 4096 512 1 sha256 {root} 0011",
    )
    mnt.mount("-o", "cache=none")
    expected = data.read_bytes()
    os.posix_fadvise(fd := os.open(data, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    with open(mnt.dev("v"), "rb", buffering=0) as fh:
        assert fh.read() == expected
        fh.seek(4096 * 7 + 123)
        assert fh.read(5000) == expected[4096 * 7 + 123 : 4096 * 7 + 5123]
    assert all(f & O_DIRECT_OCTAL for f in open_flags(mnt, str(data)))
    assert cached_pages(str(data)) == 0
    with open(data, "r+b") as fh:  # corrupt block 9 behind the daemon's back
        fh.seek(9 * 4096 + 5)
        fh.write(b"\xff")
    with open(mnt.dev("v"), "rb", buffering=0) as fh:
        fh.seek(9 * 4096)
        with pytest.raises(OSError):
            fh.read(4096)
        fh.seek(8 * 4096)
        assert fh.read(4096) == expected[8 * 4096 : 9 * 4096]
