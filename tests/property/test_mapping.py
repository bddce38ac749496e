"""Split coverage: pieces tile the request, never cross a target end or io boundary."""

from hypothesis import given
from hypothesis import strategies as st

from dmfuse.mapping import split_range


@st.composite
def layouts_and_ranges(draw: st.DrawFn) -> tuple[list[int], list[int], list[int], int, int]:
    lengths = draw(st.lists(st.integers(1, 64), min_size=1, max_size=6))
    boundaries = [draw(st.sampled_from([0, 1, 3, 8])) * 512 for _ in lengths]
    starts, ends, pos = [], [], 0
    for n in lengths:
        starts.append(pos)
        pos += n * 512
        ends.append(pos)
    offset = draw(st.integers(0, pos - 1))
    length = draw(st.integers(1, pos - offset))
    return starts, ends, boundaries, offset, length


@given(layouts_and_ranges())
def test_pieces_tile_the_request(case: tuple[list[int], list[int], list[int], int, int]) -> None:
    starts, ends, boundaries, offset, length = case
    first = next(i for i, e in enumerate(ends) if e > offset)
    pieces = split_range(starts, ends, boundaries, first, offset, length)
    pos = offset
    for index, rel, n, at in pieces:
        assert n > 0
        assert at == pos - offset
        assert starts[index] + rel == pos
        assert pos + n <= ends[index]
        if boundaries[index]:
            assert rel // boundaries[index] == (rel + n - 1) // boundaries[index]
        pos += n
    assert pos == offset + length
