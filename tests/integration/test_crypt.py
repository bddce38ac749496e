"""crypt on a real mount, and against the real kernel (VM) and cryptsetup."""

from __future__ import annotations

import errno
import lzma
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from dmfuse.backends.file import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate
from dmfuse.engine.manager import Manager
from tests.conftest import pattern
from tests.integration.harness import Mount, run
from tests.kernel_vm import KDM_DIR, KDM_VM
from tests.unit import test_crypt_vectors as vectors
from tests.unit.test_crypt import K64, xts_decrypt

MiB = 1 << 20
SHIM_SRC = Path(__file__).resolve().parents[3] / "shared" / "tools" / "dmtable_shim.c"


@pytest.mark.kernel
async def test_kernel_vm_ciphertext(tmp_path: Path) -> None:
    """The real dm-crypt writes the same tables and data; its image equals dmfuse's.

    ``DMFUSE_RECORD=1`` stores the kernel's image as the unit tests' reference."""
    if not (KDM_DIR / "vmlinuz").exists() or not KDM_VM.exists():
        pytest.skip(f"kernel VM not set up ({KDM_DIR}/vmlinuz missing; see kdm-vm.sh setup)")
    work = tmp_path / "vm"
    work.mkdir()
    (work / "pat.bin").write_bytes(vectors.plaintext(0, vectors.SLICE))
    (work / "run.sh").write_text(vectors.vm_script(work))
    disk = work / "disk.img"
    with disk.open("wb") as fh:
        fh.truncate(vectors.SLICE * len(vectors.CASES))
    env = dict(os.environ, KDM_DIR=str(KDM_DIR), KDM_TIMEOUT="1200")
    with trio.fail_after(1300):
        proc = await trio.run_process(
            [str(KDM_VM), "run", str(work), str(work / "run.sh"), str(disk)],
            capture_stdout=True,
            capture_stderr=True,
            env=env,
            check=False,
        )
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    kernel = disk.read_bytes()
    if os.environ.get("DMFUSE_RECORD"):
        vectors.IMAGE_XZ.write_bytes(lzma.compress(kernel, preset=9 | lzma.PRESET_EXTREME))
    vectors.compare(kernel, await vectors.dmfuse_image(tmp_path))


# -- a real mount --------------------------------------------------------------------------
def test_crypt_device_file_io_and_key_hiding(mnt: Mount) -> None:
    disk = mnt.image("c.img", 4 * MiB)
    mnt.table("c", f"0 8192 crypt aes-xts-plain64 {K64} 0 c.img 0 1 sector_size:4096\n")
    mnt.mount()
    data = pattern(0, 3 * 4096 + 100, seed=11)
    fd = os.open(mnt.dev("c"), os.O_RDWR)
    try:
        assert os.pwrite(fd, data, 4096 - 50) == len(data)  # unaligned: read-modify-write
        os.fsync(fd)
        assert os.pread(fd, len(data), 4096 - 50) == data
        with pytest.raises(OSError) as exc:
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 8192)
        assert exc.value.errno == errno.EOPNOTSUPP
        assert os.pread(fd, len(data), 4096 - 50) == data
    finally:
        os.close(fd)
    raw = Path(disk).read_bytes()
    assert data[1000:2000] not in raw
    assert (
        xts_decrypt(raw[4096 : 3 * 4096], bytes(range(64)), 8, unit=4096)
        == (data[50 : 50 + 2 * 4096])
    )
    hidden = mnt.cli("table", "c").stdout
    assert K64 not in hidden and f" {'0' * 128} 0 " in hidden
    assert K64 in mnt.cli("table", "--showkeys", "c").stdout
    assert mnt.cli("status", "c").stdout.strip() == "0 8192 crypt"
    # key wipe/set through the CLI: only while suspended, and resume refuses a wiped key
    assert "not suspended" in mnt.cli("message", "c", "0", "key", "wipe", check=False).stderr
    mnt.cli("suspend", "c")
    mnt.cli("message", "c", "0", "key", "wipe")
    failed = mnt.cli("resume", "c", check=False)
    assert failed.returncode == 1 and "crypt key is not set" in failed.stderr
    mnt.cli("message", "c", "0", "key", "set", K64)
    mnt.cli("resume", "c")
    fd = os.open(mnt.dev("c"), os.O_RDONLY)
    try:
        assert os.pread(fd, len(data), 4096 - 50) == data
    finally:
        os.close(fd)
    # a reload through stdin (the key stays out of argv) is written back to the table
    # directory with mode 0600: the only file holding the key; it is never in the daemon's log
    line = f"0 8192 crypt aes-xts-plain64 {K64} 0 {disk} 0 1 sector_size:4096\n"
    mnt.cli("load", "c", input=line)
    mnt.cli("resume", "c")
    table_file = mnt.tables / "c.table"
    assert K64 in table_file.read_text() and table_file.stat().st_mode & 0o077 == 0
    pid = mnt.daemon_pid()
    assert pid is not None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert K64.encode() not in cmdline
    for log in Path("/run/dmfuse").glob("*.log"):
        assert K64 not in log.read_text(errors="replace"), log


