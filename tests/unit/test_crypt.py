"""crypt: cipher spec parsing, IV generators, the target through the engine (no FUSE)."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import tempfile
from collections.abc import Callable

import numpy as np
import pytest
import trio
import trio.lowlevel
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError, TableError
from dmfuse.openssl.loops import Job
from dmfuse.targets.crypt import Crypt
from dmfuse.targets.crypt.cipherspec import CipherSpec, key_size, mask_key, parse_cipher
from dmfuse.targets.crypt.ivgen import benbi_shift, generator, iv_array
from dmfuse.targets.crypt.sectors import SectorCipher
from tests.conftest import pattern

K32 = bytes(range(32)).hex()
K64 = bytes(range(64)).hex()
MiB = 1 << 20


# -- cipher specs (pure) ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "cipher", "chain", "ivmode", "ivopts", "keycount"),
    [
        ("aes-xts-plain64", "aes", "xts", "plain64", None, 1),
        ("aes-cbc-essiv:sha256", "aes", "cbc", "essiv", "sha256", 1),
        ("aes", "aes", "cbc", "plain", None, 1),
        ("aes-plain", "aes", "cbc", "plain", None, 1),
        ("aes-ecb", "aes", "ecb", None, None, 1),
        ("aes-cbc-", "aes", "cbc", "", None, 1),
        ("aes:2-cbc-plain64", "aes", "cbc", "plain64", None, 2),
        ("aes-xts-plain64-x", "aes", "xts", "plain64-x", None, 1),
        ("capi:xts(aes)-plain64", "aes", "xts", "plain64", None, 1),
        ("capi:cbc(aes)-essiv:sha256", "aes", "cbc", "essiv", "sha256", 1),
        ("capi:ecb(aes)", "aes", "ecb", None, None, 1),
        ("cipher_null-ecb", "cipher_null", "ecb", None, None, 1),
    ],
)
def test_parse_cipher(
    text: str, cipher: str, chain: str, ivmode: str | None, ivopts: str | None, keycount: int
) -> None:
    assert parse_cipher(text) == CipherSpec(text, cipher, chain, ivmode, ivopts, keycount)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("aes-cbc", "IV mechanism required"),
        ("aes-", "IV mechanism required"),
        ("aes-cbc-essiv", "Digest algorithm missing for ESSIV mode"),
        ("capi:cbc(aes)-essiv", "Digest algorithm missing for ESSIV mode"),
        ("aes:3-cbc-plain64", "Bad cipher key count specification"),
        ("aes:0-cbc-plain64", "Bad cipher key count specification"),
        ("aes:x-cbc-plain64", "Bad cipher key count specification"),
        ("aes(x)-cbc-plain64", "Bad cipher specification"),
        ("capi:authenc(hmac(sha256),xts(aes))-random", "Error allocating crypto tfm"),
    ],
)
def test_parse_cipher_errors(text: str, error: str) -> None:
    with pytest.raises(TableError, match=error):
        parse_cipher(text)


def test_key_size_and_masking() -> None:
    assert key_size(K64) == 64 and key_size("-") == 0 and key_size("abc") == 1
    assert key_size(":64:logon:cryptsetup:x-d0") == 64
    for bad in (":64", ":x:logon:a", ":-1:user:a"):
        with pytest.raises(TableError, match="Cannot parse key size"):
            key_size(bad)
    assert mask_key(f"aes-xts-plain64 {K32} 0 /d 0") == f"aes-xts-plain64 {'0' * 64} 0 /d 0"
    assert mask_key("aes-xts-plain64 :64:logon:d 0 /d 0") == "aes-xts-plain64 :64:logon:d 0 /d 0"
    assert mask_key("cipher_null-ecb - 0 /d 0") == "cipher_null-ecb 0 0 /d 0"  # as dmsetup


# -- IV generators (pure) --------------------------------------------------------------------
def test_iv_generators() -> None:
    s = 0x0123456789ABCDEF
    assert generator("plain", 16)(s) == bytes.fromhex("efcdab89") + bytes(12)
    assert generator("plain64", 16)(s) == s.to_bytes(8, "little") + bytes(8)
    assert generator("essiv", 16)(s) == s.to_bytes(8, "little") + bytes(8)
    assert generator("plain64be", 16)(s) == bytes(8) + s.to_bytes(8, "big")
    assert generator("null", 16)(s) == bytes(16)
    # benbi counts 16-byte cipher blocks from 1: sector 3 -> 3 * 32 + 1
    assert benbi_shift(16) == 5
    assert generator("benbi", 16, 5)(3) == bytes(8) + (97).to_bytes(8, "big")
    assert generator("plain", 16)(2**32 + 5) == generator("plain", 16)(5)  # wraps at 2 TiB
    with pytest.raises(ValueError, match="power of 2"):
        benbi_shift(24)


# -- the target through the engine ----------------------------------------------------------
def xts_decrypt(
    raw: bytes, key: bytes, first_sector: int, unit: int = 512, shift: int = 0
) -> bytes:
    """An independent aes-xts-plain64 (oracles.md 2.3): one XTS call per unit."""
    out = b""
    for i in range(0, len(raw), unit):
        tweak = ((first_sector + i // 512) >> shift).to_bytes(16, "little")
        dec = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()
        out += dec.update(raw[i : i + unit])
    return out


async def test_xts_plain64_roundtrip_offset_and_table(make_file: Callable[..., str]) -> None:
    disk = make_file("disk.img", MiB, seed=None)
    m = Manager()
    await m.create("c", f"0 1024 crypt aes-xts-plain64 {K64.upper()} 7 {disk} 512")
    dev = m.get("c")
    data = pattern(0, 8192, seed=3)
    await dev.write(4096, memoryview(data))
    assert bytes(await dev.read(4096, 8192)) == data
    with open(disk, "rb") as fh:
        fh.seek(512 * 512 + 4096)
        raw = fh.read(8192)
    assert raw != data
    assert xts_decrypt(raw, bytes(range(64)), 8 + 7) == data  # sector 8 + iv_offset 7
    # the key prints lowercase with --showkeys, as zeros without
    assert m.table("c", showkeys=True)[0]["lines"] == [
        f"0 1024 crypt aes-xts-plain64 {K64} 7 {disk} 512"
    ]
    assert m.table("c")[0]["lines"] == [f"0 1024 crypt aes-xts-plain64 {'0' * 128} 7 {disk} 512"]
    assert m.status("c")[0]["lines"] == ["0 1024 crypt "]


async def test_options_echoed_in_kernel_order(make_file: Callable[..., str]) -> None:
    disk = make_file("disk.img", MiB, seed=None)
    m = Manager()
    opts = (
        "9 iv_large_sectors sector_size:4096 no_write_workqueue no_read_workqueue "
        "submit_from_crypt_cpus same_cpu_crypt ALLOW_DISCARDS high_priority allow_discards"
    )
    await m.create("c", f"0 2048 crypt aes-xts-plain64 {K64} 0 {disk} 0 {opts}")
    assert m.table("c", showkeys=True)[0]["lines"] == [
        f"0 2048 crypt aes-xts-plain64 {K64} 0 {disk} 0 8 allow_discards same_cpu_crypt "
        "high_priority submit_from_crypt_cpus no_read_workqueue no_write_workqueue "
        "sector_size:4096 iv_large_sectors"
    ]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ("aes-xts-plain64 {k64} 0 {disk}", "Not enough arguments"),
        ("aes-xts-plain64 :64 0 {disk} 0", "Cannot parse key size"),
        ("aes-xts-plain64 {k64} 0 {disk} 0 x", "Invalid number of feature args"),
        ("aes-xts-plain64 {k64} 0 {disk} 0 2 allow_discards", "Invalid number of feature args"),
        ("aes-xts-plain64 {k64} 0 {disk} 0 10 " + "same_cpu_crypt " * 10, "feature args"),
        ("aes-xts-plain64 {k64} 0 {disk} 0 1 bogus", "Invalid feature arguments"),
        ("aes-xts-plain64 {k64} 0 {disk} 0 1 sector_size:4096x", "Invalid feature arguments"),
        ("aes-xts-plain64 {k64} 0 {disk} 0 1 sector_size:1000", "Invalid feature value"),
        ("aes-xts-plain64 {k64} 0 {disk} 0 1 sector_size:8192", "Invalid feature value"),
        ("aes-xts-plain64 {k64} 0 {disk} 0 1 sector_size:256", "Invalid feature value"),
        ("aes-xts-plain64 {k64} 3 {disk} 0 1 sector_size:4096", "Invalid iv_offset sector"),
        ("aes-xts-plain64 {k64} x {disk} 0", "Invalid iv_offset sector"),
        ("aes-xts-plain64 {k64} -1 {disk} 0", "Invalid iv_offset sector"),
        ("aes-xts-plain64 {k64} 0 {disk} x", "Invalid device sector"),
        ("aes-xts-plain64 {k64}zz 0 {disk} 0", "Error decoding and setting key"),
        ("aes-xts-plain64 {k32}zz 0 {disk} 0", "Error decoding and setting key"),
        ("aes-xts-plain64 - 0 {disk} 0", "Error decoding and setting key"),
        ("aes-xts-plain64 {k32}{k32} 0 {disk} 0", "equal halves"),
        ("aes-cbc-plain64 {k64} 0 {disk} 0", "Error decoding and setting key"),
        ("aes-cbc-essiv:sha512 {k32} 0 {disk} 0", "Error decoding and setting key"),
        ("aes-cbc-essiv:nohash {k32} 0 {disk} 0", "Error allocating crypto tfm"),
        ("aes-foo-plain64 {k32} 0 {disk} 0", "Error allocating crypto tfm"),
        ("foo-cbc-plain64 {k32} 0 {disk} 0", "Error allocating crypto tfm"),
        ("aes-cbc-bogus {k32} 0 {disk} 0", "Invalid IV mode"),
        ("aes-cbc-lmk {k32} 0 {disk} 0", "IV mode lmk is not supported by dmfuse"),
        ("aes-xts-plain64 {k64} 0 {disk} 0 1 integrity:28:aead", "Integrity profile"),
        ("aes-xts-plain64 {k64} 0 {disk} 0 1 integrity:0:aead", "Invalid integrity arguments"),
        ("aes-xts-plain64 {k64} 0 {disk} 0 1 integrity:8:foo", "Unknown integrity profile"),
        ("aes-xts-plain64 :64:bad:foo 0 {disk} 0", "Error decoding and setting key"),
        ("aes-xts-plain64 {k64} 0 /nonexistent/x 0", "Device lookup failed"),
        ("aes-cbc-essiv: {k32} 0 {disk} 0", "Error allocating crypto tfm"),
        ("aes-cbc-essiv:sha1 {k32} 0 {disk} 0", "Error decoding and setting key"),
        ("cipher_null-ecb {k32} 0 {disk} 0", "Error decoding and setting key"),
    ],
)
async def test_constructor_errors(make_file: Callable[..., str], args: str, error: str) -> None:
    disk = make_file("disk.img", MiB, seed=None)
    m = Manager()
    text = "0 2048 crypt " + args.format(k64=K64, k32=K32, disk=disk)
    with pytest.raises(TableError, match=error) as exc:
        await m.create("c", text)
    enoent = ("Error allocating crypto tfm", "Device lookup failed")  # as the kernel
    assert exc.value.errno == (errno.ENOENT if error in enoent else errno.EINVAL)
    assert K32 not in str(exc.value)  # never echo the key
    assert "c" not in m.devices


async def test_sector_size_not_dividing_length(make_file: Callable[..., str]) -> None:
    disk = make_file("disk.img", MiB, seed=None)
    with pytest.raises(TableError, match="Device size is not multiple of sector_size feature"):
        await Manager().create(
            "c", f"0 2047 crypt aes-xts-plain64 {K64} 0 {disk} 0 1 sector_size:1024"
        )


async def test_keyring_key_is_a_clear_error(make_file: Callable[..., str]) -> None:
    disk = make_file("disk.img", MiB, seed=None)
    with pytest.raises(TableError, match="keyring keys are not available") as exc:
        await Manager().create("c", f"0 2048 crypt aes-xts-plain64 :64:logon:cs:x-d0 0 {disk} 0")
    assert exc.value.errno == errno.ENOKEY


async def test_key_messages_only_while_suspended_and_wiped_key_vetoes_resume(
    make_file: Callable[..., str],
) -> None:
    disk = make_file("disk.img", MiB, seed=None)
    m = Manager()
    await m.create("c", f"0 2048 crypt aes-xts-plain64 {K64} 0 {disk} 0")
    dev = m.get("c")
    data = pattern(0, 4096, seed=5)
    await dev.write(0, memoryview(data))
    for msg in ("key wipe", f"key set {K64}"):
        with pytest.raises(DmError, match="not suspended") as exc:
            await m.message("c", 0, msg)
        assert exc.value.errno == errno.EINVAL
    await m.suspend("c")
    for msg in ("foo", "key", "key foo", "key wipe extra", f"key set {K32}", "key set :64:x"):
        with pytest.raises(DmError) as exc:
            await m.message("c", 0, msg)
        assert exc.value.errno == errno.EINVAL
        assert K32 not in str(exc.value)
    await m.message("c", 0, "KEY WIPE")
    assert m.table("c", showkeys=True)[0]["lines"][0].split()[4] == "0" * 128
    with pytest.raises(DmError, match="crypt key is not set") as exc:
        await m.resume("c")
    assert exc.value.errno == errno.EAGAIN and dev.suspended
    # a bad key (right size) leaves the key unset as well
    with pytest.raises(DmError, match="Error decoding and setting key"):
        await m.message("c", 0, "key set " + K32 + "zz" + K32[2:])
    # like the kernel's hex2bin, the pairs before the bad one were taken (seen with showkeys)
    assert m.table("c", showkeys=True)[0]["lines"][0].split()[4] == K32 + "0" * 64
    with pytest.raises(DmError, match="crypt key is not set"):
        await m.resume("c")
    await m.message("c", 0, f"key set {K64}")
    await m.resume("c")
    assert not dev.suspended
    assert bytes(await dev.read(0, 4096)) == data
    assert m.table("c", showkeys=True)[0]["lines"][0].split()[4] == K64


async def test_punch_hole_refused_and_nothing_changes(make_file: Callable[..., str]) -> None:
    disk = make_file("disk.img", MiB, seed=None)
    m = Manager()
    await m.create("c", f"0 2048 crypt aes-xts-plain64 {K64} 0 {disk} 0 1 allow_discards")
    dev = m.get("c")
    data = pattern(0, 8192, seed=9)
    await dev.write(0, memoryview(data))
    before = open(disk, "rb").read()
    with pytest.raises(DmError) as exc:
        await dev.discard(0, 8192)
    assert exc.value.errno == errno.EOPNOTSUPP
    assert open(disk, "rb").read() == before
    # zero-range writes encrypted zeros (dm-crypt has no write-zeroes of its own)
    await dev.discard(512, 1024, zero_fill=True)
    got = bytes(await dev.read(0, 8192))
    assert got == data[:512] + bytes(1024) + data[1536:]
    with open(disk, "rb") as fh:
        fh.seek(512)
        assert fh.read(1024) != bytes(1024)


async def test_4096_units_read_modify_write_under_concurrency(
    make_file: Callable[..., str],
) -> None:
    """Many overlapping unaligned writes at once: the result equals a flat model."""
    disk = make_file("disk.img", MiB, seed=None)
    m = Manager()
    await m.create(
        "c",
        f"0 512 crypt aes-cbc-essiv:sha256 {K32} 8 {disk} 0 2 sector_size:4096 iv_large_sectors",
    )
    dev = m.get("c")
    size = 512 * 512
    model = bytearray(bytes(await dev.read(0, size)))
    rng = __import__("random").Random(4)
    jobs = []
    for i in range(60):
        off = rng.randrange(0, size - 1)
        n = rng.randrange(1, min(20000, size - off))
        jobs.append((off, pattern(off, n, seed=i)))

    async def one(off: int, chunk: bytes) -> None:
        await dev.write(off, memoryview(chunk))

    # apply in order of completion is nondeterministic for overlaps: keep writes disjoint per
    # round so the model is exact, but run each round concurrently
    rounds: list[list[tuple[int, bytes]]] = []
    for off, chunk in jobs:
        for rnd in rounds:
            if all(off + len(chunk) <= o or o + len(c) <= off for o, c in rnd):
                rnd.append((off, chunk))
                break
        else:
            rounds.append([(off, chunk)])
    for rnd in rounds:
        async with trio.open_nursery() as nursery:
            for off, chunk in rnd:
                nursery.start_soon(one, off, chunk)
        for off, chunk in rnd:
            model[off : off + len(chunk)] = chunk
    assert bytes(await dev.read(0, size)) == bytes(model)
    assert bytes(await dev.read(4095, 3)) == bytes(model[4095:4098])


async def test_a_misaligned_stacked_read_reads_the_blocks_around_it(
    make_file: Callable[..., str],
) -> None:
    """A stacked device's exact read of part of a 4096-byte unit (the kernel's block layer
    would never send one; dmfuse's own metadata readers may): the lower device reads the
    whole units and keeps the part asked for, instead of failing with EIO as it did."""
    disk = make_file("disk.img", MiB, seed=None)
    m = Manager()
    await m.create("c", f"0 2048 crypt aes-xts-plain64 {K64} 0 {disk} 0 1 sector_size:4096")
    dev = m.get("c")
    data = os.urandom(8192)
    await dev.write(0, memoryview(data))
    buf = bytearray(5000)
    await dev.read_into(512, memoryview(buf))
    assert bytes(buf) == data[512:5512]


async def test_large_requests_use_worker_threads_and_agree(make_file: Callable[..., str]) -> None:
    disk = make_file("disk.img", 4 * MiB, seed=None)
    m = Manager()
    await m.create("c", f"0 8192 crypt aes-xts-plain64 {K64} 0 {disk} 0")
    dev = m.get("c")
    big = os.urandom(2 * MiB)
    assert len(big) >= Crypt.THREAD_MIN
    await dev.write(0, memoryview(big))  # threaded
    small = bytearray()
    for off in range(0, len(big), 4096):  # inline
        small += await dev.read(off, 4096)
    assert bytes(small) == big
    assert bytes(await dev.read(0, len(big))) == big  # threaded
    with open(disk, "rb") as fh:
        assert xts_decrypt(fh.read(len(big)), bytes(range(64)), 0) == big


async def test_backing_file_shrunk_under_the_table_fails_reads_with_eio(
    make_file: Callable[..., str],
) -> None:
    """Reads go from C straight to the backing file: one that ends early (shrunk after the
    table was loaded) fails the read with EIO, inline and on the worker thread alike."""
    disk = make_file("disk.img", 4 * MiB, seed=None)
    m = Manager()
    await m.create("c", f"0 8192 crypt aes-xts-plain64 {K64} 0 {disk} 0")
    dev = m.get("c")
    os.truncate(disk, MiB)
    assert len(await dev.read(0, 4096)) == 4096
    for offset, size in ((2 * MiB, 4096), (0, Crypt.THREAD_MIN)):
        with pytest.raises(DmError, match="read beyond end of device") as exc:
            await dev.read(offset, size)
        assert exc.value.errno == errno.EIO


async def test_crypt_stacked_on_a_mapped_device(make_file: Callable[..., str]) -> None:
    """Over another device of the mount there is no file to read from C: the target reads
    through the lower device and converts in memory; the ciphertext is the same."""
    disk = make_file("disk.img", 4 * MiB, seed=None)
    m = Manager()
    await m.create("lower", f"0 8192 linear {disk} 0")
    await m.create("c", f"0 4096 crypt aes-xts-plain64 {K64} 0 /dev/mapper/lower 2048")
    dev = m.get("c")
    data = os.urandom(MiB)
    await dev.write(0, memoryview(data))
    assert bytes(await dev.read(0, MiB)) == data
    with open(disk, "rb") as fh:
        fh.seek(MiB)
        assert xts_decrypt(fh.read(MiB), bytes(range(64)), 0) == data


async def test_big_encryption_does_not_hold_up_small_io(make_file: Callable[..., str]) -> None:
    """A large write is encrypted off the trio thread: a small read issued after it starts
    finishes first instead of queueing behind the whole encryption."""
    disk = make_file("disk.img", 16 * MiB, seed=None)
    m = Manager()
    await m.create("c", f"0 32768 crypt aes-cbc-essiv:sha256 {K32} 0 {disk} 0")
    dev = m.get("c")
    order: list[str] = []

    async def big() -> None:
        await dev.write(0, memoryview(bytes(8 * MiB)))
        order.append("big")

    async def small() -> None:
        await trio.lowlevel.checkpoint()  # let the big write start first
        await dev.read(12 * MiB, 4096)
        order.append("small")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(big)
        nursery.start_soon(small)
    assert order == ["small", "big"]


async def test_overlapping_big_requests_go_to_the_worker_thread(
    make_file: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big requests in flight together are converted on the worker thread (the trio
    thread stays free); one alone is converted inline.  The bytes are the same either way,
    and a cancelled request still waits for its conversion before its buffers go."""
    disk = make_file("disk.img", 16 * MiB, seed=None)
    m = Manager()
    await m.create("c", f"0 32768 crypt aes-xts-plain64 {K64} 0 {disk} 0")
    dev = m.get("c")
    started: list[int] = []  # sectors of the requests handed to the worker thread
    real_encrypt, real_decrypt = SectorCipher.encrypt_to, SectorCipher.decrypt_from

    def spy_encrypt(
        self: SectorCipher, fd: int, offset: int, data: memoryview, sector: int, *, worker: bool
    ) -> Job[None] | None:
        if worker:
            started.append(sector)
        return real_encrypt(self, fd, offset, data, sector, worker=worker)

    def spy_decrypt(
        self: SectorCipher, fd: int, offset: int, buf: memoryview, sector: int, *, worker: bool
    ) -> Job[None] | None:
        if worker:
            started.append(sector)
        return real_decrypt(self, fd, offset, buf, sector, worker=worker)

    monkeypatch.setattr(SectorCipher, "encrypt_to", spy_encrypt)
    monkeypatch.setattr(SectorCipher, "decrypt_from", spy_decrypt)
    chunks = [os.urandom(MiB) for _ in range(8)]
    await dev.write(0, memoryview(chunks[0]))  # alone: inline
    assert started == []
    async with trio.open_nursery() as nursery:  # together: the worker thread
        for i, chunk in enumerate(chunks):
            nursery.start_soon(dev.write, i * MiB, memoryview(chunk))
    assert len(started) >= 7
    with open(disk, "rb") as fh:
        assert xts_decrypt(fh.read(8 * MiB), bytes(range(64)), 0) == b"".join(chunks)
    got: dict[int, bytes] = {}

    async def read(i: int) -> None:
        got[i] = bytes(await dev.read(i * MiB, MiB))

    started.clear()
    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(read, i)
    assert [got[i] for i in range(8)] == chunks
    assert len(started) >= 7
    with trio.CancelScope() as scope:  # cancelled while converting: no torn state, no crash
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(dev.write, i * MiB, memoryview(bytes(MiB)))
            await trio.lowlevel.checkpoint()
            scope.cancel()
    assert bytes(await dev.read(0, 4096)) in (chunks[0][:4096], bytes(4096))


