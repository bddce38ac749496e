#!/bin/bash
# record.sh: record what the REAL kernel device-mapper + dmsetup print, as golden files.
#
# How to run (on the host, from anywhere; needs qemu-system-x86 busybox-static kmod):
#     tests/golden/kernel/record.sh
# It (1) builds the kernel+initrd once with /work/shared/tools/kdm-vm.sh setup (in $KDM_DIR,
# default <repo>/.cache/kdm), (2) makes two zeroed 16 MiB disk images in $KDM_WORK (default
# <repo>/.cache/kdm-work/golden; both .cache dirs are gitignored), (3) boots Debian's 6.12 kernel
# in qemu (kdm-vm.sh run) and runs THIS script inside it with `--guest WORKDIR` (as root, host /
# chrooted read-only, so the host's dmsetup 1.02.185 talks to the guest's dm 4.48), which writes
# one file per case to WORKDIR/out/, and (4) replaces tests/golden/kernel/NN-*.txt with them.
# One run takes ~5-10 min (qemu TCG, no KVM; more when the host is busy).
# Environment overrides: KDM_VM (path of kdm-vm.sh), KDM_DIR, KDM_WORK, KDM_TIMEOUT (s, 3600).
#
# File format (see README.md): each NN-name.txt is a sequence of records, replayed in order:
#     $ <command, one line, run by bash (eval in a subshell), stdin </dev/null unless it pipes>
#     --- rc: <exit code>
#     --- stdout:                     (or "--- stdout (no newline at end):")
#     <exact bytes>
#     --- stderr:                     (same rule)
#     <exact bytes>
#     --- dmesg:                      (kernel log lines emitted during the command, no timestamps)
#     <lines>
#     --- end
# Records whose command starts with "exec " are run in the recording shell itself (they open or
# close file descriptors that hold a device open, e.g. `exec 3</dev/mapper/o`).
# Every case starts with no dm devices (so minors start at 253:0) and fresh devices (event nr 0).
set -u

case "${1:-}" in --guest|--guest-inner) ;; *)
  # ------------------------------------------------------------------ host side
  set -e
  HERE=$(cd "$(dirname "$0")" && pwd)
  REPO=$(cd "$HERE/../../.." && pwd)
  KDM_VM=${KDM_VM:-/work/shared/tools/kdm-vm.sh}
  export KDM_DIR=${KDM_DIR:-$REPO/.cache/kdm}
  WORK=${KDM_WORK:-$REPO/.cache/kdm-work/golden}
  [ -f "$KDM_DIR/vmlinuz" ] && [ -f "$KDM_DIR/initrd.gz" ] || "$KDM_VM" setup
  rm -rf "$WORK"; mkdir -p "$WORK/out"
  truncate -s 16M "$WORK/vda.img" "$WORK/vdb.img"
  cp "$HERE/record.sh" "$WORK/record.sh"
  printf '#!/bin/bash\nexec bash %q --guest %q\n' "$WORK/record.sh" "$WORK" > "$WORK/guest.sh"
  export KDM_TIMEOUT=${KDM_TIMEOUT:-3600}
  rc=0
  "$KDM_VM" run "$WORK" "$WORK/guest.sh" "$WORK/vda.img" "$WORK/vdb.img" > "$WORK/console.log" 2>&1 || rc=$?
  if [ "$rc" != 0 ] || [ ! -f "$WORK/out/DONE" ]; then
    echo "record.sh: guest run failed (rc=$rc); see $WORK/console.log" >&2
    tail -20 "$WORK/console.log" >&2; exit 1
  fi
  rm -f "$HERE"/[0-9][0-9]-*.txt
  cp "$WORK"/out/[0-9][0-9]-*.txt "$HERE"/
  echo "record.sh: $(ls "$WORK"/out/[0-9][0-9]-*.txt | wc -l) case files written to $HERE"
  [ -f "$WORK/out/WARNINGS" ] && cat "$WORK/out/WARNINGS" >&2
  exit 0 ;;
esac

# -------------------------------------------------------------------- guest side
if [ "$1" = "--guest" ]; then
  # Stage 1, in the guest's read-only 9p view of the host /: exec over 9p (cache=none) costs
  # ~0.4 s per process, so copy the few tools we need (+ their libraries) into a tmpfs root and
  # chroot there (about 10x faster).  Same binaries, same libraries, same kernel.
  WORK=$2
  R=/tmp/kroot
  mkdir -p "$R/dev" "$R/proc" "$R/sys" "$R/tmp" "$R/run" "$R/etc" "$R$WORK"
  files=
  for t in bash dmsetup dd blockdev blkdiscard dmesg stat lsblk cat timeout od cmp head tail tr \
           seq ls basename readlink mkdir env true sleep wc grep; do
    p=$(command -v "$t") && files="$files $p" || echo "record.sh: tool $t missing" >&2
  done
  for f in $files $(ldd $files 2>/dev/null | grep -o '/[^ ]*' | grep -v ':$' | sort -u); do
    mkdir -p "$R$(dirname "$f")" && cp -L "$f" "$R$f"
  done
  mount --rbind /dev "$R/dev"; mount --bind /proc "$R/proc"; mount --bind /sys "$R/sys"
  mount --bind "$WORK" "$R$WORK"
  dmesg -n 1            # keep the console quiet; the log is still captured per command
  chroot "$R" env PATH=/usr/sbin:/usr/bin:/sbin:/bin bash "$WORK/record.sh" --guest-inner "$WORK"
  exit $?
fi

# Stage 2, inside the tmpfs root.
WORK=$2
OUT=$WORK/out
T=/tmp/rec.$$
mkdir -p "$OUT" "$T"
CASEFILE=/dev/null

readall() {             # readall FILE -> $DATA (exact bytes; outputs never contain NUL)
  DATA=
  IFS= read -r -d '' DATA < "$1"
}

