"""Sector encryption with OpenSSL (``cryptography``): the kernel's tfm + IV generator pairing.

A :class:`SectorCipher` is built from a parsed :class:`CipherSpec` and the key bytes, and
encrypts or decrypts whole encryption units (``sector_size`` bytes) in place, each unit with
its own IV (``crypt_convert_block_skcipher``).  Construction mirrors ``crypt_ctr_cipher``'s
order of checks so that errors carry the kernel's ``ti->error`` text: allocate the cipher
(``Error allocating crypto tfm``), choose the IV mode (``Invalid IV mode``), set the key
(``Error decoding and setting key``), build the IV generator (``Error creating IV``).

What OpenSSL provides decides what is accepted: AES (128/192/256) in ``xts`` (AES-128/256
only: OpenSSL has no AES-192-XTS and refuses XTS keys whose halves are equal), ``cbc``,
``ctr`` and ``ecb``, and ``cipher_null`` in ``ecb``; ESSIV with the hashlib digests whose
names match the kernel's.  Everything else is refused as the kernel refuses an algorithm it
does not have.

Speed: one ``Cipher`` context per unit is unavoidable where the IV changes (XTS, CBC, CTR);
the per-unit work is kept to building the IV and one ``update``.  ESSIV IVs of a whole
request are made with one ECB call; ``ecb`` with one key is one call for the whole request.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes

from dmfuse.crypt.cipherspec import IV_MODES, KERNEL_ONLY_IV_MODES, CipherSpec
from dmfuse.crypt.ivgen import benbi_shift, generator
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

ContextFactory = Callable[[CipherAlgorithm, Any], Any]


def _public_encryptor(algorithm: CipherAlgorithm, mode: Any) -> Any:
    return Cipher(algorithm, mode).encryptor()


def _public_decryptor(algorithm: CipherAlgorithm, mode: Any) -> Any:
    return Cipher(algorithm, mode).decryptor()


def _context_factories() -> tuple[ContextFactory, ContextFactory]:
    """The cheapest way ``cryptography`` offers to make a cipher context.

    ``Cipher(...).encryptor()`` validates its arguments with Python-level ABC checks that cost
    more than the AES work on a 512-byte unit; the constructor it ends in
    (``create_encryption_ctx``) is a private binding, so it is used only if it exists and gives
    the same bytes as the public path on a known case; otherwise the public path is used."""
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        enc = rust_openssl.ciphers.create_encryption_ctx
        dec = rust_openssl.ciphers.create_decryption_ctx
        alg = algorithms.AES(bytes(range(64)))
        tweak = bytes(range(16))
        sample = bytes(range(256)) * 2
        ref = _public_encryptor(alg, modes.XTS(tweak)).update(sample)
        if enc(alg, modes.XTS(tweak)).update(sample) != ref:
            raise ValueError("private cipher constructor disagrees")
        if dec(alg, modes.XTS(tweak)).update(ref) != sample:
            raise ValueError("private cipher constructor disagrees")
    except Exception:  # any change in cryptography's internals: stay on the public API
        return _public_encryptor, _public_decryptor
    return enc, dec


_ENCRYPTOR, _DECRYPTOR = _context_factories()

ModeFactory = Callable[
    [bytes], modes.ModeWithInitializationVector | modes.ModeWithTweak | modes.ModeWithNonce
]


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
        self._algs: list[CipherAlgorithm] = []
        self._essiv: list[Cipher[modes.ECB]] = []
        self.set_key(key)
        # -- the IV generator
        shift = 0
        if ivmode == "benbi":
            try:
                shift = benbi_shift(16)
            except ValueError as exc:
                raise TableError("Error creating IV") from exc
        self._iv = generator(ivmode, iv_size, shift) if ivmode is not None else None
        factories: dict[str, ModeFactory] = {"xts": modes.XTS, "cbc": modes.CBC, "ctr": modes.CTR}
        self._mode = factories.get(spec.chainmode)

    # -- keys ----------------------------------------------------------------------------
    def set_key(self, key: bytes) -> None:
        """(Re)key every subkey; on failure nothing changes (``TableError``)."""
        algs: list[CipherAlgorithm] = []
        essiv: list[Cipher[modes.ECB]] = []
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
                algs.append(algorithms.AES(sub))
                if self.spec.ivmode == "essiv" and self.spec.ivopts is not None:
                    salt = hashlib.new(_HASHES[self.spec.ivopts], sub).digest()
                    if len(salt) not in _AES_KEYS:
                        raise TableError("Error decoding and setting key")
                    essiv.append(Cipher(algorithms.AES(salt), modes.ECB()))
        self._algs = algs
        self._essiv = essiv

    def wipe(self) -> None:
        """Forget the key material (``key wipe``)."""
        self._algs = []
        self._essiv = []

    # -- data ------------------------------------------------------------------------------
    def encrypt(self, buf: memoryview, sector: int) -> None:
        """Encrypt ``buf`` (whole units) in place; ``sector`` = target sector + iv_offset."""
        self._convert(buf, sector, encrypt=True)

    def decrypt(self, buf: memoryview, sector: int) -> None:
        self._convert(buf, sector, encrypt=False)

    def _convert(self, buf: memoryview, sector: int, *, encrypt: bool) -> None:
        if self.null:
            return
        algs = self._algs
        if not algs:  # wiped: resume is refused, so I/O cannot get here; fail it if it does
            raise IOFailure("crypt: key is not set")
        size = self.sector_size
        units = len(buf) // size
        mode = self._mode
        if mode is None:  # ecb: no IV, units differ only by the key index
            if self.keycount == 1:
                ecb = Cipher(algs[0], modes.ECB())
                ctx = ecb.encryptor() if encrypt else ecb.decryptor()
                buf[:] = ctx.update(buf)
                return
            for i in range(units):
                cipher = Cipher(algs[(sector + i * self.step) & (self.keycount - 1)], modes.ECB())
                ctx = cipher.encryptor() if encrypt else cipher.decryptor()
                part = buf[i * size : (i + 1) * size]
                part[:] = ctx.update(part)
            return
        ivs = self._ivs(sector, units)
        make = _ENCRYPTOR if encrypt else _DECRYPTOR
        if self.keycount == 1:
            alg = algs[0]
            out = [
                make(alg, mode(iv)).update(buf[i * size : (i + 1) * size])
                for i, iv in enumerate(ivs)
            ]
        else:
            mask = self.keycount - 1
            step = self.step
            out = [
                make(algs[(sector + i * step) & mask], mode(iv)).update(
                    buf[i * size : (i + 1) * size]
                )
                for i, iv in enumerate(ivs)
            ]
        buf[:] = b"".join(out)

    def _ivs(self, sector: int, units: int) -> list[bytes]:
        gen = self._iv
        assert gen is not None
        shift = self.iv_shift
        step = self.step
        ivs = [gen((sector + i * step) >> shift) for i in range(units)]
        if self._essiv:
            # ESSIV: encrypt the plain64 blocks with the salt key; one ECB call per subkey.
            if len(self._essiv) == 1:
                raw = self._essiv[0].encryptor().update(b"".join(ivs))
                return [raw[i * 16 : i * 16 + 16] for i in range(units)]
            mask = self.keycount - 1
            return [
                self._essiv[(sector + i * step) & mask].encryptor().update(iv)
                for i, iv in enumerate(ivs)
            ]
        return ivs
