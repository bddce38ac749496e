"""Model test: random tables over real files agree with a flat bytearray model."""

from __future__ import annotations

import os
import tempfile

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmfuse.engine.manager import Manager

FILE_SECTORS = 256


@st.composite
def tables(draw: st.DrawFn) -> list[tuple[str, int, list[tuple[int, int]], int]]:
    """Segments: (kind, sectors, [(file index, sector offset)...], chunk)."""
    segs = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["linear", "striped", "zero"]))
        if kind == "linear":
            n = draw(st.integers(1, 32))
            segs.append((kind, n, [(draw(st.integers(0, 2)), draw(st.integers(0, 64)))], 0))
        elif kind == "striped":
            stripes = draw(st.integers(1, 3))
            chunk = draw(st.integers(1, 5))
            rows = draw(st.integers(1, 4))
            devs = [(draw(st.integers(0, 2)), draw(st.integers(0, 64))) for _ in range(stripes)]
            segs.append((kind, stripes * chunk * rows, devs, chunk))
        else:
            segs.append((kind, draw(st.integers(1, 16)), [], 0))
    return segs


def physical(seg: tuple[str, int, list[tuple[int, int]], int], sector: int) -> tuple[int, int]:
    kind, _, devs, chunk = seg
    if kind == "linear":
        return devs[0][0], devs[0][1] + sector
    c, within = divmod(sector, chunk)
    row, stripe = divmod(c, len(devs))
    return devs[stripe][0], devs[stripe][1] + row * chunk + within


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tables(),
    st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(1, 9000), st.binary(min_size=1, max_size=1)),
        max_size=6,
    ),
)
def test_device_matches_model(
    segs: list[tuple[str, int, list[tuple[int, int]], int]], writes: list[tuple[int, int, bytes]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = [os.path.join(tmp, f"f{i}") for i in range(3)]
        disks = [bytearray(os.urandom(FILE_SECTORS * 512)) for _ in files]
        for path, data in zip(files, disks, strict=True):
            with open(path, "wb") as fh:
                fh.write(data)
        lines, start = [], 0
        for kind, n, devs, chunk in segs:
            if kind == "linear":
                args = f"{files[devs[0][0]]} {devs[0][1]}"
            elif kind == "striped":
                args = f"{len(devs)} {chunk} " + " ".join(f"{files[i]} {o}" for i, o in devs)
            else:
                args = ""
            lines.append(f"{start} {n} {kind} {args}")
            start += n
        size = start * 512

        # The model: which (file, byte) each device byte is, or None for zero.
        where: list[tuple[int, int] | None] = []
        for seg in segs:
            for s in range(seg[1]):
                loc = None if seg[0] == "zero" else physical(seg, s)
                where.extend(
                    None if loc is None else (loc[0], loc[1] * 512 + b) for b in range(512)
                )

        async def run() -> None:
            m = Manager()
            await m.create("d", "\n".join(lines))
            dev = m.get("d")
            for offset, length, fill in writes:
                offset %= size
                length = min(length, size - offset)
                await dev.write(offset, memoryview(fill * length))
                for pos in range(offset, offset + length):
                    loc = where[pos]
                    if loc is not None:
                        disks[loc[0]][loc[1]] = fill[0]
            got = await dev.read(0, size)
            expect = bytes(0 if loc is None else disks[loc[0]][loc[1]] for loc in where)
            assert bytes(got) == expect
            await m.shutdown()

        trio.run(run)
