"""A slow backing disk holds up only the requests that wait for it, never the mount.

The slow disk is a device file of a second dmfuse mount whose table is ``delay`` with a
3000 ms flush delay: an ``fsync`` of a device of the first mount over it takes 3 s.  Before
blocking calls moved to worker threads, that fsync ran on the daemon's trio thread and every
other device and the control socket waited for it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from dmfuse.control.client import request
from dmfuse.control.protocol import socket_path
from tests.integration.harness import Mount, mounted

MiB = 1 << 20
FLUSH_DELAY_MS = 3000


def test_a_slow_flush_stalls_nothing_else(mnt: Mount, tmp_path: Path) -> None:
    (tmp_path / "slow").mkdir()
    with mounted(tmp_path / "slow") as slow:
        slow.image("s.img", 4 * MiB)
        slow.table("slow", f"0 8192 delay s.img 0 0 s.img 0 0 s.img 0 {FLUSH_DELAY_MS}")
        slow.mount()
        mnt.image("fast.img", 4 * MiB, data=b"f" * 4096)
        mnt.table("onslow", f"0 8192 linear {slow.dev('slow')} 0")
        mnt.table("fast", "0 8192 linear fast.img 0")
        mnt.mount()
        sock = socket_path(str(mnt.mnt))
        with open(mnt.dev("onslow"), "r+b", buffering=0) as fh:
            os.pwrite(fh.fileno(), b"x" * 4096, 0)
            fsync_took: list[float] = []

            def fsync() -> None:
                start = time.monotonic()
                os.fsync(fh.fileno())
                fsync_took.append(time.monotonic() - start)

            fast = os.open(mnt.dev("fast"), os.O_RDONLY)
            flusher = threading.Thread(target=fsync)
            flusher.start()
            time.sleep(0.3)  # the fsync is under way in the slow mount by now
            reads: list[float] = []
            commands: list[float] = []
            try:
                while flusher.is_alive() and len(reads) < 20:
                    start = time.monotonic()
                    assert os.pread(fast, 4096, 0) == b"f" * 4096
                    reads.append(time.monotonic() - start)
                    start = time.monotonic()
                    request(sock, "ls", {})
                    request(sock, "info", {"name": "fast"})
                    commands.append(time.monotonic() - start)
                    time.sleep(0.05)
            finally:
                os.close(fast)
            flusher.join(timeout=30)
        assert fsync_took and fsync_took[0] >= FLUSH_DELAY_MS / 1000 - 0.5  # it was slow
        assert len(reads) >= 5, "the fsync ended before the other requests were timed"
        assert max(reads) < 0.1, reads
        assert max(commands) < 0.5, commands
        mnt.unmount()
