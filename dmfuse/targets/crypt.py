"""crypt — transparent encryption, sector for sector the ciphertext the kernel's dm-crypt writes.

Table:   ``<start> <length> crypt <cipher> <key> <iv_offset> <dev> <offset> [<#opt> <opt>...]``
  ``cipher``     ``cipher[:keycount]-chainmode-ivmode[:ivopts]`` (``aes-xts-plain64``,
                 ``aes-cbc-essiv:sha256``, ``aes:2-cbc-plain64``, ``aes-ecb``, just ``aes`` =
                 ``aes-cbc-plain``) or ``capi:<api>-ivmode[:ivopts]`` (``capi:xts(aes)-plain64``)
  ``key``        hex (``2 * key size`` digits), ``-`` for no key (``cipher_null``), or a kernel
                 keyring reference ``:<key_size>:<logon|user|encrypted|trusted>:<description>``
  ``iv_offset``  added to the sector number before the IV is made (multiple of the unit)
  ``dev``        the ciphertext device; ``offset``: where the ciphertext starts on it, in sectors
  options (at most 9, any case): ``allow_discards``, ``same_cpu_crypt``,
                 ``submit_from_crypt_cpus``, ``no_read_workqueue``, ``no_write_workqueue``,
                 ``high_priority``, ``sector_size:<512..4096, power of two>``,
                 ``iv_large_sectors`` (IVs count ``sector_size`` units, not 512-byte sectors)
Ciphers: AES in ``xts`` (256/512-bit keys), ``cbc``, ``ctr``, ``ecb`` and ``cipher_null-ecb``;
IV modes ``plain``, ``plain64``, ``plain64be``, ``essiv:<hash>``, ``benbi``, ``null`` (the
ciphers are OpenSSL's; see :mod:`dmfuse.crypt.sectors`).
Mapping: unit ``u`` (``sector_size`` bytes at target byte ``o``) is encrypted with IV sector
  ``o/512 + iv_offset`` (``>> log2(sector_size/512)`` with ``iv_large_sectors``) and stored at
  byte ``offset*512 + o`` of ``dev``.  The device reads and writes whole units (partial ones
  are read-modify-written above the target).
Status:  empty.
Table:   ``<cipher as given> <key> <iv_offset> <dev> <offset>`` then, if any, ``<count>`` and the
  options in the kernel's order (allow_discards same_cpu_crypt high_priority
  submit_from_crypt_cpus no_read_workqueue no_write_workqueue sector_size:N
  iv_large_sectors), lowercase, each once.  The key prints as lowercase hex; ``table``
  without ``--showkeys`` turns every hex digit into ``0`` (as dmsetup does); a keyring
  reference prints as given.
Messages (only while suspended, else EINVAL): ``key set <key>`` (same key size), ``key wipe``.
  A device whose key was wiped (or failed to set) refuses to resume with EAGAIN.
Flush passes down.  Discard: a punch-hole on a crypt range fails with EOPNOTSUPP and changes
  nothing, with or without ``allow_discards``: the discarded ciphertext would read back as
  garbage, never as the zeros a punch-hole promises (project decision, dm-spec top).
  Zero-range writes encrypted zeros, like the kernel's fallback (dm-crypt has no write-zeroes).

Differences from the kernel:
* Keyring keys (``:<size>:<type>:<desc>``) are parsed and checked, then refused with ENOKEY:
  dmfuse has no access to the kernel keyring (``logon`` keys cannot be read by userspace).
* OpenSSL has no AES-192-XTS (384-bit XTS keys) and refuses XTS keys whose two halves are
  equal; the kernel accepts both.  IV modes ``lmk``, ``tcw``, ``eboiv`` and ``elephant`` are
  refused with a clear error (the kernel has them); ``random`` and the ``integrity:`` option
  fail as on a kernel device without integrity metadata.  A chain mode with an IV but no IV
  mode (``capi:xts(aes)``) is refused: the kernel then encrypts with whatever bytes its
  request buffer holds as the IV, which cannot be reproduced.
* Other ciphers the kernel has (serpent, twofish, lrw, ...) are refused as it refuses an
  algorithm it lacks (``Error allocating crypto tfm``, ENOENT).
* The ``same_cpu_crypt``/``*_workqueue``/``high_priority`` options only tune the kernel's
  threads; they are accepted and echoed, and change nothing here.
* A misaligned unit reaching the target (only possible from a stacked device) fails with EIO,
  like the kernel's DM_MAPIO_KILL; the device file itself read-modify-writes partial units.
Checked against Linux 6.12 in the VM: every constructor case of ``crypt-behaviour.sh`` (error
text and errno, table and status strings; ``tests/unit/test_crypt_vectors.py``) and the
ciphertext of 42 cipher/IV/unit-size cases, byte for byte.

Keys stay out of logs and error messages (no message quotes a key).  A table file written
back by the daemon holds the key (mode 0600, like the kernel's table); to keep a key out of
process arguments load tables from a file or stdin rather than ``--table``.  ``key set``
takes the key as a message argument, as ``dmsetup message`` does.

Speed.  OpenSSL does the cipher (XTS/CBC/CTR/ECB, one unit at a time, each with its IV) in
C, without the GIL (:mod:`dmfuse._openssl`); XTS units take their IV in place (checked at
start-up against OpenSSL's documented per-unit re-init), and plain64 IVs are made in C.
Over a file backend the C code also does the file I/O, so the copies to and from the page
cache run on all cores alongside the cipher instead of before or after it on one:

* a read is read in 128 KiB pieces, the pieces shared by the calling thread and an OpenMP
  helper per core; each thread decrypts its piece in place while it is still in its cache;
* a write is encrypted in 64 KiB pieces by all threads into the calling thread's scratch
  buffer, and the calling thread writes runs of finished pieces as they come: one writer,
  because the file system serialises writes to a file (ext4's inode lock), so a second
  writer would wait while it could encrypt.  The caller's buffer is never changed.

Over another device of the mount the target reads and writes through it and converts in
memory.  Helpers that turn out descheduled (another process on their core, or the hypervisor
slow to run an idle vCPU) make the next jobs run on the calling thread alone, 4 at first and
twice as many per stall in a row.  When big requests overlap (deep queues: requests waiting
on the FUSE fd, or another of the target's requests at the worker), each is handed whole to
the worker thread (C; the task waits for it in trio), so the trio thread keeps its core for
FUSE; requests of at least ``Crypt.THREAD_MIN`` (2 MiB: only engine-level callers, FUSE sends
at most 1 MiB) always go there, so smaller I/O is not queued behind a long conversion
(``test_big_encryption_does_not_hold_up_small_io``).

Measured with ``bench/crypt.sh`` (fio, 1M sequential, O_DIRECT, one warm LUKS1 container
behind every device, 2 shared vCPUs; MiB/s; crypt / linear in brackets), 2026-11-29:

    ==========================  ==============  ==============  ==============  ==============
    run (UTC)                   read QD1        read QD16       write QD1       write QD16
    ==========================  ==============  ==============  ==============  ==============
    09:50  linear               3516            4202            2810            2779
    09:50  crypt xts-plain64    2815 (0.80x)    3147 (0.75x)    2120 (0.75x)    2263 (0.81x)
    09:50   + sector_size:4096  3374 (0.96x)    3227 (0.77x)    2284 (0.81x)    2446 (0.88x)
    10:00  linear               3256            3318            2264            2541
    10:00  crypt xts-plain64    2703 (0.83x)    2607 (0.79x)    2047 (0.90x)    2388 (0.94x)
    10:00   + sector_size:4096  2998 (0.92x)    3369 (1.02x)    2241 (0.99x)    2467 (0.97x)
    10:08  linear               2979            3632            2129            2433
    10:08  crypt xts-plain64    2627 (0.88x)    2562 (0.71x)    2032 (0.95x)    2209 (0.91x)
    10:08   + sector_size:4096  3275 (1.10x)    2903 (0.80x)    1454 (0.68x)    2329 (0.96x)
    qemu-storage-daemon LUKS    306-327         334-360         353-377         391-407
    ==========================  ==============  ==============  ==============  ==============

(The 09:50 run predates plain64 IVs in C and the shared job eventfd.)  Reads at QD16 come
closest to 0.7x (0.71-0.79x): there both cores are busy (perf: the worker thread 99%, two
thirds of it the cipher and one third reading the page cache; the trio thread 78%, serving FUSE
and copying replies) where linear leaves one ~45% idle.  The one cell under 0.7x (4096-byte
units, write QD1, 0.68x at 10:08) was 0.81x and 0.99x in the other runs.  Run-to-run noise on
this shared machine is 10-20% even for linear, so ratios are taken within a run:
``bench/crypt-ab.sh`` (interleaved 2 s runs of linear and crypt, 3-5 per cell, six sessions)
gave medians of 0.69-0.81x for reads at QD16 and 0.84-0.99x for the other cells.  crypt is 5-9x
qemu's LUKS driver.  The earlier versions: 0.66-0.79x (convert in C, I/O in Python), 0.25-0.30x
(numpy-batched).  What is left is the cipher itself: 0.21 ms per MiB of 512-byte XTS units on
one core (OpenSSL 3.0 here; 4096-byte units 0.17 ms), which linear does not pay.  Tried and
dropped: a second worker thread (no gain at QD16: the workers took turns on the core the trio
thread needs), writing from every thread (they waited on the inode lock), converting a request
on the trio thread while jobs wait for the worker (reads at QD16: medians 0.70-0.72x against
0.80-0.81x), a ``trio.to_thread`` converter (20-40% slower), a Python-level thread split.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Sequence

from dmfuse.args import parse_unsigned
from dmfuse.backends.base import Backend
from dmfuse.bufpool import BufferPool
from dmfuse.crypt.cipherspec import (
    CipherSpec,
    decode_hex_key,
    decoded_prefix,
    key_size,
    mask_key,
    parse_cipher,
)
from dmfuse.crypt.sectors import SectorCipher
from dmfuse.errors import DmError, InvalidArgument, IOFailure, TableError
from dmfuse.offload import Overlap
from dmfuse.target import DeviceOpener, Limits, Target, check_area, register

# Ciphertext of writes, shared by all crypt targets of the process: enough spare buffers for
# a queue of overlapping 1 MiB writes (keep=4 measured 5% slower at QD16), at most 16 MiB.
_SCRATCH = BufferPool(keep=16)

# Feature flags in the order the kernel's crypt_status prints them.
_FLAGS = (
    "allow_discards",
    "same_cpu_crypt",
    "high_priority",
    "submit_from_crypt_cpus",
    "no_read_workqueue",
    "no_write_workqueue",
)
_SECTOR_SIZE = re.compile(r"sector_size:([0-9]+)\Z")
_INTEGRITY = re.compile(r"integrity:([0-9]+):")
_KEY_TYPES = ("logon", "user", "encrypted", "trusted")
_MAX_FEATURES = 9  # 6.12 (high_priority made it 9; checked in the VM)


class _Options:
    __slots__ = ("flags", "iv_large", "sector_size")

    def __init__(self) -> None:
        self.flags: set[str] = set()
        self.sector_size = 512
        self.iv_large = False


def _parse_options(words: Sequence[str], length: int) -> _Options:
    """``crypt_ctr_optional``: ``<count> <opt>...`` (words after the fifth argument)."""
    opts = _Options()
    try:
        count = parse_unsigned(words[0], "feature count", maximum=_MAX_FEATURES)
    except TableError:
        raise TableError("Invalid number of feature args") from None
    if count > len(words) - 1:
        raise TableError("Invalid number of feature args")
    for word in words[1 : 1 + count]:  # like the kernel, words after the group are ignored
        lower = word.lower()
        if lower in _FLAGS:
            opts.flags.add(lower)
        elif (match := _INTEGRITY.match(word)) is not None:
            tag = int(match.group(1))
            if tag == 0 or tag > 480:
                raise TableError("Invalid integrity arguments")
            if word[match.end() :].lower() not in ("aead", "none"):
                raise TableError("Unknown integrity profile")
            raise TableError("Integrity profile not supported.")
        elif (match := _SECTOR_SIZE.match(word)) is not None:
            size = int(match.group(1)) & 0xFFFF  # "%hu": the kernel keeps the low 16 bits
            if size < 512 or size > 4096 or size & (size - 1):
                raise TableError("Invalid feature value for sector_size")
            if (length // 512) % (size // 512):
                raise TableError("Device size is not multiple of sector_size feature")
            opts.sector_size = size
        elif lower == "iv_large_sectors":
            opts.iv_large = True
        else:
            raise TableError("Invalid feature arguments")
    return opts


def _check_keyring(text: str) -> None:
    """``crypt_set_keyring_key`` up to the keyring lookup, which dmfuse cannot do."""
    ref = text[1:].partition(":")[2]  # "<type>:<description>"
    key_type, colon, desc = ref.partition(":")
    if not colon or not key_type or not desc or key_type not in _KEY_TYPES or " " in ref:
        raise TableError("Error decoding and setting key")
    raise TableError(
        "Error decoding and setting key: kernel keyring keys are not available to dmfuse "
        "(give the key in hex)",
        errno.ENOKEY,
    )


@register
class Crypt(Target):
    name = "crypt"
    version = (1, 28, 0)

    # Requests at least this large (engine-level callers only: FUSE hands over at most
    # 1 MiB) always go to the worker thread, so other I/O does not wait for them.
    THREAD_MIN = 2 * 1024 * 1024

    def __init__(
        self,
        length: int,
        spec: CipherSpec,
        key: bytes,
        cipher: SectorCipher,
        iv_offset: int,
        dev: Backend,
        offset_sectors: int,
        opts: _Options,
    ) -> None:
        super().__init__(length)
        self.spec = spec
        self.key = key
        self.key_valid = True
        self.cipher = cipher
        self.iv_offset = iv_offset
        self.dev = dev
        self.offset_sectors = offset_sectors
        self.base = offset_sectors * 512
        self.opts = opts
        self.unit = opts.sector_size
        self.suspended = False  # the kernel's DM_CRYPT_SUSPENDED (postsuspend .. resume)
        self._overlap = Overlap()  # where big requests are converted (see _use_worker)
        # Reads and writes go from C straight to a file backend's fd (see read/write).
        self._fd = dev.file_fd() if cipher.one_key else None
        self.limits = Limits(
            flush_bios=1,
            discard_bios=1 if "allow_discards" in opts.flags else 0,
            discard_zeroes=False,
            write_zeroes=False,
            block_size=opts.sector_size,
        )

    @classmethod
    async def construct(cls, opener: DeviceOpener, length: int, args: Sequence[str]) -> Crypt:
        if len(args) < 5:
            raise TableError("Not enough arguments")
        size = key_size(args[1])
        # The kernel reads the optional parameters before the cipher (sector_size matters).
        opts = _parse_options(args[5:], length) if len(args) > 5 else _Options()
        spec = parse_cipher(args[0])
        key = _decode_key(args[1], size)
        cipher = SectorCipher(spec, key, opts.sector_size, opts.iv_large)
        try:
            iv_offset = parse_unsigned(args[2], "iv_offset")
        except TableError:
            raise TableError("Invalid iv_offset sector") from None
        if iv_offset % (opts.sector_size // 512):
            raise TableError("Invalid iv_offset sector")
        dev = await opener.open(args[3])
        try:
            start = parse_unsigned(args[4], "device sector")
        except TableError:
            raise TableError("Invalid device sector") from None
        return cls(length, spec, key, cipher, iv_offset, dev, start, opts)

    # -- I/O ---------------------------------------------------------------------------------
    def _sector(self, offset: int, length: int) -> int:
        if offset % self.unit or length % self.unit:
            raise IOFailure(f"crypt: I/O not aligned to the {self.unit}-byte sector size")
        return offset // 512 + self.iv_offset

    async def read(self, offset: int, buf: memoryview) -> None:
        sector = self._sector(offset, len(buf))
        if self._fd is None:
            await self.dev.read(self.base + offset, buf)
            await self._convert(buf, buf, sector, encrypt=False)
            return
        worker = await self._use_worker(len(buf))
        try:
            job = self.cipher.decrypt_from(self._fd, self.base + offset, buf, sector, worker=worker)
            if job is not None:
                await self._overlap.wait(job)
        except EOFError:
            raise IOFailure(f"{self.dev.display}: read beyond end of device") from None

    async def write(self, offset: int, data: memoryview) -> None:
        sector = self._sector(offset, len(data))
        if self._fd is not None:
            worker = await self._use_worker(len(data))
            job = self.cipher.encrypt_to(self._fd, self.base + offset, data, sector, worker=worker)
            if job is not None:
                await self._overlap.wait(job)
            return
        out = _SCRATCH.take(len(data))  # never encrypt the caller's buffer in place
        try:
            await self._convert(data, out, sector, encrypt=True)
            await self.dev.write(self.base + offset, out)
        finally:
            _SCRATCH.give(out)

    async def _use_worker(self, size: int) -> bool:
        """Whether a request goes to the worker thread, so that the trio thread serves other
        requests meanwhile: when big requests overlap (:mod:`dmfuse.offload`), and always for
        very large ones, so that other I/O does not wait for them.  Otherwise it is done
        right here on all cores: the caller waits for it anyway."""
        return size >= self.THREAD_MIN or await self._overlap.use_worker(size)

    async def _convert(
        self, src: memoryview, dst: memoryview, sector: int, *, encrypt: bool
    ) -> None:
        """``src`` -> ``dst`` with OpenSSL, without the GIL (:mod:`dmfuse._openssl`)."""
        job = None
        if await self._use_worker(len(src)):
            job = self.cipher.start(src, dst, sector, encrypt=encrypt)
        if job is None:
            self.cipher.convert(src, dst, sector, encrypt=encrypt)
        else:
            await self._overlap.wait(job)

    async def discard(self, offset: int, length: int) -> None:
        # Reached only if the device layer ever passes non-zeroing discards down (punch-hole
        # refuses crypt ranges first): the kernel remaps the discard unencrypted.
        if not self.limits.discard_bios:
            raise IOFailure("crypt: discards are not enabled (allow_discards)", errno.EOPNOTSUPP)
        await self.dev.discard(self.base + offset, length)

    # -- description -------------------------------------------------------------------------
    def _key_text(self) -> str:
        return self.key.hex() if self.key else "-"

    def table(self, showkeys: bool = False) -> str:
        words = [self.spec.text, self._key_text(), str(self.iv_offset)]
        words += [self.dev.display, str(self.offset_sectors)]
        features = [flag for flag in _FLAGS if flag in self.opts.flags]
        if self.unit != 512:
            features.append(f"sector_size:{self.unit}")
        if self.opts.iv_large:
            features.append("iv_large_sectors")
        if features:
            words += [str(len(features)), *features]
        text = " ".join(words)
        return text if showkeys else mask_key(text)

    def devices(self) -> list[Backend]:
        return [self.dev]

    def check_fits(self) -> None:
        check_area(self.dev, self.base, self.length)

    # -- messages and lifecycle --------------------------------------------------------------
    async def message(self, argv: Sequence[str]) -> str | None:
        if len(argv) >= 2 and argv[0].lower() == "key":
            if not self.suspended:
                raise InvalidArgument("crypt: not suspended during key manipulation.")
            action = argv[1].lower()
            if len(argv) == 3 and action == "set":
                self._set_key(argv[2])
                return None
            if len(argv) == 2 and action == "wipe":
                self.key_valid = False
                self.key = bytes(len(self.key))
                self.cipher.wipe()
                return None
        raise InvalidArgument("crypt: unrecognised message received.")

    def _set_key(self, text: str) -> None:
        """``key set``: the key size may not change; a failed set leaves no valid key."""
        try:
            size = key_size(text)
        except TableError:
            size = -1
        if size != len(self.key):
            raise InvalidArgument("crypt: key set: the key size may not be changed")
        self.key_valid = False  # cleared first, as in crypt_set_key
        try:
            key = _decode_key(text, size)
            self.cipher.set_key(key)
        except TableError as exc:
            if not text.startswith((":", "-")):
                prefix = decoded_prefix(text, size)
                self.key = prefix + self.key[len(prefix) :]
            raise DmError(f"crypt: key set: {exc.message}", exc.errno) from None
        self.key = key
        self.key_valid = True

    async def postsuspend(self) -> None:
        self.suspended = True

    async def preresume(self) -> None:
        if not self.key_valid:
            raise DmError("crypt: aborting resume - crypt key is not set.", errno.EAGAIN)

    async def resume(self) -> None:
        self.suspended = False


def _decode_key(text: str, size: int) -> bytes:
    if text.startswith(":"):
        if size == 0:
            raise TableError("Error decoding and setting key")
        _check_keyring(text)
    return decode_hex_key(text, size)