# -- cryptsetup / qemu LUKS (oracles.md section 2) ------------------------------------------
def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path


def _shim_tables(tmp: Path, *cryptsetup_args: str, passphrase: str) -> list[str]:
    """The table lines cryptsetup would load (LD_PRELOAD shim, oracles.md 1.3)."""
    shim = tmp / "dmtable_shim.so"
    if not shim.exists():
        if not SHIM_SRC.exists():
            pytest.skip("dmtable_shim.c not available")
        run(_tool("gcc"), "-shared", "-fPIC", "-O1", "-o", str(shim), str(SHIM_SRC))
    out = tmp / "tables.txt"
    out.unlink(missing_ok=True)
    env = dict(os.environ, LD_PRELOAD=str(shim), DMSHIM_OUT=str(out))
    subprocess.run(
        [_tool("cryptsetup"), *cryptsetup_args, "--key-file", "-"],
        input=passphrase.encode(),
        env=env,
        capture_output=True,
        check=False,
        timeout=120,
    )
    return [line.split(": ", 1)[1] for line in out.read_text().splitlines()]


def _over_file(line: str, path: Path) -> str:
    """Swap the loop device cryptsetup used for the image file itself."""
    words = line.split()
    assert words[2] == "crypt" and words[6].startswith("/dev/loop")
    words[6] = str(path)
    return " ".join(words)


async def test_luks1_written_by_qemu_reads_back_and_qemu_reads_ours(tmp_path: Path) -> None:
    cryptsetup, qemu_io = _tool("cryptsetup"), _tool("qemu-io")
    (tmp_path / "vk.bin").write_bytes(bytes(range(64)))
    img = tmp_path / "luks1.img"
    with img.open("wb") as fh:
        fh.truncate(16 * MiB)
    run(
        cryptsetup, "luksFormat", "--batch-mode", "--type", "luks1",
        "--pbkdf-force-iterations", "1000", "--cipher", "aes-xts-plain64", "--key-size", "512",
        "--volume-key-file", str(tmp_path / "vk.bin"), str(img), "--key-file", "-",
        input="testpass",
    )  # fmt: skip
    qemu = [
        qemu_io, "--object", "secret,id=sec0,data=testpass", "--image-opts",
        f"driver=luks,key-secret=sec0,file.driver=file,file.filename={img}",
    ]  # fmt: skip
    run(*qemu, "-c", "write -P 0xa5 0 64k", "-c", "write -P 0x3c 1M 8k", "-c", "flush")
    lines = _shim_tables(
        tmp_path, "open", "--disable-keyring", str(img), "c1", passphrase="testpass"
    )
    assert len(lines) == 1 and lines[0].split()[3:5] == ["aes-xts-plain64", K64]
    m = Manager()
    try:
        await m.create("c1", _over_file(lines[0], img))
        dev = m.get("c1")
        assert bytes(await dev.read(0, 65536)) == b"\xa5" * 65536
        assert bytes(await dev.read(MiB, 8192)) == b"\x3c" * 8192
        await dev.write(2 * MiB + 512, memoryview(b"\x77" * 4096))
        await dev.flush()
    finally:
        await m.shutdown()
    # qemu's LUKS driver (an independent implementation) reads what dmfuse wrote
    check = run(*qemu, "-c", f"read -P 0x77 {2 * MiB + 512} 4096", check=False)
    assert check.returncode == 0 and "Pattern verification failed" not in check.stdout