section() {             # section NAME FILE   (bash builtins only: exec is slow in the guest)
  readall "$2"
  if [ -n "$DATA" ] && [[ $DATA != *$'\n' ]]; then
    printf -- '--- %s (no newline at end):\n%s\n' "$1" "$DATA"
  else
    printf -- '--- %s:\n%s' "$1" "$DATA"
  fi
}

kmsg() {                # kernel log since the last call, minus timing noise of the slow VM
  local l out=
  dmesg --notime -c > "$T/k" 2>/dev/null
  while IFS= read -r l; do
    case $l in hrtimer:*|clocksource:*|rcu:*|sched:*|"INFO: "*) ;; *) out+=$l$'\n' ;; esac
  done < "$T/k"
  printf '%s' "$out" > "$T/k"
}

emit() {                # emit CMD RC
  {
    printf '$ %s\n--- rc: %s\n' "$1" "$2"
    section stdout "$T/o"; section stderr "$T/e"; section dmesg "$T/k"
    printf -- '--- end\n'
  } >> "$CASEFILE"
}

# run CMD [TIMEOUT]: run CMD (in a subshell, or under `timeout bash -c` when TIMEOUT is given:
# only for commands that may block), record rc/stdout/stderr and the kernel log lines it caused.
run() {
  local cmd=$1 to=${2:-} rc
  if [ -n "$to" ]; then timeout -k 2 "$to" bash -c "$cmd"; else ( set +u; eval "$cmd" ); fi \
    < /dev/null > "$T/o" 2> "$T/e"; rc=$?
  kmsg
  emit "$cmd" "$rc"
}

# runsh CMD: run CMD in this shell (for `exec 3</dev/mapper/x` / `exec 3<&-`), record it too
runsh() {
  local cmd=$1 rc
  { eval "$cmd"; } < /dev/null > "$T/o" 2> "$T/e"; rc=$?
  kmsg
  emit "$cmd" "$rc"
}

cleanup() {             # remove every dm device, silently
  exec 3<&- 4<&-
  dmsetup remove_all --force > /dev/null 2>&1
  local left n
  left=$(dmsetup info -c --noheadings -o name 2>/dev/null)
  if [ "$left" != "No devices found" ]; then
    for n in $left; do dmsetup resume "$n"; dmsetup remove --force "$n"; done > /dev/null 2>&1
    left=$(dmsetup info -c --noheadings -o name 2>&1)
    [ "$left" != "No devices found" ] && printf 'cleanup failed before %s:\n%s\n' "$1" "$left" >> "$OUT/WARNINGS"
  fi
  dmesg -C
}

begin() {               # begin NN-name
  cleanup "$1"
  CASEFILE=$OUT/$1.txt
  : > "$CASEFILE"
}

L127=$(printf 'n%.0s' $(seq 127))
L128=$(printf 'n%.0s' $(seq 128))
U128=$(printf 'u%.0s' $(seq 128))
U129=$(printf 'u%.0s' $(seq 129))

# ===================================================================== cases
begin 01-version
run 'dmsetup version'

begin 02-targets
run 'dmsetup targets'

begin 03-disks
run "stat -c '%n %t:%T %Hr:%Lr' /dev/vda /dev/vdb"
run 'lsblk -dno NAME,MAJ:MIN,SIZE /dev/vda /dev/vdb'
run 'blockdev --getsz /dev/vda'
run 'blockdev --getsz /dev/vdb'
run 'cat /sys/block/vda/queue/discard_max_bytes /sys/block/vda/queue/discard_granularity'

begin 04-no-devices
run 'dmsetup ls'
run 'dmsetup info'
run 'dmsetup info -c'
run 'dmsetup info -c --noheadings'
run 'dmsetup table'
run 'dmsetup status'
run 'dmsetup deps'
run 'dmsetup ls --target linear'
run 'dmsetup status --target striped'

begin 05-linear-basic
run 'dmsetup create lin --table "0 2048 linear /dev/vda 0"'
run 'dmsetup info lin'
run 'dmsetup info'
run 'dmsetup info -c'
run 'dmsetup info -c --noheadings'
run 'dmsetup info -c lin'
run 'dmsetup table'
run 'dmsetup table lin'
run 'dmsetup table --inactive lin'
run 'dmsetup table --showkeys lin'
run 'dmsetup status'
run 'dmsetup status lin'
run 'dmsetup ls'
run 'dmsetup ls --target linear'
run 'dmsetup ls --target striped'
run 'dmsetup deps lin'
run 'dmsetup deps'
run 'dmsetup deps -o devname lin'
run 'dmsetup deps -o blkdevname lin'
run 'dmsetup deps -o devno lin'
run "stat -c '%n %F %t:%T %Hr:%Lr' /dev/mapper/lin"
run 'blockdev --getsz /dev/mapper/lin'
run 'blockdev --getro /dev/mapper/lin'
run 'dmsetup remove lin'
run 'dmsetup info lin'
run 'dmsetup ls'

begin 06-linear-offsets
run 'dmsetup create lo --table "0 1000 linear /dev/vdb 1234"'
run 'dmsetup table lo'
run 'dmsetup create lo2 --table "0 8 linear 254:16 7"'
run 'dmsetup table lo2'
run 'dmsetup create lo3 --table "0 8 linear /dev/vda 32760"'
run 'dmsetup table lo3'
run 'dmsetup deps'
run 'dmsetup info -c'
run 'dmsetup create two --table "0 1024 linear /dev/vda 0" && dmsetup create lo4 --table "0 8 linear /dev/mapper/two 100"'
run 'dmsetup table lo4'
run 'dmsetup deps lo4'
run 'dmsetup deps -o devname lo4'
run 'dmsetup info two'
run 'dmsetup ls'

