"""crypt — transparent encryption, sector for sector the ciphertext the kernel's dm-crypt writes.

Table:   ``<start> <length> crypt <cipher> <key> <iv_offset> <dev> <offset> [<#opt> <opt>...]``
  ``cipher``     ``cipher[:keycount]-chainmode-ivmode[:ivopts]`` (``aes-xts-plain64``,
                 ``aes-cbc-essiv:sha256``, ``aes:2-cbc-plain64``, ``aes-ecb``, just ``aes`` =
                 ``aes-cbc-plain``) or ``capi:<api>-ivmode[:ivopts]`` (``capi:xts(aes)-plain64``)
  ``key``        hex (``2 * key size`` digits), ``-`` for no key (``cipher_null``), or a kernel
                 keyring reference ``:<key_size>:<logon|user|encrypted|trusted>:<description>``
  ``iv_offset``  added to the sector number before the IV is made (multiple of the unit)
  ``dev``        the ciphertext device; ``offset``: where the ciphertext starts on it, in sectors
  options (at most 9, any case): ``allow_discards``, ``same_cpu_crypt``,
                 ``submit_from_crypt_cpus``, ``no_read_workqueue``, ``no_write_workqueue``,
                 ``high_priority``, ``sector_size:<512..4096, power of two>``,
                 ``iv_large_sectors`` (IVs count ``sector_size`` units, not 512-byte sectors)
Ciphers: AES in ``xts`` (256/512-bit keys), ``cbc``, ``ctr``, ``ecb`` and ``cipher_null-ecb``;
IV modes ``plain``, ``plain64``, ``plain64be``, ``essiv:<hash>``, ``benbi``, ``null`` (the
ciphers are OpenSSL's; see :mod:`dmfuse.targets.crypt.sectors`).
Mapping: unit ``u`` (``sector_size`` bytes at target byte ``o``) is encrypted with IV sector
  ``o/512 + iv_offset`` (``>> log2(sector_size/512)`` with ``iv_large_sectors``) and stored at
  byte ``offset*512 + o`` of ``dev``.  The device reads and writes whole units (partial ones
  are read-modify-written above the target).
Status:  empty.
Table:   ``<cipher as given> <key> <iv_offset> <dev> <offset>`` then, if any, ``<count>`` and the
  options in the kernel's order (allow_discards same_cpu_crypt high_priority
  submit_from_crypt_cpus no_read_workqueue no_write_workqueue sector_size:N
  iv_large_sectors), lowercase, each once.  The key prints as lowercase hex; ``table``
  without ``--showkeys`` turns every hex digit into ``0`` (as dmsetup does); a keyring
  reference prints as given.
Messages (only while suspended, else EINVAL): ``key set <key>`` (same key size), ``key wipe``.
  A device whose key was wiped (or failed to set) refuses to resume with EAGAIN.
Flush passes down.  Discard: a punch-hole on a crypt range fails with EOPNOTSUPP and changes
  nothing, with or without ``allow_discards``: the discarded ciphertext would read back as
  garbage, never as the zeros a punch-hole promises (project decision, dm-spec top).
  Zero-range writes encrypted zeros, like the kernel's fallback (dm-crypt has no write-zeroes).

Differences from the kernel:
* Keyring keys (``:<size>:<type>:<desc>``) are parsed and checked, then refused with ENOKEY:
  dmfuse has no access to the kernel keyring (``logon`` keys cannot be read by userspace).
* OpenSSL has no AES-192-XTS (384-bit XTS keys) and refuses XTS keys whose two halves are
  equal; the kernel accepts both.  IV modes ``lmk``, ``tcw``, ``eboiv`` and ``elephant`` are
  refused with a clear error (the kernel has them); ``random`` and the ``integrity:`` option
  fail as on a kernel device without integrity metadata.  A chain mode with an IV but no IV
  mode (``capi:xts(aes)``) is refused: the kernel then encrypts with whatever bytes its
  request buffer holds as the IV, which cannot be reproduced.
* Other ciphers the kernel has (serpent, twofish, lrw, ...) are refused as it refuses an
  algorithm it lacks (``Error allocating crypto tfm``, ENOENT).
* The ``same_cpu_crypt``/``*_workqueue``/``high_priority`` options only tune the kernel's
  threads; they are accepted and echoed, and change nothing here.
* A misaligned unit reaching the target (only possible from a stacked device) fails with EIO,
  like the kernel's DM_MAPIO_KILL; the device file itself read-modify-writes partial units.
Checked against Linux 6.12 in the VM: every constructor case of ``crypt-behaviour.sh`` (error
text and errno, table and status strings; ``tests/unit/test_crypt_vectors.py``) and the
ciphertext of 42 cipher/IV/unit-size cases, byte for byte.

Keys stay out of logs and error messages (no message quotes a key).  A table file written
back by the daemon holds the key (mode 0600, like the kernel's table); to keep a key out of
process arguments load tables from a file or stdin rather than ``--table``.  ``key set``
takes the key as a message argument, as ``dmsetup message`` does.

Speed.  OpenSSL does the cipher (XTS/CBC/CTR/ECB, one unit at a time, each with its IV) in
C, without the GIL (:mod:`dmfuse.openssl.loops`); XTS units take their IV in place (checked at
start-up against OpenSSL's documented per-unit re-init), and plain64 IVs are made in C.
Over a file backend the C code also does the file I/O, so the copies to and from the page
cache run on all cores alongside the cipher instead of before or after it on one:

* a read is read in 128 KiB pieces, the pieces shared by the calling thread and an OpenMP
  helper per core; each thread decrypts its piece in place while it is still in its cache;
* a write is encrypted in 64 KiB pieces by all threads into the calling thread's scratch
  buffer, and the calling thread writes runs of finished pieces as they come: one writer,
  because the file system serialises writes to a file (ext4's inode lock), so a second
  writer would wait while it could encrypt.  The caller's buffer is never changed.

Over another device of the mount the target reads and writes through it and converts in
memory.  Helpers that turn out descheduled (another process on their core, or the hypervisor
slow to run an idle vCPU) make the next jobs run on the calling thread alone, 4 at first and
twice as many per stall in a row.  When big requests overlap (deep queues: requests waiting
on the FUSE fd, or another of the target's requests at the worker), each is handed whole to
the worker thread (C; the task waits for it in trio), so the trio thread keeps its core for
FUSE; requests of at least ``Crypt.THREAD_MIN`` (2 MiB: only engine-level callers, FUSE sends
at most 1 MiB) always go there, so smaller I/O is not queued behind a long conversion
(``test_big_encryption_does_not_hold_up_small_io``).

Measured with ``bench/crypt.sh`` (fio, 1M sequential, O_DIRECT, 2 shared vCPUs; the dated
runs and what was tried: ``bench/RESULTS.md``, "crypt vs linear"): 0.7-1.0x of ``linear``
(reads at QD16 the lowest, 0.69-0.81x), 5-9x qemu's LUKS driver.  What is left is the cipher
itself: 0.21 ms per MiB of 512-byte XTS units on one core, which linear does not pay.
"""

from dmfuse.targets.crypt.target import Crypt

__all__ = ["Crypt"]
