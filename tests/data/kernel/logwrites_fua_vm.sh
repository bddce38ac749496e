#!/bin/bash
# Runs inside the kernel VM: vda/vdb = data/log for the FUA mix of logwrites_ops.py
# (plain, RWF_DSYNC, RWF_SYNC, O_DSYNC-descriptor and buffered RWF_DSYNC writes, fdatasync).
cd "$(dirname "$0")"
exec > out.txt 2>&1
P=/usr/bin/python3
echo "== version"; uname -r; dmsetup targets | grep log-writes
try() { echo "\$ $*"; "$@"; echo "rc=$?"; }
echo "== fua mix"
dmesg -C
try dmsetup create lw --table "0 2048 log-writes /dev/vda /dev/vdb"
$P logwrites_ops.py fua-mix-a /dev/mapper/lw dmsetup message lw 0 mark; echo "ops rc=$?"
try dmsetup status lw
$P logwrites_ops.py fua-mix-b /dev/mapper/lw dmsetup message lw 0 mark; echo "ops rc=$?"
try dmsetup status lw
try dmsetup remove lw
dmesg | grep -i 'log-writes'
sync
