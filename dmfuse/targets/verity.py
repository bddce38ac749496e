"""verity — a read-only device whose every data block is checked against a hash tree.

Table:  ``<start> <length> verity <version> <data_dev> <hash_dev> <data_block_size>
<hash_block_size> <num_data_blocks> <hash_start_block> <algorithm> <root_digest> <salt|->
[<#opt_params> <opt_params>...]`` — the line ``veritysetup open`` loads.
  ``version``          1 (current; salt hashed first) or 0 (Chrome OS; salt hashed last)
  ``data_dev``         the data; byte ``o`` of the target is byte ``o`` of ``data_dev``
  ``hash_dev``         the hash tree (may be the same file as ``data_dev``)
  ``data_block_size``  power of two, 512..4096 (PAGE_SIZE) bytes
  ``hash_block_size``  power of two >= 512 bytes, at least twice the digest size
  ``num_data_blocks``  data blocks covered by the tree; the target may be shorter, not longer
  ``hash_start_block`` where the tree starts on ``hash_dev``, in hash blocks (1 after a
                       veritysetup superblock, ``--hash-offset / hash_block_size`` without)
  ``algorithm``        kernel crypto name: md5 sha1 sha224 sha256 sha384 sha512
                       sha3-224/256/384/512 blake2b-160/256/384/512 (sm3 rmd160 when this
                       OpenSSL has them); ``<name>-generic`` is accepted
  ``root_digest``      hex; ``salt`` hex or ``-`` for none
Optional parameters (names case-insensitive, printed in lower case):
  ``ignore_corruption``      log a corrupted block and return it anyway
  ``restart_on_corruption``  see "Corruption" below (the kernel reboots)
  ``panic_on_corruption``    see "Corruption" below (the kernel panics)
  ``restart_on_error``, ``panic_on_error``  the same on an I/O error of the data or hash device
  ``ignore_zero_blocks``     a block whose expected digest is that of a zero block is returned
                             as zeros without checking it (the data there may be anything)
  ``check_at_most_once``     verify each data block only the first time it is read (bitmap)
  ``try_verify_in_tasklet``  accepted and printed back; no effect (a kernel scheduling choice)
The table must be read-only (``create -r`` or ``# dmfuse: readonly``): "Device must be readonly".
verity must be alone in its table ("target type verity must appear alone in table"), and a
live verity table can only be replaced by another verity or an error table ("can't replace
immutable target type verity").

Reads: each data block read is hashed and checked against its digest in the level-0 hash
block, which is itself checked up the tree to the root digest before it is trusted.  Verified
hash blocks are kept in a bounded LRU cache (16 MiB of hash blocks: 2 GiB of data at
4K/sha256), so sequential reads hash each hash block once; suspend empties the cache (as the
kernel's ``dm_bufio_client_reset``).  A mismatch fails the read (EIO) — with whole-block reads,
exactly the requests that contain the block, or whose tree path contains the bad hash block —
logs ``<data_dev>: data|metadata block N is corrupted`` (N: data block, or hash block counted
from the start of ``hash_dev``; at most 100 lines per table, then ``reached maximum errors``)
and turns the status to ``C`` for good.  An I/O error of either device fails the read with
its own errno and does not change the status.  Writes are refused (EROFS, read-only table);
no discard, no flush.

Corruption with ``restart_on_corruption``/``panic_on_corruption`` (and I/O errors with
``restart_on_error``/``panic_on_error``): dmfuse cannot reboot the machine, so the target
*trips*: the failing read gets EIO, an ERROR (restart) or CRITICAL (panic) line
``verity: <data_dev>: <reason>: <mode>: failing all I/O until the table is replaced`` is
logged, a dm event is raised (so ``dmfuse wait`` wakes), and every later read of this table
fails with EIO until a new table is loaded and resumed, like a machine that must be set up
again after the reboot.  The two modes differ only in the log level.

Status: ``V`` (no corruption seen) or ``C``.
Table:  ``<version> <data_dev> <hash_dev> <dbs> <hbs> <blocks> <hash_start> <alg> <root> <salt>``
then, if any, ``<count> [mode] [error mode] [ignore_zero_blocks] [check_at_most_once]
[try_verify_in_tasklet]`` (the kernel's order; digests in lower-case hex).

Not supported, refused with a message naming it: forward error correction
(``use_fec_from_device``, ``fec_start``, ``fec_blocks``, ``fec_roots``: no Reed-Solomon decoder
here) and ``root_hash_sig_key_desc`` (needs the kernel keyring).
Differences from the kernel (6.12, verity 1.10.0; strings and errors checked in the VM): the
minimum data/hash block size is 512 for every device (the kernel uses the device's logical
block size); "can't replace immutable target type verity" (only a verity or an error table
may be loaded over it) is checked against the live table only (the kernel remembers the type
for the device's lifetime, so it refuses e.g. linear even after an error table); a mismatching
data block is not re-read before it is declared corrupt (the kernel's ``verity_recheck``
guards against data changing under DMA); no uevent on corruption; a message gets the
engine's generic refusal (the kernel: "Target type does not support messages").

Speed (``bench/verity.sh``: fio 1M sequential reads, O_DIRECT, through one mount, 256 MiB of
data, 4K blocks, sha256, warm page cache; 2 shared vCPUs):
  linear 2820-3190 MB/s at psync QD1, 3720-3740 MB/s at libaio QD16 (07:40-08:10 UTC,
  several rounds, load average 0.5-1.9 with the benchmark itself);
  verity 1300-1645 MB/s at QD1 (0.41-0.52x), 1630-1690 MB/s at QD16 (0.44-0.46x; 1315-1325
  before overlapping reads went to the worker thread); runs with another job busy on the
  second vCPU: 1120-1220 MB/s (the helpers stand down, one core);
  before dmfuse._openssl: 950-965 and 930-990 MB/s, before that 745-780 and 655-665;
  with ``check_at_most_once``, once every block was checked, 1.0-1.05x of linear.
  In-process (engine, no FUSE, 32 MiB, 1M reads): linear 131 us/MiB, verity 482 us/MiB on two
  cores, 753 us/MiB on one (before dmfuse._openssl: 890).
How: a request's expected digests are sliced out of the cached, verified level-0 hash blocks
at once and compared with the computed ones as one string; the blocks are hashed by OpenSSL in
C without the GIL (:class:`dmfuse._openssl.BlockHasher`, the salted state copied per block),
shared by the calling thread and a helper per core; when big reads overlap (deep queues) each
is hashed on the worker thread instead, the trio thread serving FUSE meanwhile
(:mod:`dmfuse.offload`).  The data is read with one ``preadv`` per request; hash blocks are
read one by one, but only on a cache miss.
The issue's goal of 0.7x is NOT met, and cannot be on two vCPUs: sha256 with SHA-NI hashes
~1.7 GB/s per core (``openssl speed``; 0.6 ms per MiB in 4K blocks), so 0.7x of linear
(2.5-3 GB/s) would need 1.5-1.8 cores for hashing alone, while the linear path it adds to
already keeps one core busy.  What reaches it is ``check_at_most_once``.
"""

