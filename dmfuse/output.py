"""dmsetup's output formats, from the plain data the daemon returns.  PURE.

Layouts follow dm-spec §3: ``info`` pads labels to 19 columns and ends each device with a blank
line; ``table``/``status`` lines keep dm's trailing space for empty target strings and are
prefixed ``NAME: `` only when no device was named.
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
        if info["live"]:
            out.append(_label("Read Ahead", info["read_ahead"]))
        out.append(_label("Tables present", tables_present(info)))
        out.append(_label("Open count", info["open_count"]))
        out.append(_label("Event number", info["event_nr"]))
        out.append(_label("Major, minor", f"{info['major']}, {info['minor']}"))
        if info["targets"] is not None:
            out.append(_label("Number of targets", info["targets"]))
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


def info_columns(infos: Sequence[dict[str, Any]], *, headings: bool = True) -> str:
    """``dmsetup info -c``: Name Maj Min Stat Open Targ Event UUID, aligned like the report."""
    if not infos:
        return NO_DEVICES + "\n"
    head = ["Name", "Maj", "Min", "Stat", "Open", "Targ", "Event", "UUID"]
    numeric = [False, True, True, False, True, True, True, False]
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
    table = ([head] if headings else []) + rows
    widths = [max(len(r[c]) for r in table) for c in range(len(head))]
    lines = []
    for row in table:
        cells = [
            row[c].rjust(widths[c]) if numeric[c] else row[c].ljust(widths[c])
            for c in range(len(head))
        ]
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def lines_report(devices: Sequence[dict[str, Any]], *, named: bool) -> str:
    """``table`` and ``status``."""
    if not devices:
        return NO_DEVICES + "\n"
    out: list[str] = []
    for dev in devices:
        prefix = "" if named else f"{dev['name']}: "
        out.extend(prefix + line for line in dev["lines"])
    return "".join(line + "\n" for line in out)


def ls(devices: Sequence[dict[str, Any]], *, by_target: bool = False) -> str:
    if not devices:
        return NO_DEVICES + "\n"
    fmt = "{name}\t({major}, {minor})" if by_target else "{name}\t({major}:{minor})"
    return "".join(fmt.format(**d) + "\n" for d in devices)


def deps(devices: Sequence[dict[str, Any]], *, named: bool) -> str:
    if not devices:
        return NO_DEVICES + "\n"
    out: list[str] = []
    for dev in devices:
        parts = " ".join(
            f"({d['devno'][0]}, {d['devno'][1]})" if d["devno"] else f"({d['name']})"
            for d in dev["deps"]
        )
        prefix = "" if named else f"{dev['name']}: "
        out.append(f"{prefix}{len(dev['deps'])} dependencies\t: {parts}")
    return "".join(line + "\n" for line in out)


def targets(items: Sequence[dict[str, Any]]) -> str:
    return "".join(
        f"{t['name']:<16} v{t['version'][0]}.{t['version'][1]}.{t['version'][2]}\n" for t in items
    )


def version(v: dict[str, str]) -> str:
    return f"Library version:   {v['library']}\nDriver version:    {v['driver']}\n"
