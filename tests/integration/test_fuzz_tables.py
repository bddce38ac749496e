"""Random mutations of valid table lines against a running daemon (the fuzzer that found the
issue 19 failures, bounded): every request is answered with a result or a one-line error, and
the daemon keeps serving both its control socket and its mount."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmfuse.control.client import request
from dmfuse.control.protocol import socket_path
from dmfuse.errors import DmError
from tests.integration.harness import Mount

SEED = 19
BUDGET_SECONDS = 15.0
MAX_ROUNDS = 4000

WEIRD = [
    "",
    "0",
    "-1",
    "+7",
    "1" * 30,
    str(1 << 63),
    str(1 << 64),
    "18014398509481983",
    "mnt/base",
    "mnt/",
    "mnt",
    "mnt/base/x",
    "mnt/../mnt/base",
    "/dev/mapper/base",
    "253:0",
    "253:99",
    "0:0",
    "/dev/null",
    "/dev/zero",
    "/proc/self/fd/0",
    "link",
    "loop",
    "fifo",
    "../../../../etc/passwd",
    "\\",
    "#",
    "a\\ b",
    "ünï",
    "\x00",
    "\t",
    ":",
    "aes-xts-plain64",
    "P",
    "PO",
    "N",
]


def _valid_lines(root: Path) -> list[str]:
    a, b, cow, log = (str(root / "tables" / n) for n in ("a.img", "b.img", "cow.img", "log.img"))
    key = "0" * 64
    return [
        f"0 64 linear {a} 0",
        f"0 64 striped 2 8 {a} 0 {b} 0",
        "0 64 zero",
        "0 64 error",
        f"0 64 delay {a} 0 0",
        f"0 64 flakey {a} 0 1 0",
        f"0 64 dust {a} 0 512",
        f"0 64 unstriped 2 8 0 {a} 0",
        f"0 64 crypt aes-xts-plain64 {key} 0 {a} 0",
        f"0 64 snapshot-origin {a}",
        f"0 64 snapshot {a} {cow} P 8",
        f"0 64 log-writes {b} {log}",
        "0 64 linear mnt/base 0",
    ]


def _mutate(rng: random.Random, line: str) -> str:
    words = line.split(" ")
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        i = rng.randrange(len(words))
        if op == 0:
            words[i] = rng.choice(WEIRD)
        elif op == 1 and len(words) > 1:
            del words[i]
        elif op == 2:
            words.insert(i, rng.choice(WEIRD))
        elif op == 3:
            words[i] = words[i] * rng.randint(2, 4)
        elif op == 4:
            words[i] = "".join(rng.sample(words[i], len(words[i]))) if words[i] else "x"
        else:
            words[i] = str(rng.choice([1, 7, 8, 63, 64, 65, 1 << 20]))
    text = " ".join(words)
    if rng.random() < 0.2:  # a second line, adjacent or not
        text += "\n" + rng.choice(["64 8 zero", "0 8 zero", "64 0 zero", f"{1 << 62} 8 zero"])
    return text


def _mount_answers(mnt: Mount) -> None:
    subprocess.run(["ls", "-l", str(mnt.mnt)], check=True, capture_output=True, timeout=10)


@pytest.fixture
def request_timeout() -> Iterator[None]:
    """A daemon that hangs fails the test instead of hanging it (the client has no timeout)."""
    socket.setdefaulttimeout(30.0)
    try:
        yield
    finally:
        socket.setdefaulttimeout(None)


@pytest.mark.usefixtures("request_timeout")
def test_mutated_tables_never_kill_or_hang_the_daemon(mnt: Mount) -> None:
    for name in ("a.img", "b.img", "cow.img", "log.img"):
        mnt.image(name, 1 << 20)
    mnt.table("base", "0 64 zero")
    mnt.mount()
    root = mnt.root
    (root / "link").symlink_to(mnt.dev("base"))
    subprocess.run(["mkfifo", str(root / "fifo")], check=True)
    sock = socket_path(str(mnt.mnt))
    rng = random.Random(SEED)
    lines = _valid_lines(root)
    deadline = time.monotonic() + BUDGET_SECONDS
    answered = refused = 0
    for round_no in range(MAX_ROUNDS):
        if time.monotonic() > deadline:
            break
        table = _mutate(rng, rng.choice(lines))
        name = f"f{round_no}"
        try:
            readonly = rng.random() < 0.3
            args = {"name": name, "table": table, "cwd": str(root), "readonly": readonly}
            request(sock, "create", args)
        except DmError as exc:
            refused += 1
            assert exc.errno > 0 and "\n" not in exc.message, (table, exc.message)
        else:
            answered += 1
            request(sock, "remove", {"name": name, "force": True})
        if round_no % 25 == 0:
            _mount_answers(mnt)
    print(f"{answered} tables created, {refused} refused")
    assert answered + refused >= 50, "the daemon answered too few requests in the budget"
    assert refused > 0 and answered > 0
    _mount_answers(mnt)
    assert request(sock, "ls", {}) == [{"name": "base", "major": 253, "minor": 0}]