async def test_cipher_null_stores_plaintext_and_prints_dash(make_file: Callable[..., str]) -> None:
    disk = make_file("disk.img", MiB, seed=None)
    m = Manager()
    await m.create("c", f"0 2040 crypt cipher_null-ecb-null - 0 {disk} 8")
    await m.get("c").write(0, memoryview(b"plain" * 100))
    with open(disk, "rb") as fh:
        fh.seek(8 * 512)
        assert fh.read(500) == b"plain" * 100
    assert m.table("c", showkeys=True)[0]["lines"] == [
        f"0 2040 crypt cipher_null-ecb-null - 0 {disk} 8"
    ]
    assert m.table("c")[0]["lines"] == [f"0 2040 crypt cipher_null-ecb-null 0 0 {disk} 8"]


async def test_flush_reaches_the_backing_file(
    make_file: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = make_file("disk.img", MiB, seed=None)
    m = Manager()
    await m.create("c", f"0 2048 crypt aes-xts-plain64 {K64} 0 {disk} 0")
    backend = m.get("c").live.targets[0].devices()[0]  # type: ignore[union-attr]
    calls: list[int] = []
    real = backend.flush

    async def counting(datasync: bool = False) -> None:
        calls.append(1)
        await real(datasync)

    monkeypatch.setattr(backend, "flush", counting)
    await m.get("c").flush()
    assert calls == [1]


_TABLES = [
    ("aes-xts-plain64", K64, ""),
    ("aes-cbc-essiv:sha256", K32, " 1 sector_size:1024"),
    ("aes:2-cbc-plain64", K64, ""),
    ("aes-xts-plain64be", K64, " 2 sector_size:4096 iv_large_sectors"),
    ("aes-ctr-plain64", K32, " 1 sector_size:2048"),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_TABLES),
    st.integers(0, 64),
    st.lists(
        st.tuples(st.integers(0, 10**6), st.integers(1, 20000), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    ),
)
def test_random_writes_match_a_flat_model_and_survive_a_reload(
    table: tuple[str, str, str], iv_offset: int, writes: list[tuple[int, int, int]]
) -> None:
    """Byte-granular writes anywhere read back as a flat model, also after the table is
    rebuilt from its own ``table --showkeys`` output (ciphertext depends only on the table)."""
    cipher, key, opts = table
    unit = int(opts.split("sector_size:")[1].split()[0]) if "sector_size" in opts else 512
    iv_offset -= iv_offset % (unit // 512)
    size = 256 * 1024

    async def run(disk: str) -> None:
        line = f"0 {size // 512} crypt {cipher} {key} {iv_offset} {disk} 16{opts}"
        m = Manager()
        await m.create("c", line)
        dev = m.get("c")
        model = bytearray(await dev.read(0, size))
        for offset, length, fill in writes:
            offset %= size
            length = min(length, size - offset)
            chunk = bytes([fill]) * length
            await dev.write(offset, memoryview(chunk))
            model[offset : offset + length] = chunk
        assert bytes(await dev.read(0, size)) == bytes(model)
        shown = m.table("c", showkeys=True)[0]["lines"][0]
        assert shown == line
        await m.remove("c")
        await m.create("again", shown)
        assert bytes(await m.get("again").read(0, size)) == bytes(model)

    with tempfile.TemporaryDirectory() as tmp:
        disk = os.path.join(tmp, "disk.img")
        with open(disk, "wb") as fh:
            fh.write(os.urandom(size + 16 * 512))
        trio.run(run, disk)


# -- the C unit loop against one public OpenSSL context per unit ------------------------------
MASK64 = 2**64 - 1


def per_unit_reference(
    cipher: str, key: bytes, unit: int, iv_large: bool, first: int, data: bytes, encrypt: bool
) -> bytes:
    """What one ``Cipher(AES, XTS/CBC/CTR(iv))`` per unit gives (the public API, no batching)."""
    spec = parse_cipher(cipher)
    step = unit // 512
    shift = step.bit_length() - 1 if iv_large else 0
    gen = generator(spec.ivmode or "", 16, benbi_shift(16) if spec.ivmode == "benbi" else 0)
    out = b""
    for i in range(len(data) // unit):
        iv = gen(((first + i * step) & MASK64) >> shift)
        if spec.ivmode == "essiv":
            salt = hashlib.sha256(key).digest()
            iv = Cipher(algorithms.AES(salt), modes.ECB()).encryptor().update(iv)
        mode = {"xts": modes.XTS, "cbc": modes.CBC, "ctr": modes.CTR}[spec.chainmode](iv)
        ctx = Cipher(algorithms.AES(key), mode)
        conv = ctx.encryptor() if encrypt else ctx.decryptor()
        out += conv.update(data[i * unit : (i + 1) * unit])
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([32, 64]),
    st.sampled_from([512, 4096]),
    st.booleans(),
    st.integers(0, MASK64),
    st.integers(1, 64),
    st.integers(0, 2**32),
)
def test_xts_equals_one_public_openssl_context_per_unit(
    key_bytes: int, unit: int, iv_large: bool, first: int, units: int, seed: int
) -> None:
    """The C unit loop (dmfuse.openssl.loops) against ``cryptography``, one context per unit."""
    rnd = random.Random(seed)
    key = rnd.randbytes(key_bytes)
    while key[: key_bytes // 2] == key[key_bytes // 2 :]:
        key = rnd.randbytes(key_bytes)
    plain = rnd.randbytes(units * unit)
    sc = SectorCipher(parse_cipher("aes-xts-plain64"), key, unit, iv_large)
    buf = bytearray(plain)
    sc.encrypt(memoryview(buf), first)
    assert bytes(buf) == per_unit_reference(
        "aes-xts-plain64", key, unit, iv_large, first, plain, True
    )
    out = bytearray(len(buf))  # into another buffer, as writes do
    sc.convert(memoryview(buf), memoryview(out), first, encrypt=False)
    assert bytes(out) == plain


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(
        [
            "aes-cbc-plain64",
            "aes-cbc-plain",
            "aes-cbc-benbi",
            "aes-cbc-essiv:sha256",
            "aes-cbc-plain64be",
            "aes-ctr-plain64",
            "aes-ctr-plain64be",
            "aes-xts-plain",
            "aes-xts-benbi",
            "aes-xts-null",
        ]
    ),
    st.sampled_from([16, 24, 32]),
    st.sampled_from([512, 1024, 4096]),
    st.booleans(),
    st.integers(0, MASK64),
    st.integers(1, 40),
    st.integers(0, 2**32),
)
# the counter's low word overflows into the high word; the IV sector wraps at 2^64
@example("aes-ctr-plain64be", 16, 512, False, MASK64, 4, 0)
@example("aes-cbc-benbi", 32, 4096, True, MASK64 - 7, 3, 1)
def test_every_mode_equals_one_public_openssl_context_per_unit(
    cipher: str,
    key_bytes: int,
    unit: int,
    iv_large: bool,
    first: int,
    units: int,
    seed: int,
) -> None:
    """Every chain mode and IV generator, both directions."""
    rnd = random.Random(seed)
    if "xts" in cipher:
        key_bytes = 64 if key_bytes == 24 else key_bytes * 2
    key = rnd.randbytes(key_bytes)
    plain = rnd.randbytes(units * unit)
    sc = SectorCipher(parse_cipher(cipher), key, unit, iv_large)
    buf = bytearray(plain)
    sc.encrypt(memoryview(buf), first)
    assert bytes(buf) == per_unit_reference(cipher, key, unit, iv_large, first, plain, True)
    sc.decrypt(memoryview(buf), first)
    assert bytes(buf) == plain
    # decryption of data that was not made by encryption
    sc.decrypt(memoryview(buf), first)
    assert bytes(buf) == per_unit_reference(cipher, key, unit, iv_large, first, plain, False)


@given(
    st.sampled_from(["plain", "plain64", "plain64be", "essiv", "benbi", "null"]),
    st.lists(st.integers(0, MASK64), min_size=1, max_size=20),
)
def test_iv_array_equals_the_scalar_generators(ivmode: str, sectors: list[int]) -> None:
    shift = benbi_shift(16) if ivmode == "benbi" else 0
    gen = generator(ivmode, 16, shift)
    rows = iv_array(ivmode, np.array(sectors, dtype=np.uint64), shift)
    assert [row.tobytes() for row in rows] == [gen(s) for s in sectors]


@pytest.mark.parametrize(
    ("cipher", "key_bytes"),
    [
        ("aes-xts-plain64", 64),
        ("aes-cbc-essiv:sha256", 32),
        ("aes-ctr-plain64", 32),
        ("aes-ecb", 32),
        ("aes:2-cbc-plain64", 64),
        ("aes:2-xts-plain64", 128),
    ],
)
def test_unaligned_buffers_convert_like_aligned_ones(cipher: str, key_bytes: int) -> None:
    """A buffer that does not start on a word boundary (a slice of a larger one) gives the
    same bytes, through OpenSSL and through the per-subkey gather."""
    sc = SectorCipher(parse_cipher(cipher), bytes(range(1, key_bytes + 1)), 512, False)
    plain = pattern(0, 512 * 40, seed=3)
    aligned = bytearray(plain)
    sc.encrypt(memoryview(aligned), 8)
    raw = bytearray(len(plain) + 3)
    view = memoryview(raw)[3:]
    view[:] = plain
    sc.encrypt(view, 8)
    assert bytes(view) == bytes(aligned) != plain
    sc.decrypt(view, 8)
    assert bytes(view) == plain
