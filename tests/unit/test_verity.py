"""The verity target through the engine (no FUSE), on trees written by ``veritysetup format``
and by our reference writer (for algorithms veritysetup is not asked about)."""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from dmfuse.engine.manager import Manager
from dmfuse.errors import DmError
from dmfuse.openssl.loops import BlockHasher, Job
from dmfuse.targets.verity import Verity, hashing
from dmfuse.targets.verity import target as verity_mod
from dmfuse.targets.verity.tree import Geometry, build_tree

needs_veritysetup = pytest.mark.skipif(
    shutil.which("veritysetup") is None, reason="veritysetup (cryptsetup-bin) not installed"
)
SALT = "0011223344556677"


def make_data(
    path: Path, blocks: int, block_size: int = 4096, zero_blocks: tuple[int, ...] = ()
) -> bytes:
    """Blocks that differ from each other (so a misplaced block shows), some all zero."""
    data = bytearray(os.urandom(blocks * block_size))
    for n in zero_blocks:
        data[n * block_size : (n + 1) * block_size] = bytes(block_size)
    path.write_bytes(data)
    return bytes(data)


def veritysetup_format(data: Path, hash_path: Path, *opts: str) -> str:
    """Run ``veritysetup format`` and return the root hash it prints."""
    out = subprocess.run(
        ["veritysetup", "format", str(data), str(hash_path), *opts],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return next(ln.split()[-1] for ln in out.splitlines() if ln.startswith("Root hash"))


def flip(path: Path | str, offset: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ mask]))


def target_of(m: Manager, name: str) -> Verity:
    live = m.get(name).live
    assert live is not None
    target = live.targets[0]
    assert isinstance(target, Verity)
    return target


class Setup:
    """A 1 MiB data file with a veritysetup tree (superblock, hash_start 1) and its table."""

    def __init__(self, tmp: Path, blocks: int = 256, zero_blocks: tuple[int, ...] = ()) -> None:
        self.data_path = tmp / "data.img"
        self.hash_path = tmp / "hash.img"
        self.data = make_data(self.data_path, blocks, zero_blocks=zero_blocks)
        self.root = veritysetup_format(self.data_path, self.hash_path, f"--salt={SALT}")
        self.blocks = blocks

    def args(self, opts: str = "") -> str:
        line = (
            f"1 {self.data_path} {self.hash_path} 4096 4096 {self.blocks} 1 sha256 "
            f"{self.root} {SALT}"
        )
        return f"{line} {opts}" if opts else line

    def table(self, opts: str = "") -> str:
        return f"0 {self.blocks * 8} verity {self.args(opts)}"


@pytest.fixture
def vs(tmp_path: Path) -> Setup:
    if shutil.which("veritysetup") is None:
        pytest.skip("veritysetup (cryptsetup-bin) not installed")
    return Setup(tmp_path, zero_blocks=(5,))


async def read_block(m: Manager, name: str, block: int, count: int = 1) -> bytes:
    return bytes(await m.get(name).read(block * 4096, count * 4096))


async def failing_blocks(m: Manager, name: str, blocks: int) -> list[int]:
    bad = []
    for n in range(blocks):
        try:
            await read_block(m, name, n)
        except DmError as exc:
            assert exc.errno == errno.EIO
            bad.append(n)
    return bad


# -- reading ---------------------------------------------------------------------------------
async def test_reads_back_the_data_with_kernel_strings(vs: Setup) -> None:
    m = Manager()
    await m.create("v", vs.table(), readonly=True)
    dev = m.get("v")
    assert dev.size == len(vs.data)
    assert bytes(await dev.read(0, len(vs.data))) == vs.data
    assert bytes(await dev.read(4096 * 3 + 100, 9000)) == vs.data[4096 * 3 + 100 : 4096 * 3 + 9100]
    assert m.status("v")[0]["lines"] == ["0 2048 verity V"]
    assert m.table("v")[0]["lines"] == [vs.table()]


