"""Sector encryption with OpenSSL (dmfuse.openssl.loops): the kernel's tfm + IV generator pairing.

A :class:`SectorCipher` is built from a parsed :class:`CipherSpec` and the key bytes, and
encrypts or decrypts whole encryption units (``sector_size`` bytes) in place, each unit with
its own IV (``crypt_convert_block_skcipher``).  Construction mirrors ``crypt_ctr_cipher``'s
order of checks so that errors carry the kernel's ``ti->error`` text: allocate the cipher
(``Error allocating crypto tfm``), choose the IV mode (``Invalid IV mode``), set the key
(``Error decoding and setting key``), build the IV generator (``Error creating IV``).

What OpenSSL provides decides what is accepted: AES (128/192/256) in ``xts`` (AES-128/256
only, halves not equal: what OpenSSL's XTS accepts; the kernel takes both), ``cbc``, ``ctr``
and ``ecb``, and ``cipher_null`` in ``ecb``; ESSIV with the hashlib digests whose names match
the kernel's.  Everything else is refused as the kernel refuses an algorithm it does not have.

Speed: a request is converted by one call into :mod:`dmfuse.openssl.loops`, which walks the units in
C with the GIL released and gives each its IV (OpenSSL's own XTS/CBC/CTR/ECB; no cipher code
here); with one key it can also read the request from, or write it to, a file
(:meth:`SectorCipher.decrypt_from`, :meth:`SectorCipher.encrypt_to`).  plain64 IVs (the usual
mode) are made in C from the first sector and the step; other IV modes are made at once with
:func:`.ivgen.iv_array` (ESSIV: then encrypted with the salt key in one ECB call).
Keyed contexts are built once per key.  Several subkeys (``aes:2-...``): the units of each
subkey are gathered and converted together.  IV sectors are taken modulo 2^64, as the kernel's
``sector_t``.
"""

from __future__ import annotations

import errno
import hashlib

import numpy as np
from numpy.typing import NDArray

from dmfuse.errors import IOFailure, TableError
from dmfuse.openssl.loops import Job, OpenSSLError, UnitCipher
from dmfuse.targets.crypt.cipherspec import IV_MODES, KERNEL_ONLY_IV_MODES, CipherSpec
from dmfuse.targets.crypt.ivgen import benbi_shift, iv_array

# The kernel fails the allocation of an algorithm it does not have with ENOENT.
_NO_TFM = ("Error allocating crypto tfm", errno.ENOENT)

# The kernel's ESSIV digests that hashlib provides under another spelling.
_HASHES = {
    "md5": "md5",
    "sha1": "sha1",
    "sha224": "sha224",
    "sha256": "sha256",
    "sha384": "sha384",
    "sha512": "sha512",
    "sha3-224": "sha3_224",
    "sha3-256": "sha3_256",
    "sha3-384": "sha3_384",
    "sha3-512": "sha3_512",
}
_CHAIN_IV_SIZE = {"xts": 16, "cbc": 16, "ctr": 16, "ecb": 0}
_AES_KEYS = (16, 24, 32)

_MASK64 = 2**64 - 1
# IVs as dmfuse.openssl.loops takes them: a table (bytes per unit), or (first, step) for plain64.
_UnitIvs = NDArray[np.uint8] | bytes | tuple[int, int]
_OPENSSL_MODE = {"xts": "XTS", "cbc": "CBC", "ctr": "CTR", "ecb": "ECB"}


class _SubKey:
    """One subkey's keyed OpenSSL ciphers (usable from several threads at once)."""

    __slots__ = ("data", "essiv")

    def __init__(self, chain: str, key: bytes, essiv: bytes | None) -> None:
        bits = 8 * len(key) // (2 if chain == "xts" else 1)  # XTS: K1 || K2
        self.data = UnitCipher(f"AES-{bits}-{_OPENSSL_MODE[chain]}", key)
        self.essiv = UnitCipher(f"AES-{8 * len(essiv)}-ECB", essiv) if essiv else None


