"""The verity target (its man page: the package docstring)."""

from __future__ import annotations

import errno
import logging
import mmap
from collections.abc import Sequence

from dmfuse.backends.base import Backend
from dmfuse.errors import DmError, IOFailure, TableError
from dmfuse.openssl.offload import Overlap
from dmfuse.target import DeviceOpener, Limits, Target, check_area, register
from dmfuse.targets.verity import hashing
from dmfuse.targets.verity.hash_blocks import HashBlockCache
from dmfuse.targets.verity.table_args import (
    ERROR_MODE_NAMES,
    INT_MAX,
    MODE_EIO,
    MODE_LOGGING,
    MODE_NAMES,
    MODE_PANIC,
    Options,
    feature_words,
    open_device,
    parse_block_size,
    parse_hex,
    parse_uint,
)
from dmfuse.targets.verity.tree import Geometry, GeometryError

log = logging.getLogger(__name__)

PAGE_SIZE = mmap.PAGESIZE
CACHE_BYTES = 16 << 20  # hash blocks kept (verified or not), like dm-bufio's cache
MAX_CORRUPTED_ERRS = 100  # DM_VERITY_MAX_CORRUPTED_ERRS: log lines per table


class Corrupted(IOFailure):
    """A block did not match its digest (the kernel's ``had_mismatch``).

    ``source`` is the target that found it: to a verity stacked above, a lower verity's
    mismatch is an ordinary I/O error (restart_on_error applies there)."""

    def __init__(self, message: str, source: Verity) -> None:
        super().__init__(message)
        self.source = source


