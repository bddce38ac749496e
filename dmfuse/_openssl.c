/* dmfuse._openssl: OpenSSL loops over many encryption units / hash blocks, without the GIL.
 *
 * Why this exists: dm-crypt encrypts every 512-byte (or sector_size) unit with its own IV, and
 * dm-verity hashes every data block on its own.  A 1 MiB request is 2048 units or 256 blocks;
 * one Python call per unit costs more than the cipher (cryptography: ~5 us per context), and
 * hashlib takes the GIL back after every block, so two threads cannot share the work.  Here
 * the loop runs in C with the GIL released: OpenSSL does all the cryptography (no cipher or
 * hash is implemented here), this file only walks the units and hands each one its IV.
 *
 *   UnitCipher(name, key)            an OpenSSL cipher ("AES-256-XTS", "AES-128-CBC", ...)
 *     .convert(src, dst, ivs, unit, encrypt)
 *                                    unit i of src -> unit i of dst (dst may be src), with
 *                                    IV ivs[i*iv_len : (i+1)*iv_len]; no padding
 *     .start(...) -> ConvertJob      the same on the converter thread; job.fd (an eventfd)
 *                                    turns readable when done, then job.finish()
 *   BlockHasher(name, prefix, suffix)
 *     .digests(data, block, lo, hi)  H(prefix || block_i || suffix) for blocks [lo, hi),
 *                                    back to back (dm-verity's salting: v1 prefix, v0 suffix)
 *
 * Both are safe to call from several threads at once: each call makes its own context from a
 * keyed/salted template.  Keys are wiped from memory when the object goes away.  Big requests
 * are shared by the calling thread and OpenMP's helper threads (one per core), unless helpers
 * have lately been late (another process busy on their core: see note_wait).
 *
 * XTS IV shortcut: re-initialising a context for each unit's IV is 60 ns, 40% of the cost of a
 * 512-byte unit.  OpenSSL's XTS reads the tweak IV from the context's IV buffer on every call
 * (EVP_CIPHER_CTX_iv_noconst gives that buffer), so for XTS the IV is copied there and the unit
 * converted with EVP_Cipher.  Whether this OpenSSL behaves so is checked when the cipher is
 * made, against the documented per-unit re-initialisation; if not, that slow path is used.
 */
/* EVP_CIPHER_CTX_iv_noconst (the XTS IV shortcut below) is deprecated in OpenSSL 3. */
#define OPENSSL_SUPPRESS_DEPRECATED
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <omp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <structmember.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static PyObject *OpenSSLError;

static PyObject *set_openssl_error(const char *what) {
    unsigned long code = ERR_get_error();
    char text[256] = "";
    if (code)
        ERR_error_string_n(code, text, sizeof text);
    ERR_clear_error();
    PyErr_Format(OpenSSLError, "%s%s%s", what, code ? ": " : "", text);
    return NULL;
}

/* ---- UnitCipher ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER *cipher;
    EVP_CIPHER_CTX *encrypt; /* keyed templates, copied per call */
    EVP_CIPHER_CTX *decrypt;
    int iv_len;
    int block;
    int iv_in_place; /* the XTS IV shortcut works with this OpenSSL (see the header) */
} UnitCipher;

static int iv_in_place_works(UnitCipher *self);

