"""A real dmfuse mount for integration tests, torn down whatever happens.

Everything a test attaches (loop devices, filesystem mounts) is registered here and undone in
reverse order; the daemon is stopped with ``dmfuse umount`` and, failing that, killed by the
pid it wrote, never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from dmfuse import mounts
from dmfuse.control.protocol import pid_path

DMFUSE = [sys.executable, "-m", "dmfuse"]


def can_mount() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (loop devices, mount)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        return "pyfuse3 is not installed"
    return None


def run(
    *cmd: str, check: bool = True, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    # Never inherit the runner's stdin: a command reading a table from stdin must not hang.
    stdin = subprocess.DEVNULL if input is None else None
    proc = subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        input=input,
        stdin=stdin,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


class Mount:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tables = root / "tables"
        self.mnt = root / "mnt"
        self.tables.mkdir(exist_ok=True)
        self.mnt.mkdir(exist_ok=True)
        self._loops: list[str] = []
        self._fsmounts: list[str] = []
        self.mounted = False
        self._pid_file: str | None = None

    # -- setup -------------------------------------------------------------------------------
    def image(self, name: str, size: int, data: bytes | None = None) -> str:
        """A backing file beside the tables, so tables can name it relatively."""
        path = self.tables / name
        with path.open("wb") as fh:
            if data is not None:
                fh.write(data)
            fh.truncate(size)
        return str(path)

    def table(self, name: str, text: str) -> None:
        (self.tables / f"{name}.table").write_text(text)

    def mount(self, *extra: str) -> None:
        # Known before mounting: working it out later stats the mountpoint, which hangs if the
        # daemon does (and teardown needs the pid then most).
        self._pid_file = pid_path(str(self.mnt))
        run(*DMFUSE, "mount", *extra, str(self.tables), str(self.mnt))
        self.mounted = True

    def dev(self, name: str) -> str:
        return str(self.mnt / name)

    def cli(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run(*DMFUSE, "-m", str(self.mnt), *args, check=check, input=input, timeout=timeout)

    def losetup(self, name: str, *opts: str) -> str:
        loop = run("losetup", "-f", "--show", *opts, self.dev(name)).stdout.strip()
        self._loops.append(loop)
        return loop

    def detach(self, loop: str) -> None:
        run("losetup", "-d", loop)
        self._loops.remove(loop)

    def mount_fs(self, loop: str, where: Path) -> None:
        where.mkdir(exist_ok=True)
        run("mount", loop, str(where))
        self._fsmounts.append(str(where))

    def umount_fs(self, where: Path) -> None:
        run("umount", str(where))
        self._fsmounts.remove(str(where))

    def ext4_round_trip(self, loop: str, where: Path, size: int = 5 << 20) -> None:
        """mkfs.ext4 on ``loop``, fsck, write a file of random bytes, fsck again after the
        unmount, and read the file back through a fresh mount: the same bytes."""
        run("mkfs.ext4", "-q", "-F", loop)
        run("e2fsck", "-fn", loop)
        self.mount_fs(loop, where)
        payload = os.urandom(size)
        (where / "f").write_bytes(payload)
        self.umount_fs(where)
        run("e2fsck", "-fn", loop)
        self.mount_fs(loop, where)
        assert (where / "f").read_bytes() == payload
        self.umount_fs(where)

    def daemon_pid(self) -> int | None:
        try:
            return int(Path(self._pid_file or pid_path(str(self.mnt))).read_text())
        except (FileNotFoundError, ValueError):
            return None

    # -- teardown ----------------------------------------------------------------------------
    def unmount(self) -> None:
        run(*DMFUSE, "umount", str(self.mnt))
        self.mounted = False

    def cleanup(self) -> None:
        for where in reversed(self._fsmounts):
            subprocess.run(["umount", "-l", where], check=False, capture_output=True)
        for loop in reversed(self._loops):
            subprocess.run(["losetup", "-d", loop], check=False, capture_output=True)
        self._fsmounts.clear()
        self._loops.clear()
        if not self.mounted:
            return
        pid = self.daemon_pid()
        with contextlib.suppress(Exception):
            run(*DMFUSE, "umount", str(self.mnt), timeout=60)
        if mounts.mount_at(str(self.mnt)) is not None:  # not a stat: the daemon may hang
            # A daemon stuck on a request (even to itself) is freed only by aborting the FUSE
            # connection: MNT_FORCE does; -c keeps umount from stat'ing the path first.
            subprocess.run(
                ["umount", "-f", "-l", "-c", str(self.mnt)],
                check=False,
                capture_output=True,
                timeout=30,
            )
        if pid is not None:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.mounted = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError):
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    return False


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[Mount]:
    m = Mount(root)
    try:
        yield m
    finally:
        m.cleanup()
