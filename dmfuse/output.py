"""dmsetup's output formats, from the plain data the daemon returns.  PURE.

Layouts follow dm-spec §3: ``info`` pads labels to 19 columns and ends each device with a blank
line (a device whose backing files are opened ``cache=none`` has one more, ``Backing cache:``,
after ``Number of targets``: the default layout stays byte for byte dmsetup's);
``table``/``status`` lines keep dm's trailing space for empty target strings and are prefixed
``NAME: `` only when no device was named.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NO_DEVICES = "No devices found"


def _label(label: str, value: object) -> str:
    return f"{label + ':':<19}{value}"


def state_text(info: dict[str, Any]) -> str:
    text = "SUSPENDED" if info["suspended"] else "ACTIVE"
    if info["readonly"]:
        text += " (READ-ONLY)"
    if info["deferred_remove"]:
        text += " (DEFERRED REMOVE)"
    return text


def tables_present(info: dict[str, Any]) -> str:
    parts = [
        p for p, present in (("LIVE", info["live"]), ("INACTIVE", info["inactive"])) if present
    ]
    return " & ".join(parts) if parts else "None"


def info_long(infos: Sequence[dict[str, Any]]) -> str:
    if not infos:
        return NO_DEVICES + "\n"
    out = []
    for info in infos:
        out.append(_label("Name", info["name"]))
        out.append(_label("State", state_text(info)))
        if info["has_disk"]:  # the kernel makes the disk (and its read-ahead) at first load
            out.append(_label("Read Ahead", info["read_ahead"]))
        out.append(_label("Tables present", tables_present(info)))
        out.append(_label("Open count", info["open_count"]))
        out.append(_label("Event number", info["event_nr"]))
        out.append(_label("Major, minor", f"{info['major']}, {info['minor']}"))
        out.append(_label("Number of targets", info["targets"] or 0))
        if info.get("logical_block_size", 512) != 512:  # dmfuse's own line (blockdev --getss)
            out.append(f"Logical block size: {info['logical_block_size']}")
        if info.get("cache", "writeback") != "writeback":  # dmsetup's layout unless cache=none
            out.append(_label("Backing cache", info["cache"]))
        if info["uuid"]:
            out.append(f"UUID: {info['uuid']}")
        out.append("")
    return "\n".join(out) + "\n"


def attr(info: dict[str, Any]) -> str:
    return (
        ("L" if info["live"] else "-")
        + ("I" if info["inactive"] else "-")
        + ("s" if info["suspended"] else "-")
        + ("r" if info["readonly"] else "w")
    )


# dmsetup's report columns for ``info -c``: heading, minimum width, right-aligned values.
_COLUMNS = (
    ("Name", 16, False),
    ("Maj", 3, True),
    ("Min", 3, True),
    ("Stat", 4, False),
    ("Open", 4, True),
    ("Targ", 4, True),
    ("Event", 6, True),
    ("UUID", 32, False),
)


def info_columns(infos: Sequence[dict[str, Any]], *, headings: bool = True) -> str:
    """``dmsetup info -c``: padded columns under headings; ``--noheadings`` joins with ``:``."""
    if not infos:
        return NO_DEVICES + "\n"
    rows = [
        [
            i["name"],
            str(i["major"]),
            str(i["minor"]),
            attr(i),
            str(i["open_count"]),
            str(i["targets"] or 0),
            str(i["event_nr"]),
            i["uuid"],
        ]
        for i in infos
    ]
    if not headings:
        return "".join(":".join(row) + "\n" for row in rows)
    widths = [max(width, *(len(r[c]) for r in rows)) for c, (_, width, _) in enumerate(_COLUMNS)]
    lines = [" ".join(h.ljust(w) for (h, _, _), w in zip(_COLUMNS, widths, strict=True))]
    for row in rows:
        lines.append(
            " ".join(
                v.rjust(w) if right else v.ljust(w)
                for v, w, (_, _, right) in zip(row, widths, _COLUMNS, strict=True)
            )
        )
    return "\n".join(lines) + "\n"


def lines_report(devices: Sequence[dict[str, Any]], *, named: bool, filtered: bool = False) -> str:
    """``table`` and ``status``.  A device without that table prints one empty line, as
    dmsetup does, unless lines are filtered by ``--target`` (then it prints nothing)."""
    if not devices:
        return NO_DEVICES + "\n"
    out: list[str] = []
    for dev in devices:
        prefix = "" if named else f"{dev['name']}: "
        lines = dev["lines"] or ([] if filtered else [""])
        out.extend(prefix + line for line in lines)
    return "".join(line + "\n" for line in out)


def ls(devices: Sequence[dict[str, Any]], *, by_target: bool = False) -> str:
    if not devices:
        return "" if by_target else NO_DEVICES + "\n"
    fmt = "{name}\t({major}, {minor})" if by_target else "{name}\t({major}:{minor})"
    return "".join(fmt.format(**d) + "\n" for d in devices)


def deps(devices: Sequence[dict[str, Any]], *, named: bool, style: str = "devno") -> str:
    """``N dependencies\t: (maj, min)...``; ``-o devname`` names block devices instead."""
    if not devices:
        return NO_DEVICES + "\n"
    out = []
    for dev in devices:
        parts = " ".join(f"({_dep_name(d, style)})" for d in dev["deps"])
        prefix = "" if named else f"{dev['name']}: "
        out.append(f"{prefix}{len(dev['deps'])} dependencies\t:{' ' + parts if parts else ''}")
    return "".join(line + "\n" for line in out)


def _dep_name(dep: dict[str, Any], style: str) -> str:
    if dep["devno"] is None:
        return str(dep["name"])  # a file has no device number: its path
    if style == "devno":
        return f"{dep['devno'][0]}, {dep['devno'][1]}"
    return str(dep.get("devname") or dep["name"])


def targets(items: Sequence[dict[str, Any]]) -> str:
    return "".join(
        f"{t['name']:<16} v{t['version'][0]}.{t['version'][1]}.{t['version'][2]}\n" for t in items
    )


def version(v: dict[str, str]) -> str:
    return f"Library version:   {v['library']}\nDriver version:    {v['driver']}\n"