static void UnitCipher_dealloc(UnitCipher *self) {
    EVP_CIPHER_CTX_free(self->encrypt); /* frees (and cleanses) the key schedule */
    EVP_CIPHER_CTX_free(self->decrypt);
    EVP_CIPHER_free(self->cipher);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static EVP_CIPHER_CTX *keyed(EVP_CIPHER *cipher, const unsigned char *key, int enc) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL || !EVP_CipherInit_ex2(ctx, cipher, key, NULL, enc, NULL) ||
        !EVP_CIPHER_CTX_set_padding(ctx, 0)) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static int UnitCipher_init(UnitCipher *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"name", "key", NULL};
    const char *name;
    Py_buffer key;
    if (self->cipher != NULL) {
        PyErr_SetString(PyExc_TypeError, "UnitCipher is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sy*", kwlist, &name, &key))
        return -1;
    int ok = 0;
    self->cipher = EVP_CIPHER_fetch(NULL, name, NULL);
    if (self->cipher == NULL) {
        set_openssl_error("no such cipher");
    } else if (EVP_CIPHER_get_key_length(self->cipher) != key.len) {
        ERR_clear_error();
        PyErr_Format(PyExc_ValueError, "%s takes a %d-byte key, not %zd", name,
                     EVP_CIPHER_get_key_length(self->cipher), key.len);
    } else {
        self->encrypt = keyed(self->cipher, key.buf, 1);
        self->decrypt = self->encrypt ? keyed(self->cipher, key.buf, 0) : NULL;
        if (self->decrypt == NULL)
            set_openssl_error("cannot set the key");
        else
            ok = 1;
    }
    PyBuffer_Release(&key);
    if (!ok)
        return -1;
    self->iv_len = EVP_CIPHER_get_iv_length(self->cipher);
    self->block = EVP_CIPHER_get_block_size(self->cipher);
    self->iv_in_place = iv_in_place_works(self);
    return 0;
}

/* Units per scheduling chunk: threads take chunks of this many units in turn, so a thread that
 * starts late (a sleeping core waking up) just takes fewer. */
#define UNITS_PER_CHUNK 64
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

