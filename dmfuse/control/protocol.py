"""Control protocol codec.  PURE.

One request and one reply per connection, each a single line of JSON::

    request: {"command": "load", "args": {"name": "x", "table": "...", ...}}
    reply:   {"ok": true, "result": ...}
           | {"ok": false, "errno": 22, "error": "line 1: linear: Invalid argument count"}

Where the socket lives is derived from the mountpoint alone, so ``-m MOUNTPOINT`` is enough for
a client to find its daemon: ``$RUNTIME/dmfuse/<sha256(realpath)[:16]>.sock`` where ``$RUNTIME``
is ``/run`` for root, else ``$XDG_RUNTIME_DIR`` or ``/tmp/dmfuse-<uid>``.  Another user can
create ``/tmp/dmfuse-<uid>`` first, so both sides check it (:func:`check_private_dir`): it must be
a real directory owned by the caller with no access for group or others, and the client also
checks the listening daemon's uid (``SO_PEERCRED``) before sending anything.

A request may be up to :data:`MAX_MESSAGE` bytes.  The kernel bounds a table only by its ioctl
buffer (a 32-bit size, one ``kvmalloc``) and memory; dmfuse keeps about 900 bytes of Python
objects per target (measured: a 700,000-line ``linear`` table, 45 MB of text, took 612 MiB of
daemon memory and 14 s to create), so 256 MiB of table text, about 4 million lines and 3.5 GiB
of memory, is the bound; a 1.58 million target table fits with room to spare.  The same bound
applies to table files.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Any

MAX_MESSAGE = 256 << 20


def too_large(size: int | None = None) -> str:
    """The one-line refusal of a request or table file of ``size`` bytes (None: not known)."""
    what = f"{size} bytes" if size is not None else f"more than {MAX_MESSAGE} bytes"
    return f"too large: {what}, the limit is {MAX_MESSAGE >> 20} MiB"


def encode_request(command: str, args: dict[str, Any]) -> bytes:
    return json.dumps({"command": command, "args": args}).encode() + b"\n"


def decode_request(line: bytes) -> tuple[str, dict[str, Any]]:
    msg = json.loads(line)
    if not isinstance(msg, dict) or not isinstance(msg.get("command"), str):
        raise ValueError("malformed request")
    args = msg.get("args", {})
    if not isinstance(args, dict):
        raise ValueError("malformed request arguments")
    return msg["command"], args


def encode_ok(result: Any) -> bytes:
    return json.dumps({"ok": True, "result": result}).encode() + b"\n"


def encode_error(err: int, message: str) -> bytes:
    return json.dumps({"ok": False, "errno": err, "error": message}).encode() + b"\n"


def decode_reply(line: bytes) -> dict[str, Any]:
    msg = json.loads(line)
    if not isinstance(msg, dict) or "ok" not in msg:
        raise ValueError("malformed reply")
    return msg


def runtime_dir(uid: int | None = None) -> str:
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        return "/run/dmfuse"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "dmfuse") if xdg else f"/tmp/dmfuse-{uid}"


def socket_path(mountpoint: str) -> str:
    digest = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(runtime_dir(), f"{digest}.sock")


def pid_path(mountpoint: str) -> str:
    """The daemon's pid file, beside its socket."""
    return socket_path(mountpoint)[: -len(".sock")] + ".pid"


def check_private_dir(path: str, uid: int | None = None) -> str | None:
    """Why ``path`` is no safe place for the control socket (None if it is): it must be a
    directory, not a symlink, owned by ``uid`` (default: ours), closed to group and others."""
    uid = os.getuid() if uid is None else uid
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != uid:
        return f"{path} is owned by uid {st.st_uid}, not by uid {uid}"
    if st.st_mode & 0o077:
        return f"{path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None
