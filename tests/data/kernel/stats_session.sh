# The dm-stats session compared between Linux 6.12 and dmfuse (tests/integration/test_stats.py):
#   bash stats_session.sh "DMSETUP" DEV_OF_s BACKING TOOL
# DMSETUP: "dmsetup" in the kernel VM, "dmfuse -m MNT" on a mount; DEV_OF_s: where device s
# appears; BACKING: the 4 MiB disk under it; TOOL: how to discard 64 KiB at 3 MiB of s.
# I/O is direct and pinned to one CPU (the kernel's "merged" counters remember the last I/O of
# each CPU), in sizes that are one bio in the kernel and one FUSE request in dmfuse.
D=$1 S=$2 B=$3 DISCARD=$4
r() { echo "\$ ${*#"$D "}"; out=$(eval "$@" 2>/dev/null); echo "rc=$? $out"; }
io() { taskset -c 0 dd bs=4k conv=notrunc "$@" status=none 2>&1; }
r "$D create s --table '0 8192 linear $B 0'"
r "$D message s 0 @stats_list"
r "$D message s 0 @stats_create - /1"
r "$D message s 0 @stats_create 0+8192 /4 prog aux"
r "$D message s 0 @stats_create 1024+2048 512 1 histogram:10000,20000 hist"
r "$D message s 0 @stats_create 0+100 30 2 precise_timestamps histogram:5,10"
r "$D message s 0 @stats_create 8000+1000 3000 0 prog"
r "$D message s 0 @STATS_LIST"
r "$D message s 0 @stats_list prog"
r "$D message s 0 @stats_list nothing"
echo "== errors"
for m in "@stats_create" "@stats_create -" "@stats_create - 0" "@stats_create 0+0 1" \
  "@stats_create 5 1" "@stats_create 5+ 1" "@stats_create 1+2x 1" "@stats_create - /0" \
  "@stats_create - 1x" "@stats_create - /2x" "@stats_create - 1 2 precise_timestamps" \
  "@stats_create - 1 1 histogram:5,3" "@stats_create - 1 1 histogram:5,5" \
  "@stats_create - 1 1 histogram:" "@stats_create - 1 1 histogram:1,x" "@stats_create - 1 1 bogus" \
  "@stats_create - 1 2 histogram:1 histogram:2" "@stats_create - 1 p a extra" \
  "@stats_delete" "@stats_delete 99" "@stats_delete -1" "@stats_delete 1x" "@stats_clear" \
  "@stats_clear 99" "@stats_print" "@stats_print 99" "@stats_print 0 1" "@stats_print 0 x 1" \
  "@stats_print 0 1 2 3" "@stats_set_aux 0" "@stats_set_aux 99 a" "@stats_list a b" \
  "@stats_bogus" "@bogus"; do
  r "$D message s 0 $m"
done
echo "== ids: the lowest free one"
r "$D message s 0 @stats_delete 3"
r "$D message s 0 @stats_delete 4"
r "$D message s 0 @stats_create 0+10 1 again"
r "$D message s 0 @stats_set_aux 1 new_aux"
r "$D message s 0 @stats_list"
echo "== I/O"
io if="$S" of=/dev/null iflag=direct count=4
io if=/dev/zero of="$S" oflag=direct bs=64k seek=16 count=2
io if="$S" of=/dev/null iflag=direct skip=255 count=2
io if=/dev/zero of="$S" oflag=direct seek=1000 count=1
io if="$S" of=/dev/null iflag=direct skip=1000 count=1
io if="$S" of=/dev/null iflag=direct bs=16k skip=70 count=1
r "$DISCARD"
for id in 0 1 2 3; do r "$D message s 0 @stats_print $id"; done
r "$D message s 0 @stats_print 1 1 2"
r "$D message s 0 @stats_print 1 - 1"
r "$D message s 0 @stats_print 1 3 -"
r "$D message s 0 @stats_print 1 9 1"
r "$D message s 0 @stats_print_clear 2 1 2"
r "$D message s 0 @stats_print 2"
r "$D message s 0 @stats_clear 0"
r "$D message s 0 @stats_print 0"
echo "== regions survive a table swap and suspend"
r "$D suspend s"
r "$D message s 0 @stats_list"
r "$D resume s"
r "$D load s --table '0 4096 linear $B 4096'"
r "$D resume s"
r "$D message s 0 @stats_print 1"
r "$D message s 0 @stats_create - /2 after"
io if="$S" of=/dev/null iflag=direct count=1
r "$D message s 0 @stats_print 4"
r "$D message s 0 @stats_print 1"
r "$D remove s"
echo "== no table"
r "$D create n --notable"
r "$D message n 0 @stats_create - /1"
r "$D message n 0 @stats_list"
r "$D message n 0 @stats_delete 0"
r "$D remove n"
