"""The ``@stats_*`` messages of dm core, parsed with the kernel's rules (dm-stats.c's
``dm_stats_message``): see :mod:`dmfuse.stats` for the messages and their replies."""

from __future__ import annotations

import errno
import time

from dmfuse.errors import DmError, InvalidArgument
from dmfuse.stats import INT_MAX, MAX_AREAS, MAX_DEVICE_AREAS, U64, Region, Stats


def _scan_unsigned(word: str, bits: int = 64) -> int | None:
    """The kernel's ``sscanf(word, "%llu%c")`` == 1: digits only, wrapping."""
    if not word.isascii() or not word.isdigit():
        return None
    return int(word) & ((1 << bits) - 1)


def _scan_id(word: str) -> int:
    """``sscanf(word, "%d%c") == 1 && id >= 0``: a region id, else EINVAL."""
    digits = word[1:] if word.startswith("-") else word
    if not digits.isascii() or not digits.isdigit():
        raise InvalidArgument(f"invalid region id {word!r}")
    value = int(digits) & 0xFFFFFFFF
    if word.startswith("-"):
        value = -value & 0xFFFFFFFF
    if value > INT_MAX:
        raise InvalidArgument(f"invalid region id {word!r}")
    return value


def message(stats: Stats, argv: list[str], device_sectors: int) -> str | None:
    """Carry out one ``@stats_*`` message; its reply (None: no reply at all)."""
    name = argv[0].lower()
    if name == "@stats_create":
        return _create(stats, argv, device_sectors)
    if name in ("@stats_delete", "@stats_clear"):
        if len(argv) != 2:
            raise InvalidArgument(f"Invalid parameters for message {argv[0]}")
        region = stats.find(_scan_id(argv[1]))
        if name == "@stats_delete":
            stats.regions = tuple(r for r in stats.regions if r is not region)
            return None
        region.clear(0, region.n_areas, time.monotonic_ns())
        return ""
    if name == "@stats_list":
        if len(argv) > 2:
            raise InvalidArgument(f"Invalid parameters for message {argv[0]}")
        program = argv[1] if len(argv) > 1 else None
        return "".join(
            r.list_line() for r in stats.regions if program is None or r.program_id == program
        )
    if name in ("@stats_print", "@stats_print_clear"):
        return _print(stats, argv, clear=name == "@stats_print_clear")
    if name == "@stats_set_aux":
        if len(argv) != 3:
            raise InvalidArgument(f"Invalid parameters for message {argv[0]}")
        stats.find(_scan_id(argv[1])).aux_data = argv[2]
        return None
    raise InvalidArgument(f"Unsupported message sent to DM core: {argv[0]}")


def _print(stats: Stats, argv: list[str], *, clear: bool) -> str:
    if len(argv) not in (2, 4):
        raise InvalidArgument(f"Invalid parameters for message {argv[0]}")
    region_id = _scan_id(argv[1])
    first, count = 0, U64
    if len(argv) == 4:
        for i, word in ((2, argv[2]), (3, argv[3])):
            if word == "-":
                continue
            value = _scan_unsigned(word)
            if value is None:
                raise InvalidArgument(f"invalid line number {word!r}")
            if i == 2:
                first = value
            else:
                count = value
    region = stats.find(region_id)
    stop = first + count
    if stop > U64 or stop > region.n_areas:
        stop = region.n_areas
    first = min(first, stop)
    now = time.monotonic_ns()
    text = region.print_lines(first, stop, now, stats.pending.values())
    if clear:
        region.clear(first, stop, now)
    return text


def _create(stats: Stats, argv: list[str], device_sectors: int) -> str:
    bad = InvalidArgument(f"Invalid parameters for message {argv[0]}")
    if len(argv) < 3:
        raise bad
    if argv[1] == "-":
        start, length = 0, device_sectors or 1
    else:
        first, plus, rest = argv[1].partition("+")
        start_or, length_or = _scan_unsigned(first), _scan_unsigned(rest)
        if not plus or start_or is None or length_or is None:
            raise bad
        start, length = start_or, length_or
    end = (start + length) & U64
    if start >= end:
        raise bad
    step_word = argv[2]
    if step_word.startswith("/") and _scan_unsigned(step_word[1:], 32) is not None:
        divisor = _scan_unsigned(step_word[1:], 32) or 0
        if not divisor:
            raise bad
        step = max(-(-(end - start) // divisor), 1)
    else:
        step_or = _scan_unsigned(step_word)
        if not step_or:
            raise bad
        step = step_or
    rest_args = argv[3:]
    precise = False
    boundaries: tuple[int, ...] = ()
    if rest_args and _scan_unsigned(rest_args[0], 32) is not None:
        count = _scan_unsigned(rest_args[0], 32) or 0
        features, rest_args = rest_args[1 : 1 + count], rest_args[1 + count :]
        if len(features) < count:
            raise bad
        for feature in features:
            if feature.lower() == "precise_timestamps":
                precise = True
            elif feature[:10].lower() == "histogram:" and not boundaries:
                boundaries = _parse_histogram(feature[10:], bad)
            else:
                raise bad
    if len(rest_args) > 2:
        raise bad
    program_id = rest_args[0] if rest_args else "-"
    aux_data = rest_args[1] if len(rest_args) > 1 else "-"
    n_areas = -(-(end - start) // step)
    if n_areas > MAX_AREAS or n_areas + sum(r.n_areas for r in stats.regions) > (MAX_DEVICE_AREAS):
        raise DmError(
            f"{n_areas} areas: more statistics areas than dmfuse keeps "
            f"({MAX_AREAS} a region, {MAX_DEVICE_AREAS} a device)",
            errno.ENOMEM,
        )
    region_id = stats.free_id()
    if region_id > INT_MAX:
        raise DmError("no free statistics region id", errno.ENFILE)
    region = Region(
        region_id,
        start,
        end,
        step,
        precise=precise,
        boundaries=boundaries,
        program_id=program_id,
        aux_data=aux_data,
    )
    stats.add(region)
    return str(region_id)


def _parse_histogram(text: str, bad: InvalidArgument) -> tuple[int, ...]:
    """``n1,n2,...``: strictly increasing numbers above 0 (parse_histogram)."""
    values = []
    last = 0
    for word in text.split(","):
        value = _scan_unsigned(word)
        if value is None or value <= last:
            raise bad
        values.append(value)
        last = value
    return tuple(values)
