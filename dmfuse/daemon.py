"""The mount daemon: bring up the table directory, serve FUSE and the control socket.  EDGE.

Shutdown is the same whichever way it is asked for (SIGINT/SIGTERM, ``dmfuse umount``,
``fusermount3 -u``): requests held by suspended devices fail with EIO, the FUSE loop ends after
in-flight requests complete, then every device is flushed and every backend closed.

Before mounting, the daemon takes its table directory (an exclusive ``flock``: one mount per
directory) and looks at the mountpoint: a live dmfuse mount there is refused (stacking a
second daemon on it would hide the first), a dead one (its daemon killed: every ``stat``
answers ENOTCONN) that belongs to this user is unmounted first, any other dead FUSE mount is
refused with the command that clears it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import pyfuse3
import trio

from dmfuse import mounts
from dmfuse.control.protocol import pid_path, socket_path
from dmfuse.control.server import ControlServer
from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError, TableError
from dmfuse.fuse import DeviceFiles, waiting_requests_probe
from dmfuse.mount_options import DEFAULT_CACHE
from dmfuse.openssl import offload
from dmfuse.tabledir import TableDir, bring_up_order

log = logging.getLogger(__name__)


class Daemon:
    def __init__(
        self,
        tabledir: str,
        mountpoint: str,
        *,
        allow_other: bool = False,
        debug: bool = False,
        cache: str = DEFAULT_CACHE,
    ) -> None:
        self.tables = TableDir(tabledir)
        self.mountpoint = os.path.realpath(mountpoint)
        self.manager = Manager(mountpoint=self.mountpoint, cache=cache)
        self.files = DeviceFiles(self.manager)
        self.manager.listener = self.files
        self.allow_other = allow_other
        self.debug = debug
        self._stopping = False

    async def bring_up(self) -> None:
        """Create every device of the table directory, or none (and raise)."""
        files = self.tables.read_all()
        try:
            for f in bring_up_order(files, self.mountpoint, self.tables.path):
                try:
                    await self.manager.create(
                        f.name,
                        f.text or None,
                        readonly=f.readonly,
                        uuid=f.uuid,
                        cwd=self.tables.path,
                        cache=f.cache,
                    )
                except DmError as exc:
                    raise TableError(f"{f.name}.table: {exc.message}") from None
        except BaseException:
            await self.manager.shutdown()
            raise
        self.manager.store = self.tables

    async def run(self, ready: Callable[[str | None], None]) -> None:
        await self._check_mountpoint()
        lock = self.tables.lock()
        try:
            await self._run_locked(ready)
        finally:
            os.close(lock)

    async def _check_mountpoint(self) -> None:
        where = self.mountpoint
        entry = mounts.mount_at(where)
        dead = mounts.is_dead(where)
        if entry is not None and entry.fstype == mounts.FSTYPE and not dead:
            raise DmError(f"{where} is already a dmfuse mount (dmfuse umount {where} first)")
        if dead:
            ours = entry is not None and entry.fstype == mounts.FSTYPE
            if not ours or (entry is not None and entry.owner_uid not in (os.getuid(), None)):
                raise DmError(
                    f"{where} is a dead FUSE mount (Transport endpoint is not connected): "
                    f"run fusermount3 -u {where}"
                )
            log.info("%s: clearing the dead dmfuse mount left by a daemon that died", where)
            done = await trio.run_process(
                ["fusermount3", "-u", where], check=False, capture_stderr=True
            )
            if done.returncode != 0:
                reason = done.stderr.decode(errors="replace").strip()
                raise DmError(f"clearing the dead dmfuse mount on {where} failed: {reason}")
        if not os.path.isdir(where):
            raise DmError(f"mountpoint {where} is not a directory")

    async def _run_locked(self, ready: Callable[[str | None], None]) -> None:
        # Paths are worked out before mounting: once mounted, a stat of the mountpoint from
        # this process would wait for this process to answer it.
        server = ControlServer(
            self.manager, socket_path(self.mountpoint), extra={"shutdown": self._shutdown_command}
        )
        pidfile = pid_path(self.mountpoint)
        await self.bring_up()
        options = {"fsname=dmfuse", "subtype=dmfuse", "default_permissions"}
        if self.allow_other:
            options.add("allow_other")
        if self.debug:
            options.add("debug")
        try:
            pyfuse3.init(self.files, self.mountpoint, options)
        except RuntimeError as exc:
            await self.manager.shutdown()
            raise DmError(f"mounting {self.mountpoint} failed: {exc}") from None
        self.files.mounted = True
        offload.watch_waiting_requests(waiting_requests_probe())
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve)
                nursery.start_soon(self._watch_signals)
                _write_pid(pidfile)
                ready(None)
                await pyfuse3.main(min_tasks=4, max_tasks=64)
                nursery.cancel_scope.cancel()
        finally:
            offload.watch_waiting_requests(None)
            self.files.mounted = False
            await self.manager.shutdown()
            pyfuse3.close(unmount=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pidfile)

    def stop(self) -> None:
        """Begin shutdown: fail held I/O, end the FUSE loop."""
        if self._stopping:
            return
        self._stopping = True
        for device in self.manager.devices.values():
            if device.suspended:
                device.fail_held()
        pyfuse3.terminate()

    async def _shutdown_command(self, manager: Manager, args: dict[str, Any]) -> str:
        self.stop()
        return "stopping"

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("signal %d: unmounting %s", signum, self.mountpoint)
                self.stop()


def _write_pid(path: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")
