"""The on-disk format of dm-log-writes logs (the kernel's, read by xfstests' replay-log).  PURE.

All fields are little-endian; the unit is the *log sector* of ``sectorsize`` bytes (the logical
block size of the logged device; 512 here).

* log sector 0, the super block: ``u64 magic = 0x6a736677736872``, ``u64 version = 1``,
  ``u64 nr_entries``, ``u32 sectorsize``, zero padding.  Readers trust ``nr_entries`` only.
* entries from log sector 1, back to back.  Each is one log sector holding
  ``u64 sector, u64 nr_sectors, u64 flags, u64 data_len`` (sector/nr_sectors in sectorsize
  units) and, for a MARK, the mark text (``data_len`` bytes, then zeros); then ``nr_sectors``
  log sectors of written data, except for DISCARD entries (no data) and FLUSH/MARK entries
  (``nr_sectors`` 0).

This module only turns bytes into records and back; the target and the replay tool do the I/O.
"""

from __future__ import annotations

import struct

import attrs

MAGIC = 0x6A736677736872
VERSION = 1
SUPER_SECTOR = 0

FLUSH = 1 << 0
FUA = 1 << 1
DISCARD = 1 << 2
MARK = 1 << 3
METADATA = 1 << 4

_FLAG_NAMES = (
    (FLUSH, "FLUSH"),
    (FUA, "FUA"),
    (DISCARD, "DISCARD"),
    (MARK, "MARK"),
    (METADATA, "METADATA"),
)

_SUPER = struct.Struct("<QQQI")
_ENTRY = struct.Struct("<QQQQ")
ENTRY_HEADER_SIZE = _ENTRY.size  # 32: what the kernel's sizeof(struct log_write_entry) is


class FormatError(ValueError):
    """Bytes that are not a dm-log-writes log (bad magic/version/sector size, truncated)."""


@attrs.frozen
class Super:
    nr_entries: int
    sectorsize: int
    magic: int = MAGIC
    version: int = VERSION


@attrs.frozen
class Entry:
    """One log entry.  ``mark`` is the decoded text of a MARK entry (else empty)."""

    sector: int
    nr_sectors: int
    flags: int
    data_len: int = 0
    mark: bytes = b""

    def data_sectors(self) -> int:
        """Log sectors of data after the header sector (discards carry none)."""
        return 0 if self.flags & DISCARD else self.nr_sectors

    def log_sectors(self) -> int:
        """Log sectors the entry occupies, header included."""
        return 1 + self.data_sectors()


def encode_super(nr_entries: int, sectorsize: int) -> bytes:
    return _SUPER.pack(MAGIC, VERSION, nr_entries, sectorsize).ljust(sectorsize, b"\0")


def decode_super(raw: bytes) -> Super:
    if len(raw) < _SUPER.size:
        raise FormatError("log too short for a super block")
    magic, version, nr_entries, sectorsize = _SUPER.unpack_from(raw)
    if magic != MAGIC:
        raise FormatError(f"magic doesn't match: {magic:#x} (want {MAGIC:#x})")
    if version != VERSION:
        raise FormatError(f"version mismatch: {version} (want {VERSION})")
    if sectorsize < 512 or sectorsize & (sectorsize - 1):
        raise FormatError(f"invalid sector size {sectorsize}")
    return Super(nr_entries=nr_entries, sectorsize=sectorsize, magic=magic, version=version)


def encode_entry(entry: Entry, sectorsize: int) -> bytes:
    """The entry's header sector (the data sectors follow it unchanged)."""
    if len(entry.mark) > sectorsize - ENTRY_HEADER_SIZE:
        raise ValueError("mark text longer than the entry sector")
    head = _ENTRY.pack(entry.sector, entry.nr_sectors, entry.flags, entry.data_len)
    return (head + entry.mark).ljust(sectorsize, b"\0")


def decode_entry(raw: bytes) -> Entry:
    """Decode one header sector.  The mark text is only taken for MARK entries."""
    if len(raw) < ENTRY_HEADER_SIZE:
        raise FormatError("truncated entry header")
    sector, nr_sectors, flags, data_len = _ENTRY.unpack_from(raw)
    mark = b""
    if flags & MARK:
        # replay-log compares data_len + 1 bytes with strncmp: the text ends at the first NUL
        text = raw[ENTRY_HEADER_SIZE : ENTRY_HEADER_SIZE + min(data_len, len(raw))]
        mark = text.split(b"\0", 1)[0]
    return Entry(sector=sector, nr_sectors=nr_sectors, flags=flags, data_len=data_len, mark=mark)


def mark_entry(text: bytes, sectorsize: int) -> Entry:
    """A MARK entry as the kernel queues it: text cut to ``sectorsize - 32 - 1`` bytes."""
    text = text.split(b"\0", 1)[0][: sectorsize - ENTRY_HEADER_SIZE - 1]
    return Entry(sector=0, nr_sectors=0, flags=MARK, data_len=len(text), mark=text)


def flag_names(flags: int) -> str:
    """``FLUSH|FUA`` style, as replay-log -v prints; unknown bits in hex, ``NONE`` for 0."""
    names = [name for bit, name in _FLAG_NAMES if flags & bit]
    rest = flags & ~sum(bit for bit, _ in _FLAG_NAMES)
    if rest:
        names.append(f"{rest:#x}")
    return "|".join(names) or "NONE"
