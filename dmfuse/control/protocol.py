"""Control protocol codec.  PURE.

One request and one reply per connection, each a single line of JSON::

    request: {"command": "load", "args": {"name": "x", "table": "...", ...}}
    reply:   {"ok": true, "result": ...}
           | {"ok": false, "errno": 22, "error": "line 1: linear: Invalid argument count"}

Where the socket lives is derived from the mountpoint alone, so ``-m MOUNTPOINT`` is enough for
a client to find its daemon: ``$RUNTIME/dmfuse/<sha256(realpath)[:16]>.sock`` where ``$RUNTIME``
is ``/run`` for root, else ``$XDG_RUNTIME_DIR`` or ``/tmp/dmfuse-<uid>``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

MAX_MESSAGE = 16 << 20


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
