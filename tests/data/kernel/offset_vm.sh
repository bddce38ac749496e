#!/bin/bash
# Runs inside the kernel VM: log-writes, snapshot-origin, snapshot and snapshot-merge on table
# lines that do not start at sector 0 (all zero disks, vda 2M lw data, vdb 1M lw log, vdc 2M
# origin, vdd 256K COW, vde 1M small lw data, vdf 1M log, vdg 256K COW).  Recorded with
#   cp tests/data/kernel/offset_{vm.sh,ops.py} W/; truncate -s 2M W/a W/c; truncate -s 1M W/b W/e W/f
#   truncate -s 256K W/d W/g; kdm-vm.sh run W W/offset_vm.sh W/a W/b W/c W/d W/e W/f W/g
# and saved as offset-vm-output.txt, offset-lw.log.gz (W/b) and offset-snap.cow.gz (cow-1.img).
cd "$(dirname "$0")"
exec > offset-vm.out 2>&1
P="/usr/bin/python3 offset_ops.py"
sha() { echo "SHA $1 $(sha256sum "$2" | cut -c1-64)"; }
echo "== version"; uname -r

echo "== log-writes at sector 2048"
printf '0 2048 zero\n2048 2048 log-writes /dev/vda /dev/vdb\n' | dmsetup create lw; echo "create rc=$?"
dmsetup table lw
$P write /dev/mapper/lw 2056 8 1
$P write /dev/mapper/lw 2148 2 2
$P fsync /dev/mapper/lw
dmsetup message lw 2048 mark one
$P write /dev/mapper/lw 4000 8 3
dmsetup status lw
dmsetup remove lw
sha lw-dev /dev/vda
sha lw-log /dev/vdb

echo "== log-writes: its data device holds only the line's length"
printf '0 2048 zero\n2048 2048 log-writes /dev/vde /dev/vdf\n' | dmsetup create lw2; echo "create rc=$?"
$P write /dev/mapper/lw2 2048 1 4; echo "write past the device rc=$?"
dd if=/dev/mapper/lw2 of=/dev/null bs=512 skip=2048 count=1 iflag=direct status=none; echo "read past the device rc=$?"
dmesg | grep -i 'beyond end' | tail -2 | sed 's/^\[[^]]*\] //'
dmsetup remove lw2
sha lw2-dev /dev/vde

echo "== snapshot-origin at 1024, snapshot at 2048, chunk 8"
$P fill /dev/vdc 5 4096
printf '0 1024 zero\n1024 3072 snapshot-origin /dev/vdc\n' | dmsetup create base; echo "create rc=$?"
printf '0 2048 zero\n2048 2048 snapshot /dev/vdc /dev/vdd P 8\n' | dmsetup create snap; echo "create rc=$?"
dmsetup table base; dmsetup table snap; dmsetup status snap
$P write /dev/mapper/base 2064 8 11  # origin chunk 258: copied out first
$P write /dev/mapper/base 1500 4 12  # before the snapshot's line, inside its table: chunk 187
$P write /dev/mapper/snap 2088 4 13  # part of chunk 261: the origin chunk copied in first
$P write /dev/mapper/snap 2112 8 14  # all of chunk 264
$P write /dev/mapper/base 2112 8 15  # chunk 264 has its exception: no copy
dmsetup status snap
sha snap-dev /dev/mapper/snap
sha base-dev /dev/mapper/base
dmsetup remove snap; dmsetup remove base
sha origin-1 /dev/vdc
dd if=/dev/vdd of=cow-1.img bs=64K status=none
sha cow-1 cow-1.img

echo "== snapshot-merge at 1024"
printf '0 1024 zero\n1024 3072 snapshot-merge /dev/vdc /dev/vdd P 8\n' | dmsetup create merge; echo "create rc=$?"
for _ in $(seq 300); do
  set -- $(dmsetup status merge | tail -1 | tr '/' ' ')
  [ "$4" = "$6" ] && break; sleep 0.2
done
dmsetup status merge
sha merge-dev /dev/mapper/merge
dmsetup remove merge
sha origin-2 /dev/vdc
sha cow-2 /dev/vdd

echo "== snapshot line not chunk aligned: 2052, chunk 8"
printf '0 2052 zero\n2052 2044 snapshot /dev/vdc /dev/vdg N 8\n' | dmsetup create u; echo "create rc=$?"
$P write /dev/mapper/u 2052 8 6  # one piece of the line (0..7), two chunks of the device
dmsetup status u
dd if=/dev/mapper/u of=u-2048.img bs=512 skip=2048 count=16 iflag=direct status=none
sha u-2048 u-2048.img
dmsetup remove u
sha u-cow /dev/vdg
sync
