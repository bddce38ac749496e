/* dmfuse.openssl.loops: OpenSSL loops over many encryption units / hash blocks, without the GIL.
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
 *                                    IV ivs[i*iv_len : (i+1)*iv_len], or dm-crypt's plain64
 *                                    IVs if ivs is (first, step); no padding
 *     .convert_from(fd, offset, buf, ivs, unit, encrypt)
 *                                    read buf from the file, converting pieces as they come
 *     .convert_to(fd, offset, src, ivs, unit, encrypt)
 *                                    write src, converted, to the file (src is not changed)
 *     .start/.start_from/.start_to(...) -> Job
 *                                    the same on the worker thread: job.done says when, the
 *                                    eventfd job.fd (shared by all jobs) turns readable then;
 *                                    job.finish() releases it and raises its errors
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
 * Sources: units.c (UnitCipher, its XTS IV shortcut, its file I/O), jobs.c (worker threads),
 * hash.c (BlockHasher), this file (the module, errors, and when to use helper threads).
 */
#include "openssl_ext.h"

#include <omp.h>
#include <openssl/err.h>
#include <errno.h>
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

/* A request's failed read or write (Request.error) as a Python exception: EOFError when the
 * file ended first, else OSError with the errno. */
PyObject *dmf_io_error(int error) {
    if (error == DMF_EOF) {
        PyErr_SetString(PyExc_EOFError, "the file ends before the request");
        return NULL;
    }
    errno = error;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* Threads for a job of this many bytes: one per PARALLEL_MIN_BYTES (waking a helper for less
 * work costs more than it saves), at most one per core as OpenMP counts them, and just the
 * calling thread while helpers are being late (see note_wait). */
#define PARALLEL_MIN_BYTES (128 << 10)
/* The calling thread waiting this long for helpers after its own share means a helper was
 * descheduled in the middle of a chunk (another process wanted that core, or the hypervisor
 * was slow to run an idle vCPU again): the next jobs then run on the calling thread alone, then
 * helpers are tried again.  How many jobs doubles with each stall in a row, from SOLO_JOBS_MIN
 * up to SOLO_JOBS_MAX, and a job without a stall starts over: a process busy on the other core
 * is soon left alone (measured with one: 1 MiB of XTS took 5.5 ms with helpers instead of
 * 0.23 ms alone), while the odd stall of an idle machine costs a few jobs (on this shared
 * machine about one 1 MiB crypt request in 900 stalled at queue depth 1; a fixed 256 solo
 * jobs per stall made a quarter of all requests run alone).  Waking sleeping helpers instead
 * (OMP_WAIT_POLICY=passive) avoids stalls but costs a wakeup per job, which ate most of the
 * gain on an idle machine. */
#define STALL_NS 200000
#define SOLO_JOBS_MIN 4
#define SOLO_JOBS_MAX 256
static int solo_jobs_left; /* shared by all threads: __atomic builtins */
static int solo_span = SOLO_JOBS_MIN;

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

/* After a parallel job: own_done is when the calling thread ran out of work.  The first
 * parallel job of the process is not judged: OpenMP starts its helper threads during it. */
void dmf_note_wait(int team, long long own_done) {
    static int helpers_started;
    if (team < 2 || !__atomic_exchange_n(&helpers_started, 1, __ATOMIC_RELAXED))
        return;
    if (dmf_now_ns() - own_done <= STALL_NS) {
        __atomic_store_n(&solo_span, SOLO_JOBS_MIN, __ATOMIC_RELAXED);
        return;
    }
    int span = __atomic_load_n(&solo_span, __ATOMIC_RELAXED);
    __atomic_store_n(&solo_jobs_left, span, __ATOMIC_RELAXED);
    __atomic_store_n(&solo_span, span < SOLO_JOBS_MAX ? 2 * span : SOLO_JOBS_MAX,
                     __ATOMIC_RELAXED);
}

/* ---- module ---------------------------------------------------------------------------- */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "dmfuse.openssl.loops",
    "OpenSSL loops over many encryption units / hash blocks, without the GIL.", -1, NULL};

PyMODINIT_FUNC PyInit_loops(void) {
    if (PyType_Ready(&dmf_UnitCipherType) < 0 || PyType_Ready(&dmf_BlockHasherType) < 0 ||
        PyType_Ready(&dmf_JobType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    dmf_OpenSSLError = PyErr_NewException("dmfuse.openssl.loops.OpenSSLError", PyExc_ValueError, NULL);
    if (PyModule_AddObjectRef(m, "OpenSSLError", dmf_OpenSSLError) < 0 ||
        PyModule_AddObjectRef(m, "UnitCipher", (PyObject *)&dmf_UnitCipherType) < 0 ||
        PyModule_AddObjectRef(m, "BlockHasher", (PyObject *)&dmf_BlockHasherType) < 0 ||
        PyModule_AddObjectRef(m, "Job", (PyObject *)&dmf_JobType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
