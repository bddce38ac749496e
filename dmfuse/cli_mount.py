"""``dmfuse mount`` and ``dmfuse umount``: starting a daemon and ending one (or clearing a
mount whose daemon died).  EDGE; errors are raised as :class:`DmError` for :mod:`dmfuse.cli`
to print.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import subprocess
import sys
import time

from dmfuse import mounts
from dmfuse.control.client import request
from dmfuse.control.protocol import pid_path, runtime_dir, socket_path
from dmfuse.errors import DmError
from dmfuse.mount_options import parse_mount_options


def mount_command(args: argparse.Namespace) -> int:
    parse_mount_options(args.options)  # a bad option fails here, before anything starts
    if args.foreground or args.debug:
        from dmfuse.main_daemon import run_foreground  # pyfuse3 is imported only to mount

        return run_foreground(args)
    return _mount_background(args)


def _mount_background(args: argparse.Namespace) -> int:
    """Start the daemon detached and wait until it is serving (or report why it is not)."""
    read_fd, write_fd = os.pipe()
    log_file = args.log or os.path.join(
        runtime_dir(), os.path.basename(socket_path(args.mountpoint_dir))[:-5] + ".log"
    )
    os.makedirs(os.path.dirname(log_file), mode=0o700, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "dmfuse",
        "mount",
        "-f",
        "--ready-fd",
        str(write_fd),
        "--log",
        log_file,
        args.tabledir,
        args.mountpoint_dir,
    ]
    if args.options:
        cmd[5:5] = ["-o", args.options]
    with open(os.devnull, "rb") as devnull:
        subprocess.Popen(
            cmd,
            stdin=devnull,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_fd,),
            start_new_session=True,
            close_fds=True,
        )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        message = ready.read().decode(errors="replace").strip()
    if message != "ok":
        raise DmError(message or f"the daemon exited before mounting (see {log_file})")
    return 0


def umount_command(args: argparse.Namespace) -> int:
    """Ask the daemon to shut down and wait until it has; a dead mount (its daemon killed)
    is unmounted at once, as ``fusermount3 -u`` would, and its socket and pid files removed."""
    mountpoint = os.path.realpath(args.mountpoint_dir)
    path = socket_path(mountpoint)
    if mounts.is_dead(mountpoint):
        _clear_dead_mount(mountpoint)
        return 0
    daemon = _daemon_pid(mountpoint)
    if os.path.exists(path):
        try:
            request(path, "shutdown", {})
            listening = True
        except DmError as exc:  # nobody listens (the daemon is gone) or already going away
            listening = exc.errno not in (errno.ECONNREFUSED, errno.ENOENT)
        deadline = time.monotonic() + 60
        while listening and time.monotonic() < deadline:
            if daemon is not None and not _alive(daemon):
                break
            if not os.path.exists(path) and mounts.mount_at(mountpoint) is None:
                break
            time.sleep(0.05)
    if mounts.is_dead(mountpoint):
        _clear_dead_mount(mountpoint)
    elif os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", mountpoint], check=True)
    return 0


def _clear_dead_mount(mountpoint: str) -> None:
    done = subprocess.run(
        ["fusermount3", "-u", mountpoint], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise DmError(done.stderr.strip() or f"fusermount3 -u {mountpoint} failed")
    for stale in (socket_path(mountpoint), pid_path(mountpoint)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)


def _daemon_pid(mountpoint: str) -> int | None:
    try:
        with open(pid_path(mountpoint), encoding="ascii") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
