"""What a table inherits from what it sits on, compared with Linux 6.12 (tests/data/kernel/
stacking_vm.sh, recorded in the kernel VM as stacking-vm-output.txt):

* the logical block size: ``linear`` over ``crypt ... sector_size:4096`` is a 4096-byte device,
  so unaligned reads and writes are read-modify-written at the top of the stack (they failed
  with EIO before), and tables whose areas are not aligned to it are refused;
* discard support is a property of the whole table: one target that cannot discard (unstriped,
  crypt without allow_discards) makes every discard fail with EOPNOTSUPP, also on the parts
  that could.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import sys
from pathlib import Path

import pytest

from dmfuse.backends.file import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate
from tests.integration.harness import Mount, run
from tests.kernel_vm import CACHE, require_vm, run_recorded_script, same_kernel

KERNEL = Path(__file__).parent.parent / "data" / "kernel"
RECORDED = (KERNEL / "stacking-vm-output.txt").read_text()
K64 = (
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
)


def recorded_commands() -> dict[str, tuple[int, str]]:
    """``$ command`` -> (rc, what followed) from the recording (last one wins)."""
    found: dict[str, tuple[int, str]] = {}
    for block in re.split(r"^\$ ", RECORDED, flags=re.M)[1:]:
        command, _, rest = block.partition("\nrc=")
        rc, _, text = rest.partition(" ")
        found[command] = (int(rc), text)
    return found


def section(title: str) -> list[str]:
    text = RECORDED.split(f"== {title}\n", 1)[1]
    return text.split("\n==", 1)[0].splitlines()


@pytest.fixture
def stacked(mnt: Mount) -> Mount:
    mnt.image("c.img", 64 * 1024)
    mnt.table("c", f"0 128 crypt aes-xts-plain64 {K64} 0 c.img 0 1 sector_size:4096")
    mnt.table("l", "0 128 linear /dev/mapper/c 0")
    mnt.mount()
    return mnt


def test_unaligned_io_on_linear_over_4k_crypt_is_the_kernels(stacked: Mount) -> None:
    assert os.stat(stacked.dev("l")).st_blksize == 4096
    assert "Logical block size: 4096" in stacked.cli("info", "l").stdout
    ops = run(sys.executable, str(KERNEL / "stacking_ops.py"), stacked.dev("l")).stdout
    kernel = section("unaligned I/O on linear over crypt sector_size:4096")
    assert ops.splitlines() == [ln for ln in kernel if ln.startswith(("read ", "device: "))]
    stacked.unmount()
    ciphertext = hashlib.sha256((stacked.tables / "c.img").read_bytes()).hexdigest()
    assert f"ciphertext: {ciphertext}" in RECORDED  # the same bytes on disk, byte for byte


def test_tables_not_aligned_to_the_lower_block_size_are_refused(stacked: Mount) -> None:
    kernel = recorded_commands()
    for name, table in [
        ("bad1", "0 120 linear /dev/mapper/c 1"),
        ("bad2", "0 9 linear /dev/mapper/c 0"),
        ("bad3", "0 8 linear /dev/mapper/c 0\n8 9 linear /dev/mapper/c 8"),
        ("ok2", "0 8 linear /dev/mapper/c 8\n8 16 linear /dev/mapper/c 64"),
    ]:
        rc, text = kernel[f"dmsetup create {name} --table '{table}'"]
        ours = stacked.cli("create", name, input=table, check=False)
        assert ours.returncode == rc, ours.stderr
        if rc:  # the reason the kernel logged, in our one-line error
            reason = re.search(r"table: DEV: (.*not aligned to h/w logical block size 4096)", text)
            assert reason is not None
            assert reason.group(1) in ours.stderr, ours.stderr
            assert name not in stacked.cli("ls").stdout  # nothing was created
    stacked.cli("remove", "ok2")


def test_discard_support_is_a_property_of_the_whole_table(mnt: Mount) -> None:
    d = mnt.image("d.img", 1 << 20, data=b"\xaa" * (1 << 20))
    mnt.mount()
    kernel = recorded_commands()
    checked = 0
    for command, (rc, _) in kernel.items():
        if not command.startswith("dmsetup create x --table"):
            continue
        table = command.split("--table '", 1)[1].rstrip("'")
        if "error" in table:  # blkdiscard cannot even probe an error device in the kernel
            continue
        # each table's blkdiscard follows its create in the recording: find that one
        after = RECORDED.split(f"$ {command}\n", 1)[1]
        discard = after.split("$ blkdiscard -o 0 -l 4096 /dev/mapper/x\n", 1)[1]
        kernel_rc = int(discard.split(" ", 1)[0].removeprefix("rc="))
        assert rc == 0
        with open(d, "r+b") as fh:
            fh.write(b"\xaa" * 4096)
        mnt.cli("create", "x", input=table.replace("/dev/vdb", d))
        fd = os.open(mnt.dev("x"), os.O_RDWR)
        try:
            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096)
            error = 0
        except OSError as exc:
            error = exc.errno or -1
        finally:
            os.close(fd)
        assert (error != 0) == (kernel_rc != 0), table
        if kernel_rc:
            assert error == errno.EOPNOTSUPP, table
            assert "Operation not supported" in discard.split("\n$", 1)[0]
            with open(d, "rb") as fh:
                assert fh.read(4096) == b"\xaa" * 4096  # nothing was discarded
        mnt.cli("remove", "x")
        checked += 1
    assert checked >= 9


@pytest.mark.kernel
async def test_kernel_vm_recording_is_current() -> None:
    """Rerun stacking_vm.sh in the kernel VM: the same output as recorded."""
    require_vm()
    returncode = await run_recorded_script(
        "stacking-work",
        KERNEL / "stacking_vm.sh",
        [KERNEL / "stacking_ops.py"],
        {"c.img": 64 * 1024, "d.img": 1 << 20},
    )
    out = (CACHE / "stacking-work" / "stacking-vm.out").read_text()
    assert returncode == 0, out
    assert same_kernel(out) == same_kernel(RECORDED)
