import pytest

from dmfuse.errors import TableError
from dmfuse.table import Layout, format_line, join_args, parse_table, split_args


def test_parse_skips_comments_blank_lines_and_trailing_comments() -> None:
    text = """
    # a comment
    0 100 linear /a 0   # trailing comment
      100 50 zero
    """
    lines = parse_table(text)
    assert [(ln.start, ln.length, ln.target_type, ln.args) for ln in lines] == [
        (0, 100, "linear", ("/a", "0")),
        (100, 50, "zero", ()),
    ]
    assert [ln.lineno for ln in lines] == [3, 4]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no targets specified"),
        ("# only\n", "no targets specified"),
        ("0 0 zero", "line 1: zero: zero-length target"),
        ("10 5 zero", "line 1: zero: gap in table"),
        ("0 10 zero\n20 5 zero", "line 2: zero: gap in table"),
        ("0 10 zero\n5 5 zero", "line 2: zero: overlapping or out-of-order target"),
        ("0 x zero", "line 1: invalid format"),
        ("-1 5 zero", "line 1: invalid format"),
        ("0 5", "line 1: invalid format"),
        ("0 0x10 zero", "line 1: invalid format"),
    ],
)
def test_layout_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(TableError, match=message):
        parse_table(text)


def test_split_args_backslash_escapes() -> None:
    assert split_args(r"a\ b  c\\d e") == ["a b", "c\\d", "e"]
    assert split_args("   ") == []
    assert split_args(join_args(["x y", "z\\", "w"])) == ["x y", "z\\", "w"]


def test_format_line_keeps_trailing_space_for_empty_params() -> None:
    assert format_line(0, 2048, "zero", "") == "0 2048 zero "
    assert format_line(0, 2048, "linear", "7:0 0") == "0 2048 linear 7:0 0"


def test_layout_locate_and_message_sector() -> None:
    layout = Layout(parse_table("0 8 zero\n8 8 zero\n16 16 zero"))
    assert layout.size == 32 * 512
    assert [layout.locate(o) for o in (0, 4095, 4096, 8191, 8192, 32 * 512 - 1)] == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]
    assert layout.index_of_sector(31) == 2
    assert layout.index_of_sector(32) == -1
