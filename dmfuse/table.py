"""Tables in dmsetup syntax: parse, validate the layout, format, locate a sector.  PURE.

Grammar (dm-spec §1.1–1.4), one target per line::

    <logical_start_sector> <num_sectors> <target_type> <target args...>

Reading follows dmsetup's ``_parse_line``: surrounding blanks are trimmed, empty lines and lines
starting with ``#`` are skipped, anything from the first ``#`` in the parameters on is a comment,
numbers are unsigned decimal.  Layout follows the kernel's ``dm_table_add_target``: at least one
target, no zero-length target, no device past :data:`MAX_SECTORS`, and each target starts exactly
where the previous one ended (this one rule forbids gaps, overlaps and out-of-order lines).

Target arguments are split like ``dm_split_args``: on whitespace, with a backslash escaping the
next character.  Output lines are ``"%llu %llu %s "`` followed by the target's string, so a target
with an empty string keeps the trailing space exactly as ``dmsetup table`` prints it.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence

import attrs

from dmfuse.errors import TableError

SECTOR_SIZE = 512
# dm_table_add_target: a device ends at LLONG_MAX >> SECTOR_SHIFT sectors at most, so its byte
# size fits a loff_t (and a file's off_t here); past that the kernel says "too large device".
MAX_SECTORS = ((1 << 63) - 1) >> 9
_DECIMAL = re.compile(r"\+?[0-9]+\Z")  # dmsetup reads them with %llu, which takes a '+'


@attrs.frozen
class TableLine:
    """One parsed line: where it sits in the device and what the constructor gets."""

    lineno: int
    start: int
    length: int
    target_type: str
    args: tuple[str, ...]

    @property
    def end(self) -> int:
        return self.start + self.length


def split_args(params: str) -> list[str]:
    """Split a parameter string like the kernel's ``dm_split_args`` (backslash escapes)."""
    out: list[str] = []
    cur: list[str] = []
    in_word = False
    escaped = False
    for ch in params:
        if escaped:
            cur.append(ch)
            escaped = False
            in_word = True
        elif ch == "\\":
            escaped = True
            in_word = True
        elif ch.isspace():
            if in_word:
                out.append("".join(cur))
                cur = []
                in_word = False
        else:
            cur.append(ch)
            in_word = True
    if escaped:
        cur.append("\\")
    if in_word:
        out.append("".join(cur))
    return out


def join_args(args: Iterable[str]) -> str:
    """Inverse of :func:`split_args`: escape blanks and backslashes so the words round-trip."""
    return " ".join(re.sub(r"([\s\\])", r"\\\1", a) for a in args)


def _strip_comment(params: str) -> str:
    cut = params.find("#")
    return params if cut < 0 else params[:cut]


def parse_line(text: str, lineno: int) -> TableLine | None:
    """Parse one line; ``None`` for blank and comment lines."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    fields = stripped.split(None, 3)
    if len(fields) < 3 or not _DECIMAL.match(fields[0]) or not _DECIMAL.match(fields[1]):
        raise TableError(
            f"line {lineno}: invalid format: expected '<start> <length> <type> [args]'"
        )
    params = _strip_comment(fields[3]) if len(fields) == 4 else ""
    return TableLine(lineno, int(fields[0]), int(fields[1]), fields[2], tuple(split_args(params)))


def parse_table(text: str) -> list[TableLine]:
    """Parse and check the layout of a whole table (every line, then adjacency)."""
    lines = [
        parsed
        for lineno, raw in enumerate(text.splitlines(), start=1)
        if (parsed := parse_line(raw, lineno)) is not None
    ]
    check_layout(lines)
    return lines


def has_targets(text: str) -> bool:
    """Whether a table text has any line that is not blank or a comment."""
    return any(ln.strip() and not ln.lstrip().startswith("#") for ln in text.splitlines())


def check_layout(lines: Sequence[TableLine]) -> None:
    """The kernel's load-time layout rules (dm-spec §1.2 rules 1, 2 and 4)."""
    if not lines:
        raise TableError("no targets specified")
    expected = 0
    for line in lines:
        where = f"line {line.lineno}: {line.target_type}"
        if line.length == 0:
            raise TableError(f"{where}: zero-length target")
        if line.end > MAX_SECTORS:
            raise TableError(f"{where}: too large device (more than {MAX_SECTORS} sectors)")
        if line.start != expected:
            kind = "gap in table" if line.start > expected else "overlapping or out-of-order target"
            raise TableError(
                f"{where}: {kind}: starts at sector {line.start}, "
                f"previous target ends at sector {expected}"
            )
        expected = line.end


def format_line(start: int, length: int, target_type: str, params: str) -> str:
    """``dmsetup table``/``status`` line; an empty ``params`` keeps the trailing space."""
    return f"{start} {length} {target_type} {params}"


class Layout:
    """Where each target of a table sits, in bytes, for fast lookup (bisect on ends)."""

    __slots__ = ("ends", "size", "starts")

    def __init__(self, lines: Sequence[TableLine]) -> None:
        self.starts: list[int] = [ln.start * SECTOR_SIZE for ln in lines]
        self.ends: list[int] = [ln.end * SECTOR_SIZE for ln in lines]
        self.size: int = self.ends[-1] if self.ends else 0

    def locate(self, offset: int) -> int:
        """Index of the target holding byte ``offset`` (caller checks ``offset < size``)."""
        return bisect.bisect_right(self.ends, offset)

    def index_of_sector(self, sector: int) -> int:
        """Target index for ``dmsetup message NAME SECTOR``; ``-1`` when outside the device."""
        offset = sector * SECTOR_SIZE
        return self.locate(offset) if 0 <= offset < self.size else -1
