"""The CLI's side of the control socket: blocking, one request per connection."""

from __future__ import annotations

import errno
import glob
import os
import socket
from typing import Any

from dmfuse.control.protocol import (
    decode_reply,
    encode_request,
    runtime_dir,
    socket_path,
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


def request(path: str, command: str, args: dict[str, Any]) -> Any:
    """Send one command; return its result or raise :class:`DmError` with the daemon's errno."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError as exc:
            raise DmError(
                f"cannot reach the dmfuse daemon ({path}): {exc.strerror}", exc.errno
            ) from None
        sock.sendall(encode_request(command, args))
        data = bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise DmError("the dmfuse daemon closed the connection without a reply", errno.EIO)
    reply = decode_reply(bytes(data))
    if not reply["ok"]:
        raise DmError(str(reply.get("error", "failed")), int(reply.get("errno", errno.EIO)))
    return reply.get("result")
