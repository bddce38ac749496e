"""Sector encryption with OpenSSL (``cryptography``): the kernel's tfm + IV generator pairing.

A :class:`SectorCipher` is built from a parsed :class:`CipherSpec` and the key bytes, and
encrypts or decrypts whole encryption units (``sector_size`` bytes) in place, each unit with
its own IV (``crypt_convert_block_skcipher``).  Construction mirrors ``crypt_ctr_cipher``'s
order of checks so that errors carry the kernel's ``ti->error`` text: allocate the cipher
(``Error allocating crypto tfm``), choose the IV mode (``Invalid IV mode``), set the key
(``Error decoding and setting key``), build the IV generator (``Error creating IV``).

What OpenSSL provides decides what is accepted: AES (128/192/256) in ``xts`` (AES-128/256
only, halves not equal: what OpenSSL's own XTS accepts, against which the batched XTS is
tested; the kernel takes both), ``cbc``,
``ctr`` and ``ecb``, and ``cipher_null`` in ``ecb``; ESSIV with the hashlib digests whose
names match the kernel's.  Everything else is refused as the kernel refuses an algorithm it
does not have.

Speed: no cipher context per unit.  A request is converted as a whole by
:mod:`dmfuse.crypt.batched` (AES-ECB from OpenSSL over the whole buffer plus numpy for the
XTS tweaks, CBC chaining and CTR counters), IVs are made with :func:`~dmfuse.crypt.ivgen.iv_array`,
and the ECB ``Cipher`` objects are built once per key.  Only CBC *encryption* of a few units
(fewer than ``blocks per unit / _CBC_COLUMNS_MIN``) uses one public ``Cipher(AES, CBC(iv))``
context per unit.  Several subkeys (``aes:2-...``): the units of each subkey are batched
together.  IV sectors are taken modulo 2^64, as the kernel's ``sector_t``.
"""

from __future__ import annotations

import errno
import hashlib

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from dmfuse.crypt import batched
from dmfuse.crypt.batched import Bytes
from dmfuse.crypt.cipherspec import IV_MODES, KERNEL_ONLY_IV_MODES, CipherSpec
from dmfuse.crypt.ivgen import benbi_shift, iv_array
from dmfuse.errors import IOFailure, TableError

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
# CBC encryption of fewer units than (a unit's 16-byte blocks / this) is done with one public
# OpenSSL CBC context per unit: the batched form costs one ECB call per block column of the
# unit (measured crossover: about as many units as blocks per unit).
_CBC_COLUMNS_MIN = 1
# XTS of fewer units than this (times sector_size / 1024 for units above 1 KiB) uses one
# public OpenSSL XTS context per unit (~5 us each): the batched form has a fixed cost of
# ~60-120 us in numpy calls (measured crossover: ~13 units of 512 bytes, ~50 of 4096).
_XTS_BATCH_MIN = 16


