"""dmfuse.openssl.loops: the C loops against ``cryptography`` / ``hashlib``, and their refusals."""

from __future__ import annotations

import errno
import hashlib
import os
import select
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from dmfuse.openssl.loops import BlockHasher, Job, OpenSSLError, UnitCipher

KEY64 = bytes(range(1, 65))


def reference_xts(data: bytes, ivs: bytes, unit: int, encrypt: bool) -> bytes:
    out = b""
    for i in range(len(data) // unit):
        ctx = Cipher(algorithms.AES(KEY64), modes.XTS(ivs[16 * i : 16 * i + 16]))
        conv = ctx.encryptor() if encrypt else ctx.decryptor()
        out += conv.update(data[i * unit : (i + 1) * unit])
    return out


@pytest.mark.parametrize("unit", [512, 4096])
@pytest.mark.parametrize("size", [4096, 1 << 20, 3 << 20])  # inline, and shared by threads
def test_xts_units_equal_one_openssl_context_each(unit: int, size: int) -> None:
    cipher = UnitCipher("AES-256-XTS", KEY64)
    assert cipher.iv_in_place == 1  # this OpenSSL passes the shortcut's self-check
    data = os.urandom(size)
    ivs = os.urandom(16 * (size // unit))
    out = bytearray(size)
    cipher.convert(data, out, ivs, unit, True)
    assert bytes(out) == reference_xts(data, ivs, unit, True)
    cipher.convert(out, out, ivs, unit, False)  # in place
    assert bytes(out) == data


def test_concurrent_calls_from_threads_agree() -> None:
    cipher = UnitCipher("AES-256-XTS", KEY64)
    data = os.urandom(1 << 20)
    ivs = os.urandom(16 * 2048)
    want = bytearray(len(data))
    cipher.convert(data, want, ivs, 512, True)
    results: list[bytes] = []

    def run() -> None:
        for _ in range(20):
            out = bytearray(len(data))
            cipher.convert(data, out, ivs, 512, True)
            results.append(bytes(out))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 60
    assert all(r == want for r in results)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(OpenSSLError, match="no such cipher"):
        UnitCipher("AES-192-XTS", bytes(48))
    with pytest.raises(ValueError, match="takes a 64-byte key, not 32"):
        UnitCipher("AES-256-XTS", bytes(32))
    cipher = UnitCipher("AES-128-CBC", bytes(range(16)))
    assert cipher.iv_in_place == 0  # only XTS takes the shortcut
    with pytest.raises(ValueError, match="not whole 512-byte units"):
        cipher.convert(bytes(1000), bytearray(1000), bytes(16), 512, True)
    with pytest.raises(ValueError, match="differ in length"):
        cipher.convert(bytes(1024), bytearray(512), bytes(32), 512, True)
    with pytest.raises(ValueError, match="need 32 bytes of IVs, got 16"):
        cipher.convert(bytes(1024), bytearray(1024), bytes(16), 512, True)
    with pytest.raises(TypeError):
        cipher.convert(bytes(512), bytes(512), bytes(16), 512, True)  # dst not writable
    with pytest.raises(TypeError, match="already initialised"):
        cipher.__init__("AES-128-CBC", bytes(16))  # type: ignore[misc]
    bare = UnitCipher.__new__(UnitCipher)  # never initialised: refused, not a crash
    with pytest.raises(TypeError, match="not initialised"):
        bare.convert(bytes(512), bytearray(512), bytes(16), 512, True)
    with pytest.raises(TypeError, match="not initialised"):
        BlockHasher.__new__(BlockHasher).digests(bytes(4096), 4096, 0, 1)


@pytest.mark.parametrize(("prefix", "suffix"), [(b"", b""), (b"salt", b""), (b"", b"salt")])
@pytest.mark.parametrize("count", [3, 256, 1024])  # inline, and shared by threads
def test_block_digests_equal_hashlib(prefix: bytes, suffix: bytes, count: int) -> None:
    data = os.urandom(count * 4096)
    hasher = BlockHasher("SHA256", prefix, suffix)
    got = hasher.digests(data, 4096, 1, count)
    want = b"".join(
        hashlib.sha256(prefix + data[i * 4096 : (i + 1) * 4096] + suffix).digest()
        for i in range(1, count)
    )
    assert got == want
    with pytest.raises(ValueError, match="are not in the data"):
        hasher.digests(data, 4096, 0, count + 1)
    with pytest.raises(OpenSSLError, match="no such digest"):
        BlockHasher("NOT-A-HASH", b"", b"")


def test_jobs_on_the_worker_thread_equal_convert() -> None:
    cipher = UnitCipher("AES-256-XTS", KEY64)
    data = [os.urandom(1 << 20) for _ in range(4)]
    ivs = os.urandom(16 * 2048)
    outs = [bytearray(1 << 20) for _ in data]
    jobs = [cipher.start(d, o, ivs, 512, True) for d, o in zip(data, outs, strict=True)]
    assert len({job.fd for job in jobs}) == 1  # one eventfd for all jobs
    for job in jobs:  # the fd turns readable when a job is done; done tells which
        while not job.done:
            readable, _, _ = select.select([job.fd], [], [], 10)
            assert readable == [job.fd]
            os.eventfd_read(job.fd)
        job.finish()
        assert job.fd == -1
        with pytest.raises(RuntimeError, match="already finished"):
            job.finish()
    for d, o in zip(data, outs, strict=True):
        want = bytearray(len(d))
        cipher.convert(d, want, ivs, 512, True)
        assert o == want
    # a job dropped without finish() is waited for, not freed under the worker's feet
    buf = bytearray(data[0])
    job = cipher.start(buf, buf, ivs, 512, False)
    del job
    assert buf == reference_xts(data[0], ivs, 512, False)
    with pytest.raises(ValueError, match="need 32768 bytes of IVs"):
        cipher.start(data[0], bytearray(1 << 20), b"", 512, True)


def test_digest_jobs_on_the_worker_thread_equal_digests() -> None:
    hasher = BlockHasher("SHA256", b"salt", b"")
    data = os.urandom(256 * 4096)
    job = hasher.start(data, 4096, 3, 250)
    readable, _, _ = select.select([job.fd], [], [], 10)
    assert readable == [job.fd]
    assert job.finish() == hasher.digests(data, 4096, 3, 250)
    with pytest.raises(ValueError, match="are not in the data"):
        hasher.start(data, 4096, 0, 257)


def _finished(job: Job[None]) -> None:
    readable, _, _ = select.select([job.fd], [], [], 10)
    assert readable == [job.fd]
    job.finish()  # waits for this job if the fd was readable for another one


@pytest.mark.parametrize("unit", [512, 4096])
@pytest.mark.parametrize(
    "size",
    [4096, 200 << 10, 1 << 20, (3 << 20) + 8192],  # inline, pieces, windows, a partial piece
)
@pytest.mark.parametrize("worker", [False, True])
def test_converting_from_and_to_a_file_equals_convert(
    tmp_path: Path, unit: int, size: int, worker: bool
) -> None:
    """convert_to writes what convert makes, at the offset, leaving the source alone;
    convert_from reads it back and converts it in place, at once or on the worker thread."""
    cipher = UnitCipher("AES-256-XTS", KEY64)
    data = os.urandom(size)
    ivs = os.urandom(16 * (size // unit))
    want = bytearray(size)
    cipher.convert(data, want, ivs, unit, True)
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(size + 3 * 4096))
    fd = os.open(path, os.O_RDWR)
    try:
        source = bytes(data)
        if worker:
            _finished(cipher.start_to(fd, 4096, source, ivs, unit, True))
        else:
            cipher.convert_to(fd, 4096, source, ivs, unit, True)
        assert source == data
        image = path.read_bytes()
        assert image[4096 : 4096 + size] == want
        assert image[:4096] == bytes(4096) and image[4096 + size :] == bytes(2 * 4096)
        back = bytearray(size)
        if worker:
            _finished(cipher.start_from(fd, 4096, back, ivs, unit, False))
        else:
            cipher.convert_from(fd, 4096, back, ivs, unit, False)
        assert back == data
    finally:
        os.close(fd)


def test_file_errors_are_raised_as_oserror_or_eof(tmp_path: Path) -> None:
    cipher = UnitCipher("AES-128-CBC", bytes(range(16)))
    path = tmp_path / "short.img"
    path.write_bytes(bytes(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(1 << 20)
        ivs = bytes(16 * 2048)
        with pytest.raises(EOFError):  # the file ends 512 bytes into the request
            cipher.convert_from(fd, (1 << 20) - 512, buf, ivs, 512, False)
        job = cipher.start_from(fd, (1 << 20) - 512, buf, ivs, 512, False)
        with pytest.raises(EOFError):
            _finished(job)
        with pytest.raises(OSError) as raised:  # opened read-only
            cipher.convert_to(fd, 0, bytes(1 << 20), ivs, 512, True)
        assert raised.value.errno == errno.EBADF
    finally:
        os.close(fd)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as raised:
            _finished(cipher.start_to(full, 0, bytes(1 << 20), ivs, 512, True))
        assert raised.value.errno == errno.ENOSPC
    finally:
        os.close(full)
    with pytest.raises(ValueError, match="must not be negative"):
        cipher.convert_from(-1, 0, bytearray(512), bytes(16), 512, False)
    with pytest.raises(ValueError, match="must not be negative"):
        cipher.convert_to(0, -512, bytes(512), bytes(16), 512, True)
    with pytest.raises(ValueError, match="not whole 512-byte units"):
        cipher.convert_from(0, 0, bytearray(1000), bytes(16), 512, False)


@pytest.mark.parametrize(
    ("first", "step", "unit"),
    [(0, 1, 512), (2**64 - 5, 1, 512), (1000, 8, 4096), (7, 1, 4096)],  # wraps like sector_t
)
def test_plain64_ivs_made_in_c_equal_a_table(first: int, step: int, unit: int) -> None:
    cipher = UnitCipher("AES-256-XTS", KEY64)
    data = os.urandom(1 << 20)
    n = len(data) // unit
    table = b"".join(
        ((first + i * step) % 2**64).to_bytes(8, "little") + bytes(8) for i in range(n)
    )
    made, given = bytearray(len(data)), bytearray(len(data))
    cipher.convert(data, made, (first, step), unit, True)
    cipher.convert(data, given, table, unit, True)
    assert made == given == reference_xts(data, table, unit, True)
    with pytest.raises(ValueError, match="plain64 IVs need 8 IV bytes"):
        UnitCipher("AES-128-ECB", bytes(16)).convert(bytes(512), bytearray(512), (0, 1), 512, True)
    with pytest.raises(OverflowError):
        cipher.convert(data, made, (-1, 1), unit, True)
