"""dmfuse crypt produces the kernel's ciphertext, byte for byte.

The case list below was run through the real dm-crypt (kernel 6.12 in the qemu VM,
``../shared/tools/kdm-vm.sh``): every case maps its own 512 KiB slice of one disk, the same
plaintext is written at the same offsets, and the resulting disk image is kept compressed in
``tests/data/kernel/crypt-images.img.xz``.  ``test_ciphertext_matches_kernel`` replays the same
tables and writes through dmfuse's engine and compares each slice; the ``kernel`` test reruns
the VM and compares its fresh image with what dmfuse makes (``DMFUSE_RECORD=1`` rewrites the
stored image from that run) lives in ``tests/integration/test_crypt.py``.
"""

from __future__ import annotations

import errno
import lzma
import re
from pathlib import Path

import pytest

from dmfuse.engine.manager import Manager
from dmfuse.errors import TableError
from dmfuse.targets.crypt import Crypt
from tests.conftest import pattern

DATA = Path(__file__).resolve().parents[1] / "data" / "kernel"
IMAGE_XZ = DATA / "crypt-images.img.xz"
SLICE = 512 * 1024  # bytes of disk per case

K32 = bytes(range(32)).hex()
K64 = bytes(range(64)).hex()
K64B = bytes(range(100, 164)).hex()

# (cipher, key hex, iv_offset, optional params) -- sector_size comes from the params.
CASES: list[tuple[str, str, int, tuple[str, ...]]] = []
_UNITS: list[tuple[tuple[str, ...], int]] = [
    ((), 0),
    (("sector_size:4096",), 8),
    (("sector_size:4096", "iv_large_sectors"), 16),
]
for _opts, _ivoff in _UNITS:
    CASES += [
        ("aes-xts-plain64", K64, _ivoff, _opts),
        ("aes-xts-plain", K64B, _ivoff, _opts),
        ("aes-xts-plain64be", K64, _ivoff, _opts),
        ("aes-xts-null", K32, _ivoff, _opts),
        ("aes-cbc-essiv:sha256", K32, _ivoff, _opts),
        ("aes-cbc-plain64", K32, _ivoff, _opts),
        ("aes-cbc-plain", K32, _ivoff, _opts),
        ("aes-cbc-benbi", K32, _ivoff, _opts),
        ("aes-ecb", K32, _ivoff, _opts),
        ("aes-ctr-plain64", K32, _ivoff, _opts),
        ("capi:xts(aes)-plain64", K64B, _ivoff, _opts),
        ("capi:cbc(aes)-essiv:sha256", K32, _ivoff, _opts),
        ("aes:2-cbc-plain64", K64, _ivoff, _opts),
        ("aes", K32[:32], _ivoff, _opts),
    ]


def sector_size(opts: tuple[str, ...]) -> int:
    for opt in opts:
        if opt.startswith("sector_size:"):
            return int(opt.split(":")[1])
    return 512


def writes(ss: int) -> list[tuple[int, int]]:
    """(offset, length) inside a case's slice; 512-byte pieces only where the unit allows."""
    out = [(0, 8192), (12288, 4096), (SLICE - 4096, 4096), (65536, 16384)]
    if ss == 512:
        out += [(1536 + 16384, 1024), (40960 + 512, 512)]
    return out


def table_line(index: int, dev: str) -> str:
    cipher, key, iv_offset, opts = CASES[index]
    start = index * SLICE // 512
    line = f"0 {SLICE // 512} crypt {cipher} {key} {iv_offset} {dev} {start}"
    if opts:
        line += f" {len(opts)} {' '.join(opts)}"
    return line


def plaintext(offset: int, length: int) -> bytes:
    return pattern(offset, length, seed=7)


def vm_script(work: Path) -> str:
    """The guest side: one device per case over /dev/vda, the same writes, then remove."""
    lines = ["set -e", f"cd {work}"]
    for i in range(len(CASES)):
        lines.append(f"dmsetup create c{i} --table '{table_line(i, '/dev/vda')}'")
        for off, n in writes(sector_size(CASES[i][3])):
            lines.append(
                f"dd if=pat.bin of=/dev/mapper/c{i} bs={n} count=1 iflag=skip_bytes "
                f"oflag=seek_bytes,direct skip={off} seek={off} conv=notrunc status=none"
            )
        lines.append(f"dmsetup remove c{i}")
    lines.append("sync")
    return "\n".join(lines) + "\n"


