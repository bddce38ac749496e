# Guest script: a stacked device takes the lower device's logical block size (linear over
# crypt sector_size:4096), alignment errors of such tables, and discard support as a property
# of the whole table.  Recorded with Linux 6.12 as stacking-vm-output.txt by
#   KDM_DIR=.cache/kdm ../shared/tools/kdm-vm.sh run WORK WORK/stacking_vm.sh WORK/c.img WORK/d.img
# (c.img: 64 KiB of zeros, d.img: 1 MiB of zeros).
cd "$(dirname "$0")"
exec > stacking-vm.out 2>&1
dmesg -c >/dev/null
K64=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f
r() { echo "\$ $*"; out=$(eval "$@" 2>&1); echo "rc=$? $out"; dmesg -c | sed 's/^\[[^]]*\] //; s/ 25[0-9]:[0-9]*:/ DEV:/'; }
echo "== block size"
r "dmsetup create c --table '0 128 crypt aes-xts-plain64 $K64 0 /dev/vda 0 1 sector_size:4096'"
r "dmsetup create l --table '0 128 linear /dev/mapper/c 0'"
r "blockdev --getss /dev/mapper/c /dev/mapper/l"
r "dmsetup create bad1 --table '0 120 linear /dev/mapper/c 1'"
r "dmsetup create bad2 --table '0 9 linear /dev/mapper/c 0'"
r "dmsetup create bad3 --table '0 8 linear /dev/mapper/c 0
8 9 linear /dev/mapper/c 8'"
r "dmsetup create ok2 --table '0 8 linear /dev/mapper/c 8
8 16 linear /dev/mapper/c 64'"
r "dmsetup remove ok2"
echo "== unaligned I/O on linear over crypt sector_size:4096"
python3 stacking_ops.py /dev/mapper/l
r "dmsetup remove l"
r "dmsetup remove c"
echo "ciphertext: $(dd if=/dev/vda iflag=direct bs=64k count=1 status=none | sha256sum | cut -d' ' -f1)"
echo "== discard is a property of the whole table"
D=/dev/vdb
t() {
  r "dmsetup create x --table '$1'"
  r "cat /sys/block/\$(basename \$(readlink -f /dev/mapper/x))/queue/discard_max_bytes"
  r "blkdiscard -o 0 -l 4096 /dev/mapper/x"
  r "dmsetup remove x"
}
t "0 1024 linear $D 0"
t "0 1024 linear $D 0
1024 1024 unstriped 2 128 0 $D 0"
t "0 1024 unstriped 2 128 0 $D 0"
t "0 1024 zero"
t "0 1024 zero
1024 1024 linear $D 0"
t "0 1024 error"
t "0 1024 error
1024 1024 linear $D 0"
t "0 1024 linear $D 0
1024 1024 delay $D 0 0"
t "0 1024 linear $D 0
1024 1024 flakey $D 0 10 0"
t "0 1024 linear $D 0
1024 1024 crypt aes-xts-plain64 $K64 0 $D 0"
t "0 1024 linear $D 0
1024 1024 crypt aes-xts-plain64 $K64 0 $D 0 1 allow_discards"
t "0 1024 linear $D 0
1024 1024 striped 2 128 $D 0 $D 1024"
