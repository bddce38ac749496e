#!/usr/bin/env bash
# crypt vs linear vs qemu-storage-daemon's LUKS driver: 1M sequential fio, O_DIRECT.
#
#   CRYPT_SIZE_MB=256 CRYPT_RUNTIME=5 bench/crypt.sh
#
# One LUKS1 container (cryptsetup luksFormat with a known volume key, aes-xts-plain64, payload
# at 2 MiB) serves every device, so all of them read and write the same bytes:
#   linl    dmfuse `linear` over the payload (the ceiling)
#   cryl    dmfuse `crypt aes-xts-plain64 ... 4096`: the table cryptsetup would load
#   cry4k   the same with `sector_size:4096` (not LUKS1-compatible: speed only)
#   qsd     qemu-storage-daemon's LUKS driver on the container, FUSE export
# psync QD1 and libaio QD16 reads then writes; prints MiB/s and the load average per job.
# Everything lives in bench/work/crypt/ (gitignored); mount and daemon are removed on exit.
#
# Last runs (2026-11-29, 2 shared CPUs; dmfuse.openssl.loops: OpenSSL per unit in C, reading and
# writing the backing file piece by piece on both cores; worker thread for overlapping
# requests), MiB/s, crypt / linear in brackets:
#   device      read QD1      read QD16     write QD1     write QD16
#   09:50 linl  3516          4202          2810          2779
#   09:50 cryl  2815 (0.80x)  3147 (0.75x)  2120 (0.75x)  2263 (0.81x)
#   09:50 cry4k 3374 (0.96x)  3227 (0.77x)  2284 (0.81x)  2446 (0.88x)
#   10:00 linl  3256          3318          2264          2541
#   10:00 cryl  2703 (0.83x)  2607 (0.79x)  2047 (0.90x)  2388 (0.94x)
#   10:00 cry4k 2998 (0.92x)  3369 (1.02x)  2241 (0.99x)  2467 (0.97x)
#   10:08 linl  2979          3632          2129          2433
#   10:08 cryl  2627 (0.88x)  2562 (0.71x)  2032 (0.95x)  2209 (0.91x)
#   10:08 cry4k 3275 (1.10x)  2903 (0.80x)  1454 (0.68x)  2329 (0.96x)
#   qsd         306-327       334-360       353-377       391-407
# Noise between runs is 10-20% even for linl: compare within a run.  Earlier versions:
# 0.66-0.79x (OpenSSL in C, I/O in Python), 0.25-0.30x (numpy-batched).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$BENCH_DIR")"
SIZE_MB="${CRYPT_SIZE_MB:-256}"
RUNTIME="${CRYPT_RUNTIME:-5}"
WORK="${CRYPT_WORK:-$BENCH_DIR/work/crypt}"
DMFUSE="${DMFUSE:-$REPO/.venv/bin/dmfuse}"
SECTORS=$((SIZE_MB * 2048))

for tool in fio cryptsetup qemu-storage-daemon; do
    command -v "$tool" >/dev/null || { echo "crypt.sh: $tool is not installed" >&2; exit 1; }
done
mkdir -p "$WORK/tables" "$WORK/mnt"
cd "$WORK"
cleanup() {
    local pid="" i
    "$DMFUSE" umount "$WORK/mnt" 2>/dev/null || fusermount3 -u "$WORK/mnt" 2>/dev/null || true
    [[ -s qsd.pid ]] && pid="$(cat qsd.pid)"
    if [[ -n "$pid" ]] && grep -q '^qemu-storage' "/proc/$pid/comm" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f qsd.pid
    # a terminated qemu-storage-daemon can leave its FUSE export mounted
    if findmnt -rn --mountpoint "$WORK/qsd.fuse" >/dev/null; then
        fusermount3 -u "$WORK/qsd.fuse" 2>/dev/null || umount -l "$WORK/qsd.fuse" || true
    fi
}
trap cleanup EXIT

# A known volume key, kept in the work directory only (the tables hold it anyway).
python3 -c "import sys; sys.stdout.buffer.write(bytes(range(64)))" > vk.bin
KEY=$(od -An -tx1 -v vk.bin | tr -d ' \n')
IMG=tables/luks.img
if [[ ! -f $IMG ]]; then
    truncate -s $((SIZE_MB + 2))M "$IMG"
    printf bench | cryptsetup luksFormat --batch-mode --type luks1 --pbkdf-force-iterations 1000 \
        --cipher aes-xts-plain64 --key-size 512 --volume-key-file vk.bin "$IMG" --key-file -
fi
rm -f tables/*.table
(
    umask 077
    echo "0 $SECTORS linear luks.img 4096" > tables/linl.table
    echo "0 $SECTORS crypt aes-xts-plain64 $KEY 0 luks.img 4096" > tables/cryl.table
    echo "0 $SECTORS crypt aes-xts-plain64 $KEY 0 luks.img 4096 1 sector_size:4096" \
        > tables/cry4k.table
)
"$DMFUSE" mount tables mnt
touch qsd.fuse
qemu-storage-daemon --object secret,id=sec0,data=bench \
    --blockdev "driver=file,node-name=prot,filename=$IMG,cache.direct=off" \
    --blockdev driver=luks,node-name=luks,file=prot,key-secret=sec0 \
    --export type=fuse,id=exp0,node-name=luks,mountpoint=qsd.fuse,writable=on \
    --pidfile qsd.pid --daemonize
cat "$IMG" > /dev/null   # warm page cache: every device reads the same cached file

echo "$(nproc) CPUs; fio 1M sequential, ${RUNTIME}s per job, O_DIRECT on each device file"
for rw in read write; do
    for dev in mnt/linl mnt/cryl mnt/cry4k qsd.fuse; do
        for qd in 1 16; do
            engine=psync; (( qd > 1 )) && engine=libaio
            mibs=$(fio --name=j --filename="$dev" --rw=$rw --bs=1M --direct=1 \
                --ioengine=$engine --iodepth=$qd --runtime="$RUNTIME" --time_based \
                --size="${SIZE_MB}M" --output-format=json 2>/dev/null \
                | python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; \
print(round((j['read']['bw'] + j['write']['bw']) / 1024))")
            printf '%-5s %-10s QD%-2s %6s MiB/s   load %s\n' "$rw" "${dev##*/}" "$qd" "$mibs" \
                "$(cut -d' ' -f1 /proc/loadavg)"
        done
    done
done
