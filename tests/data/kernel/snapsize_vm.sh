#!/bin/bash
# Runs inside the kernel VM: one origin, three snapshots whose tables have different sizes
# (__origin_write skips a snapshot when the written sector >= its table's size).  Disks (all
# zero): vda 2M origin, vdb/vdc/vdd 256K COWs.  Recorded with
#   cp tests/data/kernel/{snapsize_vm.sh,offset_ops.py} W/; truncate -s 2M W/a
#   truncate -s 256K W/b W/c W/d; kdm-vm.sh run W W/snapsize_vm.sh W/a W/b W/c W/d
# and saved as snapsize-vm-output.txt.
cd "$(dirname "$0")"
exec > snapsize-vm.out 2>&1
P="/usr/bin/python3 offset_ops.py"
sha() { echo "SHA $1 $(sha256sum "$2" | cut -c1-64)"; }
echo "== version"; uname -r

echo "== origin 4096 sectors; snapshots: small (table 2048), big (4096), split (line 1024, table 3072)"
$P fill /dev/vda 5 4096
printf '0 4096 snapshot-origin /dev/vda\n' | dmsetup create base; echo "create rc=$?"
printf '0 2048 snapshot /dev/vda /dev/vdb P 8\n' | dmsetup create small; echo "create rc=$?"
printf '0 4096 snapshot /dev/vda /dev/vdc P 8\n' | dmsetup create big; echo "create rc=$?"
printf '0 1024 snapshot /dev/vda /dev/vdd P 8\n1024 2048 zero\n' | dmsetup create split; echo "create rc=$?"
# the origin splits writes at the smallest chunk of its snapshots as of its last resume (none
# when it was created): resume it again, as lvm does, so each chunk is its own write
dmsetup suspend base; dmsetup resume base
dmsetup status small big split
$P write /dev/mapper/base 1000 8 21  # chunk 125: all three
$P write /dev/mapper/base 2040 16 22 # chunks 255, 256: small only 255
$P write /dev/mapper/base 3000 4 23  # chunk 375: big and split (3000 < 3072)
$P write /dev/mapper/base 3500 4 24  # chunk 437: big only
$P write /dev/mapper/base 3068 8 25  # chunks 383, 384: split only 383
dmsetup status small big split
sha small-dev /dev/mapper/small
sha big-dev /dev/mapper/big
sha split-dev /dev/mapper/split
sha base-dev /dev/mapper/base
dmsetup remove split; dmsetup remove big; dmsetup remove small; dmsetup remove base
sha origin /dev/vda
sha small-cow /dev/vdb
sha big-cow /dev/vdc
sha split-cow /dev/vdd
sync