async def test_luks2_reencrypted_by_cryptsetup_both_ways(tmp_path: Path) -> None:
    cryptsetup = _tool("cryptsetup")
    vk = tmp_path / "vk.bin"
    vk.write_bytes(bytes(range(64)))
    plain = b"".join(pattern(i * 4096, 4096, seed=i % 7) for i in range(1024))  # 4 MiB
    enc = tmp_path / "enc.img"
    enc.write_bytes(plain)
    common = [
        "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
        "1000", "--cipher", "aes-xts-plain64", "--key-size", "512", "--volume-key-file", str(vk),
        "--sector-size", "4096",
    ]  # fmt: skip
    run(
        cryptsetup, "reencrypt", "--encrypt", *common, "--header", str(tmp_path / "hdr.img"),
        "--key-file", "-", str(enc), input="p",
    )  # fmt: skip
    lines = _shim_tables(
        tmp_path, "open", "--disable-keyring", "--allow-discards", "--perf-no_read_workqueue",
        "--header", str(tmp_path / "hdr.img"), str(enc), "c2", passphrase="p",
    )  # fmt: skip
    assert len(lines) == 1
    assert lines[0].endswith(" 0 3 allow_discards no_read_workqueue sector_size:4096")
    m = Manager()
    try:
        await m.create("c2", _over_file(lines[0], enc))
        dev = m.get("c2")
        assert bytes(await dev.read(0, len(plain))) == plain
        # write new plaintext through dmfuse; cryptsetup's offline decrypt must give it back
        new = pattern(0, MiB, seed=99)
        await dev.write(MiB, memoryview(new))
        await dev.flush()
        shown = m.table("c2", showkeys=True)[0]["lines"][0]
        assert shown == _over_file(lines[0], enc)  # the table round-trips unchanged
    finally:
        await m.shutdown()
    hdr2 = tmp_path / "hdr2.img"
    run(
        cryptsetup, "luksFormat", *common, "--header", str(hdr2), "--key-file", "-", str(enc),
        input="p",
    )  # fmt: skip
    run(
        cryptsetup, "reencrypt", "--decrypt", "--force-offline-reencrypt", "--batch-mode",
        "--header", str(hdr2), "--key-file", "-", str(enc), input="p",
    )  # fmt: skip
    assert enc.read_bytes() == plain[:MiB] + new + plain[2 * MiB :]


def test_fio_verify_and_ext4_through_a_loop_device(mnt: Mount, tmp_path: Path) -> None:
    """Concurrent mixed-size I/O through the block layer on 4096-byte units (512-byte loop
    I/O means read-modify-write), then a filesystem that still checks clean after a remount
    of the FUSE mount (the ciphertext alone carries the data)."""
    mnt.image("c.img", 64 * MiB)
    mnt.table("c", f"0 131072 crypt aes-xts-plain64 {K64} 0 c.img 0 1 sector_size:4096\n")
    mnt.mount()
    loop = mnt.losetup("c")
    fio = run(
        "fio", "--name=v", f"--filename={loop}", "--rw=randwrite", "--bsrange=512-64k",
        "--ioengine=libaio", "--iodepth=16", "--direct=1", "--size=24M", "--verify=crc32c",
        "--verify_state_save=0",
        "--verify_fatal=1", "--randrepeat=1", "--norandommap", "--output-format=terse",
        timeout=600,
    )  # fmt: skip
    assert fio.returncode == 0
    run("mkfs.ext4", "-q", "-F", loop)
    fs = tmp_path / "fs"
    mnt.mount_fs(loop, fs)
    payload = os.urandom(3 * MiB + 1234)
    (fs / "f").write_bytes(payload)
    mnt.umount_fs(fs)
    mnt.detach(loop)
    mnt.unmount()
    mnt.mount()
    loop = mnt.losetup("c")
    run("e2fsck", "-fn", loop)
    mnt.mount_fs(loop, fs)
    assert (fs / "f").read_bytes() == payload
    mnt.umount_fs(fs)
    mnt.detach(loop)