static int team_size(Py_ssize_t bytes) {
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

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* After a parallel job: own_done is when the calling thread ran out of work. */
static void note_wait(int team, long long own_done) {
    if (team > 1 && now_ns() - own_done > STALL_NS)
        __atomic_store_n(&solo_jobs_left, SOLO_JOBS, __ATOMIC_RELAXED);
}

/* Converts n units on the calling thread and OpenMP's helpers (each with its own copy of the
 * keyed template); returns 1 if all went well.  parallel: whether helpers may be used. */
static int convert_units(const EVP_CIPHER_CTX *template, const unsigned char *src,
                         unsigned char *dst, const unsigned char *ivs, int iv_len, Py_ssize_t n,
                         int unit, int iv_in_place, int parallel) {
    int ok = 1;
    int team = parallel ? team_size(n * unit) : 1;
    long long own_done = 0;
#pragma omp parallel num_threads(team) if (team > 1) shared(ok, own_done)
    {
        EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
        int mine = ctx != NULL && EVP_CIPHER_CTX_copy(ctx, template);
        unsigned char *live = NULL;
        if (mine && iv_in_place && n > 0) {
            mine = EVP_CipherInit_ex2(ctx, NULL, NULL, ivs, -1, NULL) &&
                   (live = EVP_CIPHER_CTX_iv_noconst(ctx)) != NULL;
        }
#pragma omp for schedule(dynamic, UNITS_PER_CHUNK) nowait
        for (Py_ssize_t i = 0; i < n; i++) {
            const unsigned char *in = src + i * unit;
            unsigned char *out = dst + i * unit;
            int done;
            if (!mine)
                continue;
            if (live != NULL) {
                memcpy(live, ivs + i * iv_len, iv_len);
                mine = EVP_Cipher(ctx, out, in, unit) > 0;
            } else if (iv_len && !EVP_CipherInit_ex2(ctx, NULL, NULL, ivs + i * iv_len, -1, NULL)) {
                mine = 0;
            } else {
                mine = EVP_CipherUpdate(ctx, out, &done, in, unit) && done == unit;
            }
        }
        if (omp_get_thread_num() == 0)
            own_done = now_ns();
        EVP_CIPHER_CTX_free(ctx);
        if (!mine) {
#pragma omp atomic write
            ok = 0;
        }
    }
    note_wait(team, own_done);
    return ok;
}

/* Whether the XTS IV shortcut gives what per-unit re-initialisation gives, both ways. */
static int iv_in_place_works(UnitCipher *self) {
    enum { UNIT = 64, UNITS = 3 };
    unsigned char plain[UNIT * UNITS], slow[UNIT * UNITS], fast[UNIT * UNITS];
    unsigned char ivs[16 * UNITS];
    if (EVP_CIPHER_get_mode(self->cipher) != EVP_CIPH_XTS_MODE || self->iv_len != 16)
        return 0;
    for (size_t i = 0; i < sizeof plain; i++)
        plain[i] = (unsigned char)(i * 37 + 11);
    for (size_t i = 0; i < sizeof ivs; i++)
        ivs[i] = (unsigned char)(i * 53 + 1);
    for (int enc = 0; enc < 2; enc++) {
        const EVP_CIPHER_CTX *template = enc ? self->encrypt : self->decrypt;
        if (!convert_units(template, plain, slow, ivs, 16, UNITS, UNIT, 0, 0) ||
            !convert_units(template, plain, fast, ivs, 16, UNITS, UNIT, 1, 0) ||
            memcmp(slow, fast, sizeof slow) != 0 || memcmp(slow, slow + UNIT, UNIT) == 0) {
            ERR_clear_error();
            return 0;
        }
    }
    return 1;
}

/* A conversion's arguments, checked; the buffers are held until released. */
typedef struct {
    Py_buffer src, dst, ivs;
    Py_ssize_t n;
    int unit, encrypt;
} Request;

static int parse_request(UnitCipher *self, PyObject *args, PyObject *kwds, Request *r) {
    static char *kwlist[] = {"src", "dst", "ivs", "unit", "encrypt", NULL};
    if (self->decrypt == NULL) {
        PyErr_SetString(PyExc_TypeError, "UnitCipher is not initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*w*y*ip", kwlist, &r->src, &r->dst, &r->ivs,
                                     &r->unit, &r->encrypt))
        return -1;
    r->n = r->unit > 0 ? r->src.len / r->unit : 0;
    if (r->unit <= 0 || r->unit % self->block || r->src.len % r->unit) {
        PyErr_Format(PyExc_ValueError, "%zd bytes are not whole %d-byte units", r->src.len,
                     r->unit);
    } else if (r->dst.len != r->src.len) {
        PyErr_SetString(PyExc_ValueError, "src and dst differ in length");
    } else if (r->ivs.len != r->n * self->iv_len) {
        PyErr_Format(PyExc_ValueError, "need %zd bytes of IVs, got %zd", r->n * self->iv_len,
                     r->ivs.len);
    } else {
        return 0;
    }
    PyBuffer_Release(&r->src);
    PyBuffer_Release(&r->dst);
    PyBuffer_Release(&r->ivs);
    return -1;
}

static int run_request(UnitCipher *self, Request *r, int parallel) {
    const EVP_CIPHER_CTX *template = r->encrypt ? self->encrypt : self->decrypt;
    return convert_units(template, r->src.buf, r->dst.buf, r->ivs.buf, self->iv_len, r->n,
                         r->unit, self->iv_in_place, parallel);
}

static PyObject *UnitCipher_convert(UnitCipher *self, PyObject *args, PyObject *kwds) {
    Request r;
    int ok;
    if (parse_request(self, args, kwds, &r) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = run_request(self, &r, 1);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&r.src);
    PyBuffer_Release(&r.dst);
    PyBuffer_Release(&r.ivs);
    if (!ok)
        return set_openssl_error("conversion failed");
    Py_RETURN_NONE;
}

/* ---- ConvertJob: a conversion on the converter thread ---------------------------------- */
/* One converter thread, started on first use, takes jobs in order and converts each on that
 * thread alone; when a job is done its eventfd becomes readable (the caller waits for that in
 * its event loop, so it can serve other requests meanwhile).  The thread never touches Python
 * objects: the job holds the buffers and the cipher until it is finished or deallocated, and a
 * job is never freed while the thread may still use it (dealloc waits for "done"). */

typedef struct ConvertJob {
    PyObject_HEAD
    UnitCipher *cipher; /* strong reference while the job lives */
    Request request;
    int fd;     /* eventfd: readable when done; -1 once finished */
    int queued; /* handed to the converter thread */
    int done;   /* set by the converter thread under queue_lock, after its last use */
    int ok;
    struct ConvertJob *next;
} ConvertJob;

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_changed = PTHREAD_COND_INITIALIZER;
static ConvertJob *queue_head, *queue_tail;
static int converter_started;

static void *converter_main(void *unused) {
    (void)unused;
    for (;;) {
        pthread_mutex_lock(&queue_lock);
        while (queue_head == NULL)
            pthread_cond_wait(&queue_changed, &queue_lock);
        ConvertJob *job = queue_head;
        queue_head = job->next;
        if (queue_head == NULL)
            queue_tail = NULL;
        pthread_mutex_unlock(&queue_lock);

        int ok = run_request(job->cipher, &job->request, 0);
        ERR_clear_error(); /* this thread's queue: the caller reports a generic failure */
        pthread_mutex_lock(&queue_lock);
        job->ok = ok;
        job->done = 1;
        uint64_t one = 1;
        ssize_t written = write(job->fd, &one, sizeof one); /* eventfd: cannot fail here */
        (void)written;
        pthread_cond_broadcast(&queue_changed);
        pthread_mutex_unlock(&queue_lock);
    }
    return NULL;
}

static void release_job(ConvertJob *job) {
    if (job->cipher == NULL)
        return;
    PyBuffer_Release(&job->request.src);
    PyBuffer_Release(&job->request.dst);
    PyBuffer_Release(&job->request.ivs);
    Py_CLEAR(job->cipher);
    if (job->fd >= 0)
        close(job->fd);
    job->fd = -1;
}

/* Blocks (without the GIL) until the converter thread is done with a queued job. */
static void wait_job(ConvertJob *job) {
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&queue_lock);
    while (job->queued && !job->done)
        pthread_cond_wait(&queue_changed, &queue_lock);
    pthread_mutex_unlock(&queue_lock);
    Py_END_ALLOW_THREADS
}