from __future__ import annotations

import errno
import logging
import mmap
import re
from collections import OrderedDict
from collections.abc import Sequence

from dmfuse.args import ArgReader
from dmfuse.backends.base import Backend
from dmfuse.errors import DmError, IOFailure, TableError
from dmfuse.offload import Overlap
from dmfuse.target import DeviceOpener, Limits, Target, check_area, register
from dmfuse.verity import hashing
from dmfuse.verity.tree import Geometry, GeometryError

log = logging.getLogger(__name__)

PAGE_SIZE = mmap.PAGESIZE
CACHE_BYTES = 16 << 20  # hash blocks kept (verified or not), like dm-bufio's cache
MAX_CORRUPTED_ERRS = 100  # DM_VERITY_MAX_CORRUPTED_ERRS: log lines per table
OPTS_MAX = 15  # DM_VERITY_OPTS_MAX = 5 + FEC (8) + signature (2)
INT_MAX = 2**31 - 1
_HEX = re.compile(r"[0-9a-fA-F]*\Z")

MODE_EIO, MODE_LOGGING, MODE_RESTART, MODE_PANIC = "eio", "logging", "restart", "panic"
_MODES = {
    "ignore_corruption": MODE_LOGGING,
    "restart_on_corruption": MODE_RESTART,
    "panic_on_corruption": MODE_PANIC,
}
_ERROR_MODES = {"restart_on_error": MODE_RESTART, "panic_on_error": MODE_PANIC}
_MODE_NAMES = {v: k for k, v in _MODES.items()}
_ERROR_MODE_NAMES = {v: k for k, v in _ERROR_MODES.items()}
_FEC = ("use_fec_from_device", "fec_start", "fec_blocks", "fec_roots")
_SIG = "root_hash_sig_key_desc"