class SectorCipher:
    """Encrypts/decrypts runs of ``sector_size``-byte units of one crypt target."""

    def __init__(self, spec: CipherSpec, key: bytes, sector_size: int, iv_large: bool) -> None:
        self.spec = spec
        self.sector_size = sector_size
        self.step = sector_size >> 9  # 512-byte sectors per unit
        self.iv_shift = (self.step.bit_length() - 1) if iv_large else 0
        self.keycount = spec.keycount
        self.null = spec.cipher == "cipher_null"
        # -- "allocate the tfm": the cipher, the chain mode and (ESSIV) the digest must exist.
        if spec.cipher not in ("aes", "cipher_null") or spec.chainmode not in _CHAIN_IV_SIZE:
            raise TableError(*_NO_TFM)
        if self.null and spec.chainmode != "ecb":
            raise TableError(*_NO_TFM)
        essiv = spec.ivmode == "essiv"
        if essiv and spec.chainmode == "ecb":
            raise TableError("Error allocating crypto tfm")  # essiv needs an IV: EINVAL
        if essiv and spec.ivopts not in _HASHES:
            raise TableError(*_NO_TFM)  # no such essiv(...) instance
        # -- the IV mode (crypt_ctr_ivmode): ciphers without IVs silently drop it.
        iv_size = _CHAIN_IV_SIZE[spec.chainmode]
        ivmode = spec.ivmode if iv_size else None
        if iv_size:
            iv_size = max(iv_size, 8)
        if iv_size and ivmode is None:
            # capi:xts(aes) without an IV mode: the kernel then uses whatever bytes are in
            # its request buffer as the IV, which nobody can reproduce
            raise TableError(f"dmfuse needs an IV mode for {spec.chainmode}")
        if ivmode == "random":  # AEAD only: needs integrity metadata on the device
            raise TableError("Integrity profile not supported.")
        if ivmode is not None and ivmode not in IV_MODES:
            if ivmode in KERNEL_ONLY_IV_MODES:
                raise TableError(f"IV mode {ivmode} is not supported by dmfuse")
            raise TableError("Invalid IV mode")
        self.iv_size = iv_size
        self.ivmode = ivmode
        # -- set the key: subkeys of equal size, each valid for the cipher.
        self._keys: list[_SubKey] = []
        self.set_key(key)
        # -- the IV generator
        shift = 0
        if ivmode == "benbi":
            try:
                shift = benbi_shift(16)
            except ValueError as exc:
                raise TableError("Error creating IV") from exc
        self._benbi_shift = shift

    # -- keys ----------------------------------------------------------------------------
    def set_key(self, key: bytes) -> None:
        """(Re)key every subkey; on failure nothing changes (``TableError``)."""
        keys: list[_SubKey] = []
        if self.null:
            if key:  # ecb(cipher_null) takes no key: only "-"
                raise TableError("Error decoding and setting key")
        else:
            subsize = len(key) // self.keycount
            xts = self.spec.chainmode == "xts"
            if subsize == 0 or len(key) % self.keycount:
                raise TableError("Error decoding and setting key")
            for i in range(self.keycount):
                sub = key[i * subsize : (i + 1) * subsize]
                if xts:
                    if subsize not in (32, 64):
                        # the kernel also takes 48 bytes (AES-192-XTS); OpenSSL has no such mode
                        raise TableError("Error decoding and setting key")
                    if sub[: subsize // 2] == sub[subsize // 2 :]:
                        raise TableError(
                            "Error decoding and setting key: OpenSSL refuses XTS keys "
                            "with equal halves"
                        )
                elif subsize not in _AES_KEYS:
                    raise TableError("Error decoding and setting key")
                salt = None
                if self.spec.ivmode == "essiv" and self.spec.ivopts is not None:
                    salt = hashlib.new(_HASHES[self.spec.ivopts], sub).digest()
                    if len(salt) not in _AES_KEYS:
                        raise TableError("Error decoding and setting key")
                try:
                    keys.append(_SubKey(self.spec.chainmode, sub, salt))
                except (OpenSSLError, ValueError) as exc:
                    raise TableError("Error decoding and setting key") from exc
        self._keys = keys

    def wipe(self) -> None:
        """Forget the key material (``key wipe``)."""
        self._keys = []

    # -- data ------------------------------------------------------------------------------
    def encrypt(self, buf: memoryview, sector: int) -> None:
        """Encrypt ``buf`` (whole units) in place; ``sector`` = target sector + iv_offset."""
        self.convert(buf, buf, sector, encrypt=True)

    def decrypt(self, buf: memoryview, sector: int) -> None:
        self.convert(buf, buf, sector, encrypt=False)

    @property
    def one_key(self) -> bool:
        """Whether a request is one call into OpenSSL, so that it can be handed to the worker
        thread or read and written from C (:meth:`start`, :meth:`decrypt_from`,
        :meth:`encrypt_to`): a single keyed cipher, not ``cipher_null`` or several subkeys."""
        return not self.null and self.keycount == 1

    def start(
        self, src: memoryview, dst: memoryview, sector: int, *, encrypt: bool
    ) -> Job[None] | None:
        """Like :meth:`convert`, but on the worker thread: wait for the returned job
        (:meth:`dmfuse.openssl.offload.Overlap.wait`), which finishes it.  None if there is
        nothing to hand over (not :attr:`one_key`, no units): use convert."""
        if not self.one_key or len(src) < self.sector_size:
            return None
        key, ivs = self._one_key_ivs(len(src), sector)
        return key.data.start(src, dst, ivs, self.sector_size, encrypt)

    def decrypt_from(
        self, fd: int, offset: int, buf: memoryview, sector: int, *, worker: bool
    ) -> Job[None] | None:
        """Read ``buf`` from ``fd`` at byte ``offset`` and decrypt it, piece by piece as it
        arrives (needs :attr:`one_key`): right here (returns None), or on the worker thread
        (returns the job).  ``EOFError`` if the file ends first, ``OSError`` if a read fails."""
        key, ivs = self._one_key_ivs(len(buf), sector)
        if worker:
            return key.data.start_from(fd, offset, buf, ivs, self.sector_size, False)
        key.data.convert_from(fd, offset, buf, ivs, self.sector_size, False)
        return None

    def encrypt_to(
        self, fd: int, offset: int, data: memoryview, sector: int, *, worker: bool
    ) -> Job[None] | None:
        """Encrypt ``data`` (left unchanged) and write it to ``fd`` at byte ``offset``, piece
        by piece (needs :attr:`one_key`): right here (returns None), or on the worker thread
        (returns the job).  ``OSError`` if a write fails; a failed request may have written
        part of its data, as on a disk."""
        key, ivs = self._one_key_ivs(len(data), sector)
        if worker:
            return key.data.start_to(fd, offset, data, ivs, self.sector_size, True)
        key.data.convert_to(fd, offset, data, ivs, self.sector_size, True)
        return None

    def _one_key_ivs(self, size: int, sector: int) -> tuple[_SubKey, _UnitIvs]:
        """The single subkey and what its cipher takes as IVs for ``size`` bytes at
        ``sector``."""
        if not self._keys:  # wiped: resume is refused, so I/O cannot get here; fail it if it does
            raise IOFailure("crypt: key is not set")
        key = self._keys[0]
        return key, self._key_ivs(key, size // self.sector_size, sector)

    def _key_ivs(self, key: _SubKey, units: int, sector: int) -> _UnitIvs:
        """What ``key``'s cipher takes as the IVs of ``units`` units from ``sector`` on:
        plain64 (IV sectors one per 512 bytes) as ``(first, step)``, which dmfuse.openssl.loops
        makes itself (7 us per MiB less than numpy here); other modes as a table."""
        if self.ivmode == "plain64" and not self.iv_shift:
            return (sector & _MASK64, self.step)
        return self._unit_ivs(key, self._ivs(self._sectors(units, sector)))

    def _sectors(self, units: int, sector: int) -> NDArray[np.uint64]:
        """The 512-byte sector of each unit, modulo 2^64 like the kernel's sector_t."""
        sectors = np.arange(units, dtype=np.uint64)
        sectors *= np.uint64(self.step)
        sectors += np.uint64(sector & _MASK64)
        return sectors

    def _ivs(self, sectors: NDArray[np.uint64]) -> NDArray[np.uint8] | None:
        """The units' IVs (None without an IV mode)."""
        if self.ivmode is None:
            return None
        return iv_array(self.ivmode, sectors >> np.uint64(self.iv_shift), self._benbi_shift)

    def convert(self, src: memoryview, dst: memoryview, sector: int, *, encrypt: bool) -> None:
        """Encrypt or decrypt the whole units of ``src`` into ``dst`` (same length; may be the
        same buffer).  Thread-safe; runs without the GIL for the bulk of the work."""
        if self.null:
            if dst is not src:
                dst[:] = src
            return
        keys = self._keys
        if not keys:  # wiped: resume is refused, so I/O cannot get here; fail it if it does
            raise IOFailure("crypt: key is not set")
        size = self.sector_size
        units = len(src) // size
        if units == 0:
            return
        if len(keys) == 1:
            key = keys[0]
            key.data.convert(src, dst, self._key_ivs(key, units, sector), size, encrypt)
            return
        sectors = self._sectors(units, sector)
        ivs = self._ivs(sectors)
        # several subkeys: unit u uses subkey (sector & (keycount - 1)); gather per subkey
        index = sectors & np.uint64(self.keycount - 1)
        source = np.frombuffer(src, dtype=np.uint8).reshape(units, size)
        target = np.frombuffer(dst, dtype=np.uint8).reshape(units, size)
        for k, subkey in enumerate(keys):
            rows = np.flatnonzero(index == k)
            if rows.size:
                part = source[rows]  # a contiguous copy
                self._run(subkey, part, part, None if ivs is None else ivs[rows], encrypt)
                target[rows] = part

    def _run(
        self,
        key: _SubKey,
        src: memoryview | NDArray[np.uint8],
        dst: memoryview | NDArray[np.uint8],
        ivs: NDArray[np.uint8] | None,
        encrypt: bool,
    ) -> None:
        """Convert ``src`` into ``dst`` with one subkey, unit by unit."""
        key.data.convert(src, dst, self._unit_ivs(key, ivs), self.sector_size, encrypt)

    @staticmethod
    def _unit_ivs(key: _SubKey, ivs: NDArray[np.uint8] | None) -> NDArray[np.uint8] | bytes:
        """What the subkey's cipher takes as the units' IVs: none for ECB; for ESSIV the
        plain64 blocks encrypted with the salt key (in place, one ECB call)."""
        if ivs is None:
            return b""
        if key.essiv is not None:
            ivs = np.ascontiguousarray(ivs)
            key.essiv.convert(ivs, ivs, b"", ivs.nbytes, True)
        return ivs