@register
class Verity(Target):
    name = "verity"
    version = (1, 10, 0)
    singleton = True
    immutable = True

    def __init__(
        self,
        length: int,
        data: Backend,
        hash_dev: Backend,
        geometry: Geometry,
        algorithm: str,
        ctor: hashing.HashCtor,
        root: bytes,
        salt: bytes,
        options: Options,
    ) -> None:
        super().__init__(length)
        g = geometry
        self.data = data
        self.hash_dev = hash_dev
        self.geometry = g
        self.algorithm = algorithm
        self.root = root
        self.salt = salt
        self.options = options
        self.limits = Limits(
            block_size=g.data_block_size, flush_bios=0, discard_bios=0, write_zeroes=False
        )
        self._digest = hashing.salted(ctor, g.version, salt)
        self._hasher = hashing.block_hasher(algorithm, g.version, salt)  # None: hashlib only
        self._digests = hashing.salted_blocks(ctor, g.version, salt, self._hasher)
        self._overlap = Overlap()  # where big reads are hashed (see _read_digests)
        self._block_bits = g.data_block_size.bit_length() - 1
        self._zero_digest = (
            self._digest(bytes(g.data_block_size)) if options.ignore_zero_blocks else None
        )
        self._zeros = bytes(g.data_block_size)
        # check_at_most_once: one bit per data block (the kernel's validated_blocks)
        self._validated = bytearray((g.data_blocks + 7) // 8) if options.at_most_once else None
        self._cache = HashBlockCache(
            hash_dev, g.hash_block_size, max(16, CACHE_BYTES // g.hash_block_size)
        )
        self.hash_failed = False
        self.corrupted_errs = 0
        self.tripped: str | None = None

    # -- construction ------------------------------------------------------------------------
    @classmethod
    async def construct(cls, opener: DeviceOpener, length: int, args: Sequence[str]) -> Verity:
        if not opener.readonly:
            raise TableError("Device must be readonly")
        if len(args) < 10:
            raise TableError("Not enough arguments")
        if len(args) > 10:
            feature_words(args[10:])  # the kernel's first pass: the count is checked first
        version = parse_uint(args[0], 2**32 - 1, "Invalid version")
        if version > 1:
            raise TableError("Invalid version")
        data = await open_device(opener, args[1], "Data device lookup failed")
        hash_dev = await open_device(opener, args[2], "Hash device lookup failed")
        dbs = parse_block_size(args[3], PAGE_SIZE, "Invalid data device block size")
        hbs = parse_block_size(args[4], INT_MAX, "Invalid hash device block size")
        dbits, hbits = dbs.bit_length() - 1, hbs.bit_length() - 1
        data_blocks = parse_uint(args[5], 2**64 - 1, "Invalid data blocks")
        if (data_blocks << (dbits - 9)) >= 2**64:
            raise TableError("Invalid data blocks")
        if length > data_blocks * dbs:
            raise TableError("Data device is too small")
        hash_start = parse_uint(args[6], 2**64 - 1, "Invalid hash start")
        if (hash_start << (hbits - 9)) >= 2**64:
            raise TableError("Invalid hash start")
        algorithm = args[7]
        ctor = hashing.lookup(algorithm)
        if ctor is None:
            raise TableError("Cannot initialize hash function", errno.ENOENT)
        digest_size = hashing.digest_size(ctor)
        if hbs < digest_size * 2:
            raise TableError("Digest size too big")
        root = parse_hex(args[8], "Invalid root digest")
        if root is None or len(root) != digest_size:
            raise TableError("Invalid root digest")
        salt = b""
        if args[9] != "-":
            parsed = parse_hex(args[9], "Invalid salt")
            if not parsed:
                raise TableError("Invalid salt")
            salt = parsed
        options = Options.parse(args[10:], data_blocks)
        try:
            geometry = Geometry.compute(
                version=version,
                data_block_size=dbs,
                hash_block_size=hbs,
                data_blocks=data_blocks,
                hash_start=hash_start,
                digest_size=digest_size,
            )
        except GeometryError as exc:
            raise TableError(str(exc), errno.E2BIG) from None
        if hash_dev.size() // hbs < geometry.hash_blocks:
            raise TableError("Hash device is too small", errno.E2BIG)
        if length % dbs:  # dm core, after the constructor: the logical block size is dbs
            raise TableError(
                f"len={length // 512} not aligned to h/w logical block size {dbs} of {data.display}"
            )
        return cls(length, data, hash_dev, geometry, algorithm, ctor, root, salt, options)

    # -- I/O ---------------------------------------------------------------------------------
    async def read(self, offset: int, buf: memoryview) -> None:
        if self.tripped is not None:
            raise IOFailure(f"verity: {self.data.display}: {self.tripped}")
        try:
            await self.data.read(offset, buf)
            await self._verify(offset >> self._block_bits, len(buf) >> self._block_bits, buf)
        except (OSError, DmError) as exc:
            # restart_on_error / panic_on_error: an I/O error that is not our own mismatch
            mode = self.options.error_mode
            if mode != MODE_EIO and not (isinstance(exc, Corrupted) and exc.source is self):
                self._trip(mode, ERROR_MODE_NAMES[mode], f"I/O error: {exc}")
            raise

    async def _verify(self, first: int, count: int, buf: memoryview) -> None:
        validated = self._validated
        if validated is not None and not (first | count) & 7:
            whole = validated[first >> 3 : (first + count) >> 3]
            if whole.count(0xFF) == len(whole):  # check_at_most_once: all checked before
                return
        expect = self._packed(first, count)
        if expect is not None:  # the steady state of sequential reads
            bad = self._check_packed(await self._read_digests(buf, count), expect)
            for i in bad:
                self._corrupted("data", first + i)  # raises unless ignore_corruption
            return
        wants = await self._wants(first, count, buf)
        if wants.count(None) == count:
            return
        bad = self._check(buf, wants)
        if validated is not None:
            stop = bad[0] if bad and self.options.mode != MODE_LOGGING else count
            for i in range(stop):
                if wants[i] is not None and i not in bad:
                    block = first + i
                    validated[block >> 3] |= 1 << (block & 7)
        for i in bad:
            self._corrupted("data", first + i)  # raises unless ignore_corruption

    def _packed(self, first: int, count: int) -> bytes | None:
        """The expected digests of blocks [first, first + count) back to back, if every
        level-0 hash block they need is cached and verified and no option skips blocks;
        else None (the general path, :meth:`_wants`, then does it block by block)."""
        g = self.geometry
        if not g.levels or self._validated is not None or self._zero_digest is not None:
            return None
        bits, dsz, slot, cache = g.hash_per_block_bits, g.digest_size, g.slot, self._cache
        base, mask = g.level_block[0], (1 << g.hash_per_block_bits) - 1
        pieces: list[bytes] = []
        block, end = first, first + count
        while block < end:
            index = base + (block >> bits)
            hb = cache.get(index)
            if hb is None or not hb.verified:
                return None
            cache.move_to_end(index)
            stop = min(end, ((block >> bits) + 1) << bits)
            at, data = (block & mask) * slot, hb.data
            if slot == dsz:  # digests packed in the hash block (sha256, 4K): one slice
                pieces.append(data[at : at + (stop - block) * dsz])
            else:
                pieces.extend(
                    data[a : a + dsz] for a in range(at, at + (stop - block) * slot, slot)
                )
            block = stop
        return b"".join(pieces)

    async def _read_digests(self, buf: memoryview, count: int) -> bytes:
        """The digests of the first ``count`` blocks of ``buf``, in one OpenSSL call: right
        here on all cores when the read is alone, else on the worker thread while the trio
        thread serves other requests (:mod:`dmfuse.openssl.offload`)."""
        bs = self.geometry.data_block_size
        hasher = self._hasher
        if hasher is not None and await self._overlap.use_worker(count * bs):
            return await self._overlap.wait(hasher.start(buf, bs, 0, count))
        return self._digests(buf, bs, 0, count)

    def _check_packed(self, got: bytes, expect: bytes) -> list[int]:
        """Indexes of the blocks whose digest in ``got`` differs from ``expect``: compared at
        once; only a mismatch looks at them one by one."""
        if got == expect:
            return []
        dsz = self.geometry.digest_size
        return [
            i
            for i in range(len(got) // dsz)
            if got[i * dsz : (i + 1) * dsz] != expect[i * dsz : (i + 1) * dsz]
        ]

    async def _wants(self, first: int, count: int, buf: memoryview) -> list[bytes | None]:
        """The expected digest of each block; None where nothing is to be checked."""
        g = self.geometry
        bs, dsz, slot = g.data_block_size, g.digest_size, g.slot
        bits = g.hash_per_block_bits
        mask = (1 << bits) - 1
        base = g.level_block[0] if g.levels else 0
        validated, zero, cache = self._validated, self._zero_digest, self._cache
        if g.levels and validated is None and zero is None:
            # the common case: one trusted level-0 block covers the whole request
            index = base + (first >> bits)
            hb = cache.get(index)
            if hb is not None and hb.verified and (first + count - 1) >> bits == first >> bits:
                cache.move_to_end(index)
                data, start = hb.data, (first & mask) * slot
                return [data[at : at + dsz] for at in range(start, start + count * slot, slot)]
        wants: list[bytes | None] = []
        hb_index, hb_data = -1, b""
        for i in range(count):
            block = first + i
            slow = False
            if validated is not None and validated[block >> 3] & (1 << (block & 7)):
                wants.append(None)  # check_at_most_once: checked before
                continue
            if not g.levels:
                want = self.root
            else:
                index = base + (block >> bits)
                if index != hb_index:
                    hb = cache.get(index)
                    if hb is not None and hb.verified:  # the fast path: level 0 trusted
                        cache.move_to_end(index)
                        hb_index, hb_data = index, hb.data
                    else:
                        hb_index = -1
                if hb_index == index:
                    at = (block & mask) * slot
                    want = hb_data[at : at + dsz]
                else:
                    want = await self._want(block)  # verify the path up to the root
                    slow = True
            if zero is not None and want == zero:
                buf[i * bs : (i + 1) * bs] = self._zeros  # expected zeros: not checked
                wants.append(None)
            elif slow:
                # checked at once, so log lines come in the kernel's order (metadata, then
                # data, block by block) and the 100-line limit cuts the same ones
                wants.append(None)
                if self._digest(buf[i * bs : (i + 1) * bs]) != want:
                    self._corrupted("data", block)
                elif validated is not None:
                    validated[block >> 3] |= 1 << (block & 7)
            else:
                wants.append(want)
        return wants

    def _check(self, buf: memoryview, wants: list[bytes | None]) -> list[int]:
        """Indexes of the blocks whose digest differs from ``wants`` (None: not checked)."""
        bs, dsz = self.geometry.data_block_size, self.geometry.digest_size
        if None not in wants:  # every block: hashed in one call, as on the packed path
            got = self._digests(buf, bs, 0, len(wants))
            return [i for i, want in enumerate(wants) if got[i * dsz : (i + 1) * dsz] != want]
        digest = self._digest
        return [
            i
            for i, want in enumerate(wants)
            if want is not None and digest(buf[i * bs : (i + 1) * bs]) != want
        ]

    async def _want(self, block: int) -> bytes:
        """The verified digest of data ``block`` (verity_hash_for_block)."""
        g = self.geometry
        if not g.levels:
            return self.root
        index, at = g.locate(block, 0)
        cached = self._cache.get(index)
        if cached is not None and cached.verified:  # the fast path: level 0 already trusted
            self._cache.move_to_end(index)
            return cached.data[at : at + g.digest_size]
        want = self.root
        for level in range(g.levels - 1, -1, -1):
            index, at = g.locate(block, level)
            hb = await self._cache.load(index)
            if not hb.verified:
                if self._digest(hb.data) == want:
                    hb.verified = True
                else:
                    self._corrupted("metadata", index)  # returns only when logging
            want = hb.data[at : at + g.digest_size]
        return want

    def _corrupted(self, kind: str, block: int) -> None:
        """verity_handle_err: record, log (bounded), then fail unless ignore_corruption."""
        self.hash_failed = True
        if self.corrupted_errs < MAX_CORRUPTED_ERRS:
            self.corrupted_errs += 1
            log.error("verity: %s: %s block %d is corrupted", self.data.display, kind, block)
            if self.corrupted_errs == MAX_CORRUPTED_ERRS:
                log.error("verity: %s: reached maximum errors", self.data.display)
        mode = self.options.mode
        if mode == MODE_LOGGING:
            return
        if mode != MODE_EIO:
            self._trip(mode, MODE_NAMES[mode], f"{kind} block {block} is corrupted")
        raise Corrupted(f"verity: {self.data.display}: {kind} block {block} is corrupted", self)

    def _trip(self, mode: str, name: str, reason: str) -> None:
        if self.tripped is not None:
            return
        self.tripped = f"{reason}: {name}: failing all I/O until the table is replaced"
        level = logging.CRITICAL if mode == MODE_PANIC else logging.ERROR
        log.log(level, "verity: %s: %s", self.data.display, self.tripped)
        self.raise_event()

    # -- description -------------------------------------------------------------------------
    def status(self) -> str:
        return "C" if self.hash_failed else "V"

    def table(self, showkeys: bool = False) -> str:
        g = self.geometry
        salt = self.salt.hex() if self.salt else "-"
        line = (
            f"{g.version} {self.data.display} {self.hash_dev.display} {g.data_block_size} "
            f"{g.hash_block_size} {g.data_blocks} {g.hash_start} {self.algorithm} "
            f"{self.root.hex()} {salt}"
        )
        words = self.options.words()
        if words:
            line += f" {len(words)} " + " ".join(words)
        return line

    def devices(self) -> list[Backend]:
        return [self.data, self.hash_dev]

    def check_fits(self) -> None:
        check_area(self.data, 0, self.length)  # verity_iterate_devices: the data area only

    async def postsuspend(self) -> None:
        self._cache.clear()  # dm_bufio_client_reset: re-read and re-verify after resume
