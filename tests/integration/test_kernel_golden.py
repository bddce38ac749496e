"""Output for output against the real kernel: replay the dmsetup sessions recorded in the
kernel VM (tests/golden/kernel/, made by record.sh) on a dmfuse mount and compare.

``dmsetup`` becomes ``dmfuse -m MNT``; /dev/vda and /dev/vdb become two 16 MiB files and
/dev/mapper/NAME the device file.  Our output prints those files by path where the kernel
prints MAJOR:MINOR, so paths are mapped back to 254:0 / 254:16 before comparing.  Compared:
the exit status (0 or not) of every dmsetup command, and stdout of the reporting commands
(info, table, status, ls).  Error texts differ on purpose (ours name the problem; dmsetup
prints the ioctl's errno) and are not compared.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Mount

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "kernel"
REPORTING = {"info", "table", "status", "ls"}

# Files that replay cleanly: dmsetup sessions on linear/striped/zero/error.
FILES = [
    "05-linear-basic",
    "06-linear-offsets",
    "07-create-table-syntax",
    "08-create-readonly",
    "09-create-uuid",
    "10-create-notable",
    "11-create-existing",
    "12-create-bad-name",
    "13-info-states",
    "14-striped",
    "15-zero-error",
    "16-multi-target",
    "17-load-errors-table-shape",
    "18-load-errors-linear",
    "19-load-errors-striped",
    "20-load-errors-on-existing",
    "21-table-past-end",
    "22-lifecycle-load-resume",
    "23-clear",
    "24-rename",
    "28-missing-device",
    "29-message",
]


def _load_golden() -> Any:
    spec = importlib.util.spec_from_file_location("golden", GOLDEN / "golden.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subcommand(cmd: str) -> str | None:
    last = cmd.rsplit("|", maxsplit=1)[-1].rsplit("&&", maxsplit=1)[-1]
    words = shlex.split(last.split("<", maxsplit=1)[0])
    if not words or words[0] != "dmsetup":
        return None
    return next((w for w in words[1:] if not w.startswith("-")), None)


@pytest.mark.parametrize("name", FILES)
def test_replay_matches_kernel(mnt: Mount, name: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if not path.exists():
        pytest.skip(f"{path} not recorded")
    records = _load_golden().load_case(path)
    a = mnt.image("vda.img", 16 << 20)
    b = mnt.image("vdb.img", 16 << 20)
    mnt.mount()
    dmfuse = f"{shlex.quote(sys.executable)} -m dmfuse -m {shlex.quote(str(mnt.mnt))}"
    prelude = f'dmsetup() {{ {dmfuse} "$@"; }}\n'
    mismatches = []
    for rec in records:
        cmd = rec["cmd"]
        sub = _subcommand(cmd)
        if sub is None or "exec " in cmd or "blockdev" in cmd or "dd " in cmd:
            continue
        ours = cmd.replace("/dev/vda", a).replace("/dev/vdb", b)
        ours = ours.replace("254:16", b).replace("254:0", a)
        proc = subprocess.run(
            ["bash", "-c", prelude + ours],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
        out = proc.stdout.replace(a, "254:0").replace(b, "254:16")
        # a device of the mount prints as written (/dev/mapper/NAME); the kernel as 253:MINOR
        for dev in json.loads(mnt.cli("--json", "ls").stdout):
            out = out.replace(f"/dev/mapper/{dev['name']} ", f"253:{dev['minor']} ")
        if (proc.returncode == 0) != (rec["rc"] == 0):
            mismatches.append(
                f"{cmd}: rc {proc.returncode} vs kernel {rec['rc']}: {proc.stderr.strip()}"
            )
        elif sub in REPORTING and rec["rc"] == 0 and out != rec["stdout"]:
            mismatches.append(f"{cmd}:\n--- ours\n{out}--- kernel\n{rec['stdout']}")
    assert not mismatches, "\n".join(mismatches)


def test_golden_files_present() -> None:
    missing = [f for f in FILES if not (GOLDEN / f"{f}.txt").exists()]
    assert not missing or os.environ.get("DMFUSE_ALLOW_MISSING_GOLDEN"), missing
