"""``dmfuse status --watch NAME``: follow a snapshot-merge until it is done.  PURE.

A merge's progress is only visible in its status line: ``sectors_allocated`` shrinks towards
``metadata_sectors`` (dm-spec §5.12), so the first value seen is taken as "nothing merged yet"
and the bar shows ``(first - now) / (first - metadata)``.  The loop takes its clock and its
status source as arguments, so it runs without a daemon and without real sleeps in tests.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import attrs

_USAGE = re.compile(r"([0-9]+)/([0-9]+) ([0-9]+)\Z")
WIDTH = 40


@attrs.frozen
class Usage:
    allocated: int
    total: int
    metadata: int

    @property
    def merged(self) -> bool:
        return self.allocated <= self.metadata


def parse(info: str) -> Usage | str:
    """The INFO part of a snapshot/snapshot-merge status: usage, or the word it shows instead
    (``Invalid``, ``Overflow``, ``Merge failed``, ``Unknown``)."""
    m = _USAGE.match(info.strip())
    if m is None:
        return info.strip()
    return Usage(int(m.group(1)), int(m.group(2)), int(m.group(3)))


def render(first: Usage, now: Usage) -> str:
    todo = first.allocated - first.metadata
    left = max(0, now.allocated - now.metadata)
    fraction = 1.0 if todo <= 0 else min(1.0, max(0.0, (todo - left) / todo))
    filled = int(fraction * WIDTH)
    bar = "#" * filled + "-" * (WIDTH - filled)
    return f"[{bar}] {fraction * 100:5.1f}%  {left} sectors left to merge"


def watch(
    fetch: Callable[[], str],
    sleep: Callable[[float], None],
    emit: Callable[[str], None],
    interval: float = 1.0,
) -> int:
    """Poll ``fetch()`` (a status INFO string) until the merge is done; 0 done, 1 failed."""
    first: Usage | None = None
    while True:
        state = parse(fetch())
        if isinstance(state, str):
            emit(f"merge stopped: {state or 'no usage in status'}")
            return 1
        if first is None:
            first = state
        emit(render(first, state))
        if state.merged:
            return 0
        sleep(interval)