begin 07-create-table-syntax
run 'echo -e "0 1024 linear /dev/vda 0\n1024 1024 linear /dev/vdb 0" | dmsetup create two'
run 'dmsetup table two'
run 'dmsetup status two'
run 'dmsetup info two'
run 'dmsetup deps two'
run "printf '# comment\n\n0 1024 zero\n   \n1024 1024 error\n' | dmsetup create com"
run 'dmsetup table com'
run 'dmsetup create sp --table "  0   2048   linear   /dev/vda   0  "'
run 'dmsetup table sp'
run "printf '0\t512\tzero\n' | dmsetup create tab"
run 'dmsetup table tab'
run "printf '0 512 zero' | dmsetup create nonl"
run 'dmsetup table nonl'
run 'dmsetup create semi --table "0 1024 zero;1024 1024 error"'
run 'dmsetup table semi'
run 'dmsetup create nl --table "$(printf "0 1024 zero\n1024 1024 error")"'
run 'dmsetup table nl'
run 'dmsetup create hex --table "0 0x10 zero"'
run 'dmsetup table hex'
run 'dmsetup create plus --table "0 +16 zero"'
run 'dmsetup table plus'
run 'dmsetup ls'

begin 08-create-readonly
run 'dmsetup create --readonly ro --table "0 2048 linear /dev/vda 0"'
run 'dmsetup info ro'
run 'dmsetup info -c ro'
run 'dmsetup table ro'
run 'dmsetup status ro'
run 'blockdev --getro /dev/mapper/ro'
run 'dd if=/dev/zero of=/dev/mapper/ro bs=512 count=1 oflag=direct status=noxfer'
run 'dd if=/dev/zero of=/dev/mapper/ro bs=512 count=1 conv=fsync status=noxfer'
run 'dd if=/dev/mapper/ro of=/dev/null bs=512 count=1 iflag=direct status=noxfer'
run 'dmsetup load ro --table "0 4096 linear /dev/vda 0"'
run 'dmsetup info ro'
run 'dmsetup resume ro'
run 'dmsetup info ro'
run 'dmsetup load -r ro --table "0 4096 linear /dev/vda 0" && dmsetup resume ro && dmsetup info ro'
run 'dmsetup create -r ro2 --notable'
run 'dmsetup info ro2'

begin 09-create-uuid
run 'dmsetup create --uuid UUID-A u1 --table "0 8 zero"'
run 'dmsetup info u1'
run 'dmsetup info -c'
run 'dmsetup info -u UUID-A'
run 'dmsetup table -u UUID-A'
run 'dmsetup create --uuid UUID-A u2 --table "0 8 zero"'
run 'dmsetup info u2'
run 'dmsetup create -u UUID-B u3 --notable'
run 'dmsetup info u3'
run "dmsetup create -u $U128 u4 --table '0 8 zero'"
run "dmsetup create -u $U129 u5 --table '0 8 zero'"
run 'dmsetup create -u "" u6 --table "0 8 zero"'
run 'dmsetup info u6'
run 'dmsetup ls'
run 'dmsetup info -c'
run 'dmsetup remove -u UUID-A'
run 'dmsetup ls'

begin 10-create-notable
run 'dmsetup create --notable nt'
run 'dmsetup info nt'
run 'dmsetup info -c nt'
run 'dmsetup table nt'
run 'dmsetup table --inactive nt'
run 'dmsetup status nt'
run 'dmsetup deps nt'
run 'dmsetup ls'
run 'dmsetup table'
run 'blockdev --getsz /dev/mapper/nt'
run 'dd if=/dev/mapper/nt of=/dev/null bs=512 count=1 status=noxfer'
run 'dmsetup resume nt'
run 'dmsetup info nt'
run 'dmsetup load nt --table "0 4096 zero"'
run 'dmsetup info nt'
run 'dmsetup info -c nt'
run 'dmsetup table nt'
run 'dmsetup table --inactive nt'
run 'dmsetup status --inactive nt'
run 'dmsetup deps nt'
run 'dmsetup resume nt'
run 'dmsetup info nt'
run 'blockdev --getsz /dev/mapper/nt'
run 'dmsetup create nt2 --notable --table "0 8 zero"'
run 'dmsetup create nt3 </dev/null'
run 'dmsetup info nt3'

begin 11-create-existing
run 'dmsetup create lin --table "0 2048 linear /dev/vda 0"'
run 'dmsetup create lin --table "0 4096 zero"'
run 'dmsetup create lin --notable'
run 'dmsetup table lin'
run 'dmsetup info lin'
run 'dmsetup ls'

begin 12-create-bad-name
run 'dmsetup create a/b --table "0 8 zero"'
run 'dmsetup create . --table "0 8 zero"'
run 'dmsetup create .. --table "0 8 zero"'
run 'dmsetup create control --table "0 8 zero"'
run 'dmsetup create "" --table "0 8 zero"'
run 'dmsetup create "a b" --table "0 8 zero"'
run "dmsetup create 'x\$y' --table '0 8 zero'"
run "dmsetup create $L127 --table '0 8 zero'"
run "dmsetup create $L128 --table '0 8 zero'"
run 'dmsetup ls'
run 'dmsetup info -c'

begin 13-info-states
run 'dmsetup create a_live --table "0 2048 linear /dev/vda 0"'
run 'dmsetup create b_none --notable'
run 'dmsetup create c_inact --notable && dmsetup load c_inact --table "0 1024 zero"'
run 'dmsetup create d_both --table "0 2048 zero" && dmsetup load d_both --table "0 4096 zero"'
run 'dmsetup create e_susp --table "0 2048 zero" && dmsetup suspend e_susp'
run 'dmsetup create -r f_ro --table "0 2048 linear /dev/vdb 0"'
run 'dmsetup create g_susp_inact --table "0 8 zero" && dmsetup suspend g_susp_inact && dmsetup load g_susp_inact --table "0 16 error"'
run 'dmsetup create -u UUID-H h_uuid_ro_susp -r --table "0 8 zero" && dmsetup suspend h_uuid_ro_susp'
run 'dmsetup info'
run 'dmsetup info -c'
run 'dmsetup info -c --noheadings'
run 'dmsetup info a_live'
run 'dmsetup info b_none'
run 'dmsetup info c_inact'
run 'dmsetup info d_both'
run 'dmsetup info e_susp'
run 'dmsetup info f_ro'
run 'dmsetup info g_susp_inact'
run 'dmsetup info h_uuid_ro_susp'
run 'dmsetup info nope'
run 'dmsetup info -c nope'
run 'dmsetup ls'
run 'dmsetup table'
run 'dmsetup table --inactive'
run 'dmsetup status'
run 'dmsetup status --inactive'
run 'dmsetup deps'
run 'dmsetup table e_susp'
run 'dmsetup status e_susp'