class _SubKey:
    """One subkey's ECB ciphers (``Cipher`` objects are reusable; contexts are per request)."""

    __slots__ = ("alg", "data", "essiv", "tweak", "xts")

    def __init__(self, key: bytes, tweak: bytes | None, essiv: bytes | None) -> None:
        alg = algorithms.AES(key)
        self.alg = alg  # the data key (XTS: K1)
        self.data = Cipher(alg, modes.ECB())
        self.tweak = Cipher(algorithms.AES(tweak), modes.ECB()) if tweak else None
        self.xts = algorithms.AES(key + tweak) if tweak else None  # OpenSSL's XTS key
        self.essiv = Cipher(algorithms.AES(essiv), modes.ECB()) if essiv else None


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
                tweak = None
                if xts:
                    if subsize not in (32, 64):
                        # the kernel also takes 48 bytes (AES-192-XTS); OpenSSL has no such mode
                        raise TableError("Error decoding and setting key")
                    if sub[: subsize // 2] == sub[subsize // 2 :]:
                        raise TableError(
                            "Error decoding and setting key: OpenSSL refuses XTS keys "
                            "with equal halves"
                        )
                    sub, tweak = sub[: subsize // 2], sub[subsize // 2 :]
                elif subsize not in _AES_KEYS:
                    raise TableError("Error decoding and setting key")
                salt = None
                if self.spec.ivmode == "essiv" and self.spec.ivopts is not None:
                    salt = hashlib.new(_HASHES[self.spec.ivopts], sub).digest()
                    if len(salt) not in _AES_KEYS:
                        raise TableError("Error decoding and setting key")
                keys.append(_SubKey(sub, tweak, salt))
        self._keys = keys

    def wipe(self) -> None:
        """Forget the key material (``key wipe``)."""
        self._keys = []

    # -- data ------------------------------------------------------------------------------
    def encrypt(self, buf: memoryview, sector: int) -> None:
        """Encrypt ``buf`` (whole units) in place; ``sector`` = target sector + iv_offset."""
        self._convert(buf, sector, encrypt=True)

    def decrypt(self, buf: memoryview, sector: int) -> None:
        self._convert(buf, sector, encrypt=False)

    def _convert(self, buf: memoryview, sector: int, *, encrypt: bool) -> None:
        if self.null:
            return
        keys = self._keys
        if not keys:  # wiped: resume is refused, so I/O cannot get here; fail it if it does
            raise IOFailure("crypt: key is not set")
        size = self.sector_size
        units = len(buf) // size
        if units == 0:
            return
        data: Bytes = np.frombuffer(buf, dtype=np.uint8).reshape(units, size)
        # the 512-byte sector of each unit, modulo 2^64 like the kernel's sector_t
        sectors = np.arange(units, dtype=np.uint64)
        sectors *= np.uint64(self.step)
        sectors += np.uint64(sector & _MASK64)
        ivs = None
        if self.ivmode is not None:
            ivs = iv_array(self.ivmode, sectors >> np.uint64(self.iv_shift), self._benbi_shift)
        if len(keys) == 1:
            self._run(keys[0], data, ivs, encrypt)
            return
        # several subkeys: unit u uses subkey (sector & (keycount - 1)); batch per subkey
        index = sectors & np.uint64(self.keycount - 1)
        for k, subkey in enumerate(keys):
            rows = np.flatnonzero(index == k)
            if rows.size:
                part = data[rows]  # a contiguous copy
                self._run(subkey, part, None if ivs is None else ivs[rows], encrypt)
                data[rows] = part

    def _run(self, key: _SubKey, data: Bytes, ivs: Bytes | None, encrypt: bool) -> None:
        """Convert ``data`` (``(units, sector_size)``) in place with one subkey."""
        chain = self.spec.chainmode
        if ivs is None:  # ecb
            ctx = key.data.encryptor() if encrypt else key.data.decryptor()
            data[...] = batched.ecb(ctx, data).reshape(data.shape)
            return
        if key.essiv is not None:  # ESSIV: the plain64 blocks encrypted with the salt key
            ivs = batched.ecb(key.essiv.encryptor(), ivs).reshape(ivs.shape)
        if chain == "xts":
            assert key.tweak is not None and key.xts is not None
            if len(data) >= _XTS_BATCH_MIN * max(1, self.sector_size // 1024):
                ctx = key.data.encryptor() if encrypt else key.data.decryptor()
                batched.xts(data, ivs, key.tweak.encryptor(), ctx)
                return
            for row, iv in zip(data, ivs, strict=True):
                xts = Cipher(key.xts, modes.XTS(iv.tobytes()))
                unit = xts.encryptor() if encrypt else xts.decryptor()
                row[...] = np.frombuffer(unit.update(row), dtype=np.uint8)
        elif chain == "ctr":
            batched.ctr(data, ivs, key.data.encryptor())
        elif not encrypt:
            batched.cbc_decrypt(data, ivs, key.data.decryptor())
        elif len(data) * _CBC_COLUMNS_MIN >= self.sector_size // batched.BLOCK:
            batched.cbc_encrypt(data, ivs, key.data.encryptor())
        else:  # a few units: one CBC context each is cheaper than a call per block column
            for row, iv in zip(data, ivs, strict=True):
                ctx = Cipher(key.alg, modes.CBC(iv.tobytes())).encryptor()
                row[...] = np.frombuffer(ctx.update(row), dtype=np.uint8)
