"""Reader for the kernel golden files (tests/golden/kernel/NN-name.txt); format in README.md.

    from golden import load_case, all_cases      # e.g. via sys.path or importlib
    load_case(path) -> [{"cmd": str, "rc": int, "stdout": str, "stderr": str, "dmesg": str}, ...]

`python3 golden.py` parses every case file and prints a summary (a self-check of the format).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_RC = re.compile(r"--- rc: (\d+)\n")
_SECTIONS = ("stdout", "stderr", "dmesg")
_NEXT = {"stdout": "--- stderr", "stderr": "--- dmesg", "dmesg": "--- end\n"}


def _find(text: str, marker: str, pos: int) -> int:
    """Index of `marker` at the start of a line, at or after pos."""
    if text.startswith(marker, pos):
        return pos
    return text.index("\n" + marker, pos) + 1


def parse(text: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    pos = 0
    while pos < len(text):
        if not text.startswith("$ ", pos):
            raise ValueError(f"expected '$ ' at offset {pos}")
        nl = text.index("\n", pos)
        rec: dict[str, Any] = {"cmd": text[pos + 2 : nl]}
        m = _RC.match(text, nl + 1)
        if not m:
            raise ValueError(f"expected '--- rc:' after {rec['cmd']!r}")
        rec["rc"] = int(m.group(1))
        pos = m.end()
        for name in _SECTIONS:
            plain, noeol = f"--- {name}:\n", f"--- {name} (no newline at end):\n"
            if text.startswith(plain, pos):
                pos += len(plain)
                strip = False
            elif text.startswith(noeol, pos):
                pos += len(noeol)
                strip = True
            else:
                raise ValueError(f"expected {name} section for {rec['cmd']!r}")
            end = _find(text, _NEXT[name], pos)
            body = text[pos:end]
            rec[name] = body[:-1] if strip else body
            pos = end
        pos += len("--- end\n")
        records.append(rec)
    return records


def load_case(path: str | Path) -> list[dict[str, Any]]:
    return parse(Path(path).read_text())


def all_cases() -> dict[str, list[dict[str, Any]]]:
    return {p.stem: load_case(p) for p in sorted(HERE.glob("[0-9][0-9]-*.txt"))}


if __name__ == "__main__":
    total = 0
    for name, recs in all_cases().items():
        total += len(recs)
        print(f"{name}: {len(recs)} commands, {sum(r['rc'] != 0 for r in recs)} failing")
    print(f"{total} commands")
    sys.exit(0 if total else 1)