static void ConvertJob_dealloc(ConvertJob *job) {
    wait_job(job); /* never free what the converter thread may still read or write */
    release_job(job);
    Py_TYPE(job)->tp_free((PyObject *)job);
}

static PyObject *ConvertJob_finish(ConvertJob *job, PyObject *unused) {
    (void)unused;
    if (job->cipher == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "job already finished");
        return NULL;
    }
    wait_job(job); /* normally done already: the caller waited for fd */
    int ok = job->ok;
    release_job(job);
    if (!ok) {
        PyErr_SetString(OpenSSLError, "conversion failed");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef ConvertJob_methods[] = {
    {"finish", (PyCFunction)ConvertJob_finish, METH_NOARGS,
     "finish(): wait for the conversion if needed, release the buffers, raise if it failed"},
    {NULL}};

static PyMemberDef ConvertJob_members[] = {
    {"fd", T_INT, offsetof(ConvertJob, fd), READONLY,
     "an eventfd that becomes readable when the conversion is done"},
    {NULL}};

static PyTypeObject ConvertJobType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dmfuse._openssl.ConvertJob",
    .tp_basicsize = sizeof(ConvertJob),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A conversion running on the converter thread (UnitCipher.start)",
    .tp_dealloc = (destructor)ConvertJob_dealloc,
    .tp_methods = ConvertJob_methods,
    .tp_members = ConvertJob_members,
};