begin 14-striped
run 'dmsetup create st --table "0 2048 striped 2 8 /dev/vda 0 /dev/vdb 0"'
run 'dmsetup table st'
run 'dmsetup status st'
run 'dmsetup info st'
run 'dmsetup deps st'
run 'blockdev --getsz --getss --getiomin --getioopt /dev/mapper/st'
run 'dmsetup create st24 --table "0 2064 striped 2 24 /dev/vda 0 /dev/vdb 0"'
run 'dmsetup table st24'
run 'dmsetup status st24'
run 'blockdev --getsz --getiomin --getioopt /dev/mapper/st24'
run 'dmsetup create st1 --table "0 1024 striped 1 8 /dev/vdb 16"'
run 'dmsetup table st1'
run 'dmsetup status st1'
run 'dmsetup create stoff --table "0 4096 striped 2 16 /dev/vda 100 /dev/vdb 200"'
run 'dmsetup table stoff'
run 'dmsetup create st3 --table "0 96 striped 3 8 /dev/vda 0 /dev/vdb 0 /dev/vda 4096"'
run 'dmsetup table st3'
run 'dmsetup status st3'
run 'dmsetup deps st3'
run 'dmsetup create st128 --table "0 4096 striped 2 128 /dev/vda 0 /dev/vdb 0"'
run 'dmsetup table st128'
run 'dmsetup create st1c --table "0 64 striped 2 1 /dev/vda 0 /dev/vdb 0"'
run 'dmsetup table st1c'
run 'dmsetup create st3c --table "0 66 striped 2 3 /dev/vda 0 /dev/vdb 0"'
run 'dmsetup table st3c'
run 'dmsetup create lin --table "0 8 linear /dev/vda 0"'
run 'dmsetup status --target striped'
run 'dmsetup table --target striped'
run 'dmsetup ls --target striped'
run 'dmsetup status --target linear'
run 'dmsetup status --target bogus'

begin 15-zero-error
run 'dmsetup create z --table "0 4096 zero"'
run 'dmsetup table z'
run 'dmsetup status z'
run 'dmsetup deps z'
run 'dmsetup info z'
run 'dmsetup create e1 --table "0 4096 error"'
run 'dmsetup table e1'
run 'dmsetup status e1'
run 'dmsetup deps e1'
run 'dmsetup create e2 --table "0 4096 error /dev/vda 0"'
run 'dmsetup table e2'
run 'dmsetup status e2'
run 'dmsetup deps e2'
run 'dmsetup info e2'
run 'dmsetup create e3 --table "0 4096 error /dev/vdb 100"'
run 'dmsetup table e3'
run 'dmsetup deps e3'
run 'dmsetup create e4 --table "0 4096 error /dev/vda"'
run 'dmsetup create e5 --table "0 4096 error /dev/vda 0 1"'
run 'dmsetup deps e4'
run 'dmsetup deps e5'
run 'dmsetup create e6 --table "0 4096 error foo bar"'
run 'dmsetup create e7 --table "0 4096 error /dev/nonexistent 0"'
run 'dmsetup create e8 --table "0 4096 error /dev/vda x"'
run 'dmsetup create z1 --table "0 4096 zero 1"'
run 'dmsetup table'
run 'dmsetup status'
run 'dmsetup ls'

begin 16-multi-target
run 'echo -e "0 1024 linear /dev/vda 0\n1024 1024 striped 2 8 /dev/vda 1024 /dev/vdb 0\n2048 512 zero\n2560 512 error\n3072 100 linear /dev/vdb 5000" | dmsetup create mix'
run 'dmsetup table mix'
run 'dmsetup table'
run 'dmsetup status mix'
run 'dmsetup status'
run 'dmsetup status --target striped'
run 'dmsetup status --target linear mix'
run 'dmsetup table --target zero'
run 'dmsetup table --target error mix'
run 'dmsetup ls --target zero'
run 'dmsetup ls --target linear'
run 'dmsetup deps mix'
run 'dmsetup info mix'
run 'dmsetup info -c mix'
run 'blockdev --getsz /dev/mapper/mix'

begin 17-load-errors-table-shape
run 'echo -e "0 1024 zero\n2048 1024 zero" | dmsetup create gap'
run 'echo -e "0 1024 zero\n512 1024 zero" | dmsetup create overlap'
run 'echo -e "1024 1024 zero\n0 1024 zero" | dmsetup create order'
run 'dmsetup create start8 --table "8 1024 zero"'
run 'dmsetup create len0 --table "0 0 zero"'
run 'echo -e "0 1024 zero\n1024 0 zero" | dmsetup create len0b'
run 'dmsetup create neg --table "0 -8 zero"'
run 'dmsetup create nan --table "x 8 zero"'
run 'dmsetup create nanlen --table "0 8x zero"'
run 'dmsetup create notype --table "0 1024"'
run 'dmsetup create unk --table "0 1024 bogus"'
run 'dmsetup create unk2 --table "0 1024 bogus a b c"'
run 'dmsetup create -u UU-BAD ub --table "0 1024 bogus"'
run 'dmsetup create -u UU-OK uok --table "0 8 zero"'
run 'dmsetup load uok --table "0 8 bogus"'
run 'dmsetup load -u UU-OK --table "0 8 bogus"'
run 'dmsetup remove uok'
run 'dmsetup create empty --table ""'
run 'dmsetup info empty'
run "printf '' | dmsetup create empty2"
run 'dmsetup info empty2'
run "printf '# only a comment\n' | dmsetup create empty3"
run 'dmsetup info empty3'
run 'dmsetup ls'

