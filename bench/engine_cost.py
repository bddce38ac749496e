"""The engine's own cost per request, without FUSE: ``Device.read``/``write`` of 4 KiB at
random offsets of a warm ``linear`` device, best of 7 rounds of 20,000 calls.

    .venv/bin/python bench/engine_cost.py IMAGE        # IMAGE: a file of >= 256 MiB

Run it for two trees (``PYTHONPATH=<other worktree>`` for the other one) to compare the
Python path of a change where fio through FUSE is too noisy to show it.
"""

from __future__ import annotations

import sys
import time

import trio

from dmfuse.engine.manager import Manager

CALLS = 20_000
ROUNDS = 7
BLOCKS = 65536  # 256 MiB of 4 KiB blocks


async def main(image: str) -> None:
    m = Manager()
    await m.create("d", f"0 {BLOCKS * 8} linear {image} 0")
    dev = m.get("d")
    data = memoryview(bytes(4096))
    best_read = best_write = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for i in range(CALLS):
            await dev.read((i * 7919 % BLOCKS) * 4096, 4096)
        best_read = min(best_read, (time.perf_counter() - start) / CALLS)
        start = time.perf_counter()
        for i in range(CALLS):
            await dev.write((i * 7919 % BLOCKS) * 4096, data)
        best_write = min(best_write, (time.perf_counter() - start) / CALLS)
    await m.shutdown()
    print(f"read {best_read * 1e6:.2f} us  write {best_write * 1e6:.2f} us per 4 KiB request")


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
