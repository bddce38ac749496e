#!/usr/bin/env bash
# Crash-consistency testing with log-writes, the xfstests way, without the kernel's dm:
#   1. a log-writes device records every write, flush and discard of ext4 (through a loop device)
#   2. mkfs, then a mark "mkfs", then file operations (create/write/fsync/rename/delete)
#   3. replay the log onto a scratch image up to the mark, then on to every flush point, and run
#      e2fsck -fn on each state, as it is and after recovering the journal on a copy (what a
#      mount would do): a state that is not clean is a crash-consistency bug
# Run as root (loop devices, mounts).  WORK=dir to choose where the files go; KEEP=1 keeps them.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
DMFUSE=${DMFUSE:-$REPO/.venv/bin/dmfuse}
WORK=${WORK:-$REPO/examples/work/crash}
MNT=$WORK/mnt FS=$WORK/fs LOOP=""
SIZE_MB=32

cleanup() {
  set +e
  mountpoint -q "$FS" && umount "$FS"
  [ -n "$LOOP" ] && losetup -d "$LOOP"
  mountpoint -q "$MNT" && "$DMFUSE" umount "$MNT"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
trap cleanup EXIT

mkdir -p "$WORK/tables" "$MNT" "$FS"
rm -f "$WORK"/tables/*.img "$WORK"/tables/*.table
truncate -s ${SIZE_MB}M "$WORK/tables/dev.img"
truncate -s 256M "$WORK/tables/log.img"          # sparse; needs room for all data written
echo "0 $((SIZE_MB * 2048)) log-writes dev.img log.img" > "$WORK/tables/lw.table"

step "a log-writes device over dev.img, logging to log.img"
run "$DMFUSE" mount "$WORK/tables" "$MNT"
run "$DMFUSE" -m "$MNT" table lw
LOOP=$(losetup -f --show "$MNT/lw")

step "mkfs, then the mark the replay starts from"
run mkfs.ext4 -q -F -E nodiscard "$LOOP"
run sync
run "$DMFUSE" -m "$MNT" message lw 0 mark mkfs
run "$DMFUSE" -m "$MNT" status lw

step "file operations"
run mount "$LOOP" "$FS"
for i in 1 2 3 4; do
  head -c $((i * 100))K /dev/urandom > "$FS/file$i"
  sync "$FS/file$i"                               # fsync: a flush point
done
mkdir "$FS/dir"
mv "$FS/file1" "$FS/dir/renamed"
rm "$FS/file2"
sync -f "$FS"
run ls -lR "$FS"
run umount "$FS"
losetup -d "$LOOP"; LOOP=""
run "$DMFUSE" -m "$MNT" remove lw                # logs what was unflushed, then the end mark
run "$DMFUSE" umount "$MNT"

step "replay: the state at the mark, then every flush point after it"
SCRATCH=$WORK/scratch.img COPY=$WORK/copy.img
rm -f "$SCRATCH"; truncate -s ${SIZE_MB}M "$SCRATCH"
run "$DMFUSE" replay-log --log "$WORK/tables/log.img" --num-entries
run "$DMFUSE" replay-log --log "$WORK/tables/log.img" --find --end-mark mkfs
run "$DMFUSE" replay-log --log "$WORK/tables/log.img" --replay "$SCRATCH" --end-mark mkfs
FSCK="e2fsck -fn $SCRATCH >/dev/null 2>&1 && cp --sparse=always $SCRATCH $COPY &&
  { e2fsck -E journal_only -y $COPY >/dev/null 2>&1; e2fsck -fn $COPY >/dev/null 2>&1; } && echo -n ."
run "$DMFUSE" replay-log --log "$WORK/tables/log.img" --replay "$SCRATCH" --start-mark mkfs \
  --fsck "$FSCK" --check flush
echo
echo "every flush point replayed clean"
