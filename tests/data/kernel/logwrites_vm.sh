#!/bin/bash
# Runs inside the kernel VM: vda/vdb = data/log for the comparison sequence, vdc/vdd for FUA.
cd "$(dirname "$0")"
exec > out.txt 2>&1
P=/usr/bin/python3
echo "== version"; uname -r; dmsetup targets | grep log-writes
try() { echo "\$ $*"; "$@"; echo "rc=$?"; }
echo "== ctr errors"
dmesg -C
try dmsetup create e1 --table "0 2048 log-writes /dev/vda"
try dmsetup create e2 --table "0 2048 log-writes /dev/nonexistent /dev/vdb"
try dmsetup create e3 --table "0 2048 log-writes /dev/vda /dev/nonexistent"
try dmsetup create e4 --table "0 4096 log-writes /dev/vda /dev/vdb"
try dmsetup create e5 --table "0 2048 log-writes /dev/vda /dev/vdb extra"
try dmsetup table e5; try dmsetup status e5; try dmsetup remove e5
try dmsetup create e6 --table "0 2048 log-writes"
dmesg | grep -i -E 'device-mapper|log' ; dmesg -C
echo "== compare"
try dmsetup create lw --table "0 2048 log-writes /dev/vda /dev/vdb"
try dmsetup table lw; try dmsetup status lw
echo "--- log sector 0 after create:"; dd if=/dev/vdb bs=512 count=1 2>/dev/null | od -A d -t x1 | head -3
$P logwrites_ops.py compare /dev/mapper/lw dmsetup message lw 0 mark; echo "ops rc=$?"
try dmsetup status lw
try dmsetup message lw 0 mark
try dmsetup message lw 0 foo bar
try dmsetup message lw 0 mark a b
try dmsetup remove lw
dmesg | grep -i -E 'device-mapper|log'; dmesg -C
echo "== fua"
try dmsetup create lw2 --table "0 2048 log-writes /dev/vdc /dev/vdd"
$P logwrites_ops.py fua /dev/mapper/lw2 dmsetup message lw2 0 mark; echo "ops rc=$?"
try dmsetup message lw2 0 MARK upper_case
try dmsetup message lw2 0 mark "$(printf 'L%.0s' $(seq 600))"
try dmsetup status lw2
try dmsetup remove lw2
dmesg | grep -i -E 'device-mapper|log'
echo "== full log"
truncate -s 40960 small.img; truncate -s 1048576 d3.img
L=$(losetup -f --show small.img); D=$(losetup -f --show d3.img)
try dmsetup create lw3 --table "0 2048 log-writes $D $L"
dd if=/dev/zero of=/dev/mapper/lw3 bs=4k count=8 oflag=direct 2>/dev/null; try dmsetup status lw3
$P -c 'import os; fd=os.open("/dev/mapper/lw3", os.O_RDWR); os.fsync(fd)'
try dmsetup status lw3
try dmsetup remove lw3; losetup -d $L $D
sync