async def test_table_round_trips_with_options_in_kernel_order(vs: Setup) -> None:
    m = Manager()
    given = (
        "5 try_verify_in_tasklet Check_At_Most_Once IGNORE_ZERO_BLOCKS restart_on_error "
        "ignore_corruption"
    )
    await m.create("v", vs.table(given), readonly=True)
    printed = vs.table(
        "5 ignore_corruption restart_on_error ignore_zero_blocks check_at_most_once "
        "try_verify_in_tasklet"
    )
    assert m.table("v")[0]["lines"] == [printed]
    await m.create("w", printed, readonly=True)  # what table prints loads back
    assert m.table("w")[0]["lines"] == [printed]
    upper = vs.table().replace(vs.root, vs.root.upper())
    await m.create("u", upper, readonly=True)
    assert m.table("u")[0]["lines"] == [vs.table()]  # digests print in lower case


async def test_shorter_target_and_unaligned_reads(vs: Setup) -> None:
    m = Manager()
    await m.create("v", f"0 800 verity {vs.args()}", readonly=True)  # 100 of 256 blocks
    dev = m.get("v")
    assert bytes(await dev.read(0, 1 << 20)) == vs.data[: 800 * 512]
    assert bytes(await dev.read(12345, 3)) == vs.data[12345:12348]


async def test_writes_and_discards_are_refused(vs: Setup) -> None:
    m = Manager()
    await m.create("v", vs.table(), readonly=True)
    with pytest.raises(DmError) as exc:
        await m.get("v").write(0, memoryview(b"x" * 4096))
    assert exc.value.errno == errno.EROFS
    with pytest.raises(DmError) as exc:
        await m.get("v").discard(0, 4096)
    assert exc.value.errno == errno.EROFS
    await m.get("v").flush()  # no flush bios: an fsync succeeds and touches nothing
    assert vs.data_path.read_bytes() == vs.data


