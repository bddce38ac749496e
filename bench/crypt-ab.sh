#!/usr/bin/env bash
# crypt / linear, interleaved: the ratio bench/crypt.sh reports, with the machine's noise
# averaged out.  On a shared machine single runs of the same device differ by 10-20%, so this
# runs linear and crypt back to back (fio 1M sequential, O_DIRECT, short runs) for each cell,
# ROUNDS times, and prints the median and range of the ratios.
#
#   AB_ROUNDS=5 AB_RUNTIME=2 bench/crypt-ab.sh
#
# One 256 MiB file of random bytes behind both devices (`linear` and `crypt aes-xts-plain64`,
# 512-byte units); everything lives in bench/work/crypt-ab/ (gitignored); the mount is removed
# on exit.
#
# Sessions on 2026-11-29 (2 shared CPUs, rounds of 2 s), the median of each session:
#   read QD1 0.89-0.99, write QD1 0.87-0.93, read QD16 0.69-0.81, write QD16 0.84-0.97
# (the last, with this script at 10:30 UTC, 3 rounds: 0.99 0.93 0.77 0.97).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$BENCH_DIR")"
ROUNDS="${AB_ROUNDS:-5}"
RUNTIME="${AB_RUNTIME:-2}"
WORK="${AB_WORK:-$BENCH_DIR/work/crypt-ab}"
DMFUSE="${DMFUSE:-$REPO/.venv/bin/dmfuse}"
SIZE_MB=256

command -v fio >/dev/null || { echo "crypt-ab.sh: fio is not installed" >&2; exit 1; }
mkdir -p "$WORK/tables" "$WORK/mnt"
cd "$WORK"
trap '"$DMFUSE" umount "$WORK/mnt" 2>/dev/null || fusermount3 -u "$WORK/mnt" 2>/dev/null || true' EXIT

if [[ ! -f back.img ]]; then
    head -c $((SIZE_MB << 20)) /dev/urandom > back.img
fi
KEY=$(python3 -c "print(bytes(range(64)).hex())")
(
    umask 077
    echo "0 $((SIZE_MB * 2048)) linear $WORK/back.img 0" > tables/lin.table
    echo "0 $((SIZE_MB * 2048)) crypt aes-xts-plain64 $KEY 0 $WORK/back.img 0" > tables/cry.table
)
"$DMFUSE" mount tables mnt
cat back.img > /dev/null  # warm page cache

mibs() {  # device rw qd
    local engine=psync
    (( $3 > 1 )) && engine=libaio
    fio --name=j --filename="$1" --rw="$2" --bs=1M --direct=1 --ioengine=$engine \
        --iodepth="$3" --runtime="$RUNTIME" --time_based --size="${SIZE_MB}M" \
        --output-format=json 2>/dev/null \
        | python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; \
print(round((j['read']['bw'] + j['write']['bw']) / 1024))"
}

echo "$(nproc) CPUs; $ROUNDS rounds of ${RUNTIME}s per device and cell"
: > raw.txt
for round in $(seq "$ROUNDS"); do
    for cell in "read 1" "write 1" "read 16" "write 16"; do
        set -- $cell
        echo "$1 $2 $(mibs mnt/lin "$1" "$2") $(mibs mnt/cry "$1" "$2")" >> raw.txt
    done
done
python3 - raw.txt <<'EOF'
import statistics
import sys

cells: dict[str, list[tuple[int, int]]] = {}
for line in open(sys.argv[1]):
    rw, qd, lin, cry = line.split()
    cells.setdefault(f"{rw} QD{qd}", []).append((int(lin), int(cry)))
for cell, runs in cells.items():
    ratios = sorted(c / l for l, c in runs)
    print(f"{cell:<11} crypt/linear median {statistics.median(ratios):.2f} "
          f"({ratios[0]:.2f}-{ratios[-1]:.2f}); MiB/s median linear "
          f"{statistics.median(l for l, _ in runs):.0f}, crypt "
          f"{statistics.median(c for _, c in runs):.0f}")
EOF