static PyObject *UnitCipher_start(UnitCipher *self, PyObject *args, PyObject *kwds) {
    Request r;
    if (parse_request(self, args, kwds, &r) < 0)
        return NULL;
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ConvertJob *job = fd < 0 ? NULL : PyObject_New(ConvertJob, &ConvertJobType);
    if (job == NULL) {
        if (fd < 0)
            PyErr_SetFromErrno(PyExc_OSError);
        else
            close(fd);
        PyBuffer_Release(&r.src);
        PyBuffer_Release(&r.dst);
        PyBuffer_Release(&r.ivs);
        return NULL;
    }
    job->cipher = (UnitCipher *)Py_NewRef((PyObject *)self);
    job->request = r;
    job->fd = fd;
    job->queued = job->done = job->ok = 0;
    job->next = NULL;
    pthread_mutex_lock(&queue_lock);
    int failed = 0;
    if (!converter_started) {
        pthread_t thread;
        failed = pthread_create(&thread, NULL, converter_main, NULL);
        if (!failed) {
            pthread_detach(thread);
            converter_started = 1;
        }
    }
    if (!failed) {
        job->queued = 1;
        if (queue_tail)
            queue_tail->next = job;
        else
            queue_head = job;
        queue_tail = job;
        pthread_cond_broadcast(&queue_changed);
    }
    pthread_mutex_unlock(&queue_lock);
    if (failed) {
        Py_DECREF(job);
        errno = failed;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return (PyObject *)job;
}

static PyMethodDef UnitCipher_methods[] = {
    {"convert", (PyCFunction)(void (*)(void))UnitCipher_convert, METH_VARARGS | METH_KEYWORDS,
     "convert(src, dst, ivs, unit, encrypt): every unit of src into dst with its own IV"},
    {"start", (PyCFunction)(void (*)(void))UnitCipher_start, METH_VARARGS | METH_KEYWORDS,
     "start(src, dst, ivs, unit, encrypt) -> ConvertJob: convert on the converter thread"},
    {NULL}};

static PyMemberDef UnitCipher_members[] = {
    {"iv_len", T_INT, offsetof(UnitCipher, iv_len), READONLY, "IV bytes per unit"},
    {"iv_in_place", T_INT, offsetof(UnitCipher, iv_in_place), READONLY,
     "1 if units take their IV by the XTS shortcut (see the module source)"},
    {NULL}};

static PyTypeObject UnitCipherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dmfuse._openssl.UnitCipher",
    .tp_basicsize = sizeof(UnitCipher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "UnitCipher(name, key): an OpenSSL cipher applied unit by unit",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)UnitCipher_init,
    .tp_dealloc = (destructor)UnitCipher_dealloc,
    .tp_methods = UnitCipher_methods,
    .tp_members = UnitCipher_members,
};

/* ---- BlockHasher ----------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    EVP_MD *md;
    EVP_MD_CTX *start; /* the prefix already absorbed */
    PyObject *suffix;  /* bytes */
    int size;
} BlockHasher;

static void BlockHasher_dealloc(BlockHasher *self) {
    EVP_MD_CTX_free(self->start);
    EVP_MD_free(self->md);
    Py_XDECREF(self->suffix);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int BlockHasher_init(BlockHasher *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"name", "prefix", "suffix", NULL};
    const char *name;
    Py_buffer prefix;
    PyObject *suffix;
    if (self->md != NULL) {
        PyErr_SetString(PyExc_TypeError, "BlockHasher is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sy*S", kwlist, &name, &prefix, &suffix))
        return -1;
    int ok = 0;
    self->md = EVP_MD_fetch(NULL, name, NULL);
    self->start = EVP_MD_CTX_new();
    if (self->md == NULL)
        set_openssl_error("no such digest");
    else if (self->start == NULL || !EVP_DigestInit_ex2(self->start, self->md, NULL) ||
             !EVP_DigestUpdate(self->start, prefix.buf, prefix.len))
        set_openssl_error("cannot start the digest");
    else if (EVP_MD_get_size(self->md) <= 0)
        PyErr_Format(PyExc_ValueError, "%s has no fixed digest size", name);
    else
        ok = 1;
    PyBuffer_Release(&prefix);
    if (!ok)
        return -1;
    self->suffix = Py_NewRef(suffix);
    self->size = EVP_MD_get_size(self->md);
    return 0;
}

/* Blocks per scheduling chunk (see UNITS_PER_CHUNK). */
#define BLOCKS_PER_CHUNK 8

