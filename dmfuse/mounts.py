"""What is mounted where, read from ``/proc/self/mountinfo`` (never by a stat into a mount).

A dmfuse mount shows as fstype ``fuse.dmfuse``; a mount whose daemon died answers every
``stat`` with ENOTCONN until it is unmounted.  The daemon also learns from here which paths
reach its own mount (the mountpoint and any bind mount of it or of one of its files), so a
table path landing there is resolved to the in-process device without a system call into the
mount, which would wait for the very thread making it.
"""

from __future__ import annotations

import errno
import os
import re

import attrs

FSTYPE = "fuse.dmfuse"
_ESCAPE = re.compile(r"\\([0-7]{3})")


@attrs.frozen
class MountEntry:
    mount_point: str
    root: str  # the path inside the mounted filesystem that appears at mount_point
    devno: tuple[int, int]
    fstype: str
    super_options: str

    @property
    def owner_uid(self) -> int | None:
        """The uid a FUSE mount belongs to (its ``user_id=`` option)."""
        for option in self.super_options.split(","):
            if option.startswith("user_id="):
                return int(option[len("user_id=") :])
        return None


def _unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    out = []
    for line in text.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        major, minor = fields[2].split(":")
        out.append(
            MountEntry(
                mount_point=_unescape(fields[4]),
                root=_unescape(fields[3]),
                devno=(int(major), int(minor)),
                fstype=fields[sep + 1],
                super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
            )
        )
    return out


def mounts() -> list[MountEntry]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        return parse_mountinfo(fh.read())


def mount_at(path: str, table: list[MountEntry] | None = None) -> MountEntry | None:
    """The topmost mount at ``path`` (an absolute, resolved path), if one is there."""
    found = [m for m in (mounts() if table is None else table) if m.mount_point == path]
    return found[-1] if found else None


def is_dead(path: str) -> bool:
    """Whether ``path`` is a FUSE mount whose daemon is gone (ENOTCONN)."""
    try:
        os.lstat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def reaching(devno: tuple[int, int], table: list[MountEntry] | None = None) -> dict[str, str]:
    """Every mount point showing the filesystem ``devno``: mount point -> its root there."""
    return {
        m.mount_point: m.root for m in (mounts() if table is None else table) if m.devno == devno
    }
