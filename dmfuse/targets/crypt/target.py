"""The crypt target (its man page: the package docstring)."""

from __future__ import annotations

import errno
import re
from collections.abc import Sequence

from dmfuse.args import parse_unsigned
from dmfuse.backends.base import Backend
from dmfuse.errors import DmError, InvalidArgument, IOFailure, TableError
from dmfuse.openssl.offload import Overlap
from dmfuse.target import DeviceOpener, Limits, Target, check_area, register
from dmfuse.targets.crypt.bufpool import BufferPool
from dmfuse.targets.crypt.cipherspec import (
    CipherSpec,
    decode_hex_key,
    decoded_prefix,
    key_size,
    mask_key,
    parse_cipher,
)
from dmfuse.targets.crypt.sectors import SectorCipher

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
        requests meanwhile: when big requests overlap (:mod:`dmfuse.openssl.offload`), and
        always for very large ones, so that other I/O does not wait for them.  Otherwise it is done
        right here on all cores: the caller waits for it anyway."""
        return size >= self.THREAD_MIN or await self._overlap.use_worker(size)

    async def _convert(
        self, src: memoryview, dst: memoryview, sector: int, *, encrypt: bool
    ) -> None:
        """``src`` -> ``dst`` with OpenSSL, without the GIL (:mod:`dmfuse.openssl.loops`)."""
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