begin 18-load-errors-linear
run 'dmsetup create l0 --table "0 8 linear"'
run 'dmsetup create l1 --table "0 8 linear /dev/vda"'
run 'dmsetup create l3 --table "0 8 linear /dev/vda 0 5"'
run 'dmsetup create lnan --table "0 8 linear /dev/vda abc"'
run 'dmsetup create ltrail --table "0 8 linear /dev/vda 12x"'
run 'dmsetup create lneg --table "0 8 linear /dev/vda -1"'
run 'dmsetup create lhex --table "0 8 linear /dev/vda 0x10"'
run 'dmsetup table lhex'
run 'dmsetup create lnodev --table "0 8 linear /dev/nonexistent 0"'
run 'dmsetup create lnull --table "0 8 linear /dev/null 0"'
run 'dmsetup create lbadnum --table "0 8 linear 254:99 0"'
run 'dmsetup create lrel --table "0 8 linear vda 0"'
run 'dmsetup create lself --notable && dmsetup load lself --table "0 8 linear /dev/mapper/lself 0"'
run 'dmsetup ls'

begin 19-load-errors-striped
run 'dmsetup create s0 --table "0 2048 striped 0 8 /dev/vda 0"'
run 'dmsetup create s1few --table "0 2048 striped 2 8 /dev/vda 0"'
run 'dmsetup create s1many --table "0 2048 striped 2 8 /dev/vda 0 /dev/vdb 0 /dev/vda 0"'
run 'dmsetup create sfew --table "0 2048 striped 2 8"'
run 'dmsetup create sndiv --table "0 2047 striped 2 8 /dev/vda 0 /dev/vdb 0"'
run 'dmsetup create sndivc --table "0 2040 striped 2 16 /dev/vda 0 /dev/vdb 0"'
run 'dmsetup create sndiv24 --table "0 2048 striped 2 24 /dev/vda 0 /dev/vdb 0"'
run 'dmsetup create schunk0 --table "0 2048 striped 2 0 /dev/vda 0 /dev/vdb 0"'
run 'dmsetup create snan --table "0 2048 striped x 8 /dev/vda 0 /dev/vdb 0"'
run 'dmsetup create schunknan --table "0 2048 striped 2 abc /dev/vda 0 /dev/vdb 0"'
run 'dmsetup create soffnan --table "0 2048 striped 2 8 /dev/vda 0 /dev/vdb zz"'
run 'dmsetup create snodev --table "0 2048 striped 2 8 /dev/vda 0 /dev/nonexistent 0"'
run 'dmsetup create sneg --table "0 2048 striped -2 8 /dev/vda 0 /dev/vdb 0"'
run 'dmsetup create sbig --table "0 8192 striped 2 8 /dev/vda 0 /dev/vdb 30000"'
run 'dmsetup info sbig'
run 'dmsetup ls'

begin 20-load-errors-on-existing
run 'dmsetup create lin --table "0 2048 linear /dev/vda 0"'
run 'dmsetup load lin --table "0 8 linear /dev/vda"'
run 'dmsetup info lin'
run 'dmsetup table lin'
run 'dmsetup table --inactive lin'
run 'dmsetup load lin --table "0 4096 zero"'
run 'dmsetup load lin --table "0 8 bogus"'
run 'dmsetup info lin'
run 'dmsetup table --inactive lin'
run 'dmsetup load lin --table ""'
run 'dmsetup info lin'
run 'dmsetup load lin </dev/null'
run 'dmsetup info lin'
run 'dmsetup load nope --table "0 8 zero"'

begin 21-table-past-end
run 'dmsetup create big --table "0 40000 linear /dev/vda 0"'
run 'dmsetup info big'
run 'dmsetup ls'
run 'dmsetup create big2 --table "0 8 linear /dev/vda 32764"'
run 'dmsetup info big2'
run 'dmsetup create off --table "0 8 linear /dev/vda 40000"'
run 'dmsetup info off'
run 'dmsetup create edge --table "0 8 linear /dev/vda 32760"'
run 'dmsetup info -c edge'
run 'dmsetup create grow --table "0 2048 linear /dev/vda 0"'
run 'dmsetup load grow --table "0 40000 linear /dev/vda 0"'
run 'dmsetup info grow'
run 'dmsetup table --inactive grow'
run 'dmsetup resume grow'
run 'dmsetup info grow'
run 'dmsetup table grow'
run 'dmsetup table --inactive grow'
run 'blockdev --getsz /dev/mapper/grow'
run 'dmsetup resume grow'
run 'dmsetup info grow'
run 'dmsetup create nt --notable && dmsetup load nt --table "0 40000 linear /dev/vdb 0"'
run 'dmsetup resume nt'
run 'dmsetup info nt'
run 'dmsetup create st --table "0 65536 striped 2 8 /dev/vda 0 /dev/vdb 8"'
run 'dmsetup info st'
run 'dmsetup ls'

