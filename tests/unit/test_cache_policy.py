"""The cache policy's pure parts: mount options, the table file header, ``info``'s line."""

from __future__ import annotations

import pytest

from dmfuse import output
from dmfuse.errors import DmError
from dmfuse.mount_options import MountOptions, parse_mount_options
from dmfuse.tabledir import parse_file, render_file
from tests.unit.test_output import info


def test_mount_options() -> None:
    assert parse_mount_options("") == MountOptions()
    assert parse_mount_options("cache=none") == MountOptions(cache="none")
    assert parse_mount_options("allow_other,cache=writeback") == MountOptions(
        allow_other=True, cache="writeback"
    )
    assert parse_mount_options("cache=writeback,cache=none").cache == "none"  # last one wins


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cache=bogus", "mount option cache=bogus: unknown cache policy (writeback or none)"),
        ("cache=", "mount option cache=: unknown cache policy (writeback or none)"),
        ("cache", "unknown mount option(s): cache"),
        ("allow_other,ro,foo", "unknown mount option(s): foo,ro"),
    ],
)
def test_bad_mount_options_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(DmError) as caught:
        parse_mount_options(text)
    assert caught.value.message == message


def test_table_file_header_carries_the_policy() -> None:
    text = render_file("U", False, ["0 8 zero "], cache="none")
    assert text == "# dmfuse: uuid=U cache=none\n0 8 zero\n"
    f = parse_file("d", text)
    # the header line stays as a blank line, so table errors count the file's own lines
    assert (f.uuid, f.cache, f.text) == ("U", "none", "\n0 8 zero")
    assert parse_file("d", "0 8 zero\n").cache is None  # the mount's policy
    assert render_file("", True, None, cache=None) == "# dmfuse: readonly\n"


def test_info_shows_the_policy_only_when_not_the_default() -> None:
    default = output.info_long([info(cache="writeback")])
    assert default == output.info_long([info()])  # dmsetup's layout, byte for byte
    assert "cache" not in default.lower()
    text = output.info_long([info(cache="none", uuid="U")])
    assert text.splitlines()[-3:] == ["Backing cache:     none", "UUID: U", ""]
