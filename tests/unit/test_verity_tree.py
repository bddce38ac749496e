"""The pure hash-tree geometry and reference writer, checked against ``veritysetup format``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmfuse.targets.verity import hashing
from dmfuse.targets.verity.tree import Geometry, GeometryError, build_tree

needs_veritysetup = pytest.mark.skipif(
    shutil.which("veritysetup") is None, reason="veritysetup (cryptsetup-bin) not installed"
)


def geometry(**kw: int) -> Geometry:
    args = dict(
        version=1,
        data_block_size=4096,
        hash_block_size=4096,
        data_blocks=256,
        hash_start=1,
        digest_size=32,
    )
    args.update(kw)
    return Geometry.compute(**args)


def test_levels_and_positions_for_the_oracle_example() -> None:
    # oracles.md 1.1: 256 blocks, sha256, 4K: 2 levels, 3 tree blocks after the superblock
    g = geometry()
    assert (g.hash_per_block_bits, g.levels) == (7, 2)
    assert g.level_block == (2, 1)  # level 0 after the single top block
    assert g.hash_blocks == 4
    assert g.locate(0, 0) == (2, 0)
    assert g.locate(127, 0) == (2, 127 * 32)
    assert g.locate(128, 0) == (3, 0)
    assert g.locate(200, 1) == (1, 32)


def test_version_0_packs_digests_and_version_1_pads_them() -> None:
    sha1 = dict(digest_size=20, hash_start=0)
    v0 = geometry(version=0, **sha1)
    v1 = geometry(version=1, **sha1)
    assert v0.hash_per_block_bits == v1.hash_per_block_bits == 7  # 4096 // 20 = 204 -> 128
    assert v0.locate(5, 0)[1] == 5 * 20
    assert v1.locate(5, 0)[1] == 5 * 32


def test_small_trees() -> None:
    assert geometry(data_blocks=1).levels == 0  # the root is the block's own digest
    assert geometry(data_blocks=0).levels == 0
    assert geometry(data_blocks=2).levels == 1
    assert geometry(data_blocks=128).levels == 1
    assert geometry(data_blocks=129).levels == 2


def test_huge_trees_hit_the_kernel_limits() -> None:
    # 512-byte hash blocks of sha256: 16 digests (4 bits) per block, 16 levels for 2**64
    g = geometry(hash_block_size=512, data_block_size=512, data_blocks=2**64 - 1, hash_start=0)
    assert g.levels == 16
    with pytest.raises(GeometryError, match="Hash device offset overflow"):
        geometry(data_blocks=2**40, hash_start=2**64 - 2)
    # 64-byte blocks (below the table's minimum, but the geometry alone): 1 digest per block
    with pytest.raises(GeometryError, match="Too many tree levels"):
        Geometry.compute(
            version=1,
            data_block_size=512,
            hash_block_size=128,
            data_blocks=2**64 - 1,
            hash_start=0,
            digest_size=64,
        )


def _veritysetup_format(tmp: Path, data: bytes, *opts: str) -> tuple[str, bytes]:
    (tmp / "d.img").write_bytes(data)
    out = subprocess.run(
        ["veritysetup", "format", str(tmp / "d.img"), str(tmp / "h.img"), *opts],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    root = next(ln.split()[-1] for ln in out.splitlines() if ln.startswith("Root hash"))
    return root, (tmp / "h.img").read_bytes()


@needs_veritysetup
@pytest.mark.parametrize(
    ("version", "dbs", "hbs", "alg", "blocks", "salt"),
    [
        (1, 4096, 4096, "sha256", 300, "0011223344556677"),
        (0, 1024, 4096, "sha1", 1000, "abcd"),
        (1, 1024, 1024, "sha1", 700, "-"),
        (1, 512, 4096, "sha512", 3000, "00ff" * 16),
        (0, 4096, 512, "sha256", 40, "aa"),
        (1, 4096, 4096, "sha256", 1, "ab"),
    ],
)
def test_build_tree_matches_veritysetup(
    tmp_path: Path, version: int, dbs: int, hbs: int, alg: str, blocks: int, salt: str
) -> None:
    data = os.urandom(blocks * dbs)
    opts = [
        f"--format={version}",
        f"--data-block-size={dbs}",
        f"--hash-block-size={hbs}",
        f"--hash={alg}",
        f"--salt={salt}",
        "--no-superblock",
    ]
    root_hex, on_disk = _veritysetup_format(tmp_path, data, *opts)
    ctor = hashing.lookup(alg)
    assert ctor is not None
    g = Geometry.compute(
        version=version,
        data_block_size=dbs,
        hash_block_size=hbs,
        data_blocks=blocks,
        hash_start=0,
        digest_size=hashing.digest_size(ctor),
    )
    digest = hashing.salted(ctor, version, b"" if salt == "-" else bytes.fromhex(salt))
    root, tree = build_tree(g, lambda n: data[n * dbs : (n + 1) * dbs], digest)
    assert root.hex() == root_hex
    assert len(on_disk) >= g.hash_blocks * hbs
    for index, block in tree.items():
        assert on_disk[index * hbs : (index + 1) * hbs] == block, index
    assert sorted(tree) == list(range(g.hash_blocks))


def test_algorithm_names_are_the_kernels() -> None:
    for name, size in [
        ("sha256", 32),
        ("sha1", 20),
        ("sha512", 64),
        ("md5", 16),
        ("sha3-256", 32),
        ("blake2b-256", 32),
        ("blake2b-512", 64),
        ("sha256-generic", 32),
    ]:
        ctor = hashing.lookup(name)
        assert ctor is not None, name
        assert hashing.digest_size(ctor) == size
    for name in ("sha3_256", "SHA256", "blake2b", "foo", "sha256-ni"):
        assert hashing.lookup(name) is None, name


def oracle_tree(
    data: bytes, dbs: int, hbs: int, alg: str, salt: bytes, version: int
) -> tuple[str, bytes]:
    """The reference algorithm of oracles.md 1.2 (checked there against veritysetup), kept
    independent of :mod:`dmfuse.targets.verity.tree`: tree bytes top level first, from offset 0."""
    import hashlib

    dsz = hashlib.new(alg).digest_size
    nblocks = len(data) // dbs
    per_bits = (hbs // dsz).bit_length() - 1
    per = 1 << per_bits
    slot = hbs >> per_bits if version == 1 else dsz

    def h(b: bytes) -> bytes:
        x = hashlib.new(alg)
        if version == 1:
            x.update(salt)
            x.update(b)
        else:
            x.update(b)
            x.update(salt)
        return x.digest()

    level = [h(data[i * dbs : (i + 1) * dbs]) for i in range(nblocks)]
    levels = []
    while True:
        blocks = []
        for i in range(0, len(level), per):
            buf = bytearray(hbs)
            for j, d in enumerate(level[i : i + per]):
                buf[j * slot : j * slot + dsz] = d
            blocks.append(bytes(buf))
        levels.append(blocks)
        if len(blocks) == 1:
            break
        level = [h(b) for b in blocks]
    return h(levels[-1][0]).hex(), b"".join(b for lv in reversed(levels) for b in lv)


@settings(max_examples=60, deadline=None)
@given(
    version=st.sampled_from([0, 1]),
    dbs=st.sampled_from([512, 1024, 4096]),
    hbs=st.sampled_from([512, 1024, 4096]),
    alg=st.sampled_from(["sha1", "sha256", "sha512", "md5"]),
    blocks=st.integers(min_value=2, max_value=600),
    salt=st.binary(max_size=40),
)
def test_geometry_and_writer_agree_with_the_oracle_algorithm(
    version: int, dbs: int, hbs: int, alg: str, blocks: int, salt: bytes
) -> None:
    data = bytes((n * 7 + n // 512) & 0xFF for n in range(blocks * dbs))
    ctor = hashing.lookup(alg)
    assert ctor is not None
    g = Geometry.compute(
        version=version,
        data_block_size=dbs,
        hash_block_size=hbs,
        data_blocks=blocks,
        hash_start=0,
        digest_size=hashing.digest_size(ctor),
    )
    root, tree = build_tree(
        g, lambda n: data[n * dbs : (n + 1) * dbs], hashing.salted(ctor, version, salt)
    )
    want_root, want_tree = oracle_tree(data, dbs, hbs, alg, salt, version)
    assert root.hex() == want_root
    assert b"".join(tree[i] for i in range(g.hash_blocks)) == want_tree
    # every data block's digest sits where locate() says, at every level
    for block in (0, blocks // 2, blocks - 1):
        index, at = g.locate(block, 0)
        assert tree[index][at : at + g.digest_size] == hashing.salted(ctor, version, salt)(
            data[block * dbs : (block + 1) * dbs]
        )


@pytest.mark.parametrize(
    "alg",
    # OpenSSL in C (dmfuse.openssl.loops), and hashlib for blake2b with a short digest
    [
        "sha256",
        "sha256-generic",
        "sha1",
        "md5",
        "sha512",
        "sha3-256",
        "blake2b-512",
        "sm3",
        "blake2b-160",
    ],
)
@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("salt", [b"", b"\x00\x11\x22", bytes(range(200))])
def test_salted_blocks_is_salted_over_a_run(alg: str, version: int, salt: bytes) -> None:
    ctor = hashing.lookup(alg)
    if ctor is None:
        pytest.skip(f"{alg} is not in this OpenSSL")
    bs = 4096
    buf = memoryview(os.urandom(20 * bs))
    one = hashing.salted(ctor, version, salt)
    many = hashing.salted_blocks(ctor, version, salt, hashing.block_hasher(alg, version, salt))
    for lo, hi in ((0, 20), (3, 4), (7, 19), (5, 5)):
        assert many(buf, bs, lo, hi) == b"".join(
            one(buf[i * bs : (i + 1) * bs]) for i in range(lo, hi)
        )
    # the copied salted state is not changed by use: the same block hashes the same twice
    assert one(buf[:bs]) == one(buf[:bs]) == many(buf, bs, 0, 1)
