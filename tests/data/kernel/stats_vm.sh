# Guest script: the dm-stats session of stats_session.sh on Linux 6.12, recorded as
# stats-vm-output.txt by
#   KDM_DIR=.cache/kdm ../shared/tools/kdm-vm.sh run WORK WORK/stats_vm.sh WORK/s.img
# (s.img: 4 MiB of zeros).
cd "$(dirname "$0")"
bash stats_session.sh dmsetup /dev/mapper/s /dev/vda "blkdiscard -f -o 3145728 -l 65536 /dev/mapper/s" >stats-vm.out 2>&1