static int hash_blocks(const EVP_MD_CTX *start, const unsigned char *data, Py_ssize_t block,
                       Py_ssize_t lo, Py_ssize_t hi, const char *suffix, Py_ssize_t suffix_len,
                       unsigned char *out, int size) {
    int ok = 1;
    int team = team_size((hi - lo) * block);
    long long own_done = 0;
#pragma omp parallel num_threads(team) if (team > 1) shared(ok, own_done)
    {
        EVP_MD_CTX *h = EVP_MD_CTX_new();
        int mine = h != NULL;
#pragma omp for schedule(dynamic, BLOCKS_PER_CHUNK) nowait
        for (Py_ssize_t i = lo; i < hi; i++) {
            unsigned int got;
            if (mine)
                mine = EVP_MD_CTX_copy_ex(h, start) &&
                       EVP_DigestUpdate(h, data + i * block, block) &&
                       (suffix_len == 0 || EVP_DigestUpdate(h, suffix, suffix_len)) &&
                       EVP_DigestFinal_ex(h, out + (i - lo) * size, &got);
        }
        if (omp_get_thread_num() == 0)
            own_done = now_ns();
        EVP_MD_CTX_free(h);
        if (!mine) {
#pragma omp atomic write
            ok = 0;
        }
    }
    note_wait(team, own_done);
    return ok;
}

static PyObject *BlockHasher_digests(BlockHasher *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"data", "block", "lo", "hi", NULL};
    Py_buffer data;
    Py_ssize_t block, lo, hi;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*nnn", kwlist, &data, &block, &lo, &hi))
        return NULL;
    PyObject *out = NULL;
    if (self->suffix == NULL) {
        PyErr_SetString(PyExc_TypeError, "BlockHasher is not initialised");
    } else if (block <= 0 || lo < 0 || hi < lo || hi > data.len / block) {
        PyErr_Format(PyExc_ValueError, "blocks [%zd, %zd) of %zd bytes are not in the data", lo,
                     hi, block);
    } else if ((out = PyBytes_FromStringAndSize(NULL, (hi - lo) * self->size)) != NULL) {
        unsigned char *digests = (unsigned char *)PyBytes_AS_STRING(out);
        const char *suffix = PyBytes_AS_STRING(self->suffix);
        Py_ssize_t suffix_len = PyBytes_GET_SIZE(self->suffix);
        int ok;
        Py_BEGIN_ALLOW_THREADS
        ok = hash_blocks(self->start, data.buf, block, lo, hi, suffix, suffix_len, digests,
                         self->size);
        Py_END_ALLOW_THREADS
        if (!ok) {
            Py_CLEAR(out);
            set_openssl_error("hashing failed");
        }
    }
    PyBuffer_Release(&data);
    return out;
}

static PyMethodDef BlockHasher_methods[] = {
    {"digests", (PyCFunction)(void (*)(void))BlockHasher_digests, METH_VARARGS | METH_KEYWORDS,
     "digests(data, block, lo, hi): the salted digests of blocks [lo, hi), back to back"},
    {NULL}};

static PyMemberDef BlockHasher_members[] = {
    {"digest_size", T_INT, offsetof(BlockHasher, size), READONLY, "bytes per digest"},
    {NULL}};

static PyTypeObject BlockHasherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dmfuse._openssl.BlockHasher",
    .tp_basicsize = sizeof(BlockHasher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BlockHasher(name, prefix, suffix): an OpenSSL digest applied block by block",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)BlockHasher_init,
    .tp_dealloc = (destructor)BlockHasher_dealloc,
    .tp_methods = BlockHasher_methods,
    .tp_members = BlockHasher_members,
};

/* ---- module ---------------------------------------------------------------------------- */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "dmfuse._openssl",
    "OpenSSL loops over many encryption units / hash blocks, without the GIL.", -1, NULL};

PyMODINIT_FUNC PyInit__openssl(void) {
    if (PyType_Ready(&UnitCipherType) < 0 || PyType_Ready(&BlockHasherType) < 0 ||
        PyType_Ready(&ConvertJobType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    OpenSSLError = PyErr_NewException("dmfuse._openssl.OpenSSLError", PyExc_ValueError, NULL);
    if (PyModule_AddObjectRef(m, "OpenSSLError", OpenSSLError) < 0 ||
        PyModule_AddObjectRef(m, "UnitCipher", (PyObject *)&UnitCipherType) < 0 ||
        PyModule_AddObjectRef(m, "BlockHasher", (PyObject *)&BlockHasherType) < 0 ||
        PyModule_AddObjectRef(m, "ConvertJob", (PyObject *)&ConvertJobType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
