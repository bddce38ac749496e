"""dm-crypt cipher specifications and key strings, parsed as the kernel does.  PURE.

Two forms (``crypt_ctr_cipher_old`` / ``crypt_ctr_cipher_new`` in dm-crypt.c):

* legacy ``cipher[:keycount]-chainmode-ivmode[:ivopts]``: ``aes-xts-plain64``,
  ``aes-cbc-essiv:sha256``, ``aes:2-cbc-plain64``.  Just ``aes`` (or ``aes-plain``) means
  ``aes-cbc-plain``; every chain mode except ``ecb`` needs an IV mode.
* crypto API ``capi:<api spec>[-ivmode[:ivopts]]``: ``capi:xts(aes)-plain64``,
  ``capi:cbc(aes)-essiv:sha256``.  The IV options are split at the *last* ``:`` and the IV mode
  at the *last* ``-``, like the kernel's ``strrchr``.

Both reduce to a :class:`CipherSpec` naming the block cipher, the chain mode, the IV mode and
options and the key count (multi-key mode: sector ``s`` uses subkey ``s & (keycount - 1)``).
Which algorithms exist is decided later (:mod:`.sectors`); here only the shape is
checked, with the kernel's ``ti->error`` texts.
"""

from __future__ import annotations

import re

import attrs

from dmfuse.errors import TableError

# IV generators the kernel knows (crypt_ctr_ivmode); the first group is implemented here.
IV_MODES = ("plain", "plain64", "plain64be", "essiv", "benbi", "null")
KERNEL_ONLY_IV_MODES = ("eboiv", "elephant", "lmk", "tcw", "random")

_API = re.compile(r"([a-z0-9_]+)\(([a-z0-9_]+)\)\Z")
_UINT = re.compile(r"[0-9]+")


@attrs.frozen
class CipherSpec:
    """One parsed ``<cipher>`` argument (``text`` is kept verbatim for ``table``)."""

    text: str
    cipher: str  # block cipher name ("aes", "cipher_null")
    chainmode: str  # "xts", "cbc", "ecb", "ctr", ...
    ivmode: str | None  # None: no IV (ecb, or an IV mode given to a cipher without IVs)
    ivopts: str | None
    keycount: int = 1


def parse_cipher(text: str) -> CipherSpec:
    """Parse ``<cipher>``; raise :class:`TableError` with the kernel's message."""
    if text.startswith("capi:"):
        return _parse_capi(text)
    return _parse_legacy(text)


def _parse_legacy(text: str) -> CipherSpec:
    if "(" in text:
        raise TableError("Bad cipher specification")
    # strsep(&tmp, "-") three times, then strsep(&tmp, ":"): None where the string ran out.
    head, _, rest = text.partition("-")
    tail: str | None = rest if "-" in text else None
    cipher, colon, keycount_text = head.partition(":")
    keycount = 1
    if colon:
        match = _UINT.match(keycount_text)
        # sscanf("%u%c") == 1: digits and nothing after them; then a power of two.
        if match is None or match.end() != len(keycount_text):
            raise TableError("Bad cipher key count specification")
        keycount = int(keycount_text)
        if keycount == 0 or keycount & (keycount - 1) or keycount >= 2**32:
            raise TableError("Bad cipher key count specification")
    chainmode: str | None = None
    ivmode: str | None = None
    ivopts: str | None = None
    if tail is not None:
        chainmode, dash, after = tail.partition("-")
        if dash:
            ivmode, colon2, opts = after.partition(":")
            ivopts = opts if colon2 else None
    if chainmode is None or (chainmode == "plain" and ivmode is None):
        chainmode, ivmode = "cbc", "plain"
    if chainmode != "ecb" and ivmode is None:
        raise TableError("IV mechanism required")
    if ivmode == "essiv" and ivopts is None:
        raise TableError("Digest algorithm missing for ESSIV mode")
    return CipherSpec(text, cipher, chainmode, ivmode, ivopts, keycount)


def _parse_capi(text: str) -> CipherSpec:
    spec = text[len("capi:") :]
    ivopts: str | None = None
    ivmode: str | None = None
    if ":" in spec:
        spec, _, ivopts = spec.rpartition(":")
    if "-" in spec:
        spec, _, ivmode = spec.rpartition("-")
    if ivmode == "essiv" and ivopts is None:
        raise TableError("Digest algorithm missing for ESSIV mode")
    keycount = 64 if ivmode == "lmk" else 1
    match = _API.match(spec)
    if match is None:
        # authenc(...), gcm(aes), nested templates: nothing OpenSSL can do sector by sector.
        raise TableError("Error allocating crypto tfm")
    chainmode, cipher = match.group(1), match.group(2)
    return CipherSpec(text, cipher, chainmode, ivmode, ivopts, keycount)


@attrs.frozen
class KeyString:
    """A ``<key>`` argument: hex bytes, ``-`` (no key) or a keyring reference."""

    size: int  # bytes
    hexkey: str | None = None  # the hex digits (kept only until decoded)
    keyring: str | None = None  # "<type>:<description>" for ``:<size>:<type>:<desc>``


def key_size(text: str) -> int:
    """The kernel's ``get_key_size``: ``len/2`` for hex, the number in ``:<size>:...``."""
    if not text.startswith(":"):
        return len(text) >> 1
    size_text, colon, _ = text[1:].partition(":")
    if not colon or not _UINT.fullmatch(size_text) or int(size_text) >= 2**31:
        raise TableError("Cannot parse key size")
    return int(size_text)


def parse_key(text: str) -> KeyString:
    """Split a key argument (its size was checked by :func:`key_size` first)."""
    size = key_size(text)
    if text.startswith(":"):
        return KeyString(size, keyring=text[1:].partition(":")[2])
    return KeyString(size, hexkey=text)


def decode_hex_key(text: str, size: int) -> bytes:
    """``hex2bin`` of the first ``2*size`` digits (an odd trailing digit is ignored, as there).

    ``-`` is the empty key, valid only when the cipher takes a zero-length key."""
    if size == 0:
        if text != "-":
            raise TableError("Error decoding and setting key")
        return b""
    digits = text[: 2 * size]
    if not re.fullmatch(r"[0-9a-fA-F]*", digits):
        raise TableError("Error decoding and setting key")
    return bytes.fromhex(digits)


def decoded_prefix(text: str, size: int) -> bytes:
    """What ``hex2bin`` wrote before it met a bad digit pair (the kernel keeps those bytes
    in the key it prints after a failed ``key set``)."""
    out = bytearray()
    for i in range(0, min(len(text), 2 * size) - 1, 2):
        pair = text[i : i + 2]
        if not re.fullmatch(r"[0-9a-fA-F]{2}", pair):
            break
        out.append(int(pair, 16))
    return bytes(out)


def mask_key(table_args: str) -> str:
    """dmsetup's key masking for ``table`` without ``--showkeys``: every character of the
    second word becomes ``0`` (``-`` too, as dmsetup prints it); keyring references
    (``:...``) stay."""
    words = table_args.split(" ")
    if len(words) > 1 and not words[1].startswith(":"):
        words[1] = "0" * len(words[1])
    return " ".join(words)
