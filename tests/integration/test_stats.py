"""dm-stats on a real mount, compared with Linux 6.12: the session of tests/data/kernel/
stats_session.sh (regions, errors, id allocation, known O_DIRECT I/O, print, print_clear,
clear, regions across suspend and a table swap, a device without a table) recorded in the
kernel VM as stats-vm-output.txt, replayed with ``dmfuse -m MNT`` for ``dmsetup``.

Every column is compared except the time columns (ms reading, ms writing, io ticks, time in
queue, read and write io ticks): exit statuses, replies, region ids, counts, sectors, merges,
in-progress counts and histogram counts (boundaries of 10 s: every request falls in the first).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
from pathlib import Path

import pytest

from tests.integration.harness import DMFUSE, Mount, run
from tests.kernel_vm import CACHE, require_vm, run_recorded_script

KERNEL = Path(__file__).parent.parent / "data" / "kernel"
RECORDED = (KERNEL / "stats-vm-output.txt").read_text()
TIME_COLUMNS = (4, 8, 10, 11, 12, 13)  # words of a @stats_print line (0: <start>+<step>)
PRINT_LINE = re.compile(r"^(rc=\d+ )?(\d+\+\d+(?: \d+){13}(?: [\d:]+)?)$")


def untimed(output: str) -> str:
    """``output`` with the time columns of every @stats_print line replaced by ``T``."""
    lines = []
    for line in output.splitlines():
        match = PRINT_LINE.match(line)
        if match:
            words = match.group(2).split(" ")
            for i in TIME_COLUMNS:
                words[i] = "T"
            line = (match.group(1) or "") + " ".join(words)
        lines.append(line)
    return "\n".join(lines) + "\n"


def session(mnt: Mount) -> str:
    backing = mnt.image("s.img", 4 << 20)
    dmsetup = shlex.join([*DMFUSE, "-m", str(mnt.mnt)])
    discard = f"fallocate -p -o 3145728 -l 65536 {mnt.dev('s')}"
    proc = run(
        "bash",
        str(KERNEL / "stats_session.sh"),
        dmsetup,
        mnt.dev("s"),
        backing,
        discard,
        timeout=300,
    )
    kernel_discard = "blkdiscard -f -o 3145728 -l 65536 /dev/mapper/s"
    return (proc.stdout + proc.stderr).replace(discard, kernel_discard).replace(backing, "/dev/vda")


def test_stats_session_matches_the_kernel(mnt: Mount) -> None:
    mnt.mount()
    ours = untimed(session(mnt))
    kernel = untimed(RECORDED)
    # the VM's dd prints nothing; the recorded session must hold I/O counts to compare
    assert "0+8192 8 4 88 T 4 1 392 T 0 T T T T" in kernel
    diff = difflib.unified_diff(kernel.splitlines(), ours.splitlines(), "kernel", "dmfuse")
    assert ours == kernel, "\n".join(diff)


def test_stats_report_and_info_totals(mnt: Mount) -> None:
    mnt.image("t.img", 1 << 20)
    mnt.table("t", "0 2048 linear t.img 0")
    mnt.mount()
    assert mnt.cli("message", "t", "0", "@stats_create", "-", "/2", "prog").stdout == "0\n"
    fd = os.open(mnt.dev("t"), os.O_RDWR | os.O_DIRECT)
    try:
        buf = bytearray(os.pread(fd, 8192, 0))
        os.pwrite(fd, bytes(buf), 1 << 19)
    finally:
        os.close(fd)
    report = json.loads(mnt.cli("--json", "stats", "t").stdout)
    (region,) = report[0]["regions"]
    assert (region["id"], region["program_id"], region["step"]) == (0, "prog", 1024)
    first, second = region["areas"]
    assert (first["reads"], first["read_sectors"], first["writes"]) == (1, 16, 0)
    assert (second["reads"], second["writes"], second["write_sectors"]) == (0, 1, 16)
    text = mnt.cli("stats", "t").stdout
    assert text.splitlines()[0].split()[:3] == ["Name", "RgID", "ArID"]
    rows = [line.split() for line in text.splitlines()[1:]]
    assert rows[1][:12] == [
        "t",
        "0",
        "1",
        "512.00k",
        "512.00k",
        "0",
        "0",
        "0",
        "0",
        "1",
        "0",
        "8.00k",
    ], text
    info = json.loads(mnt.cli("--json", "info", "t").stdout)[0]["io"]
    assert (info["reads"], info["read_sectors"], info["writes"], info["write_sectors"]) == (
        1,
        16,
        1,
        16,
    )
    assert mnt.cli("stats", "nothere", check=False).returncode == 1


@pytest.mark.kernel
async def test_kernel_vm_recording_is_current() -> None:
    """Rerun stats_vm.sh in the kernel VM: the same output as recorded, times aside."""
    require_vm()
    returncode = await run_recorded_script(
        "stats-work",
        KERNEL / "stats_vm.sh",
        [KERNEL / "stats_session.sh"],
        {"s.img": 4 << 20},
    )
    out = (CACHE / "stats-work" / "stats-vm.out").read_text()
    assert returncode == 0, out
    assert untimed(out) == untimed(RECORDED)
