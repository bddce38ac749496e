"""The table directory: the source of truth for what a mount brings up.  EDGE.

Every ``NAME.table`` is a device.  The file holds dmsetup table lines; a first line
``# dmfuse: readonly uuid=UUID cache=none`` (every part optional) carries what ``create`` flags
say, and ``cache=none|writeback`` overrides the mount's backing cache policy for this device.
Relative paths resolve against the directory.  Devices changed through the CLI are written back
atomically (temporary file, fsync, rename, fsync of the directory), mode 0600 since a crypt
table holds its key.  A table naming another device as ``/dev/mapper/NAME`` is brought up after
that device; a cycle is refused.

Only regular files (or symlinks to them) of at most :data:`MAX_MESSAGE` bytes of UTF-8 are
read: a FIFO would block the mount, ``/dev/zero`` would never end.  Every refusal names the
file, and the line where there is one (line numbers are the file's own: comments count).  Any
valid device name round-trips, a leading dot included (``.x`` is saved as ``.x.table``); the
temporary files of a save end in ``.tmp`` and are never read.

While mounted the daemon holds an exclusive ``flock`` on the directory (:meth:`TableDir.lock`):
a second mount of the same directory would bring up the same devices over the same files.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence

import attrs

from dmfuse.backends.claim import lock_or_busy
from dmfuse.control.protocol import MAX_MESSAGE, too_large
from dmfuse.errors import TableError

SUFFIX = ".table"
_HEADER = "# dmfuse:"
_MAPPED_REF = re.compile(r"/dev/mapper/([^\s/]+)")


@attrs.frozen
class TableFile:
    name: str
    text: str  # empty: a device without a table (created with --notable)
    readonly: bool
    uuid: str
    cache: str | None = None  # None: the mount's policy


def parse_file(name: str, content: str) -> TableFile:
    readonly = False
    uuid = ""
    cache = None
    for line in content.splitlines():
        if line.startswith(_HEADER):
            for word in line[len(_HEADER) :].split():
                if word == "readonly":
                    readonly = True
                elif word.startswith("uuid="):
                    uuid = word[len("uuid=") :]
                elif word.startswith("cache="):
                    cache = word[len("cache=") :]  # checked when the device is created
    # Comments become blank lines rather than going away, so errors count the file's lines.
    body = ["" if ln.lstrip().startswith("#") else ln for ln in content.splitlines()]
    return TableFile(name, "\n".join(body).rstrip(), readonly, uuid, cache)


def render_file(
    uuid: str, readonly: bool, lines: Sequence[str] | None, cache: str | None = None
) -> str:
    words = ["readonly" if readonly else "", f"uuid={uuid}" if uuid else ""]
    flags = " ".join(filter(None, [*words, f"cache={cache}" if cache else ""]))
    header = f"{_HEADER} {flags}\n" if flags else ""
    return header + "".join(ln.rstrip() + "\n" for ln in lines or [])


def bring_up_order(files: Sequence[TableFile], mountpoint: str, base: str = "") -> list[TableFile]:
    """Order so that stacked devices come after what they sit on; refuse cycles.  A device is
    named as ``/dev/mapper/NAME``, ``MOUNTPOINT/NAME`` or a path relative to ``base`` (the
    table directory) that leads there, like ``../mnt/NAME``."""
    by_name = {f.name: f for f in files}
    mount_ref = (
        re.compile(re.escape(mountpoint.rstrip("/")) + r"/([^\s/]+)") if mountpoint else None
    )

    def deps(f: TableFile) -> set[str]:
        found = set(_MAPPED_REF.findall(f.text))
        if mount_ref is not None:
            found |= set(mount_ref.findall(f.text))
            if base:
                for word in f.text.split():
                    if not word.startswith("/"):
                        full = os.path.normpath(os.path.join(base, word))
                        found |= set(mount_ref.findall(full))
        return {d for d in found if d in by_name}

    order: list[TableFile] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(f: TableFile, path: list[str]) -> None:
        if state.get(f.name) == 2:
            return
        if state.get(f.name) == 1:
            cycle = " -> ".join([*path[path.index(f.name) :], f.name])
            raise TableError(f"stacking cycle between tables: {cycle}")
        state[f.name] = 1
        for dep in sorted(deps(f)):
            visit(by_name[dep], [*path, f.name])
        state[f.name] = 2
        order.append(f)

    for f in sorted(files, key=lambda f: f.name):
        visit(f, [])
    return order


class TableDir:
    """Reads and atomically rewrites ``NAME.table`` files."""

    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path)

    def read_all(self) -> list[TableFile]:
        if not os.path.isdir(self.path):
            raise TableError(f"table directory {self.path} does not exist")
        out = []
        for entry in sorted(os.listdir(self.path)):
            if entry.endswith(SUFFIX):
                content = _read_table_file(os.path.join(self.path, entry), entry)
                out.append(parse_file(entry[: -len(SUFFIX)], content))
        return out

    def lock(self) -> int:
        """Take the directory for this process (an fd to keep open while mounted)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise TableError(f"table directory {self.path}: {exc.strerror}", exc.errno) from None
        lock_or_busy(fd, f"table directory {self.path}")
        return fd

    def save(
        self,
        name: str,
        uuid: str,
        readonly: bool,
        lines: Sequence[str] | None,
        cache: str | None = None,
    ) -> None:
        final = os.path.join(self.path, name + SUFFIX)
        tmp = os.path.join(self.path, f".{name}{SUFFIX}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, render_file(uuid, readonly, lines, cache).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        self._sync_dir()

    def delete(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.path, name + SUFFIX))
        except FileNotFoundError:
            return
        self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_table_file(path: str, entry: str) -> str:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise TableError(f"{entry}: not a regular file")
        if st.st_size > MAX_MESSAGE:
            raise TableError(f"{entry}: {too_large(st.st_size)}")
        # O_NONBLOCK: should it have become a FIFO since the stat, the open must not wait.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise TableError(f"{entry}: {exc.strerror}", exc.errno) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TableError(f"{entry}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_MESSAGE + 1)
    except OSError as exc:
        raise TableError(f"{entry}: {exc.strerror}", exc.errno) from None
    finally:
        os.close(fd)
    if len(data) > MAX_MESSAGE:
        raise TableError(f"{entry}: {too_large()}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise TableError(
            f"{entry}: line {line}: byte 0x{data[exc.start]:02x} at column {column} is not UTF-8"
        ) from None
