"""Reading a target's argument vector the way kernel constructors do (``dm_read_arg``).  PURE.

Numbers are unsigned decimal with nothing trailing (``"%llu%c"`` style), each check raises a
:class:`TableError` whose text names the argument, like a constructor setting ``ti->error``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dmfuse.errors import TableError

_UNSIGNED = re.compile(r"[0-9]+\Z")


class ArgReader:
    """A cursor over constructor arguments."""

    def __init__(self, args: Sequence[str]) -> None:
        self._args = list(args)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._args) - self._pos

    def rest(self) -> list[str]:
        out = self._args[self._pos :]
        self._pos = len(self._args)
        return out

    def shift(self, what: str) -> str:
        if self._pos >= len(self._args):
            raise TableError(f"missing {what}")
        value = self._args[self._pos]
        self._pos += 1
        return value

    def unsigned(self, what: str, minimum: int = 0, maximum: int = 2**64 - 1) -> int:
        return parse_unsigned(self.shift(what), what, minimum, maximum)

    def expect_end(self, what: str = "arguments") -> None:
        if self.remaining:
            raise TableError(f"too many {what}: {' '.join(self._args[self._pos :])}")

    def feature_group(self, what: str = "optional arguments") -> list[str]:
        """``<#args> <arg>...``: the count first, then that many words (may be absent)."""
        if not self.remaining:
            return []
        count = self.unsigned(f"number of {what}")
        if count > self.remaining:
            raise TableError(f"not enough {what}: expected {count}, got {self.remaining}")
        words = self._args[self._pos : self._pos + count]
        self._pos += count
        return words


def parse_unsigned(text: str, what: str, minimum: int = 0, maximum: int = 2**64 - 1) -> int:
    if not _UNSIGNED.match(text):
        raise TableError(f"invalid {what}: {text!r}")
    value = int(text)
    if not minimum <= value <= maximum:
        raise TableError(f"invalid {what}: {value} (allowed {minimum}..{maximum})")
    return value