async def dmfuse_image(tmp_path: Path) -> bytes:
    disk = tmp_path / "disk.img"
    with disk.open("wb") as fh:
        fh.truncate(SLICE * len(CASES))
    manager = Manager()
    try:
        for i in range(len(CASES)):
            await manager.create(f"c{i}", table_line(i, str(disk)))
            device = manager.get(f"c{i}")
            for off, n in writes(sector_size(CASES[i][3])):
                await device.write(off, memoryview(plaintext(off, n)))
            await device.flush()
            await manager.remove(f"c{i}")
    finally:
        await manager.shutdown()
    return disk.read_bytes()


def compare(kernel: bytes, ours: bytes) -> None:
    assert len(kernel) == len(ours) == SLICE * len(CASES)
    bad = [
        f"{i}: {CASES[i][0]} {' '.join(CASES[i][3])}"
        for i in range(len(CASES))
        if kernel[i * SLICE : (i + 1) * SLICE] != ours[i * SLICE : (i + 1) * SLICE]
    ]
    assert not bad, "ciphertext differs from the kernel's for cases:\n" + "\n".join(bad)


async def test_ciphertext_matches_kernel(tmp_path: Path) -> None:
    kernel = lzma.decompress(IMAGE_XZ.read_bytes())
    compare(kernel, await dmfuse_image(tmp_path))


async def test_worker_thread_path_matches_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request converted on a worker thread (normally only those of 2 MiB or more)
    gives the kernel's bytes too."""
    monkeypatch.setattr(Crypt, "THREAD_MIN", 0)
    kernel = lzma.decompress(IMAGE_XZ.read_bytes())
    compare(kernel, await dmfuse_image(tmp_path))


# -- constructor checks and table strings against the kernel's transcript -----------------
BEHAVIOUR = DATA / "crypt-behaviour.txt"  # crypt-behaviour.sh run in the VM (kernel 6.12)
_KERNEL_ERROR = re.compile(r"device-mapper: table: 253:0: crypt: (.*) \(-(E[A-Z]+)\)$")
# Where dmfuse knowingly differs (each listed in the crypt man page): table word -> our error.
_DIFFERENCES = {
    "aes-xts-eboiv": "IV mode eboiv is not supported by dmfuse",
    "aes-cbc-lmk": "IV mode lmk is not supported by dmfuse",
    "aes-cbc-tcw": "IV mode tcw is not supported by dmfuse",
    "capi:xts(aes)": "dmfuse needs an IV mode for xts",
    K32[:48] * 2: "Error decoding and setting key",  # AES-192-XTS: not in OpenSSL
    K32 * 2: "Error decoding and setting key: OpenSSL refuses XTS keys with equal halves",
}


def _behaviour_records() -> list[tuple[str, list[str]]]:
    records: list[tuple[str, list[str]]] = []
    for line in BEHAVIOUR.read_text().splitlines():
        if line.startswith("$ "):
            records.append((line[2:], []))
        elif records:
            records[-1][1].append(line)
    return records


def _creates() -> list[tuple[str, list[str], list[str]]]:
    """(table, what the create printed, what the table/status commands printed)."""
    out = []
    records = _behaviour_records()
    for i, (cmd, lines) in enumerate(records):
        match = re.fullmatch(r'dmsetup create x --table "(.*)"', cmd)
        if match:
            shown = records[i + 1][1] if lines[0].startswith("rc=0") else []
            out.append((match.group(1), lines, shown))
    return out


@pytest.mark.parametrize(("table", "printed", "shown"), _creates())
async def test_constructor_matches_kernel_transcript(
    tmp_path: Path, table: str, printed: list[str], shown: list[str]
) -> None:
    disk = tmp_path / "vdb.img"
    with disk.open("wb") as fh:
        fh.truncate(1 << 20)  # /dev/vdb in the VM: 1 MiB
    ours = table.replace("/dev/vdb", str(disk))
    errors = [m for m in map(_KERNEL_ERROR.match, printed) if m]
    different = [v for k, v in _DIFFERENCES.items() if k in table.split()]
    m = Manager()
    try:
        if different:
            with pytest.raises(TableError, match=re.escape(different[0])):
                await m.create("x", ours)
        elif errors:
            message, err = errors[0].group(1), errors[0].group(2)
            with pytest.raises(TableError) as exc:
                await m.create("x", ours)
            assert str(exc.value).startswith(f"line 1: crypt: {message}")
            if message != "Device lookup failed":  # the opener's errno is EINVAL for a file
                assert errno.errorcode[exc.value.errno] == err
        else:
            await m.create("x", ours)
            masked, full, status = shown[0].removeprefix("rc=0 "), shown[1], shown[2]
            dev = "254:16"
            assert m.table("x")[0]["lines"] == [masked.replace(dev, str(disk))]
            assert m.table("x", showkeys=True)[0]["lines"] == [full.replace(dev, str(disk))]
            assert m.status("x")[0]["lines"] == [status]
    finally:
        await m.shutdown()
