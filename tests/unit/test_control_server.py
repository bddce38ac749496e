"""The control socket frame by frame: whatever one connection sends, the daemon answers the
others; and neither side trusts a runtime directory or a peer that is not its own."""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from dmfuse.control import server as server_module
from dmfuse.control.client import request
from dmfuse.control.protocol import check_private_dir
from dmfuse.control.server import ControlServer
from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError

NOBODY = 65534


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[str]:
    path = str(tmp_path / "run" / "c.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(Manager(), path).serve)
        yield path
        nursery.cancel_scope.cancel()


async def _exchange(path: str, frame: bytes, *, eof: bool = True) -> dict[str, object]:
    with trio.fail_after(10):
        stream = await trio.open_unix_socket(path)
        async with stream:
            await stream.send_all(frame)
            if eof:
                await stream.send_eof()
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    reply = json.loads(data)
    assert isinstance(reply, dict)
    return reply


async def _still_serving(path: str) -> None:
    reply = await _exchange(path, b'{"command": "version", "args": {}}\n')
    assert reply["ok"] is True


@pytest.mark.parametrize(
    ("frame", "err", "text"),
    [
        (b"", errno.EINVAL, "malformed request"),  # connect, send nothing, end
        (b"{not json\n", errno.EINVAL, "malformed request"),
        (b'{"command": "version"}\xff\xfe\n', errno.EINVAL, "malformed request"),
        (b"[1, 2]\n", errno.EINVAL, "malformed request"),
        (b'{"command": 7}\n', errno.EINVAL, "malformed request"),
        (b'{"command": "ls", "args": [1]}\n', errno.EINVAL, "malformed request arguments"),
        (b'{"command": "nope", "args": {}}\n', errno.EINVAL, "unknown command"),
        (b'{"command": "resume", "args": {}}\n', errno.EINVAL, "malformed request"),
        (
            b'{"command": "message", "args": {"name": "x", "sector": "a", "message": "m"}}\n',
            errno.EINVAL,
            "malformed request",
        ),
        (b'{"command": "create", "args": {"name": 5}}\n', errno.EINVAL, "malformed request"),
        (b"[" * 100_000 + b"\n", errno.EIO, "internal error"),  # json's recursion limit
    ],
)
async def test_a_bad_frame_gets_an_error_reply_and_nothing_else_changes(
    control: str, frame: bytes, err: int, text: str
) -> None:
    reply = await _exchange(control, frame)
    assert reply["ok"] is False and reply["errno"] == err, reply
    assert text in str(reply["error"]), reply
    await _still_serving(control)


async def test_a_request_without_its_newline_is_read_to_the_end(control: str) -> None:
    reply = await _exchange(control, b'{"command": "targets", "args": {}}')
    assert reply["ok"] is True


async def test_only_the_first_request_of_a_connection_is_answered(control: str) -> None:
    frame = b'{"command": "create", "args": {"name": "a"}}\n{"command": "remove"}\n'
    reply = await _exchange(control, frame)
    assert reply["ok"] is True
    listed = await _exchange(control, b'{"command": "ls", "args": {}}\n')
    assert listed["result"] == [{"name": "a", "major": 253, "minor": 0}]


async def test_a_request_over_the_limit_is_refused_on_its_connection_only(
    control: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "MAX_MESSAGE", 4096)
    reply = await _exchange(control, b"x" * 100_000, eof=False)
    assert reply["ok"] is False and reply["errno"] == errno.EINVAL
    assert "request too large" in str(reply["error"])
    await _still_serving(control)


async def test_a_silent_or_vanishing_client_holds_up_no_one(control: str) -> None:
    with trio.fail_after(10):
        silent = await trio.open_unix_socket(control)  # connects, never sends
        gone = await trio.open_unix_socket(control)
        await gone.send_all(b'{"command": "wait", "args": {"name": "x"}}')
        await gone.aclose()  # went away before its reply
        await _still_serving(control)
        await silent.aclose()
    await _still_serving(control)


def test_the_client_refuses_a_request_over_the_limit_before_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dmfuse.control import client

    monkeypatch.setattr(client, "MAX_MESSAGE", 100)
    with pytest.raises(DmError, match=r"request too large: \d+ bytes, the limit is"):
        request("/nonexistent/socket", "load", {"table": "0 8 zero\n" * 20})


# -- the runtime directory and the peer ---------------------------------------------------------
def _private_dir(tmp_path: Path) -> Path:
    d = tmp_path / "rt"
    d.mkdir(mode=0o700)
    os.chmod(d, 0o700)
    return d


def test_check_private_dir(tmp_path: Path) -> None:
    d = _private_dir(tmp_path)
    assert check_private_dir(str(d)) is None
    os.chmod(d, 0o755)
    assert "open to other users (mode 0755)" in str(check_private_dir(str(d)))
    os.chmod(d, 0o700)
    link = tmp_path / "link"
    link.symlink_to(d)
    assert "is not a directory" in str(check_private_dir(str(link)))
    if os.getuid() == 0:
        os.chown(d, NOBODY, NOBODY)
        assert f"owned by uid {NOBODY}, not by uid 0" in str(check_private_dir(str(d)))


needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")


@needs_root
async def test_the_daemon_refuses_a_runtime_dir_it_does_not_own(tmp_path: Path) -> None:
    d = _private_dir(tmp_path)
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(DmError, match=f"owned by uid {NOBODY}") as info:
        await ControlServer(Manager(), str(d / "c.sock")).serve()
    assert info.value.errno == errno.EACCES
    assert os.listdir(d) == []


@needs_root
def test_the_client_sends_nothing_to_a_socket_it_cannot_trust(tmp_path: Path) -> None:
    d = _private_dir(tmp_path)
    path = str(d / "c.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    pid = os.fork()
    if pid == 0:  # listens as another user: SO_PEERCRED reports who called listen()
        try:
            os.setuid(NOBODY)
            listener.listen(1)
            conn, _ = listener.accept()
            conn.settimeout(10)
            os._exit(3 if conn.recv(65536) else 0)  # 3: the client sent something
        except BaseException:
            os._exit(4)
    listener.close()
    try:
        with pytest.raises(DmError, match=f"served by uid {NOBODY}") as info:
            for _ in range(100):  # until the child listens
                try:
                    request(path, "load", {"table": "secret key"})
                except DmError as exc:
                    if exc.errno != errno.ECONNREFUSED:
                        raise
                    time.sleep(0.05)
        assert info.value.errno == errno.EACCES
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # and a directory someone else owns is refused before connecting
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(DmError, match=f"owned by uid {NOBODY}"):
        request(path, "version", {})
