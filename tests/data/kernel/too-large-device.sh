#!/bin/sh
# Run in the kernel VM (kdm-vm.sh run DIR too-large-device.sh); output: too-large-device.txt
for n in 4611686018427387904 18014398509481983 18014398509481984 36028797018963967 36028797018963968 18446744073709551615 18446744073709551616; do
  echo "== zero $n"
  dmsetup create "z$n" --table "0 $n zero" 2>&1; echo "rc=$?"
  dmsetup table "z$n" 2>&1; blockdev --getsize64 /dev/mapper/z$n 2>&1
  dmsetup remove "z$n" 2>/dev/null
done
echo "== two lines"
dmsetup create two --table "0 18014398509481983 zero
18014398509481983 1 zero" 2>&1; echo "rc=$?"; dmsetup remove two 2>/dev/null
dmesg | grep -i "device-mapper\|dm-" | tail -20