class Corrupted(IOFailure):
    """A block did not match its digest (the kernel's ``had_mismatch``).

    ``source`` is the target that found it: to a verity stacked above, a lower verity's
    mismatch is an ordinary I/O error (restart_on_error applies there)."""

    def __init__(self, message: str, source: Verity) -> None:
        super().__init__(message)
        self.source = source


class _HashBlock:
    __slots__ = ("data", "verified")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.verified = False


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
        self._cache: OrderedDict[int, _HashBlock] = OrderedDict()
        self._cache_max = max(16, CACHE_BYTES // g.hash_block_size)
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
            _feature_words(args[10:])  # the kernel's first pass: the count is checked first
        version = _uint(args[0], 2**32 - 1, "Invalid version")
        if version > 1:
            raise TableError("Invalid version")
        data = await _open(opener, args[1], "Data device lookup failed")
        hash_dev = await _open(opener, args[2], "Hash device lookup failed")
        dbs = _block_size(args[3], PAGE_SIZE, "Invalid data device block size")
        hbs = _block_size(args[4], INT_MAX, "Invalid hash device block size")
        dbits, hbits = dbs.bit_length() - 1, hbs.bit_length() - 1
        data_blocks = _uint(args[5], 2**64 - 1, "Invalid data blocks")
        if (data_blocks << (dbits - 9)) >= 2**64:
            raise TableError("Invalid data blocks")
        if length > data_blocks * dbs:
            raise TableError("Data device is too small")
        hash_start = _uint(args[6], 2**64 - 1, "Invalid hash start")
        if (hash_start << (hbits - 9)) >= 2**64:
            raise TableError("Invalid hash start")
        algorithm = args[7]
        ctor = hashing.lookup(algorithm)
        if ctor is None:
            raise TableError("Cannot initialize hash function", errno.ENOENT)
        digest_size = hashing.digest_size(ctor)
        if hbs < digest_size * 2:
            raise TableError("Digest size too big")
        root = _hex(args[8], "Invalid root digest")
        if root is None or len(root) != digest_size:
            raise TableError("Invalid root digest")
        salt = b""
        if args[9] != "-":
            parsed = _hex(args[9], "Invalid salt")
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
                self._trip(mode, _ERROR_MODE_NAMES[mode], f"I/O error: {exc}")
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
        thread serves other requests (:mod:`dmfuse.offload`)."""
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
            hb = await self._hash_block(index)
            if not hb.verified:
                if self._digest(hb.data) == want:
                    hb.verified = True
                else:
                    self._corrupted("metadata", index)  # returns only when logging
            want = hb.data[at : at + g.digest_size]
        return want

    async def _hash_block(self, index: int) -> _HashBlock:
        cache = self._cache
        hb = cache.get(index)
        if hb is not None:
            cache.move_to_end(index)
            return hb
        size = self.geometry.hash_block_size
        buf = bytearray(size)
        await self.hash_dev.read(index * size, memoryview(buf))
        hb = cache.get(index)  # another reader may have loaded it meanwhile
        if hb is None:
            hb = cache[index] = _HashBlock(bytes(buf))
            if len(cache) > self._cache_max:
                cache.popitem(last=False)
        return hb

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
            self._trip(mode, _MODE_NAMES[mode], f"{kind} block {block} is corrupted")
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


class Options:
    """The optional parameters (verity_parse_opt_args, second pass)."""

    def __init__(self) -> None:
        self.mode = MODE_EIO
        self.error_mode = MODE_EIO
        self.ignore_zero_blocks = False
        self.at_most_once = False
        self.tasklet = False

    @classmethod
    def parse(cls, rest: Sequence[str], data_blocks: int) -> Options:
        opts = cls()
        if not rest:
            return opts
        for word in _feature_words(rest):
            name = word.lower()
            if name in _MODES:
                if opts.mode != MODE_EIO:
                    raise TableError("Conflicting error handling parameters")
                opts.mode = _MODES[name]
            elif name in _ERROR_MODES:
                if opts.error_mode != MODE_EIO:
                    raise TableError("Conflicting error handling parameters")
                opts.error_mode = _ERROR_MODES[name]
            elif name == "ignore_zero_blocks":
                opts.ignore_zero_blocks = True
            elif name == "check_at_most_once":
                if data_blocks > INT_MAX:
                    raise TableError("device too large to use check_at_most_once")
                opts.at_most_once = True
            elif name == "try_verify_in_tasklet":
                opts.tasklet = True
            elif name in _FEC:
                raise TableError(
                    f"{name}: forward error correction (FEC) is not supported by dmfuse"
                )
            elif name == _SIG:
                raise TableError(
                    f"{name}: root hash signatures are not supported by dmfuse "
                    "(they need the kernel keyring)"
                )
            else:
                raise TableError("Unrecognized verity feature request")
        return opts

    def words(self) -> list[str]:
        words = []
        if self.mode != MODE_EIO:
            words.append(_MODE_NAMES[self.mode])
        if self.error_mode != MODE_EIO:
            words.append(_ERROR_MODE_NAMES[self.error_mode])
        if self.ignore_zero_blocks:
            words.append("ignore_zero_blocks")
        if self.at_most_once:
            words.append("check_at_most_once")
        if self.tasklet:
            words.append("try_verify_in_tasklet")
        return words


def _feature_words(rest: Sequence[str]) -> list[str]:
    """``<#opt_params> <words>``; words after the counted ones are ignored, as by the kernel."""
    reader = ArgReader(rest)
    try:
        count = reader.unsigned("feature args", maximum=OPTS_MAX)
    except TableError:
        raise TableError("Invalid number of feature args") from None
    if count > reader.remaining:
        raise TableError("Invalid number of feature args")
    return list(rest[1 : 1 + count])


def _uint(text: str, maximum: int, error: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise TableError(error)
    value = int(text)
    if value > maximum:
        raise TableError(error)
    return value


def _block_size(text: str, maximum: int, error: str) -> int:
    value = _uint(text, 2**32 - 1, error)
    if value < 512 or value & (value - 1) or value > maximum:
        raise TableError(error)
    return value


def _hex(text: str, error: str) -> bytes | None:
    if len(text) % 2 or not _HEX.match(text):
        raise TableError(error)
    return bytes.fromhex(text)


async def _open(opener: DeviceOpener, spec: str, error: str) -> Backend:
    try:
        return await opener.open(spec)
    except TableError as exc:
        detail = exc.message.removeprefix("Device lookup failed: ")
        raise TableError(f"{error}: {detail}") from None