begin 22-lifecycle-load-resume
run 'dmsetup create lr --table "0 2048 linear /dev/vda 0"'
run 'dmsetup info lr'
run 'blockdev --getsz /dev/mapper/lr'
run 'dmsetup load lr --table "0 4096 linear /dev/vda 0"'
run 'dmsetup info lr'
run 'dmsetup info -c lr'
run 'blockdev --getsz /dev/mapper/lr'
run 'dmsetup table lr'
run 'dmsetup table --inactive lr'
run 'dmsetup resume lr'
run 'dmsetup info lr'
run 'blockdev --getsz /dev/mapper/lr'
run 'dmsetup table lr'
run 'dmsetup table --inactive lr'
run 'dmsetup resume lr'
run 'dmsetup info lr'
run 'dmsetup suspend lr'
run 'dmsetup info lr'
run 'dmsetup info -c lr'
run 'dmsetup table lr'
run 'dmsetup status lr'
run 'blockdev --getsz /dev/mapper/lr'
run 'dmsetup suspend lr'
run 'dmsetup info lr'
run 'dmsetup load lr --table "0 1024 zero"'
run 'dmsetup info lr'
run 'dmsetup resume lr'
run 'dmsetup info lr'
run 'dmsetup table lr'
run 'blockdev --getsz /dev/mapper/lr'
run 'dmsetup suspend --noflush lr'
run 'dmsetup info -c lr'
run 'dmsetup resume lr'
run 'dmsetup suspend --nolockfs lr'
run 'dmsetup resume lr'
run 'dmsetup info lr'
run 'dmsetup create nt --notable'
run 'dmsetup suspend nt'
run 'dmsetup info nt'
run 'dmsetup resume nt'
run 'dmsetup info nt'

begin 23-clear
run 'dmsetup create cl --table "0 2048 zero"'
run 'dmsetup load cl --table "0 4096 error"'
run 'dmsetup info cl'
run 'dmsetup clear cl'
run 'dmsetup info cl'
run 'dmsetup table --inactive cl'
run 'dmsetup clear cl'
run 'dmsetup info cl'
run 'dmsetup create nt --notable && dmsetup load nt --table "0 8 zero"'
run 'dmsetup clear nt'
run 'dmsetup info nt'
run 'dmsetup clear nope'

begin 24-rename
run 'dmsetup create a --table "0 8 zero"'
run 'dmsetup create b --table "0 8 zero"'
run 'dmsetup info a'
run 'dmsetup rename a c'
run 'dmsetup info c'
run 'dmsetup info a'
run 'dmsetup ls'
run 'blockdev --getsz /dev/mapper/c'
run 'ls /dev/mapper'
run 'dmsetup rename c b'
run 'dmsetup info c'
run 'dmsetup rename c c'
run 'dmsetup info c'
run 'dmsetup rename nope x'
run 'dmsetup rename c d/e'
run "dmsetup rename c $L128"
run "dmsetup rename c $L127"
run "dmsetup rename $L127 c"
run 'dmsetup info c'
run 'dmsetup rename c --setuuid NEW-UUID'
run 'dmsetup info c'
run 'dmsetup info -c'
run 'dmsetup rename c --setuuid OTHER-UUID'
run 'dmsetup info c'
run 'dmsetup rename b --setuuid NEW-UUID'
run 'dmsetup create -u U-X x --table "0 8 zero"'
run 'dmsetup rename x --setuuid U-Y'
run 'dmsetup rename -u U-X y'
run 'dmsetup info y'
run 'dmsetup create --notable nt && dmsetup rename nt nt2'
run 'dmsetup info nt2'
run 'dmsetup ls'

begin 25-wait-events
run 'dmsetup create w --table "0 8 zero"'
run 'dmsetup info w'
run 'dmsetup wait w' 5
run 'dmsetup wait w 0' 5
run 'dmsetup rename w w2'
run 'dmsetup info w2'
run 'dmsetup wait w2'
run 'dmsetup wait -v w2'
run 'dmsetup wait w2 0'
run 'dmsetup wait w2 1' 5
run 'dmsetup wait w2 5'
run 'dmsetup wait w2 abc'
run 'dmsetup wait nope'
run 'dmsetup rename w2 w3'
run 'dmsetup info w3'
run 'dmsetup load w3 --table "0 16 zero"'
run 'dmsetup info w3'
run 'dmsetup resume w3'
run 'dmsetup info w3'
run 'dmsetup suspend w3'
run 'dmsetup info w3'
run 'dmsetup resume w3'
run 'dmsetup info w3'
run 'dmsetup message w3 0 foo'
run 'dmsetup info w3'
run 'dmsetup rename w3 --setuuid UU'
run 'dmsetup info w3'
run 'dmsetup create s --table "0 8 zero"'
run 'dmsetup suspend s && dmsetup resume s && dmsetup load s --table "0 8 zero" && dmsetup resume s && dmsetup clear s'
run 'dmsetup info s'
run 'dmsetup info -c -o name,events'

begin 26-remove-open
run 'dmsetup create o --table "0 2048 linear /dev/vda 0"'
runsh 'exec 3</dev/mapper/o'
run 'dmsetup info o'
run 'dmsetup remove o'
run 'dmsetup info o'
run 'dmsetup table o'
run 'dmsetup remove --force o'
run 'dmsetup info o'
run 'dmsetup info -c o'
run 'dmsetup table o'
run 'dmsetup status o'
run 'dmsetup deps o'
run 'dmsetup ls'
run 'blockdev --getsz /dev/mapper/o'
run 'dd if=/dev/mapper/o of=/dev/null bs=512 count=1 iflag=direct status=noxfer'
runsh 'exec 3<&-'
run 'dmsetup info o'
run 'dmsetup remove o'
run 'dmsetup info o'
run 'dmsetup create s --table "0 8 zero" && dmsetup suspend s'
run 'dmsetup remove s'
run 'dmsetup info s'
run 'dmsetup create s2 --table "0 8 zero" && dmsetup suspend s2'
runsh 'exec 4</dev/mapper/s2'
run 'dmsetup remove --force s2' 10
run 'dmsetup info s2'
run 'dmsetup table s2'
runsh 'exec 4<&-'
run 'dmsetup remove s2'

