from __future__ import annotations

from dmfuse.targets.crypt.bufpool import BufferPool


def test_buffers_are_reused_and_bounded() -> None:
    pool = BufferPool(keep=2, max_bytes=1 << 20)
    a = pool.take(1 << 20)
    a_obj = a.obj
    a[:3] = b"abc"
    pool.give(a)
    b = pool.take(4096)  # a smaller request reuses the bigger buffer
    assert b.obj is a_obj and len(b) == 4096 and bytes(b[:3]) == b"abc"
    c = pool.take(1 << 20)  # taken: a fresh one
    assert c.obj is not a_obj
    d = pool.take(100)  # none spare: a third fresh one
    for view in (b, c, d):
        pool.give(view)
    assert len(pool._spare) == 2  # never more than `keep` spares
    big = pool.take(2 << 20)
    pool.give(big)  # above max_bytes: not kept
    assert all(len(buf) <= 1 << 20 for buf in pool._spare)
