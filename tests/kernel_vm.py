"""Where the kernel VM of ../shared/tools/kdm-vm.sh lives, for the tests marked ``kernel``.

They run when the VM is set up for this checkout (``KDM_DIR=.cache/kdm kdm-vm.sh setup``, or
``DMFUSE_KDM_DIR`` pointing at one) and skip otherwise, so a fresh clone never boots a VM.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import trio

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
KDM_DIR = Path(os.environ.get("DMFUSE_KDM_DIR", str(CACHE / "kdm")))
KDM_VM = Path(os.environ.get("DMFUSE_KDM_VM", str(REPO.parent / "shared" / "tools" / "kdm-vm.sh")))


def require_vm() -> None:
    """Skip the calling test unless the kernel VM is set up."""
    if not (KDM_DIR / "vmlinuz").exists() or not KDM_VM.exists():
        pytest.skip(f"kernel VM not set up ({KDM_DIR}/vmlinuz missing)")


async def run_recorded_script(
    work_name: str, script: Path, helpers: list[Path], disks: dict[str, int]
) -> int:
    """Run a recording script in the VM, as it was recorded: zeroed disk images ``disks``
    (name -> bytes, in this order) and copies of ``script`` and ``helpers`` in
    ``.cache/<work_name>``; returns kdm-vm.sh's exit status (the script's files stay there)."""
    work = CACHE / work_name
    work.mkdir(parents=True, exist_ok=True)
    for name, size in disks.items():
        (work / name).write_bytes(bytes(size))
    for path in (script, *helpers):
        (work / path.name).write_bytes(path.read_bytes())
    result = await trio.run_process(
        [str(KDM_VM), "run", str(work), str(work / script.name), *(str(work / d) for d in disks)],
        env=dict(os.environ, KDM_DIR=str(KDM_DIR)),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return result.returncode


def same_kernel(output: str) -> str:
    """``output`` with the kernel's stable point release blurred (``6.12.117+deb12`` and
    ``6.12.118+deb12`` are the same dm): Debian moves it, the recordings stay valid."""
    return re.sub(r"\b(\d+\.\d+)\.\d+(\+deb\d+)", r"\1.N\2", output)
