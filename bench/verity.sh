#!/usr/bin/env bash
# verity vs linear on the same data: fio 1M sequential reads through one dmfuse mount.
#
#   VERITY_SIZE_MB=256 VERITY_RUNTIME=8 VERITY_ROUNDS=2 bench/verity.sh
#
# Data: VERITY_SIZE_MB of random bytes, hash tree from `veritysetup format` (4K blocks, sha256,
# superblock).  Three devices in one mount: `lin` (linear over the data), `ver` (verity, the
# table veritysetup would load) and `once` (the same with check_at_most_once).  Each round runs
# every device with psync QD1 and libaio QD16 (O_DIRECT, time-based); devices alternate so
# that outside load hits them alike.  Prints MB/s per job and the verity/linear ratios.
# Everything lives in bench/work/verity/ (gitignored); the mount is removed on exit.
#
# Last run (2026-11-29 08:07 UTC, defaults, 2 shared vCPUs, load 0.5-1.6 with the benchmark):
#   lin   psync QD1 3133-3186 MB/s   libaio QD16 3721-3740 MB/s
#   ver   psync QD1 1304-1313 MB/s   libaio QD16 1632-1694 MB/s   -> 0.41x / 0.45x
#   once  psync QD1 3114-3149 MB/s   libaio QD16 3476-3661 MB/s   -> 0.99x / 0.96x
# (07:40 UTC, before overlapping reads went to the worker thread: ver QD1 1401-1645, QD16
# 1314-1325 MB/s.)
# (before dmfuse.openssl.loops, load 2-4: verity 950-964 / 929-990 MB/s, 0.27x / 0.29x.)
# verity is bound by sha256 (SHA-NI, ~0.6 ms per MiB in 4K blocks on one core, shared by both
# cores); see the man page in dmfuse/targets/verity/ for why 0.7x of linear is out of reach.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$BENCH_DIR")"
SIZE_MB="${VERITY_SIZE_MB:-256}"
RUNTIME="${VERITY_RUNTIME:-8}"
ROUNDS="${VERITY_ROUNDS:-2}"
WORK="${VERITY_WORK:-$BENCH_DIR/work/verity}"
DMFUSE="${DMFUSE:-$REPO/.venv/bin/dmfuse}"
SALT=0011223344556677

for tool in fio veritysetup python3; do
    command -v "$tool" >/dev/null || { echo "verity.sh: $tool is not installed" >&2; exit 1; }
done
mkdir -p "$WORK/tables" "$WORK/mnt"
cd "$WORK"
if [[ ! -f data.img || $(stat -c %s data.img) -ne $((SIZE_MB << 20)) ]]; then
    head -c $((SIZE_MB << 20)) /dev/urandom > data.img
    rm -f hash.img root.txt
fi
[[ -f root.txt ]] || veritysetup format data.img hash.img --salt=$SALT \
    | awk '/Root hash/{print $3}' > root.txt
SECTORS=$((SIZE_MB * 2048))
ARGS="1 $WORK/data.img $WORK/hash.img 4096 4096 $((SIZE_MB * 256)) 1 sha256 $(cat root.txt) $SALT"
echo "0 $SECTORS linear $WORK/data.img 0" > tables/lin.table
printf '# dmfuse: readonly\n0 %s verity %s\n' "$SECTORS" "$ARGS" > tables/ver.table
printf '# dmfuse: readonly\n0 %s verity %s 1 check_at_most_once\n' "$SECTORS" "$ARGS" \
    > tables/once.table

"$DMFUSE" mount tables mnt
trap '"$DMFUSE" umount "$WORK/mnt" || fusermount3 -u "$WORK/mnt"' EXIT
cat data.img hash.img > /dev/null   # warm page cache, as bench/run.sh does

declare -A SUM
for round in $(seq "$ROUNDS"); do
    for dev in lin ver once; do
        for spec in "psync 1" "libaio 16"; do
            read -r engine depth <<< "$spec"
            bw=$(fio --name=seqread --filename="mnt/$dev" --rw=read --bs=1M --direct=1 \
                    --ioengine="$engine" --iodepth="$depth" --time_based --runtime="$RUNTIME" \
                    --ramp_time=1 --output-format=json \
                 | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"] // 1000000)')
            echo "round $round  $dev  $engine QD$depth  $bw MB/s  (load $(cut -d' ' -f1 /proc/loadavg))"
            SUM[$dev-$engine]=$(( ${SUM[$dev-$engine]:-0} + bw ))
        done
    done
done
for engine in psync libaio; do
    python3 - "$engine" "${SUM[lin-$engine]}" "${SUM[ver-$engine]}" "${SUM[once-$engine]}" <<'P'
import sys
engine, lin, ver, once = sys.argv[1], *map(int, sys.argv[2:])
print(f"{engine}: verity/linear {ver / lin:.2f}x, check_at_most_once/linear {once / lin:.2f}x")
P
done
