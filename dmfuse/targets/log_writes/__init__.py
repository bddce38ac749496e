"""log-writes — pass all I/O to a device and record every write, flush and discard to a log.

Table:   ``<start> <length> log-writes <dev> <log_dev>``  (words after ``log_dev`` are ignored,
         as by the kernel)
  ``dev``      the device all I/O goes to; it must hold ``length`` sectors
  ``log_dev``  where the log is written, in the kernel's on-disk format
               (:mod:`.log_format`); it is overwritten from the start by every
               new table, and ``dmfuse replay-log`` (or xfstests' replay-log) replays it
Status:  ``<logged_entries> <last used log sector>`` (512-byte units), then
         `` logging_disabled`` once the log is full or a log write failed.
Table:   ``<dev> <log_dev>``.
Message: ``mark <name>`` (case-insensitive ``mark``, exactly 2 words): queue a MARK entry
         holding ``name`` (cut to 479 bytes).  Anything else is EINVAL.

What is logged, when (the kernel's power-fail model, so a replay never shows more than a
crash could have left):
* a completed write or discard goes on an *unflushed* list, not into the log;
* a FUA write (REQ_FUA: an ``O_DIRECT`` write with ``RWF_DSYNC``/``RWF_SYNC`` or through an
  ``O_DSYNC``/``O_SYNC`` descriptor, or a FUA write from a device stacked on this one) is
  written to ``dev`` as FUA and logged at once with the FUA flag, ahead of older unflushed
  writes; the flush that follows a synchronous write on the device file (as on a block device)
  then logs those;
* a flush takes the unflushed list as it stands when the flush arrives, flushes ``dev``, then
  logs those entries (in completion order) followed by a FLUSH entry;
* a mark is logged at once (ahead of unflushed writes), and rewrites the super block;
* when the table is destroyed (remove, reload+resume, clear), the unflushed entries are logged,
  then the MARK ``dm-log-writes-end``, and the super block is rewritten.
The super block's ``nr_entries`` is only rewritten on a MARK or FUA entry, as in the kernel: a
reader of a live log sees entries up to the last mark.  Reads pass through and are not logged.
Write-zeroes is written (and logged) as zero-filled writes, as the kernel's fallback does.

Sectors are the mapped device's, as in the kernel: a line starting at sector ``start`` sends
I/O for device sector ``s`` to sector ``s`` of ``dev`` (not ``s - start``) and logs ``s``.
The table check only asks ``dev`` for ``length`` sectors (the kernel's ``iterate_devices``),
so I/O that reaches past the end of ``dev`` fails with EIO, as the block layer fails it
(checked in the kernel VM with a line at 2048: same data and log bytes, same EIO).

Checked against the kernel (tests/data/kernel, recorded in the kernel VM): for the same
O_DIRECT writes, fsyncs, discard and marks the log is byte-for-byte the kernel's, and so are the
log, the device and the statuses for a mix of plain, ``RWF_DSYNC``, ``RWF_SYNC``, ``O_DSYNC``
descriptor and buffered ``RWF_DSYNC`` writes with fdatasync (logwrites_fua_vm.sh: ``7 47`` after
the first five writes, as the kernel); ctr/message errors and status/table strings are the
kernel's.

Differences from the kernel:
* Request splitting: dmfuse logs one entry per FUSE request.  Device files are ``direct_io``, so
  a write up to the mount's ``max_write`` (1 MiB) is one entry and a bigger one is cut every
  1 MiB; the kernel logs one entry per bio as the block layer split it (``max_sectors_kb`` of the
  stack).  Same sectors and data, cut at different places.  An unaligned write is logged as the
  whole sectors it rewrote (read-modify-write); on a kernel block device it would be refused
  (O_DIRECT) or go through the page cache (whole pages).
* A synchronous write bigger than the mount's ``max_write`` (1 MiB) reaches dmfuse as several
  FUSE requests, each a FUA write followed by a flush, so the log has a FLUSH after every
  1 MiB where the kernel has one FLUSH after the last piece.
* The METADATA flag is never set (FUSE does not carry REQ_META).
* Table/status print files as paths (the kernel prints MAJOR:MINOR), like every dmfuse target.
* The log sector size is always 512 (the kernel uses ``dev``'s logical block size).
* A write or flush that fails on ``dev`` is not logged (the kernel logs it anyway).
* The log is written in order before the flush or FUA write completes (the kernel writes it from
  a thread, after completing the bio); so after an fsync returns, the log on disk shows it.
* dmfuse flushes backing files when it suspends a device; that flush is not logged (the kernel
  sends none then).
"""

from dmfuse.targets.log_writes.target import LogWrites

__all__ = ["LogWrites"]
