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