begin 27-remove-deferred
run 'dmsetup create d --table "0 2048 linear /dev/vda 0"'
runsh 'exec 3</dev/mapper/d'
run 'dmsetup remove --deferred d'
run 'dmsetup info d'
run 'dmsetup info -c d'
run 'dmsetup ls'
run 'dmsetup table d'
run 'dmsetup remove --deferred d'
run 'dmsetup info d'
runsh 'exec 3<&-'
run 'dmsetup info d'
run 'dmsetup ls'
run 'dmsetup create d2 --table "0 8 zero"'
run 'dmsetup remove --deferred d2'
run 'dmsetup info d2'
run 'dmsetup create d3 --table "0 8 zero"'
runsh 'exec 3</dev/mapper/d3'
run 'dmsetup remove --deferred d3'
run 'dmsetup info d3'
run 'dmsetup message d3 0 @cancel_deferred_remove'
run 'dmsetup info d3'
run 'dmsetup message d3 0 @cancel_deferred_remove'
runsh 'exec 3<&-'
run 'dmsetup info d3'
run 'dmsetup create d4 --table "0 8 zero"'
runsh 'exec 3</dev/mapper/d4'
run 'dmsetup remove --deferred d4'
run 'dmsetup remove d4'
run 'dmsetup remove --force d4'
run 'dmsetup info d4'
runsh 'exec 3<&-'
run 'dmsetup info d4'

begin 28-missing-device
run 'dmsetup info nope'
run 'dmsetup info -c nope'
run 'dmsetup table nope'
run 'dmsetup status nope'
run 'dmsetup deps nope'
run 'dmsetup ls nope'
run 'dmsetup remove nope'
run 'dmsetup remove --force nope'
run 'dmsetup remove --deferred nope'
run 'dmsetup suspend nope'
run 'dmsetup resume nope'
run 'dmsetup load nope --table "0 8 zero"'
run 'dmsetup clear nope'
run 'dmsetup rename nope nope2'
run 'dmsetup message nope 0 foo'
run 'dmsetup wait nope'
run 'dmsetup info -u NO-SUCH-UUID'
run 'dmsetup table -u NO-SUCH-UUID'
run 'dmsetup remove -u NO-SUCH-UUID'
run 'dmsetup info'

begin 29-message
run 'dmsetup create m --table "0 2048 linear /dev/vda 0"'
run 'dmsetup message m 0 foo'
run 'dmsetup message m 0 foo bar baz'
run 'dmsetup message m 2047 foo'
run 'dmsetup message m 2048 foo'
run 'dmsetup message m 4096 foo'
run 'dmsetup message m -1 foo'
run 'dmsetup message m x foo'
run 'dmsetup message m 0'
run 'dmsetup message m 0 @cancel_deferred_remove'
run 'dmsetup message m 0 @foo'
run 'dmsetup create z --table "0 8 zero"'
run 'dmsetup message z 0 foo'
run 'dmsetup create e --table "0 8 error"'
run 'dmsetup message e 0 foo'
run 'dmsetup create st --table "0 64 striped 2 8 /dev/vda 0 /dev/vdb 0"'
run 'dmsetup message st 0 foo'
run 'dmsetup create nt --notable'
run 'dmsetup message nt 0 foo'
run 'dmsetup info m'

begin 30-io-read-past-end
run 'dmsetup create x --table "0 2048 linear /dev/vda 0"'
run 'dd if=/dev/mapper/x of=/dev/null bs=512 skip=2048 count=1 status=noxfer'
run 'dd if=/dev/mapper/x of=/dev/null bs=512 skip=2048 count=1 iflag=direct status=noxfer'
run 'dd if=/dev/mapper/x of=/dev/null bs=512 skip=2047 count=2 status=noxfer'
run 'dd if=/dev/mapper/x of=/dev/null bs=512 skip=2047 count=2 iflag=direct status=noxfer'
run 'dd if=/dev/mapper/x of=/dev/null bs=512 skip=4096 count=1 status=noxfer'
run 'dd if=/dev/mapper/x of=/dev/null bs=4096 skip=255 count=2 iflag=direct status=noxfer'
run 'dd if=/dev/zero of=/dev/mapper/x bs=512 seek=2048 count=1 status=noxfer'
run 'dd if=/dev/zero of=/dev/mapper/x bs=512 seek=2048 count=1 oflag=direct status=noxfer'
run 'dd if=/dev/zero of=/dev/mapper/x bs=512 seek=2047 count=2 oflag=direct status=noxfer'
run 'dd if=/dev/mapper/x of=/dev/null bs=1M status=noxfer'

begin 31-io-readonly-write
run 'dmsetup create --readonly ro --table "0 2048 linear /dev/vda 0"'
run 'dd if=/dev/zero of=/dev/mapper/ro bs=512 count=1 oflag=direct status=noxfer'
run 'dd if=/dev/zero of=/dev/mapper/ro bs=512 count=1 status=noxfer'
run 'blkdiscard /dev/mapper/ro'
run 'blockdev --setrw /dev/mapper/ro'
run 'blockdev --getro /dev/mapper/ro'
run 'dmsetup create rw --table "0 2048 linear /dev/vda 0"'
run 'blockdev --setro /dev/mapper/rw'
run 'dmsetup info rw'
run 'dd if=/dev/zero of=/dev/mapper/rw bs=512 count=1 oflag=direct status=noxfer'
run 'blockdev --setrw /dev/mapper/rw'

begin 32-io-error-target
run 'dmsetup create e --table "0 2048 error"'
run 'dd if=/dev/mapper/e of=/dev/null bs=512 count=1 iflag=direct status=noxfer'
run 'dd if=/dev/mapper/e of=/dev/null bs=512 count=1 status=noxfer'
run 'dd if=/dev/zero of=/dev/mapper/e bs=512 count=1 oflag=direct status=noxfer'
run 'dd if=/dev/zero of=/dev/mapper/e bs=512 count=1 conv=fsync status=noxfer'
run 'echo -e "0 1024 zero\n1024 1024 error" | dmsetup create ze'
run 'dd if=/dev/mapper/ze of=/dev/null bs=512 skip=1020 count=8 iflag=direct status=noxfer'
run 'dd if=/dev/mapper/ze of=/dev/null bs=4096 skip=127 count=2 iflag=direct status=noxfer'
run 'dd if=/dev/mapper/ze of=/dev/null bs=512 skip=1023 count=1 iflag=direct status=noxfer'
run 'dd if=/dev/mapper/ze of=/dev/null bs=512 skip=1024 count=1 iflag=direct status=noxfer'
run 'dmsetup create e2 --table "0 2048 error /dev/vda 0"'
run 'dd if=/dev/mapper/e2 of=/dev/null bs=512 count=1 iflag=direct status=noxfer'
run 'dmsetup info e'

