"""verity on a real mount, with trees from ``veritysetup format``, table lines from
``veritysetup open`` (through the libdevmapper shim), and against the real kernel (VM)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from dmfuse.targets.verity.tree import Geometry
from tests.integration.harness import Mount, run
from tests.kernel_vm import KDM_DIR, KDM_VM
from tests.unit.test_verity import flip, make_data, veritysetup_format

SHIM_SRC = Path(__file__).resolve().parents[3] / "shared" / "tools" / "dmtable_shim.c"


@dataclass
class Layout:
    """One ``veritysetup format`` geometry (and the options that make it)."""

    name: str
    blocks: int
    dbs: int
    hbs: int
    alg: str
    version: int
    same_file: bool  # --no-superblock --hash-offset: the tree after the data, same file
    salt: str


LAYOUTS = [
    Layout("sb4k", 300, 4096, 4096, "sha256", 1, False, "0011223344556677"),
    Layout("combo1k", 1024, 1024, 4096, "sha1", 0, True, "abcd"),
    Layout("sb1k", 700, 1024, 1024, "sha1", 1, False, "-"),
    Layout("combo4k", 200, 4096, 4096, "sha256", 0, True, "00" * 32),
]


@dataclass
class Formatted:
    layout: Layout
    data: Path
    hash: Path
    args: str  # the table arguments veritysetup open produced, device paths replaced
    geometry: Geometry
    content: bytes

    @property
    def sectors(self) -> int:
        return self.layout.blocks * self.layout.dbs // 512


def shim(tmp: Path) -> Path:
    if shutil.which("veritysetup") is None or shutil.which("gcc") is None:
        pytest.skip("veritysetup or gcc not installed")
    out = tmp / "dmtable_shim.so"
    if not out.exists():
        built = subprocess.run(
            ["gcc", "-shared", "-fPIC", "-O1", "-o", str(out), str(SHIM_SRC)],
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode:
            pytest.skip(f"cannot build the libdevmapper shim: {built.stderr.strip()}")
    return out


def table_from_veritysetup_open(tmp: Path, data: Path, hash_path: Path, *opts: str) -> list[str]:
    """The verity arguments libcryptsetup hands to libdevmapper (devices are its loops)."""
    log = tmp / "shim.out"
    log.unlink(missing_ok=True)
    env = dict(os.environ, LD_PRELOAD=str(shim(tmp)), DMSHIM_OUT=str(log))
    proc = subprocess.run(
        ["veritysetup", "open", str(data), "vt", str(hash_path), *opts],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0  # the shim fails the create after printing the table
    line = log.read_text().splitlines()[0]
    words = line.split()
    assert words[:2] == ["vt:", "0"] and words[3] == "verity", line
    return words[4:]


def format_layout(tmp: Path, layout: Layout) -> Formatted:
    data = tmp / f"{layout.name}.data"
    content = make_data(data, layout.blocks, layout.dbs, zero_blocks=(3,))
    size = layout.blocks * layout.dbs
    opts = [
        f"--format={layout.version}",
        f"--data-block-size={layout.dbs}",
        f"--hash-block-size={layout.hbs}",
        f"--hash={layout.alg}",
        f"--salt={layout.salt}",
    ]
    if layout.same_file:
        hash_path = data
        opts += ["--no-superblock", f"--hash-offset={size}", f"--data-blocks={layout.blocks}"]
    else:
        hash_path = tmp / f"{layout.name}.hash"
    root = veritysetup_format(data, hash_path, *opts)
    # without a superblock, open needs the geometry again; with one, it reads it from there
    open_opts = opts if layout.same_file else []
    args = table_from_veritysetup_open(tmp, data, hash_path, root, *open_opts)
    assert args[7] == layout.alg and args[8] == root
    args[1], args[2] = str(data), str(hash_path)
    geometry = Geometry.compute(
        version=int(args[0]),
        data_block_size=int(args[3]),
        hash_block_size=int(args[4]),
        data_blocks=int(args[5]),
        hash_start=int(args[6]),
        digest_size=len(root) // 2,
    )
    return Formatted(layout, data, hash_path, " ".join(args), geometry, content)


def failing_blocks(device: str, block_size: int, blocks: int) -> list[int]:
    bad = []
    fd = os.open(device, os.O_RDONLY)
    try:
        for n in range(blocks):
            try:
                os.pread(fd, block_size, n * block_size)
            except OSError as exc:
                assert exc.errno == 5, exc  # EIO
                bad.append(n)
    finally:
        os.close(fd)
    return bad


def depends_on(f: Formatted, file_offset: int, in_hash: bool) -> list[int]:
    """The data blocks whose reads need the byte at ``file_offset`` of the data/hash file."""
    g = f.geometry
    if not in_hash:
        return [file_offset // g.data_block_size]
    index = file_offset // g.hash_block_size
    return [
        b
        for b in range(g.data_blocks)
        if any(g.locate(b, level)[0] == index for level in range(g.levels))
    ]


@pytest.fixture
def formatted(mnt: Mount) -> list[Formatted]:
    return [format_layout(mnt.tables, layout) for layout in LAYOUTS]


def test_veritysetup_trees_read_back_and_flipped_bytes_fail_their_reads(
    mnt: Mount, formatted: list[Formatted]
) -> None:
    for f in formatted:
        mnt.table(f.layout.name, f"# dmfuse: readonly\n0 {f.sectors} verity {f.args}\n")
    mnt.mount()
    rng = random.Random(5)
    for f in formatted:
        name = f.layout.name
        size = f.layout.blocks * f.layout.dbs
        run("cmp", "-n", str(size), mnt.dev(name), str(f.data))
        assert mnt.cli("status", name).stdout == f"0 {f.sectors} verity V\n"
        assert mnt.cli("table", name).stdout == f"0 {f.sectors} verity {f.args}\n"
        g = f.geometry
        tree_start = g.hash_start * g.hash_block_size
        tree_end = g.hash_blocks * g.hash_block_size
        picks = [(rng.randrange(size), False) for _ in range(3)]
        picks += [(rng.randrange(tree_start, tree_end), True) for _ in range(4)]
        picks += [(tree_start + 7, True)]  # the top block: every read depends on it
        for offset, in_hash in picks:
            path = f.hash if in_hash else f.data
            flip(path, offset, 0x10)
            try:
                # a fresh table: the old one may hold verified hash blocks in its cache
                mnt.cli("create", "-r", "probe", "--table", f"0 {f.sectors} verity {f.args}")
                got = failing_blocks(mnt.dev("probe"), g.data_block_size, f.layout.blocks)
                assert got == depends_on(f, offset, in_hash), (name, offset, in_hash)
                assert mnt.cli("status", "probe").stdout.endswith("verity C\n")
                mnt.cli("remove", "probe")
            finally:
                flip(path, offset, 0x10)
        if f.layout.same_file or g.hash_start:  # bytes outside the tree are nobody's concern
            outside = 100 if not f.layout.same_file else tree_end + 1
            if outside < os.path.getsize(f.hash) and not (tree_start <= outside < tree_end):
                flip(f.hash, outside)
                mnt.cli("create", "-r", "probe", "--table", f"0 {f.sectors} verity {f.args}")
                assert failing_blocks(mnt.dev("probe"), g.data_block_size, f.layout.blocks) == []
                mnt.cli("remove", "probe")
                flip(f.hash, outside)


def test_cli_errors_and_read_only(mnt: Mount, formatted: list[Formatted]) -> None:
    f = formatted[0]
    mnt.mount()
    proc = mnt.cli("create", "v", "--table", f"0 {f.sectors} verity {f.args}", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "dmfuse: create v failed: line 1: verity: Device must be readonly"
    )
    bad = f.args.replace(" sha256 ", " sha3_256 ")
    proc = mnt.cli("create", "-r", "v", "--table", f"0 {f.sectors} verity {bad}", check=False)
    assert "line 1: verity: Cannot initialize hash function" in proc.stderr
    mnt.cli("create", "-r", "v", "--table", f"0 {f.sectors} verity {f.args} 1 ignore_corruption")
    with pytest.raises(OSError) as exc:
        os.open(mnt.dev("v"), os.O_WRONLY)
    assert exc.value.errno in (30, 13)  # EROFS (EACCES without CAP_DAC_OVERRIDE)
    flip(f.data, 5000)
    with open(mnt.dev("v"), "rb") as fh:
        assert fh.read() == f.data.read_bytes()[: f.layout.blocks * f.layout.dbs]
    assert mnt.cli("status", "v").stdout.endswith("verity C\n")


# -- the real kernel -------------------------------------------------------------------------
PROBE = """\
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
bs, blocks = int(sys.argv[2]), int(sys.argv[3])
buf = mmap.mmap(-1, bs)
for n in range(blocks):
    try:
        os.preadv(fd, [buf], n * bs)
    except OSError:
        print(n)
