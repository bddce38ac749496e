"""snapshot, snapshot-origin, snapshot-merge — copy-on-write snapshots of a device (dm-snap).

Tables:
  ``<start> <length> snapshot-origin <origin>``
  ``<start> <length> snapshot <origin> <COW> <P|PO|N> <chunk_size> [<#features> <feature>...]``
  ``<start> <length> snapshot-merge <origin> <COW> <P|PO> <chunk_size> [<#features> ...]``
  ``P`` persistent store in the kernel's on-disk format (survives a remount), ``PO`` the same but
  a full COW on a *snapshot* write gives ``Overflow`` instead of invalidating, ``N`` transient
  (exceptions in memory, COW contents lost with the table).  The store type is read from its
  first letter, case-insensitively, like the kernel (``p``, ``Nfoo`` work; ``PX`` does not).
  ``chunk_size`` in sectors: a power of two, a multiple of both devices' logical block size,
  at most ``INT_MAX >> 9``; ``0`` takes the COW header's (persistent) or the default 32.  A
  persistent header's chunk size overrides the table's.  Features: ``discard_zeroes_cow``,
  ``discard_passdown_origin`` (needs the former).

Usage: the origin's own device is reloaded as ``snapshot-origin <origin>`` and each snapshot is
a device ``snapshot <origin> <COW> P 16``.  Before a write to the origin lands, the old chunk is
copied to every active, valid snapshot of that origin (the write waits until the exception is
committed).  A snapshot reads a chunk from its COW if it has an exception, else from the origin;
a write to a snapshot chunk without an exception copies the origin chunk in (skipped when the
write covers the chunk) and commits the exception first.

Status (INFO): ``<sectors_allocated>/<total_sectors> <metadata_sectors>``, or ``Invalid`` (COW
full or I/O error; snapshot I/O fails with EIO, the origin keeps working and the persistent
header is rewritten ``valid = 0``, a dm event is raised), or ``Overflow`` (``PO``: a snapshot
write needing a new chunk found the COW full; from then on every snapshot write fails with
EIO, reads keep working; no event).
Transient: ``<allocated>/<total> 0``.  ``snapshot-origin`` INFO is empty.
Table: ``<origin> <COW> <P|PO|N> <chunk_size>[ <n> discard_zeroes_cow[ discard_passdown_origin]]``
and ``<origin>``.  Flush: ``snapshot`` flushes the COW, ``snapshot-origin`` the origin.

Merging (``lvconvert --merge`` by hand): suspend the origin's device and the snapshot's, load
``snapshot-merge <origin> <COW> P <chunk>`` on the origin's device, resume it.  It takes the
snapshot's store over (the snapshot device fails I/O with EIO from then on) and copies the COW
chunks back to the origin in the background, last records first, one run of consecutive chunks
at a time; each run's records are cleared and the area rewritten (flushed) once the data is on
the origin.  Progress: ``sectors_allocated`` shrinks until it equals ``metadata_sectors``
(``16/<cow> 16`` with chunk 8 when done).  ``Merge failed`` if a run could not be copied.
Suspend stops the merge, resume restarts it; a remount with the ``snapshot-merge`` table
continues from the records still on disk.  While merging, reads and writes of chunks not yet
merged go to the COW, everything else to the origin (other snapshots of it still get their
copies first, also before the merge itself overwrites an origin chunk).  Refused: ``N`` ("Snapshot
exception store does not support snapshot-merge."), taking over a snapshot's store while another
merge of the origin exists ("A snapshot is already merging.").

Sectors are the mapped device's, as in the kernel (``bio->bi_iter.bi_sector``, no ``ti->begin``
subtracted): a line starting at sector ``start`` maps device sector ``s`` to sector ``s`` of
the origin (all three targets), its chunk is ``s / chunk_size`` and on the COW it lands at
``new_chunk * chunk_size + s % chunk_size``; merged chunks go back to ``chunk * chunk_size`` of
the origin.  The table check only asks the origin for ``length`` sectors (the kernel's
``iterate_devices``), so I/O that reaches past the origin's end fails with EIO.  Checked in
the kernel VM with lines at 1024 and 2048 (tests/unit/test_device_sectors.py): same COW bytes,
statuses and merged origin.

An origin write (or a merge run overwriting the origin) copies out only to the snapshots whose
*device* reaches the written sector: as the kernel's ``__origin_write``, a snapshot is skipped
when the origin sector is at or past the size of the snapshot's whole table (not its line), so
a snapshot device smaller than the origin never gets exceptions for the origin's tail, and a
``snapshot`` line followed by other lines still gets copies for origin sectors up to the
table's end.  Checked in the kernel VM with snapshots of 2048, 4096 and 1024-in-3072 sectors
of a 4096-sector origin (tests/unit/test_snapshot_sizes.py): same statuses and COW bytes.

Reloading a snapshot (a new table using the same COW while the old one exists) hands its
exception store over at resume, as the kernel does: the new table shares the live store (so an
``N`` snapshot keeps its exceptions); the resume is refused while the other table using the COW
is live and not suspended, and the old table then fails I/O with EIO.

Differences from the kernel:
* a ``snapshot`` line whose start is not a multiple of the chunk size: the kernel splits I/O
  at chunk boundaries counted from the line's start but maps each piece by the chunk of its
  first device sector, so a piece straddling two device chunks is remapped as one: one
  exception, the data running on into the next COW chunk, and the second chunk's sectors still
  reading the origin (seen in the VM, tests/data/kernel/offset_vm.sh).  dmfuse cuts at the
  device's chunk boundaries: two exceptions, and the data reads back.
* the kernel's ``snapshot-origin`` splits writes at the smallest chunk of the origin's
  snapshots as of its *own* last resume (``split_boundary``; none if it had no snapshots), so a
  write spanning two chunks to an origin device not resumed since a snapshot was created copies
  out only the first chunk, and the snapshot then shows the new data in the second (seen in the
  VM; lvm resumes the origin after creating a snapshot).  dmfuse splits at the current smallest
  chunk, so every chunk is copied out.
* punch-hole is refused (EOPNOTSUPP) even with ``discard_zeroes_cow``: a discard of a chunk
  without an exception leaves the origin data visible, not zeros.  The target's discard itself
  behaves like the kernel's (zero whole exception chunks, pass down to the origin if asked).
* the ``Invalid or corrupt snapshot`` load failure reports EINVAL (the kernel returns ENXIO).
* snapshot-merge flushes the origin before clearing merged records (the kernel's PREFLUSH on
  the COW does not cover the origin); the resulting bytes are the kernel's (checked in the VM).
"""

from dmfuse.targets.snapshot.merge import SnapshotMerge
from dmfuse.targets.snapshot.origin_target import SnapshotOrigin
from dmfuse.targets.snapshot.target import Snapshot

__all__ = ["Snapshot", "SnapshotMerge", "SnapshotOrigin"]