begin 33-io-discard
run 'dmsetup create lin --table "0 2048 linear /dev/vda 0"'
run 'dmsetup create z --table "0 2048 zero"'
run 'dmsetup create e --table "0 2048 error"'
run 'dmsetup create e2 --table "0 2048 error /dev/vda 0"'
run 'dmsetup create st --table "0 2048 striped 2 8 /dev/vda 4096 /dev/vdb 0"'
run 'dmsetup create st24 --table "0 2064 striped 2 24 /dev/vda 8192 /dev/vdb 4096"'
run 'echo -e "0 1024 linear /dev/vda 12288\n1024 1024 zero" | dmsetup create lz'
run 'echo -e "0 1024 linear /dev/vdb 12288\n1024 1024 error" | dmsetup create le'
run 'for d in lin z e e2 st st24 lz le; do n=$(basename $(readlink -f /sys/dev/block/$(dmsetup info -c --noheadings -o major,minor --separator : $d))); echo "$d $n $(cat /sys/block/$n/queue/discard_max_bytes) $(cat /sys/block/$n/queue/discard_granularity)"; done'
run 'blkdiscard /dev/mapper/lin'
run 'blkdiscard /dev/mapper/z'
run 'blkdiscard /dev/mapper/e'
run 'blkdiscard -f /dev/mapper/e'
run 'blkdiscard /dev/mapper/e2'
run 'blkdiscard -f /dev/mapper/e2'
run 'blkdiscard /dev/mapper/st'
run 'blkdiscard /dev/mapper/st24'
run 'blkdiscard /dev/mapper/lz'
run 'blkdiscard /dev/mapper/le'
run 'blkdiscard -f /dev/mapper/le'
run 'blkdiscard -o 0 -l 4096 /dev/mapper/lin'
run 'blkdiscard -o 512 -l 512 /dev/mapper/lin'
run 'blkdiscard -o 0 -l 4096 /dev/mapper/z'
run 'blkdiscard -f -o 0 -l 4096 /dev/mapper/le'
run 'blkdiscard -f -o 524288 -l 4096 /dev/mapper/le'
run 'blkdiscard -f -o 520192 -l 8192 /dev/mapper/le'
run 'blkdiscard -o 1048576 -l 4096 /dev/mapper/lin'
run 'blkdiscard -o 1044480 -l 8192 /dev/mapper/lin'
run 'blkdiscard -o 100 -l 4096 /dev/mapper/lin'
run 'blkdiscard -z /dev/mapper/lin'
run 'blkdiscard -z /dev/mapper/z'
run 'blkdiscard -f -z /dev/mapper/e'
run 'printf "KEEP%.0s" $(seq 1024) | dd of=/dev/mapper/lin bs=4096 count=1 oflag=direct status=none && blkdiscard -o 0 -l 4096 /dev/mapper/lin && dd if=/dev/vda bs=4096 count=1 iflag=direct status=none | od -Ad -c | head -3'

begin 34-io-zero-write-read
run 'dmsetup create z --table "0 2048 zero"'
run 'dd if=/dev/urandom of=/dev/mapper/z bs=4096 count=4 oflag=direct status=noxfer'
run 'dd if=/dev/urandom of=/dev/mapper/z bs=4096 count=4 conv=fsync status=noxfer'
run 'dd if=/dev/mapper/z bs=4096 count=4 iflag=direct status=none | od -Ad -tx1'
run 'dd if=/dev/mapper/z bs=4096 count=4 status=none | od -Ad -tx1'
run 'head -c 1048576 /dev/zero | cmp /dev/mapper/z - && echo same'
run 'dd if=/dev/zero of=/dev/mapper/z bs=512 seek=2048 count=1 oflag=direct status=noxfer'

begin 35-io-data-mapping
run 'dmsetup create lin --table "0 64 linear /dev/vda 100"'
run 'printf "LINEAR-S0" | dd of=/dev/mapper/lin bs=512 conv=sync,notrunc,fsync status=none && dd if=/dev/vda bs=512 skip=100 count=1 status=none | head -c 9; echo'
run 'dmsetup create st --table "0 64 striped 2 8 /dev/vda 1000 /dev/vdb 2000"'
run 'for s in 0 7 8 15 16 24 63; do printf "S%02d" $s | dd of=/dev/mapper/st bs=512 seek=$s conv=sync,notrunc oflag=direct status=none; done; for d in vda:1000 vdb:2000; do for o in $(seq 0 31); do t=$(dd if=/dev/${d%:*} bs=512 skip=$((${d#*:}+o)) count=1 iflag=direct status=none | head -c 3 | tr -d "\0"); [ -n "$t" ] && echo "${d%:*} +$o: $t"; done; done'
run 'dmsetup create st24 --table "0 96 striped 2 24 /dev/vda 3000 /dev/vdb 4000"'
run 'for s in 0 23 24 47 48 95; do printf "T%02d" $s | dd of=/dev/mapper/st24 bs=512 seek=$s conv=sync,notrunc oflag=direct status=none; done; for d in vda:3000 vdb:4000; do for o in $(seq 0 47); do t=$(dd if=/dev/${d%:*} bs=512 skip=$((${d#*:}+o)) count=1 iflag=direct status=none | head -c 3 | tr -d "\0"); [ -n "$t" ] && echo "${d%:*} +$o: $t"; done; done'

# ------------------------------------------------------------------ finish
cleanup END
dmsetup ls > "$OUT/final-ls.log" 2>&1
: > "$OUT/DONE"
exit 0
