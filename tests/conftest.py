"""Shared fixtures: backing files filled with offset-derived patterns."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest


def pattern(offset: int, length: int, seed: int = 0) -> bytes:
    """Bytes whose value says where they live: a misrouted byte shows at once."""
    out = bytearray()
    start = offset - offset % 8
    for pos in range(start, offset + length, 8):
        out += ((pos * 2654435761 + seed) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
    cut = offset - start
    return bytes(out[cut : cut + length])


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[..., str]:
    def make(name: str, size: int, seed: int | None = 0) -> str:
        path = tmp_path / name
        with path.open("wb") as fh:
            if seed is None:
                fh.truncate(size)
            else:
                fh.write(pattern(0, size, seed))
        return os.fspath(path)

    return make


@pytest.fixture(autouse=True)
def _blocking_calls_inline(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process tests (unit, property) run the backends' blocking calls (fsync, fallocate,
    open) inline instead of in worker threads: a task waiting for a thread counts as blocked,
    so ``autojump_clock`` would jump and ``wait_all_tasks_blocked`` would return while a
    thread still runs.  Tests marked ``threads`` keep the real worker threads; the daemons of
    the integration tests always use them."""
    if "integration" in str(request.path) or request.node.get_closest_marker("threads"):
        return
    import trio

    from dmfuse.backends import file
    from dmfuse.engine import opener

    async def inline(call: Callable[..., object], *args: object) -> object:
        await trio.lowlevel.checkpoint()
        return call(*args)

    monkeypatch.setattr(file, "blocking", inline)
    monkeypatch.setattr(opener, "blocking", inline)
