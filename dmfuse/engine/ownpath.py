"""Does a host path land in this daemon's own mount?  Answered without entering the mount.

A ``stat`` or ``open`` of a file in the mount, made by the daemon's trio thread, waits for the
trio thread to answer it: the daemon hangs for good.  A table may reach the mount in many ways
(``mnt/x`` relative to the caller, ``../mnt/./x``, a symlink to it or to the mountpoint, a bind
mount of the mount or of one device file), so :func:`own_device_name` resolves the path like
``realpath`` does, one component at a time with ``lstat``/``readlink``, and stops *before*
looking at any path that is one of the mount's mount points.  Inside the mount there are only
device files, so what follows the mount point is read lexically.
"""

from __future__ import annotations

import errno
import os
import stat

from dmfuse import mounts
from dmfuse.errors import TableError

_MAX_SYMLINKS = 40  # the kernel's ELOOP limit


def own_mount_points(mountpoint: str) -> dict[str, str]:
    """Mount point -> the path of the mount shown there, for every place showing our mount.
    ``mountpoint`` itself is always one (before mounting it stands for the mount to come)."""
    table = mounts.mounts()
    ours = mounts.mount_at(mountpoint, table)
    found = {mountpoint: "/"}
    if ours is not None and ours.fstype == mounts.FSTYPE:
        found.update(mounts.reaching(ours.devno, table))
    return found


def own_device_name(path: str, stops: dict[str, str], spec: str) -> str | None:
    """The device of the mount that absolute ``path`` names, or None if it lands elsewhere."""
    pending = [c for c in path.split("/") if c][::-1]  # a stack: next component last
    resolved = "/"
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, part)
        if candidate in stops:
            inside = stops[candidate].strip("/")
            rest = [c for c in reversed(pending) if c != "."]
            if inside:  # a bind mount of one device file
                name = inside
            elif rest[:1] == [".."]:  # out of the mount again, to the mount point's parent
                pending = rest[:0:-1]
                resolved = os.path.dirname(candidate)
                continue
            elif not rest:
                raise TableError(f"Device lookup failed: {spec}: is the mount's directory")
            else:
                name, rest = rest[0], rest[1:]
            if rest:
                raise TableError(f"Device lookup failed: {spec}: {os.strerror(errno.ENOTDIR)}")
            return name
        try:
            st = os.lstat(candidate)
        except OSError:
            return None  # opening it reports the error
        if not stat.S_ISLNK(st.st_mode):
            resolved = candidate
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise TableError(f"Device lookup failed: {spec}: {os.strerror(errno.ELOOP)}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = "/"
        pending.extend(c for c in reversed(target.split("/")) if c)
    return None
