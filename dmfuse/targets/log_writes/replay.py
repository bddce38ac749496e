"""``dmfuse replay-log``: replay a dm-log-writes log onto a device, modelled on xfstests'
``src/log-writes/replay-log``.  Needs no running daemon.  EDGE (file I/O and subprocesses).

    dmfuse replay-log --log LOG [--replay DEV] [--limit N] [--start-entry N | --start-mark M]
                      [--end-mark M] [--next-flush] [--next-fua] [--find] [--num-entries]
                      [--no-discard] [--fsck CMD --check fua|flush|N] [-v]

* ``--find``: print ``ENTRY@LOGSECTOR`` of the first entry that stops the walk (``--end-mark``,
  ``--next-flush``, ``--next-fua`` or ``--limit``), where ENTRY is its 0-based number and
  LOGSECTOR the log position just after it; exit 1 with "Couldn't find starting point" if none.
* ``--replay DEV``: apply entries to DEV in log order (a write writes its data at
  ``sector * sectorsize``; a discard makes its range read zeros: punch-hole on a file,
  BLKZEROOUT on a block device, zero buffers otherwise; ``--no-discard`` skips discards), from
  ``--start-entry``/just after ``--start-mark``, up to and including the entry that stops the
  walk (``--limit N`` replays N entries).  DEV is fsynced at the end.
* ``--fsck CMD --check flush|fua|N``: after each FLUSH (or FUA) entry, or every N entries,
  fsync DEV and run CMD with ``sh -c``; a non-zero exit stops the replay with
  "Fsck errored out on entry E" and exit status 1.
* ``--num-entries``: print the number of entries in the log.
* ``-v``: print each replayed entry; ``-vv`` also skipped ones.

Differences from xfstests: ``--start-sector``/``--end-sector`` are not implemented; a discard
on a block device zeroes (BLKZEROOUT) instead of BLKDISCARD, so a replay is deterministic.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import stat
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence

import attrs

from dmfuse.targets.log_writes import log_format as fmt

BLKZEROOUT = 0x127F
_FALLOC_PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_ZEROS = bytes(1 << 20)


class ReplayError(Exception):
    """Something that ends the command with a one-line message and exit status 1."""


@attrs.frozen
class Record:
    """One entry as found in the log: its number, where its header is, the header."""

    index: int
    pos: int  # log sector of the header
    entry: fmt.Entry

    @property
    def next_pos(self) -> int:
        return self.pos + self.entry.log_sectors()


class LogReader:
    """Walks the entries of a log file or device (``nr_entries`` from the super block)."""

    def __init__(self, path: str) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise ReplayError(f"cannot open log {path}: {exc.strerror}") from None
        try:
            self.super = fmt.decode_super(os.pread(self.fd, 512, 0))
        except fmt.FormatError as exc:
            os.close(self.fd)
            raise ReplayError(f"{path}: not a log-writes log: {exc}") from None
        self.sectorsize = self.super.sectorsize

    def close(self) -> None:
        os.close(self.fd)

    def records(self) -> Iterator[Record]:
        pos = 1
        for index in range(self.super.nr_entries):
            raw = os.pread(self.fd, self.sectorsize, pos * self.sectorsize)
            if len(raw) < self.sectorsize:
                raise ReplayError(f"log ends inside entry {index} (log sector {pos})")
            record = Record(index=index, pos=pos, entry=fmt.decode_entry(raw))
            yield record
            pos = record.next_pos

    def data(self, record: Record) -> bytes:
        size = record.entry.data_sectors() * self.sectorsize
        data = os.pread(self.fd, size, (record.pos + 1) * self.sectorsize)
        if len(data) != size:
            raise ReplayError(f"log ends inside the data of entry {record.index}")
        return data


class Replayer:
    """Applies entries to the replay device."""

    def __init__(self, path: str, sectorsize: int) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise ReplayError(f"cannot open replay device {path}: {exc.strerror}") from None
        self.sectorsize = sectorsize
        self.is_blk = stat.S_ISBLK(os.fstat(self.fd).st_mode)
        self._punch_ok = not self.is_blk

    def close(self) -> None:
        os.close(self.fd)

    def write(self, sector: int, data: bytes) -> None:
        self._pwrite_all(sector * self.sectorsize, data)

    def _pwrite_all(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done

    def zero(self, sector: int, nr_sectors: int) -> None:
        offset, length = sector * self.sectorsize, nr_sectors * self.sectorsize
        if self.is_blk:
            try:
                fcntl.ioctl(self.fd, BLKZEROOUT, struct.pack("QQ", offset, length))
                return
            except OSError:
                pass  # fall back to writing zeros
        elif self._punch_ok:
            if _punch_hole(self.fd, offset, length):
                return
            self._punch_ok = False
        end = offset + length
        while offset < end:
            n = min(len(_ZEROS), end - offset)
            self._pwrite_all(offset, _ZEROS[:n])
            offset += n

    def sync(self) -> None:
        os.fsync(self.fd)


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """fallocate(PUNCH_HOLE|KEEP_SIZE); False if the file system cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, _FALLOC_PUNCH, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err))