# -- corruption ------------------------------------------------------------------------------
async def test_flipped_data_byte_fails_exactly_that_block(
    vs: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    flip(vs.data_path, 77 * 4096 + 1234)
    m = Manager()
    await m.create("v", vs.table(), readonly=True)
    assert m.status("v")[0]["lines"] == ["0 2048 verity V"]
    with caplog.at_level(logging.ERROR):
        assert await failing_blocks(m, "v", 256) == [77]
    assert f"{vs.data_path}: data block 77 is corrupted" in caplog.text
    assert m.status("v")[0]["lines"] == ["0 2048 verity C"]
    with pytest.raises(DmError):  # any read containing the block fails (hashed on a thread)
        await m.get("v").read(70 * 4096, 16 * 4096)
    with pytest.raises(DmError):  # hashed in two slices on two threads
        await m.get("v").read(0, 1 << 20)
    assert await read_block(m, "v", 76, 1) == vs.data[76 * 4096 : 77 * 4096]


async def test_overlapping_big_reads_are_hashed_on_the_worker_thread(
    vs: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big reads in flight together are hashed by the worker thread (the trio thread stays
    free); a corrupted block is still found there."""
    jobs: list[int] = []
    real = hashing.block_hasher

    class Counting:
        def __init__(self, inner: BlockHasher) -> None:
            self.inner = inner

        def digests(self, data: memoryview, block: int, lo: int, hi: int) -> bytes:
            return self.inner.digests(data, block, lo, hi)

        def start(self, data: memoryview, block: int, lo: int, hi: int) -> Job[bytes]:
            jobs.append(hi - lo)
            return self.inner.start(data, block, lo, hi)

    def counting(name: str, version: int, salt: bytes) -> Counting | None:
        inner = real(name, version, salt)
        return None if inner is None else Counting(inner)

    monkeypatch.setattr(hashing, "block_hasher", counting)
    m = Manager()
    await m.create("v", vs.table(), readonly=True)
    dev = m.get("v")
    await read_block(m, "v", 0)  # both level-0 hash blocks verified and cached
    await read_block(m, "v", 128)
    got: dict[int, bytes] = {}

    async def read(i: int) -> None:
        got[i] = bytes(await dev.read(i * (512 << 10), 512 << 10))

    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(read, i)
    assert got[0] + got[1] == vs.data[: 1 << 20]
    assert jobs  # at least the second read went to the worker
    flip(vs.data_path, 200 * 4096 + 7)
    results: list[BaseException | None] = []

    async def read_or_fail(i: int) -> None:
        try:
            await dev.read(i * (512 << 10), 512 << 10)
            results.append(None)
        except DmError as exc:
            results.append(exc)

    jobs.clear()
    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(read_or_fail, i)
    assert jobs and sorted(r is None for r in results) == [False, True]


@pytest.mark.parametrize("bad", [0, 77, 200, 255])  # first, either half, last
async def test_big_read_with_one_corrupted_block_fails_and_names_it(
    vs: Setup, caplog: pytest.LogCaptureFixture, bad: int
) -> None:
    """A 1 MiB read is hashed in one call on both cores (OpenSSL threads): one bad block in
    it fails the read and is the one logged."""
    flip(vs.data_path, bad * 4096 + 2048)
    m = Manager()
    await m.create("v", vs.table(), readonly=True)
    await read_block(m, "v", 1)  # both level-0 hash blocks verified and cached: the
    await read_block(m, "v", 128)  # read below takes the packed path
    assert m.status("v")[0]["lines"] == ["0 2048 verity V"]
    with caplog.at_level(logging.ERROR), pytest.raises(DmError) as exc:
        await m.get("v").read(0, 1 << 20)
    assert exc.value.errno == errno.EIO
    assert caplog.text.count("is corrupted") == 1
    assert f"{vs.data_path}: data block {bad} is corrupted" in caplog.text
    assert m.status("v")[0]["lines"] == ["0 2048 verity C"]
    # the blocks around it still read, in big reads too
    assert await read_block(m, "v", 0, bad) == vs.data[: bad * 4096]
    assert await read_block(m, "v", bad + 1, 255 - bad) == vs.data[(bad + 1) * 4096 :]


@pytest.mark.parametrize(
    ("where", "bad"),
    [
        (1 * 4096 + 40, list(range(256))),  # top block (its digest of level-0 block 3)
        (1 * 4096 + 100, list(range(256))),  # top block, zero padding: hashed all the same
        (2 * 4096 + 5 * 32, list(range(128))),  # level-0 block 2 (digest of data block 5)
        (3 * 4096 + 4000, list(range(128, 256))),  # level-0 block 3 (digest of block 253)
    ],
)
async def test_flipped_hash_byte_fails_the_blocks_below_it(
    tmp_path: Path, where: int, bad: list[int]
) -> None:
    if shutil.which("veritysetup") is None:
        pytest.skip("veritysetup (cryptsetup-bin) not installed")
    vs = Setup(tmp_path)
    flip(vs.hash_path, where)
    m = Manager()
    await m.create("v", vs.table(), readonly=True)
    assert await failing_blocks(m, "v", 256) == bad
    assert m.status("v")[0]["lines"] == ["0 2048 verity C"]


async def test_superblock_bytes_are_not_part_of_the_tree(vs: Setup) -> None:
    flip(vs.hash_path, 100)  # inside the veritysetup superblock (hash block 0)
    m = Manager()
    await m.create("v", vs.table(), readonly=True)
    assert await failing_blocks(m, "v", 256) == []
    assert m.status("v")[0]["lines"] == ["0 2048 verity V"]


async def test_ignore_corruption_logs_and_passes(
    vs: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    flip(vs.data_path, 77 * 4096)
    flip(vs.hash_path, 2 * 4096 + 9 * 32)  # digest of block 9
    m = Manager()
    await m.create("v", vs.table("1 ignore_corruption"), readonly=True)
    with caplog.at_level(logging.ERROR):
        got = await read_block(m, "v", 0, 256)
    assert got == vs_data_as_on_disk(vs)
    assert "data block 77 is corrupted" in caplog.text
    assert "data block 9 is corrupted" in caplog.text
    assert m.status("v")[0]["lines"] == ["0 2048 verity C"]
    # a new table (on this one metadata block 2 was logged once per block below it, so the
    # 100-line limit is reached): blocks 128-255, whose hash block is sound
    m2 = Manager()
    await m2.create("w", vs.table("1 ignore_corruption"), readonly=True)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert await read_block(m2, "w", 128, 128) == got[128 * 4096 :]
        assert await read_block(m2, "w", 128, 128) == got[128 * 4096 :]  # the tree cached
    flip(vs.data_path, 200 * 4096)
    with caplog.at_level(logging.ERROR):  # the packed compare logs it and passes it
        assert await read_block(m2, "w", 128, 128) == vs_data_as_on_disk(vs)[128 * 4096 :]
    assert caplog.text.count("is corrupted") == 1
    assert "data block 200 is corrupted" in caplog.text
    assert m2.status("w")[0]["lines"] == ["0 2048 verity C"]


def vs_data_as_on_disk(vs: Setup) -> bytes:
    return vs.data_path.read_bytes()


async def test_corruption_log_is_bounded(vs: Setup, caplog: pytest.LogCaptureFixture) -> None:
    for n in range(120):
        flip(vs.data_path, n * 4096 + 7)
    m = Manager()
    await m.create("v", vs.table("1 ignore_corruption"), readonly=True)
    with caplog.at_level(logging.ERROR):
        await read_block(m, "v", 0, 256)
    assert caplog.text.count("is corrupted") == 100
    assert caplog.text.count("reached maximum errors") == 1


async def test_ignore_zero_blocks_returns_zeros_unread(vs: Setup) -> None:
    flip(vs.data_path, 5 * 4096 + 10)  # a block that was zero when the tree was made
    flip(vs.data_path, 6 * 4096 + 10)
    m = Manager()
    await m.create("z", vs.table("1 ignore_zero_blocks"), readonly=True)
    assert await read_block(m, "z", 5) == bytes(4096)
    assert await failing_blocks(m, "z", 8) == [6]
    await m.create("e", vs.table(), readonly=True)
    assert await failing_blocks(m, "e", 8) == [5, 6]


async def test_check_at_most_once_trusts_a_block_after_its_first_check(vs: Setup) -> None:
    m = Manager()
    await m.create("once", vs.table("1 check_at_most_once"), readonly=True)
    await m.create("every", vs.table(), readonly=True)
    await read_block(m, "once", 40)
    await read_block(m, "every", 40)
    flip(vs.data_path, 40 * 4096 + 3)
    flip(vs.data_path, 41 * 4096 + 3)
    changed = await read_block(m, "once", 40)  # not checked again: the changed byte shows
    assert (
        changed == vs_data_as_on_disk(vs)[40 * 4096 : 41 * 4096] != vs.data[40 * 4096 : 41 * 4096]
    )
    assert await failing_blocks(m, "once", 42) == [41]
    assert await failing_blocks(m, "every", 42) == [40, 41]
    # whole aligned runs already checked are skipped at once; unchecked ones still are checked
    assert await read_block(m, "once", 64, 64) == vs.data[64 * 4096 : 128 * 4096]
    flip(vs.data_path, 70 * 4096)
    flip(vs.data_path, 130 * 4096)
    assert await read_block(m, "once", 64, 64) == vs_data_as_on_disk(vs)[64 * 4096 : 128 * 4096]
    with pytest.raises(DmError):
        await read_block(m, "once", 64, 72)


# -- restart/panic modes ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("opt", "level"), [("restart_on_corruption", "ERROR"), ("panic_on_corruption", "CRITICAL")]
)
async def test_restart_and_panic_trip_the_table(
    vs: Setup, caplog: pytest.LogCaptureFixture, opt: str, level: str
) -> None:
    flip(vs.data_path, 77 * 4096)
    m = Manager()
    await m.create("v", vs.table(f"1 {opt}"), readonly=True)
    dev = m.get("v")
    assert await read_block(m, "v", 0) == vs.data[:4096]
    events = dev.event_nr
    with caplog.at_level(logging.ERROR):
        assert await failing_blocks(m, "v", 256) == list(range(77, 256))
    assert dev.event_nr == events + 1
    records = [r for r in caplog.records if "failing all I/O" in r.getMessage()]
    assert len(records) == 1 and records[0].levelname == level
    assert f"data block 77 is corrupted: {opt}: failing all I/O" in records[0].getMessage()
    assert m.status("v")[0]["lines"] == ["0 2048 verity C"]
    await m.load("v", vs.table(f"1 {opt}"), readonly=True)  # a new table starts afresh
    await m.resume("v")
    assert await read_block(m, "v", 0) == vs.data[:4096]
    assert m.status("v")[0]["lines"] == ["0 2048 verity V"]


async def test_restart_on_error_trips_on_an_io_error_not_on_eio_mode(vs: Setup) -> None:
    m = Manager()
    await m.create("r", vs.table("1 restart_on_error"), readonly=True)
    await m.create("e", vs.table(), readonly=True)
    os.truncate(vs.data_path, 100 * 4096)  # reads past 100 blocks now fail in the backend
    assert await failing_blocks(m, "e", 256) == list(range(100, 256))
    assert await failing_blocks(m, "r", 256) == list(range(100, 256))
    assert target_of(m, "r").tripped is not None
    assert target_of(m, "e").tripped is None
    assert m.status("r")[0]["lines"] == ["0 2048 verity V"]  # an I/O error is no corruption
    with pytest.raises(DmError):
        await read_block(m, "r", 0)


# -- the hash-block cache --------------------------------------------------------------------
async def test_cache_makes_each_hash_block_read_once_and_suspend_empties_it(vs: Setup) -> None:
    m = Manager()
    await m.create("v", vs.table(), readonly=True)
    target = target_of(m, "v")
    reads: list[int] = []
    real = target.hash_dev.read

    async def counting(offset: int, buf: memoryview) -> None:
        reads.append(offset // 4096)
        await real(offset, buf)

    target.hash_dev.read = counting  # type: ignore[method-assign]
    for n in range(256):
        await read_block(m, "v", n)
    assert sorted(reads) == [1, 2, 3]  # top block, then each level-0 block once
    flip(vs.hash_path, 2 * 4096 + 5 * 32)
    assert await read_block(m, "v", 5) == vs.data[5 * 4096 : 6 * 4096]  # verified copy kept
    await m.suspend("v")
    await m.resume("v")
    assert await failing_blocks(m, "v", 8) == list(range(8))  # re-read after suspend


@needs_veritysetup
async def test_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1K hash blocks of sha256: 32 digests each, so 4096 data blocks need 128 level-0 blocks
    monkeypatch.setattr(verity_mod, "CACHE_BYTES", 20 * 1024)
    data = make_data(tmp_path / "d.img", 4096, block_size=512)
    root = veritysetup_format(
        tmp_path / "d.img",
        tmp_path / "h.img",
        "--data-block-size=512",
        "--hash-block-size=1024",
        "--salt=-",
    )
    m = Manager()
    await m.create(
        "v",
        f"0 4096 verity 1 {tmp_path / 'd.img'} {tmp_path / 'h.img'} 512 1024 4096 1 sha256 "
        f"{root} -",
        readonly=True,
    )
    assert bytes(await m.get("v").read(0, len(data))) == data
    target = target_of(m, "v")
    assert target._cache.max_blocks == 20
    assert len(target._cache) == 20


# -- other algorithms and geometries (our reference writer) ---------------------------------
@pytest.mark.parametrize(
    ("alg", "version", "dbs", "hbs", "blocks"),
    [
        ("sha3-256", 1, 4096, 4096, 300),
        ("blake2b-512", 0, 1024, 4096, 2000),
        ("md5", 1, 512, 512, 700),
        ("sha512-generic", 0, 4096, 1024, 33),
        ("sha1", 1, 4096, 4096, 1),
        ("sha1", 1, 4096, 4096, 300),  # 20-byte digests in 32-byte slots
        ("sha256", 1, 4096, 8192, 700),  # hash blocks above PAGE_SIZE: allowed (6.12 VM)
    ],
)
async def test_any_kernel_algorithm(
    tmp_path: Path, alg: str, version: int, dbs: int, hbs: int, blocks: int
) -> None:
    data = make_data(tmp_path / "d.img", blocks, dbs)
    ctor = hashing.lookup(alg)
    assert ctor is not None
    salt = b"\x12\x34\x56"
    g = Geometry.compute(
        version=version,
        data_block_size=dbs,
        hash_block_size=hbs,
        data_blocks=blocks,
        hash_start=3,
        digest_size=hashing.digest_size(ctor),
    )
    root, tree = build_tree(
        g, lambda n: data[n * dbs : (n + 1) * dbs], hashing.salted(ctor, version, salt)
    )
    image = bytearray(max(g.hash_blocks, 3) * hbs)
    for index, block in tree.items():
        image[index * hbs : (index + 1) * hbs] = block
    (tmp_path / "h.img").write_bytes(image)
    table = (
        f"0 {blocks * dbs // 512} verity {version} {tmp_path / 'd.img'} {tmp_path / 'h.img'} "
        f"{dbs} {hbs} {blocks} 3 {alg} {root.hex()} 123456"
    )
    m = Manager()
    await m.create("v", table, readonly=True)
    assert bytes(await m.get("v").read(0, len(data))) == data
    assert bytes(await m.get("v").read(0, len(data))) == data  # again, the tree cached
    assert m.table("v")[0]["lines"] == [table]
    flip(tmp_path / "d.img", len(data) - 1)
    with pytest.raises(DmError):
        await m.get("v").read(len(data) - dbs, dbs)
    with pytest.raises(DmError):
        await m.get("v").read(0, len(data))


# -- table errors ----------------------------------------------------------------------------
R = "e9aad1930d0a42185d866d8c9b767a1ab575f776d00abf465f22238006c123dd"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("1 {d} {h} 4096 4096 256 1 sha256 {r}", "Not enough arguments"),
        ("2 {d} {h} 4096 4096 256 1 sha256 {r} -", "Invalid version"),
        ("1x {d} {h} 4096 4096 256 1 sha256 {r} -", "Invalid version"),
        (
            "1 /nonexistent {h} 4096 4096 256 1 sha256 {r} -",
            "Data device lookup failed: /nonexistent",
        ),
        (
            "1 {d} /nonexistent 4096 4096 256 1 sha256 {r} -",
            "Hash device lookup failed: /nonexistent",
        ),
        ("1 {d} {h} 8192 4096 128 1 sha256 {r} -", "Invalid data device block size"),
        ("1 {d} {h} 1000 4096 256 1 sha256 {r} -", "Invalid data device block size"),
        ("1 {d} {h} 256 4096 256 1 sha256 {r} -", "Invalid data device block size"),
        ("1 {d} {h} 4096 256 256 1 sha256 {r} -", "Invalid hash device block size"),
        ("1 {d} {h} 4096 3000 256 1 sha256 {r} -", "Invalid hash device block size"),
        ("1 {d} {h} 4096 4096 2x6 1 sha256 {r} -", "Invalid data blocks"),
        ("1 {d} {h} 4096 4096 {big} 1 sha256 {r} -", "Invalid data blocks"),
        ("1 {d} {h} 4096 4096 255 1 sha256 {r} -", "Data device is too small"),
        ("1 {d} {h} 4096 4096 256 y sha256 {r} -", "Invalid hash start"),
        ("1 {d} {h} 4096 4096 256 2 sha256 {r} -", "Hash device is too small"),
        ("1 {d} {h} 4096 4096 256 1 foo {r} -", "Cannot initialize hash function"),
        ("1 {d} {h} 4096 4096 256 1 sha3_256 {r} -", "Cannot initialize hash function"),
        ("1 {d} {h} 4096 4096 256 1 sha256 {r}00 -", "Invalid root digest"),
        ("1 {d} {h} 4096 4096 256 1 sha256 zz{r2} -", "Invalid root digest"),
        ("1 {d} {h} 4096 4096 256 1 sha256 {r} 001", "Invalid salt"),
        ("1 {d} {h} 4096 4096 256 1 sha256 {r} zz", "Invalid salt"),
        ("1 {d} {h} 4096 4096 256 1 sha256 {r} - 1 foo", "Unrecognized verity feature request"),
        (
            "1 {d} {h} 4096 4096 256 1 sha256 {r} - 2 ignore_corruption restart_on_corruption",
            "Conflicting error handling parameters",
        ),
        (
            "1 {d} {h} 4096 4096 256 1 sha256 {r} - 2 restart_on_error panic_on_error",
            "Conflicting error handling parameters",
        ),
        (
            "1 {d} {h} 4096 4096 256 1 sha256 {r} - 3 ignore_corruption",
            "Invalid number of feature args",
        ),
        ("1 {d} {h} 4096 4096 256 1 sha256 {r} - x", "Invalid number of feature args"),
        (
            "1 {d} {h} 4096 4096 256 1 sha256 {r} - 16 a b c d e f g h i j k l m n o p",
            "Invalid number of feature args",
        ),
        (
            "3 {d} {h} 4096 4096 256 1 sha256 {r} - 3 x",
            "Invalid number of feature args",
        ),  # checked first
        (
            "1 {d} {h} 4096 4096 256 1 sha256 {r} - 8 use_fec_from_device {h} fec_start 0 "
            "fec_blocks 3 fec_roots 2",
            "use_fec_from_device: forward error correction",
        ),
        (
            "1 {d} {h} 4096 4096 256 1 sha256 {r} - 2 root_hash_sig_key_desc k",
            "root_hash_sig_key_desc: root hash signatures are not supported",
        ),
    ],
)
async def test_bad_tables_give_the_kernels_reason(tmp_path: Path, args: str, message: str) -> None:
    d = tmp_path / "d.img"
    h = tmp_path / "h.img"
    d.write_bytes(bytes(1 << 20))
    h.write_bytes(bytes(16384))
    text = args.format(d=d, h=h, r=R, r2=R[2:], big=2**61)
    m = Manager()
    with pytest.raises(DmError) as exc:
        await m.create("v", f"0 2048 verity {text}", readonly=True)
    assert exc.value.message.startswith(f"line 1: verity: {message}"), exc.value.message
    expected = {"Hash device is too small": errno.E2BIG, "Cannot initialize": errno.ENOENT}
    assert exc.value.errno == next(
        (err for text, err in expected.items() if text in message), errno.EINVAL
    )
    assert "v" not in m.devices
    assert not m.pool._files  # everything opened was released


async def test_table_must_be_readonly_and_data_must_cover_it(tmp_path: Path) -> None:
    d = tmp_path / "d.img"
    h = tmp_path / "h.img"
    d.write_bytes(bytes(1 << 20))
    h.write_bytes(bytes(65536))
    line = f"verity 1 {d} {h} 4096 4096 512 1 sha256 {R} -"
    m = Manager()
    with pytest.raises(DmError, match="line 1: verity: Device must be readonly"):
        await m.create("v", f"0 2048 {line}")
    with pytest.raises(DmError, match="too small for target"):
        await m.create("v", f"0 4096 {line}", readonly=True)  # data device 2048 sectors
    with pytest.raises(DmError, match="len=2047 not aligned to h/w logical block size 4096 of "):
        await m.create("v", f"0 2047 {line}", readonly=True)
    await m.create("v", f"0 2048 {line}", readonly=True)  # a zero tree: every read fails
    with pytest.raises(DmError):
        await m.get("v").read(0, 4096)


async def test_concurrent_readers_with_a_tiny_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many readers at once, hash blocks evicted under them: every read is right or fails
    exactly where the data is corrupt."""
    if shutil.which("veritysetup") is None:
        pytest.skip("veritysetup (cryptsetup-bin) not installed")
    monkeypatch.setattr(verity_mod, "CACHE_BYTES", 1)  # the minimum: 16 hash blocks
    data = make_data(tmp_path / "d.img", 4096, block_size=512)
    root = veritysetup_format(
        tmp_path / "d.img",
        tmp_path / "h.img",
        "--data-block-size=512",
        "--hash-block-size=512",
        "--salt=ab",
    )
    bad_block = 3001
    flip(tmp_path / "d.img", bad_block * 512 + 17)
    m = Manager()
    await m.create(
        "v",
        f"0 4096 verity 1 {tmp_path / 'd.img'} {tmp_path / 'h.img'} 512 512 4096 1 sha256 "
        f"{root} ab",
        readonly=True,
    )
    dev = m.get("v")
    rng = random.Random(7)
    outcomes: list[bool] = []

    async def reader(seed: int) -> None:
        r = random.Random(seed)
        for _ in range(30):
            first = r.randrange(4096)
            count = r.randrange(1, min(300, 4096 - first) + 1)
            try:
                got = await dev.read(first * 512, count * 512)
            except DmError as exc:
                assert exc.errno == errno.EIO
                assert first <= bad_block < first + count
                outcomes.append(False)
            else:
                assert not first <= bad_block < first + count
                assert bytes(got) == data[first * 512 : (first + count) * 512]
                outcomes.append(True)

    async with trio.open_nursery() as nursery:
        for _ in range(12):
            nursery.start_soon(reader, rng.randrange(1 << 30))
    assert len(outcomes) == 360 and any(outcomes)
    assert len(target_of(m, "v")._cache) <= 16


async def test_stacked_verity_sees_the_lower_mismatch_as_an_io_error(vs: Setup) -> None:
    flip(vs.data_path, 77 * 4096)
    m = Manager()
    await m.create("lower", vs.table(), readonly=True)
    upper = vs.table("1 restart_on_error").replace(str(vs.data_path), "/dev/mapper/lower", 1)
    await m.create("upper", upper, readonly=True)
    assert await read_block(m, "upper", 0) == vs.data[:4096]
    assert await failing_blocks(m, "upper", 80) == list(range(77, 80))  # tripped at 77
    assert target_of(m, "upper").tripped is not None
    assert m.status("upper")[0]["lines"] == ["0 2048 verity V"]  # no mismatch of its own
    assert m.status("lower")[0]["lines"] == ["0 2048 verity C"]
    assert m.table("upper")[0]["lines"] == [upper]


async def test_verity_is_alone_in_its_table_and_only_verity_or_error_replaces_it(
    vs: Setup,
) -> None:
    m = Manager()
    with pytest.raises(DmError, match=r"^line 2: target type verity must appear alone in table$"):
        await m.create("v", f"{vs.table()}\n2048 8 zero", readonly=True)
    with pytest.raises(
        DmError, match=r"^line 2: verity: singleton target type must appear alone in table$"
    ):
        await m.create("v", f"0 8 zero\n8 2048 verity {vs.args()}", readonly=True)
    assert not m.devices and not m.pool._files
    await m.create("v", vs.table(), readonly=True)
    with pytest.raises(DmError, match=r"^can't replace immutable target type verity$") as exc:
        await m.load("v", "0 2048 zero", readonly=True)
    assert exc.value.errno == errno.EINVAL
    assert m.get("v").inactive is None
    await m.load("v", vs.table("1 ignore_corruption"), readonly=True)  # same type: fine
    await m.load("v", "0 2048 error")  # the wildcard type may replace it
    await m.resume("v")
    with pytest.raises(DmError):
        await m.get("v").read(0, 4096)
    await m.load("v", "0 2048 zero")  # no verity live any more
