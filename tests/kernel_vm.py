"""Where the kernel VM of ../shared/tools/kdm-vm.sh lives, for the tests marked ``kernel``.

They run when the VM is set up for this checkout (``KDM_DIR=.cache/kdm kdm-vm.sh setup``, or
``DMFUSE_KDM_DIR`` pointing at one) and skip otherwise, so a fresh clone never boots a VM.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
KDM_DIR = Path(os.environ.get("DMFUSE_KDM_DIR", str(CACHE / "kdm")))
KDM_VM = Path(os.environ.get("DMFUSE_KDM_VM", str(REPO.parent / "shared" / "tools" / "kdm-vm.sh")))
