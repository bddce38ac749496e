"""Running the daemon in this process (``dmfuse mount -f``), reporting readiness to a parent."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from dmfuse.daemon import Daemon
from dmfuse.errors import DmError
from dmfuse.mount_options import parse_mount_options


def run_foreground(args: argparse.Namespace) -> int:
    level = logging.DEBUG if args.debug else logging.INFO
    if args.log:
        logging.basicConfig(
            filename=args.log, level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
    else:
        logging.basicConfig(level=level, format="dmfuse: %(levelname)s %(message)s")
    ready_fd: int | None = args.ready_fd
    reported = False

    def ready(error: str | None) -> None:
        nonlocal ready_fd, reported
        reported = True
        if ready_fd is not None:
            os.write(ready_fd, (error or "ok").encode())
            os.close(ready_fd)
            ready_fd = None

    try:
        options = parse_mount_options(args.options)
    except DmError as exc:
        ready(exc.message)
        raise
    daemon = Daemon(
        args.tabledir,
        args.mountpoint_dir,
        allow_other=options.allow_other,
        debug=args.debug,
        cache=options.cache,
    )
    try:
        trio.run(daemon.run, ready)
    except DmError as exc:
        if not reported:
            ready(exc.message)
        raise
    except Exception as exc:
        logging.exception("daemon failed")
        if not reported:
            ready(str(exc))
        print(f"dmfuse: mount failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.log:
            _remove_if_empty(args.log)
    return 0


def _remove_if_empty(log_file: str) -> None:
    """A mount that logged nothing leaves no file behind (one per mount point otherwise
    piles up in the runtime directory)."""
    logging.shutdown()
    try:
        if os.path.getsize(log_file) == 0:
            os.unlink(log_file)
    except OSError:
        pass
