"""The CLI's side of the control socket: blocking, one request per connection.

Nothing is sent before the socket's directory and the daemon listening on it are known to be
the caller's own (or root's): a request can carry crypt keys.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import socket
import struct
from typing import Any

from dmfuse.control.protocol import (
    MAX_MESSAGE,
    check_private_dir,
    decode_reply,
    encode_request,
    runtime_dir,
    socket_path,
    too_large,
)
from dmfuse.errors import DmError


def find_socket(mountpoint: str | None) -> str:
    """The socket of the daemon serving ``mountpoint``; without one, the only daemon running."""
    if mountpoint:
        path = socket_path(mountpoint)
        if not os.path.exists(path):
            raise DmError(f"no dmfuse daemon serves {mountpoint}", errno.ENOENT)
        return path
    found = sorted(glob.glob(os.path.join(runtime_dir(), "*.sock")))
    if not found:
        raise DmError(
            "no dmfuse daemon is running (mount one, or pass -m MOUNTPOINT)", errno.ENOENT
        )
    if len(found) > 1:
        raise DmError("several dmfuse mounts are running: pass -m MOUNTPOINT", errno.EINVAL)
    return found[0]


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _check_directory(path: str) -> None:
    """Refuse a socket in a directory someone else controls."""
    problem = check_private_dir(os.path.dirname(path))
    if problem is not None:
        raise DmError(f"refusing to use the control socket {path}: {problem}", errno.EACCES)


def _check_daemon(path: str, sock: socket.socket) -> None:
    """Refuse a daemon running as another user (root excepted)."""
    uid = os.getuid()
    server = peer_uid(sock)
    if server not in (uid, 0):
        raise DmError(
            f"refusing to use the control socket {path}: it is served by uid {server}",
            errno.EACCES,
        )


def request(path: str, command: str, args: dict[str, Any]) -> Any:
    """Send one command; return its result or raise :class:`DmError` with the daemon's errno."""
    message = encode_request(command, args)
    if len(message) > MAX_MESSAGE:
        raise DmError(f"request {too_large(len(message))}", errno.EINVAL)
    _check_directory(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError as exc:
            raise DmError(
                f"cannot reach the dmfuse daemon ({path}): {exc.strerror}", exc.errno
            ) from None
        _check_daemon(path, sock)
        # A daemon that refused the request early stops reading: its reply says why.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(message)
        data = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    if not data:
        raise DmError("the dmfuse daemon closed the connection without a reply", errno.EIO)
    reply = decode_reply(bytes(data))
    if not reply["ok"]:
        raise DmError(str(reply.get("error", "failed")), int(reply.get("errno", errno.EIO)))
    return reply.get("result")
