/* dmfuse._openssl: OpenSSL loops over many encryption units / hash blocks, without the GIL.
 *
 * Why this exists: dm-crypt encrypts every 512-byte (or sector_size) unit with its own IV, and
 * dm-verity hashes every data block on its own.  A 1 MiB request is 2048 units or 256 blocks;
 * one Python call per unit costs more than the cipher (cryptography: ~5 us per context), and
 * hashlib takes the GIL back after every block, so two threads cannot share the work.  Here
 * the loop runs in C with the GIL released: OpenSSL does all the cryptography (no cipher or
 * hash is implemented here), this code only walks the units and hands each one its IV.
 *
 *   UnitCipher(name, key)            an OpenSSL cipher ("AES-256-XTS", "AES-128-CBC", ...)
 *     .convert(src, dst, ivs, unit, encrypt)
 *                                    unit i of src -> unit i of dst (dst may be src), with
 *                                    IV ivs[i*iv_len : (i+1)*iv_len]; no padding
 *     .start(...) -> Job             the same on the worker thread; job.fd (an eventfd)
 *                                    turns readable when done, then job.finish()
 *   BlockHasher(name, prefix, suffix)
 *     .digests(data, block, lo, hi)  H(prefix || block_i || suffix) for blocks [lo, hi),
 *                                    back to back (dm-verity's salting: v1 prefix, v0 suffix)
 *     .start(...) -> Job             the same on the worker thread; finish() returns them
 *
 * Both are safe to call from several threads at once: each call makes its own context from a
 * keyed/salted template.  Keys are wiped from memory when the object goes away.  Big requests
 * are shared by the calling thread and OpenMP's helper threads (one per core), unless helpers
 * have lately been late (another process busy on their core: see dmf_note_wait).
 *
 * Sources: units.c (UnitCipher, and its XTS IV shortcut), jobs.c (the worker thread),
 * hash.c (BlockHasher), this file (the module, errors, and when to use helper threads).
 */
#include "openssl_ext.h"

#include <omp.h>
#include <openssl/err.h>
#include <time.h>

PyObject *dmf_OpenSSLError;

PyObject *dmf_openssl_error(const char *what) {
    unsigned long code = ERR_get_error();
    char text[256] = "";
    if (code)
        ERR_error_string_n(code, text, sizeof text);
    ERR_clear_error();
    PyErr_Format(dmf_OpenSSLError, "%s%s%s", what, code ? ": " : "", text);
    return NULL;
}

/* Threads for a job of this many bytes: one per PARALLEL_MIN_BYTES (waking a helper for less
 * work costs more than it saves), at most one per core as OpenMP counts them, and just the
 * calling thread while helpers are being late (see note_wait). */
#define PARALLEL_MIN_BYTES (128 << 10)
/* The calling thread waiting this long for helpers after its own share means a helper was
 * descheduled in the middle of a chunk (another process wants that core): the next SOLO_JOBS
 * jobs then run on the calling thread alone, then helpers are tried again.  Measured on the
 * shared 2-vCPU machine with a busy process on the other core: 1 MiB of XTS took 5.5 ms with
 * helpers instead of 0.23 ms alone.  Waking sleeping helpers instead (OMP_WAIT_POLICY=passive)
 * avoids that but costs a wakeup per job, which ate most of the gain on an idle machine. */
#define STALL_NS 200000
#define SOLO_JOBS 256
static int solo_jobs_left; /* shared by all threads: __atomic builtins */

int dmf_team_size(Py_ssize_t bytes) {
    Py_ssize_t wanted = bytes / PARALLEL_MIN_BYTES;
    if (wanted < 2)
        return 1;
    if (__atomic_load_n(&solo_jobs_left, __ATOMIC_RELAXED) > 0) {
        __atomic_fetch_sub(&solo_jobs_left, 1, __ATOMIC_RELAXED);
        return 1;
    }
    int cores = omp_get_max_threads();
    return wanted < cores ? (int)wanted : cores;
}

long long dmf_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* After a parallel job: own_done is when the calling thread ran out of work. */
void dmf_note_wait(int team, long long own_done) {
    if (team > 1 && dmf_now_ns() - own_done > STALL_NS)
        __atomic_store_n(&solo_jobs_left, SOLO_JOBS, __ATOMIC_RELAXED);
}

/* ---- module ---------------------------------------------------------------------------- */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "dmfuse._openssl",
    "OpenSSL loops over many encryption units / hash blocks, without the GIL.", -1, NULL};

PyMODINIT_FUNC PyInit__openssl(void) {
    if (PyType_Ready(&dmf_UnitCipherType) < 0 || PyType_Ready(&dmf_BlockHasherType) < 0 ||
        PyType_Ready(&dmf_JobType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    dmf_OpenSSLError = PyErr_NewException("dmfuse._openssl.OpenSSLError", PyExc_ValueError, NULL);
    if (PyModule_AddObjectRef(m, "OpenSSLError", dmf_OpenSSLError) < 0 ||
        PyModule_AddObjectRef(m, "UnitCipher", (PyObject *)&dmf_UnitCipherType) < 0 ||
        PyModule_AddObjectRef(m, "BlockHasher", (PyObject *)&dmf_BlockHasherType) < 0 ||
        PyModule_AddObjectRef(m, "Job", (PyObject *)&dmf_JobType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
