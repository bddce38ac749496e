/* Shared by the sources of dmfuse.openssl.loops (see module.c for what the extension is). */
#ifndef DMFUSE_OPENSSL_EXT_H
#define DMFUSE_OPENSSL_EXT_H

/* EVP_CIPHER_CTX_iv_noconst (the XTS IV shortcut in units.c) is deprecated in OpenSSL 3. */
#define OPENSSL_SUPPRESS_DEPRECATED
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <sys/types.h>

/* module.c */
extern PyObject *dmf_OpenSSLError;
PyObject *dmf_openssl_error(const char *what);
PyObject *dmf_io_error(int error);
int dmf_team_size(Py_ssize_t bytes);
long long dmf_now_ns(void);
void dmf_note_wait(int team, long long own_done);

/* units.c */
typedef struct {
    PyObject_HEAD
    EVP_CIPHER *cipher;
    EVP_CIPHER_CTX *encrypt; /* keyed templates, copied per call */
    EVP_CIPHER_CTX *decrypt;
    int iv_len;
    int block;
    int iv_in_place; /* the XTS IV shortcut works with this OpenSSL (see units.c) */
} UnitCipher;

/* What a conversion does besides converting (UnitCipher.convert / convert_from / convert_to). */
enum { DMF_IO_NONE, DMF_IO_READ, DMF_IO_WRITE };
/* A request's error when the file ended before all was read (otherwise errors are errnos). */
#define DMF_EOF (-1)

/* The units' IVs: a table of len bytes per unit, or (table NULL) dm-crypt's plain64 made on
 * the fly: unit i's IV is the little-endian 64-bit first + i * step, zero-padded to len. */
typedef struct {
    const unsigned char *table;
    uint64_t first, step;
    int len;
} Ivs;

/* A conversion's arguments, checked; the buffers are held until released. */
typedef struct {
    Py_buffer src, dst, ivs; /* DMF_IO_READ: dst only (read, then converted in place);
                                DMF_IO_WRITE: src only (converted into scratch, written);
                                ivs: the IV table, if one was given */
    Ivs iv;
    Py_ssize_t n;
    int unit, encrypt;
    int io, fd;   /* DMF_IO_*, and the file read or written */
    off_t offset; /* where in the file unit 0 is */
    int error;    /* after the run: 0, the errno of a failed read/write, or DMF_EOF */
} Request;

extern PyTypeObject dmf_UnitCipherType;
int dmf_run_request(UnitCipher *self, Request *r, int parallel);
int dmf_parse_request(UnitCipher *self, PyObject *args, PyObject *kwds, int io, Request *r);
void dmf_release_request(Request *r);

/* jobs.c: work for the worker thread.  A kind of job fills in run (on the worker thread,
 * no Python), release (with the GIL: drop what the job holds) and result (what finish()
 * returns), then hands it to dmf_job_submit. */
typedef struct Job {
    PyObject_HEAD
    PyObject *owner;  /* the cipher or hasher: a strong reference while the job lives */
    PyObject *result; /* what finish() returns once the work succeeded */
    int (*run)(struct Job *job);
    void (*release)(struct Job *job);
    int fd;     /* eventfd: readable when done; -1 once finished */
    int queued; /* handed to the worker thread */
    int done;   /* set by the worker thread under the queue lock, after its last use */
    int ok;
    int error; /* set by run: an I/O error (Request.error) that finish() raises */
    struct Job *next;
    union {
        Request convert;
        struct {
            Py_buffer data;
            Py_ssize_t block, lo, hi;
        } hash;
    } u;
} Job;

extern PyTypeObject dmf_JobType;
Job *dmf_job_new(PyObject *owner);
PyObject *dmf_job_submit(Job *job);

/* hash.c */
extern PyTypeObject dmf_BlockHasherType;

#endif
