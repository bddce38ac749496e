import pytest

from dmfuse.errors import TableError
from dmfuse.tabledir import TableFile, bring_up_order, parse_file, render_file


def test_render_and_parse_round_trip() -> None:
    text = render_file("U-1", True, ["0 8 zero ", "8 8 linear /a 0"])
    assert text == "# dmfuse: readonly uuid=U-1\n0 8 zero\n8 8 linear /a 0\n"
    f = parse_file("d", text)
    # the header stays a (blank) line, so errors count the file's own lines
    assert (f.readonly, f.uuid, f.text) == (True, "U-1", "\n0 8 zero\n8 8 linear /a 0")
    assert render_file("", False, ["0 8 zero "]) == "0 8 zero\n"
    assert parse_file("e", render_file("", False, None)).text == ""


def test_bring_up_order_puts_lower_devices_first_and_refuses_cycles() -> None:
    files = [
        TableFile("top", "0 8 linear /dev/mapper/mid 0", False, ""),
        TableFile("mid", "0 8 linear /mnt/low 0", False, ""),
        TableFile("low", "0 8 zero", False, ""),
    ]
    assert [f.name for f in bring_up_order(files, "/mnt")] == ["low", "mid", "top"]
    cyc = [
        TableFile("a", "0 8 linear /dev/mapper/b 0", False, ""),
        TableFile("b", "0 8 linear /dev/mapper/a 0", False, ""),
    ]
    with pytest.raises(TableError, match="cycle"):
        bring_up_order(cyc, "/mnt")


def test_bring_up_order_follows_relative_paths_into_the_mount() -> None:
    files = [
        TableFile("a", "0 8 linear ../mnt/./z 0", False, ""),
        TableFile("z", "0 8 zero", False, ""),
    ]
    assert [f.name for f in bring_up_order(files, "/r/mnt", "/r/tables")] == ["z", "a"]
    assert [f.name for f in bring_up_order(files, "/r/mnt")] == ["a", "z"]  # not told the base
