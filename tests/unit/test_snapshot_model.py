"""Model test: random origin and snapshot writes agree with two flat byte arrays.

The model: the origin is what was written to it; each snapshot is the origin as it was when
the snapshot was taken, plus what was written to that snapshot.  Requests are random in offset
and length (crossing chunks), two snapshots with different chunk sizes, and the persistent one
is reloaded from its COW at the end.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from dmfuse.engine.manager import Manager
from tests.conftest import pattern

SIZE = 64 * 1024  # 128 sectors
SECTORS = SIZE // 512

ops = st.lists(
    st.tuples(
        st.sampled_from(["base", "p", "n"]),
        st.integers(0, SIZE - 1),
        st.integers(1, 9000),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None)
@given(ops=ops, concurrent=st.booleans())
def test_snapshots_match_the_model(ops: list[tuple[str, int, int, int]], concurrent: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(_check, Path(tmp), ops, concurrent)


async def _check(tmp: Path, ops: list[tuple[str, int, int, int]], concurrent: bool) -> None:
    o, cp, cn = tmp / "o.img", tmp / "p.cow", tmp / "n.cow"
    o.write_bytes(pattern(0, SIZE))
    cp.write_bytes(bytes(2 * SIZE))
    cn.write_bytes(bytes(2 * SIZE))
    model = {name: bytearray(pattern(0, SIZE)) for name in ("base", "p", "n")}
    m = Manager()
    await m.create("p", f"0 {SECTORS} snapshot {o} {cp} P 8")
    await m.create("n", f"0 {SECTORS} snapshot {o} {cn} N 2")
    await m.create("base", f"0 {SECTORS} snapshot-origin {o}")

    async def do(name: str, offset: int, length: int, value: int) -> None:
        length = min(length, SIZE - offset)
        await m.get(name).write(offset, memoryview(bytes([value]) * length))

    if concurrent:  # writes to different devices at once; each device's own writes in order
        by_device: dict[str, list[tuple[int, int, int]]] = {}
        for name, offset, length, value in ops:
            by_device.setdefault(name, []).append((offset, length, value))

        async def run(name: str) -> None:
            for offset, length, value in by_device[name]:
                await do(name, offset, length, value)

        async with trio.open_nursery() as nursery:
            for name in by_device:
                nursery.start_soon(run, name)
    else:
        for op in ops:
            await do(*op)
    for name, offset, length, value in ops:  # apply to the model per device, in order
        length = min(length, SIZE - offset)
        model[name][offset : offset + length] = bytes([value]) * length
    for name in ("base", "p", "n"):
        assert bytes(await m.get(name).read(0, SIZE)) == model[name], name
    await m.shutdown()
    m = Manager()
    await m.create("p", f"0 {SECTORS} snapshot {o} {cp} P 0")
    assert bytes(await m.get("p").read(0, SIZE)) == model["p"]
    await m.shutdown()