"""


def kernel_script(cases: list[tuple[str, str, int, int, int]]) -> str:
    """(name, table args with /dev/vdX devices, sectors, block size, blocks) per device."""
    lines = ["set -u", 'cd "$(dirname "$0")"']
    for name, args, sectors, bs, blocks in cases:
        lines += [
            f'dmsetup create --readonly {name} --table "0 {sectors} verity {args}" || exit 3',
            f"dmsetup status {name} > {name}.status.before",
            f"python3 probe.py /dev/mapper/{name} {bs} {blocks} > {name}.bad",
            f"dmsetup status {name} > {name}.status.after",
            f"dmsetup table {name} > {name}.table",
            f"dd if=/dev/mapper/{name} of={name}.read bs={bs} count=7 iflag=direct 2>/dev/null",
            f"dmsetup remove {name}",
        ]
    return "\n".join(lines) + "\n"


@pytest.mark.kernel
async def test_kernel_vm_same_data_and_status(mnt: Mount) -> None:
    """The same tables on the real dm-verity: same data, same failing blocks, same strings.

    Every layout's data and hash files become VM disks; one data byte is corrupted per layout
    (block 7, 14, 21...), and both sides read every block."""
    if not (KDM_DIR / "vmlinuz").exists() or not KDM_VM.exists():
        pytest.skip(f"kernel VM not set up ({KDM_DIR}/vmlinuz missing; see kdm-vm.sh setup)")
    work = mnt.root / "vm"
    work.mkdir()
    formatted = [format_layout(mnt.tables, layout) for layout in LAYOUTS]
    disks: list[Path] = []
    cases = []
    for k, f in enumerate(formatted):
        name = f.layout.name
        flip(f.data, (k + 1) * 7 * f.layout.dbs + 99)
        devs = []
        for path in dict.fromkeys([f.data, f.hash]):  # a combined file is one disk
            devs.append(f"/dev/vd{chr(ord('a') + len(disks))}")
            disks.append(path)
        args = f.args.split()
        args[1], args[2] = devs[0], devs[-1]
        cases.append((name, " ".join(args), f.sectors, f.layout.dbs, f.layout.blocks))
    (work / "probe.py").write_text(PROBE)
    (work / "run.sh").write_text(kernel_script(cases))
    env = dict(os.environ, KDM_DIR=str(KDM_DIR), KDM_TIMEOUT="1200")
    with trio.fail_after(1300):
        proc = await trio.run_process(
            [str(KDM_VM), "run", str(work), str(work / "run.sh"), *map(str, disks)],
            capture_stdout=True,
            capture_stderr=True,
            env=env,
            check=False,
        )
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    for f in formatted:
        mnt.table(f.layout.name, f"# dmfuse: readonly\n0 {f.sectors} verity {f.args}\n")
    mnt.mount()
    for k, f in enumerate(formatted):
        name, bs = f.layout.name, f.layout.dbs
        kernel_bad = [int(x) for x in (work / f"{name}.bad").read_text().split()]
        assert kernel_bad == [(k + 1) * 7], name
        assert mnt.cli("status", name).stdout == (work / f"{name}.status.before").read_text()
        assert failing_blocks(mnt.dev(name), bs, f.layout.blocks) == kernel_bad
        assert mnt.cli("status", name).stdout == (work / f"{name}.status.after").read_text()
        kernel_table = (work / f"{name}.table").read_text().split()
        ours = mnt.cli("table", name).stdout.split()
        assert kernel_table[:4] + kernel_table[6:] == ours[:4] + ours[6:]
        with open(mnt.dev(name), "rb", buffering=0) as fh:
            assert fh.read(7 * bs) == (work / f"{name}.read").read_bytes()
