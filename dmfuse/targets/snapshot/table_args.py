"""The snapshot table's arguments: feature group, store type and chunk size, the block sizes the
chunk size must be a multiple of, and opening (and claiming) the exception store."""

from __future__ import annotations

import fcntl
import logging
import re
import struct
from collections.abc import Sequence

from dmfuse.backends.base import Backend
from dmfuse.backends.claim import claim_exclusive
from dmfuse.backends.file import FileBackend
from dmfuse.errors import TableError
from dmfuse.targets.snapshot.store import (
    ExceptionStore,
    PersistentStore,
    TransientStore,
    check_chunk_size,
)

log = logging.getLogger(__name__)

SECTOR = 512
BLKSSZGET = 0x1268
_KSTRTOUINT = re.compile(r"\+?[0-9]+\n?\Z")


def logical_block_sectors(backend: Backend) -> int:
    """A block device's logical block size in sectors; files count as 512-byte devices."""
    if isinstance(backend, FileBackend) and backend.is_block:
        raw = fcntl.ioctl(backend.fd, BLKSSZGET, b"\0" * 4)
        return max(1, int(struct.unpack("i", raw)[0]) // SECTOR)
    return 1


def parse_features(words: Sequence[str]) -> tuple[bool, bool]:
    """``parse_snapshot_features``: a group of at most 2; words after the group are ignored."""
    if not words:
        return False, False
    count_text = words[0]
    if not re.fullmatch(r"[0-9]+", count_text) or int(count_text) > 2:
        raise TableError("Invalid number of feature arguments")
    count = int(count_text)
    if len(words) - 1 < count:
        raise TableError("Invalid number of feature arguments")
    zeroes = passdown = False
    for word in words[1 : 1 + count]:
        lowered = word.lower()
        if lowered == "discard_zeroes_cow":
            zeroes = True
        elif lowered == "discard_passdown_origin":
            passdown = True
        else:
            raise TableError("Unrecognised feature requested")
    if passdown and not zeroes:
        raise TableError("discard_passdown_origin feature depends on discard_zeroes_cow")
    return zeroes, passdown


def parse_store(type_word: str, chunk_word: str, origin: Backend, cow: Backend) -> tuple[str, int]:
    """``dm_exception_store_create``: every failure is "Couldn't create exception store"."""
    letter = type_word[0].upper()
    options = type_word[1:]
    if letter == "P":
        if options and options[0].upper() != "O":
            log.error("Unsupported persistent store option: %s", options)
            raise TableError("Couldn't create exception store")
        kind = "PO" if options else "P"
    elif letter == "N":
        kind = "N"
    else:
        log.error("Exception store type is not P or N")
        raise TableError("Couldn't create exception store")
    if not _KSTRTOUINT.match(chunk_word) or int(chunk_word.strip()) > 2**32 - 1:
        log.error("Invalid chunk size")
        raise TableError("Couldn't create exception store")
    chunk_sectors = int(chunk_word.strip())
    if chunk_sectors:
        try:
            check_chunk_size(chunk_sectors, min_chunk(origin, cow))
        except TableError as exc:
            log.warning("%s", exc)
            raise TableError("Couldn't create exception store") from None
    elif kind == "N":
        raise TableError("Chunk size not set")
    return kind, chunk_sectors


def min_chunk(origin: Backend, cow: Backend) -> int:
    return max(logical_block_sectors(origin), logical_block_sectors(cow))


async def open_store(
    kind: str, cow: Backend, chunk_sectors: int, origin: Backend
) -> ExceptionStore:
    # Another daemon using the same COW would allocate the same chunks (a transient store too).
    claim_exclusive(cow, "COW device")
    if kind == "N":
        return TransientStore(cow, chunk_sectors)
    return await PersistentStore.open(cow, chunk_sectors, min_chunk(origin, cow))
