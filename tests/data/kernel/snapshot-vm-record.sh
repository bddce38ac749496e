# How tests/data/kernel/snapshot-*.cow.gz were recorded (kernel 6.12 in kdm-vm.sh, 2026-11-29).
# Disks: vda=o1 vdb=c1 vdc=o2 vdd=c2 vde=c3 vdf=c2b vdg=c4 vdh=c2c vdi=bad; the images are made by
# sectors() in tests/unit/test_snapshot_kernel.py (o1 seed 1, w_origin seed 2 x100 sectors,
# w_snap seed 3 x10, o2 seed 4; COWs zeroed: c1 128K, c2* 64K, c3/c4 4K; bad = "XXXX" + zeros).
# Saved: c1 -> p1-multiarea, c2 -> p8-vector, c3 -> p1-invalid, c4 -> po1-overflow.
cd "$(dirname "$0")"
exec > vm1.out 2>&1
set -x
try() { dmsetup create t --table "$1"; echo "rc=$?"; dmesg | tail -2 | sed 's/^\[[^]]*\] //'; dmsetup table t 2>/dev/null; dmsetup status t 2>/dev/null; dmsetup remove t 2>/dev/null; }
try "0 512 snapshot /dev/vda"
try "0 512 snapshot /dev/vda /dev/vdb P"
try "0 512 snapshot /dev/vda /dev/vdb X 8"
try "0 512 snapshot /dev/vda /dev/vdb P 7"
try "0 512 snapshot /dev/vda /dev/vdb P abc"
try "0 512 snapshot /dev/vda /dev/vdb P 0x10"
try "0 512 snapshot /dev/vda /dev/vdb P 4194304"
try "0 512 snapshot /dev/vda /dev/vdb PX 8"
try "0 512 snapshot /dev/vda /dev/vdb N 0"
try "0 512 snapshot /dev/vda /dev/vdb P 8 1 bogus"
try "0 512 snapshot /dev/vda /dev/vdb P 8 3 a b c"
try "0 512 snapshot /dev/vda /dev/vdb P 8 2 discard_zeroes_cow"
try "0 512 snapshot /dev/vda /dev/vdb P 8 1 discard_passdown_origin"
try "0 512 snapshot /dev/vda /dev/vda P 8"
try "0 512 snapshot /dev/vda /dev/nonexist P 8"
try "0 512 snapshot /dev/nonexist /dev/vdb P 8"
try "0 512 snapshot /dev/vda /dev/vdi P 8"
try "0 512 snapshot-origin"
try "0 512 snapshot-origin /dev/vda /dev/vdb"
try "0 512 snapshot-merge /dev/vda /dev/vdb N 8"
try "0 1024 snapshot /dev/vda /dev/vdb N 8"
# accepted variants (N does not touch disk)
try "0 512 snapshot /dev/vda /dev/vdb Nfoo 8"
try "0 512 snapshot /dev/vda /dev/vdb n +8"
try "0 512 snapshot /dev/vda /dev/vdb N 8 0 extra words"
try "0 512 snapshot /dev/vda /dev/vdb N 8 2 DISCARD_ZEROES_COW discard_passdown_origin"
try "0 512 snapshot /dev/vda /dev/vdb N 8 1 discard_zeroes_cow"
try "0 256 snapshot /dev/vda /dev/vdb N 8"
try "0 512 snapshot-origin /dev/vda"
# scenario 1: persistent chunk 1, multi-area, origin and snapshot writes
dmsetup create base --table "0 512 snapshot-origin /dev/vda"
dmsetup create snap --table "0 512 snapshot /dev/vda /dev/vdb P 1"
dmsetup status; dmsetup table
dd if=w_origin.bin of=/dev/mapper/base bs=512 oflag=direct status=none
dd if=w_snap.bin of=/dev/mapper/snap bs=512 seek=200 oflag=direct status=none
dd if=w_snap.bin of=/dev/mapper/base bs=512 seek=205 count=3 oflag=direct status=none
dmsetup status; dmsetup table
sha256sum /dev/mapper/snap /dev/mapper/base
dmsetup remove snap; dmsetup remove base
sha256sum /dev/vda /dev/vdb
# reload the same cow with P 0 and P 8: chunk from disk
dmsetup create snap --table "0 512 snapshot /dev/vda /dev/vdb P 0"; dmsetup table snap; dmsetup status snap; sha256sum /dev/mapper/snap; dmsetup remove snap
dmsetup create snap --table "0 512 snapshot /dev/vda /dev/vdb PO 8"; dmsetup table snap; dmsetup status snap; dmesg | tail -1; dmsetup remove snap
# scenario 2: chunk 8 vector, fresh P 0 (default chunk)
dmsetup create base2 --table "0 512 snapshot-origin /dev/vdc"
dmsetup create s8 --table "0 512 snapshot /dev/vdc /dev/vdd P 8"
dmsetup create s0 --table "0 512 snapshot /dev/vdc /dev/vdf P 0"
dmsetup table; dmsetup status
dd if=w_snap.bin of=/dev/mapper/base2 bs=4096 seek=3 count=1 oflag=direct status=none iflag=fullblock
dmsetup status
dmsetup remove s8; dmsetup remove s0
# scenario 3: invalidation (P 1 on an 8-sector cow) and overflow (PO 1)
dmsetup create s3 --table "0 512 snapshot /dev/vdc /dev/vde P 1"
dmsetup status s3
dd if=w_origin.bin of=/dev/mapper/base2 bs=512 seek=100 count=10 oflag=direct status=none; echo "dd rc=$?"
dmsetup status s3; dmsetup info s3 | grep Event
dd if=/dev/mapper/s3 of=/dev/null bs=512 count=1 iflag=direct; echo "read invalid rc=$?"
dmsetup remove s3
dmsetup create s3 --table "0 512 snapshot /dev/vdc /dev/vde P 1"; echo "reload invalid rc=$?"; dmsetup status s3; dmsetup table s3; dmsetup remove s3
dmsetup remove base2
dmsetup create s4 --table "0 512 snapshot /dev/vdc /dev/vdg PO 1"
dmsetup status s4
dd if=w_origin.bin of=/dev/mapper/s4 bs=512 seek=300 count=10 oflag=direct status=none; echo "dd rc=$?"
dmsetup status s4; dmsetup info s4 | grep Event
dd if=/dev/mapper/s4 of=/dev/null bs=512 count=1 skip=300 iflag=direct status=none; echo "read overflow existing rc=$?"
dd if=/dev/mapper/s4 of=/dev/null bs=512 count=1 skip=309 iflag=direct status=none; echo "read overflow other rc=$?"
dd if=w_origin.bin of=/dev/mapper/s4 bs=512 seek=301 count=1 oflag=direct status=none; echo "write overflow existing rc=$?"
dmsetup create base2 --table "0 512 snapshot-origin /dev/vdc"
dd if=w_origin.bin of=/dev/mapper/base2 bs=512 seek=400 count=1 oflag=direct status=none; echo "origin write rc=$?"
dmsetup status s4
dmsetup remove s4; dmsetup remove base2
# transient status
dmsetup create n1 --table "0 512 snapshot /dev/vdc /dev/vdh N 8"; dmsetup status n1
dd if=w_snap.bin of=/dev/mapper/n1 bs=512 count=1 oflag=direct status=none; dmsetup status n1; dmsetup table n1; dmsetup remove n1
sync