def should_stop(entry: fmt.Entry, stop_flags: int, mark: bytes | None) -> bool:
    """replay-log's test: a flag in ``stop_flags``; for MARK also the same text."""
    if not entry.flags & stop_flags:
        return False
    if not stop_flags & fmt.MARK:
        return True
    return bool(entry.flags & fmt.MARK) and entry.mark == mark


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dmfuse replay-log", description="replay a dm-log-writes log onto a device"
    )
    p.add_argument("--log", required=True, help="the log device or file")
    p.add_argument("--replay", metavar="DEV", help="replay onto this device or file")
    p.add_argument("--limit", type=_count, default=0, help="number of entries to replay")
    p.add_argument("--next-flush", action="store_true", help="replay to/find the next flush")
    p.add_argument("--next-fua", action="store_true", help="replay to/find the next fua")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--start-entry", type=_count, default=0, help="start at entry N")
    start.add_argument("--start-mark", help="start just after this mark")
    p.add_argument("--end-mark", help="replay to/find this mark")
    p.add_argument("--find", action="store_true", help="print ENTRY@LOGSECTOR, replay nothing")
    p.add_argument("--num-entries", action="store_true", help="print the number of entries")
    p.add_argument("--no-discard", action="store_true", help="skip discard entries")
    p.add_argument("--fsck", help="command run at check points (needs --check)")
    p.add_argument("--check", type=_check_mode, help="flush | fua | N (needs --fsck)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not an unsigned number: {text!r}")
    return int(text)


def _check_mode(text: str) -> str | int:
    if text in ("flush", "fua"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"must be flush, fua or a positive number: {text!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.fsck is None) != (args.check is None):
        parser.error("--fsck and --check go together")
    if args.fsck is not None and args.replay is None:
        parser.error("--fsck needs --replay")
    try:
        return _run(args)
    except ReplayError as exc:
        print(f"dmfuse replay-log: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dmfuse replay-log: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    log = LogReader(args.log)
    try:
        if args.num_entries:
            print(log.super.nr_entries)
            return 0
        return _walk(args, log)
    finally:
        log.close()


def _walk(args: argparse.Namespace, log: LogReader) -> int:
    stop_flags = 0
    end_mark = None
    if args.end_mark is not None:
        stop_flags |= fmt.MARK
        end_mark = os.fsencode(args.end_mark)
    if args.next_flush:
        stop_flags |= fmt.FLUSH
    if args.next_fua:
        stop_flags |= fmt.FUA
    records = log.records()
    _skip_to_start(args, records)
    if args.find:
        for count, rec in enumerate(records, 1):
            if (args.limit and count == args.limit) or should_stop(rec.entry, stop_flags, end_mark):
                print(f"{rec.index}@{rec.next_pos}")
                return 0
        print("Couldn't find starting point", file=sys.stderr)
        return 1
    if args.replay is None:
        raise ReplayError("nothing to do: give --replay DEV, --find or --num-entries")
    dev = Replayer(args.replay, log.sectorsize)
    try:
        for count, rec in enumerate(records, 1):
            _apply(args, log, dev, rec)
            if args.fsck is not None and _is_check_point(args.check, rec.entry, count):
                dev.sync()
                if subprocess.run(["sh", "-c", args.fsck], check=False).returncode != 0:
                    print(f"Fsck errored out on entry {rec.index}", file=sys.stderr)
                    return 1
            if (args.limit and count == args.limit) or should_stop(rec.entry, stop_flags, end_mark):
                break
        dev.sync()
    finally:
        dev.close()
    return 0


def _skip_to_start(args: argparse.Namespace, records: Iterator[Record]) -> None:
    if args.start_mark is not None:
        want = os.fsencode(args.start_mark)
        for rec in records:
            if rec.entry.flags & fmt.MARK and rec.entry.mark == want:
                return
        raise ReplayError(f"Couldn't find starting mark {args.start_mark!r}")
    for _ in range(args.start_entry):
        if next(records, None) is None:
            raise ReplayError(f"the log has fewer than {args.start_entry} entries")


def _is_check_point(check: str | int, entry: fmt.Entry, count: int) -> bool:
    if check == "flush":
        return bool(entry.flags & fmt.FLUSH)
    if check == "fua":
        return bool(entry.flags & fmt.FUA)
    assert isinstance(check, int)
    return count % check == 0


def _apply(args: argparse.Namespace, log: LogReader, dev: Replayer, rec: Record) -> None:
    entry = rec.entry
    skip = bool(entry.flags & fmt.DISCARD and args.no_discard)
    if args.verbose > 1 or (args.verbose and not skip):
        what = "skipping" if skip else "replaying"
        print(
            f"{what} {rec.index}@{rec.pos}: sector {entry.sector}, size "
            f"{entry.nr_sectors * log.sectorsize}, flags {entry.flags}"
            f"({fmt.flag_names(entry.flags)})"
            + (f", mark {entry.mark.decode(errors='replace')}" if entry.flags & fmt.MARK else "")
        )
    if skip or not entry.nr_sectors:
        return
    if entry.flags & fmt.DISCARD:
        dev.zero(entry.sector, entry.nr_sectors)
    else:
        dev.write(entry.sector, log.data(rec))
