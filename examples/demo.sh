#!/usr/bin/env bash
# The README's first command: set everything up, mount the example disks and use them.
#   - copies examples/disks (the table directory) and makes the backing images in a work dir,
#     so the demo's table swaps never touch the repository
#   - mounts them with dmfuse, shows the devices like dmsetup would
#   - puts ext4 on the striped disk through a loop device, writes and reads a file, fsck
#   - swaps a live table and grows a device while it is mounted, as scripts do with dmsetup
#   - creates an encrypted (crypt) disk and shows the image holds only ciphertext
#   - cleans up (unmount, detach the loop device) unless KEEP=1
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
"$REPO/scripts/setup.sh"
DMFUSE="$REPO/.venv/bin/dmfuse"
WORK=${WORK:-$REPO/examples/work}
MNT=$WORK/mnt
LOOP=""; FSMNT=$WORK/fs

cleanup() {
  set +e
  mountpoint -q "$FSMNT" && umount "$FSMNT"
  [ -n "$LOOP" ] && losetup -d "$LOOP"
  mountpoint -q "$MNT" && "$DMFUSE" umount "$MNT"
}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

mkdir -p "$WORK" "$MNT" "$FSMNT"
if mountpoint -q "$MNT"; then "$DMFUSE" umount "$MNT"; fi
rm -rf "$WORK/tables" && cp -r "$REPO/examples/disks" "$WORK/tables"
"$REPO/examples/make-images.sh" "$WORK" >/dev/null
[ "${KEEP:-0}" = 1 ] || trap cleanup EXIT

step "mount the table directory"
run "$DMFUSE" mount "$WORK/tables" "$MNT"
run ls -l "$MNT"
run "$DMFUSE" -m "$MNT" ls
run "$DMFUSE" -m "$MNT" table
run "$DMFUSE" -m "$MNT" status
run "$DMFUSE" -m "$MNT" info stacked

step "the stacked disk is a window into the span disk"
printf 'written through span' | dd of="$MNT/span" bs=512 seek=98304 conv=notrunc status=none
run dd if="$MNT/stacked" bs=20 count=1 status=none; echo

step "ext4 on the striped disk through a loop device"
LOOP=$(losetup -f --show "$MNT/stripe")
echo "loop device: $LOOP"
run mkfs.ext4 -q -F "$LOOP"
run mount "$LOOP" "$FSMNT"
head -c 8M /dev/urandom > "$WORK/payload"
run cp "$WORK/payload" "$FSMNT/payload"
sync
run umount "$FSMNT"
run e2fsck -fn "$LOOP"
run mount "$LOOP" "$FSMNT"
run cmp "$WORK/payload" "$FSMNT/payload" && echo "file read back identical"
run df -h "$FSMNT"

step "grow the striped disk live: load a bigger table, resume, then grow ext4 into it"
truncate -s 96M "$WORK/images/c.img" "$WORK/images/d.img"
run "$DMFUSE" -m "$MNT" load stripe --table "0 393216 striped 2 128 $WORK/images/c.img 0 $WORK/images/d.img 0"
run "$DMFUSE" -m "$MNT" info stripe
run "$DMFUSE" -m "$MNT" resume stripe
run stat -c '%n: %s bytes' "$MNT/stripe"
run losetup -c "$LOOP"
run blockdev --getsize64 "$LOOP"
run umount "$FSMNT"
run e2fsck -fp "$LOOP"
run resize2fs "$LOOP"
run mount "$LOOP" "$FSMNT"
run df -h "$FSMNT"
run cmp "$WORK/payload" "$FSMNT/payload" && echo "file still identical after the resize"

step "swap the sparse disk's table: zero -> linear over b.img (its data appears)"
run "$DMFUSE" -m "$MNT" suspend sparse
run "$DMFUSE" -m "$MNT" load sparse --table "0 65536 linear $WORK/images/b.img 0"
run "$DMFUSE" -m "$MNT" resume sparse
run stat -c '%n: %s bytes' "$MNT/sparse"
run "$DMFUSE" -m "$MNT" table sparse
echo "the table directory now holds what is live:"; run cat "$WORK/tables/sparse.table"

step "an encrypted disk: crypt aes-xts-plain64, the table (with its key) read from stdin"
truncate -s 16M "$WORK/images/e.img"
KEY=$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n')   # never in argv, never printed
printf '0 32768 crypt aes-xts-plain64 %s 0 %s 0\n' "$KEY" "$WORK/images/e.img" \
  | run "$DMFUSE" -m "$MNT" create secret
run "$DMFUSE" -m "$MNT" table secret             # the key prints as zeros without --showkeys
printf 'attack at dawn' | run dd of="$MNT/secret" conv=notrunc,fsync status=none
run dd if="$MNT/secret" bs=14 count=1 status=none; echo "   <- read back through the device"
run sh -c "grep -q 'attack at dawn' '$WORK/images/e.img' && echo 'plaintext in the image!' \
  || echo 'not in the image: it holds ciphertext'"

step "done"
if [ "${KEEP:-0}" = 1 ]; then
  echo "left mounted at $MNT (loop $LOOP on $FSMNT). Clean up with:"
  echo "  umount $FSMNT; losetup -d $LOOP; $DMFUSE umount $MNT; rm -rf $WORK"
else
  echo "cleaning up: unmount $FSMNT, detach $LOOP, dmfuse umount $MNT (remove $WORK to start over)"
fi
