"""The daemon's side of the control socket.  EDGE: decode, call the manager, encode.

The socket's directory is 0700 and the socket 0600, and every connection's peer credentials
(``SO_PEERCRED``) must be the daemon's own uid or root.  A directory that exists already must
be the daemon's own (another user may have created ``/tmp/dmfuse-<uid>`` to catch requests).

Whatever goes wrong on one connection (a request over :data:`MAX_MESSAGE`, bytes that are not
JSON, a client that goes away) is answered or dropped on that connection only.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from dmfuse.control.protocol import (
    MAX_MESSAGE,
    check_private_dir,
    decode_request,
    encode_error,
    encode_ok,
    too_large,
)
from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError, InvalidArgument

log = logging.getLogger(__name__)

_DRAIN_SECONDS = 30
# Arguments that must be strings when given (a number there would fail deep in the engine).
_TEXT_ARGS = ("name", "new_name", "setuuid", "table", "uuid", "cwd", "message", "target")

Handler = Callable[[Manager, dict[str, Any]], Awaitable[Any]]


async def _create(m: Manager, a: dict[str, Any]) -> Any:
    return await m.create(
        a["name"],
        a.get("table"),
        readonly=bool(a.get("readonly")),
        uuid=a.get("uuid") or "",
        cwd=a.get("cwd", "/"),
    )


async def _load(m: Manager, a: dict[str, Any]) -> Any:
    return await m.load(
        a["name"], a["table"], readonly=bool(a.get("readonly")), cwd=a.get("cwd", "/")
    )


async def _remove(m: Manager, a: dict[str, Any]) -> Any:
    return await m.remove(a["name"], force=bool(a.get("force")), deferred=bool(a.get("deferred")))


async def _rename(m: Manager, a: dict[str, Any]) -> Any:
    if a.get("setuuid") is not None:
        return await m.set_uuid(a["name"], a["setuuid"])
    return await m.rename(a["name"], a["new_name"])


def _now(fn: Callable[[Manager, dict[str, Any]], Any]) -> Handler:
    async def run(m: Manager, a: dict[str, Any]) -> Any:
        return fn(m, a)

    return run


COMMANDS: dict[str, Handler] = {
    "create": _create,
    "load": _load,
    "resume": lambda m, a: m.resume(a["name"]),
    "suspend": lambda m, a: m.suspend(a["name"], noflush=bool(a.get("noflush"))),
    "clear": lambda m, a: m.clear(a["name"]),
    "remove": _remove,
    "rename": _rename,
    "message": lambda m, a: m.message(a["name"], int(a["sector"]), a["message"]),
    "wait": lambda m, a: m.wait(a["name"], int(a.get("event_nr", 0))),
    "info": _now(lambda m, a: m.info(a.get("name"))),
    "table": _now(
        lambda m, a: m.table(
            a.get("name"),
            inactive=bool(a.get("inactive")),
            showkeys=bool(a.get("showkeys")),
            target=a.get("target"),
        )
    ),
    "status": _now(
        lambda m, a: m.status(
            a.get("name"), inactive=bool(a.get("inactive")), target=a.get("target")
        )
    ),
    "deps": _now(lambda m, a: m.deps(a.get("name"))),
    "ls": _now(lambda m, a: m.ls(a.get("target"))),
    "stats": _now(lambda m, a: m.stats(a.get("name"))),
    "targets": _now(lambda m, a: m.targets()),
    "version": _now(lambda m, a: m.version()),
}


def _peer_uid(sock: trio.socket.SocketType) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    def __init__(
        self, manager: Manager, path: str, extra: dict[str, Handler] | None = None
    ) -> None:
        self.manager = manager
        self.path = path
        self.commands = dict(COMMANDS)
        self.commands.update(extra or {})
        self.uid = os.getuid()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        problem = check_private_dir(directory, self.uid)
        if problem is not None:
            raise DmError(f"refusing the runtime directory: {problem}", errno.EACCES)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket from a daemon that died
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(self.path)
        finally:
            os.umask(old_umask)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started()
        try:
            await trio.serve_listeners(self._handle, [listener])
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                uid = _peer_uid(stream.socket)
                if uid not in (0, self.uid):
                    await stream.send_all(encode_error(errno.EACCES, "permission denied"))
                    return
                line = await _receive_line(stream)
                if line is None:
                    await _refuse(stream, encode_error(errno.EINVAL, f"request {too_large()}"))
                    return
                await stream.send_all(await self._dispatch(line))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away; whatever it asked for was undone or finished
            except Exception:  # this connection's failure only, never the daemon's
                log.exception("control connection failed")

    async def _dispatch(self, line: bytes) -> bytes:
        try:
            command, args = decode_request(line)
            for key in _TEXT_ARGS:
                if args.get(key) is not None and not isinstance(args[key], str):
                    raise TypeError(f"{key} must be a string")
            handler = self.commands.get(command)
            if handler is None:
                raise InvalidArgument(f"unknown command {command!r}")
            return encode_ok(await handler(self.manager, args))
        except DmError as exc:
            return encode_error(exc.errno, exc.message)
        except OSError as exc:
            return encode_error(exc.errno or errno.EIO, exc.strerror or str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            return encode_error(errno.EINVAL, f"malformed request: {exc}")
        except Exception as exc:  # never let one request kill the daemon
            log.exception("control command failed")
            return encode_error(errno.EIO, f"internal error: {exc!r}")


async def _refuse(stream: trio.SocketStream, reply: bytes) -> None:
    """Answer before the request has been read to its end: reply, then read and drop the rest
    (for a while), since closing with unread data would reset the connection and lose the
    reply to the client."""
    await stream.send_all(reply)
    await stream.send_eof()
    with trio.move_on_after(_DRAIN_SECONDS):
        while await stream.receive_some(1 << 20):
            pass


async def _receive_line(stream: trio.SocketStream) -> bytes | None:
    """The request up to its newline (or the end of the stream); None past the limit.
    Anything after the newline is ignored: one request per connection."""
    data = bytearray()
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return bytes(data)
        end = chunk.find(b"\n")
        data += chunk if end < 0 else chunk[:end]
        if len(data) > MAX_MESSAGE:
            return None
        if end >= 0:
            return bytes(data)
