/* UnitCipher: an OpenSSL cipher applied unit by unit, each unit with its own IV (dm-crypt).
 *
 * XTS IV shortcut: re-initialising a context for each unit's IV is 60 ns, 40% of the cost of a
 * 512-byte unit.  OpenSSL's XTS reads the tweak IV from the context's IV buffer on every call
 * (EVP_CIPHER_CTX_iv_noconst gives that buffer), so for XTS the IV is copied there and the unit
 * converted with EVP_Cipher.  Whether this OpenSSL behaves so is checked when the cipher is
 * made, against the documented per-unit re-initialisation; if not, that slow path is used.
 */
#include "openssl_ext.h"

#include <omp.h>
#include <openssl/err.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <unistd.h>
#include <structmember.h>

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
        dmf_openssl_error("no such cipher");
    } else if (EVP_CIPHER_get_key_length(self->cipher) != key.len) {
        ERR_clear_error();
        PyErr_Format(PyExc_ValueError, "%s takes a %d-byte key, not %zd", name,
                     EVP_CIPHER_get_key_length(self->cipher), key.len);
    } else {
        self->encrypt = keyed(self->cipher, key.buf, 1);
        self->decrypt = self->encrypt ? keyed(self->cipher, key.buf, 0) : NULL;
        if (self->decrypt == NULL)
            dmf_openssl_error("cannot set the key");
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

/* Units per scheduling chunk of a memory-only conversion: threads take chunks in turn, so a
 * thread that starts late (a sleeping core waking up) just takes fewer. */
#define UNITS_PER_CHUNK 64
/* convert_from reads in pieces of this many bytes, shared by the threads: each thread reads a
 * piece and converts it while it is still in its core's cache, so the copy out of the page
 * cache runs on every core alongside the cipher. */
#define READ_PIECE (128 << 10)
/* convert_to converts windows of up to WRITE_WINDOW bytes into the calling thread's scratch
 * buffer, in pieces of WRITE_PIECE shared by the threads, and the calling thread writes each
 * piece as soon as it is converted (see write_window). */
#define WRITE_WINDOW (1 << 20)
#define WRITE_PIECE (64 << 10)
#define MAX_PIECES 64

/* One thread's copy of the keyed template, with the IV shortcut's live IV buffer if used. */
typedef struct {
    EVP_CIPHER_CTX *ctx;
    unsigned char *live;
    int ok;
} Converter;

/* Frees a thread's converter; clears *ok (shared by the team) if it failed. */
static void converter_free(Converter *c, int *ok) {
    EVP_CIPHER_CTX_free(c->ctx); /* cleanses the key schedule */
    if (!c->ok) {
#pragma omp atomic write
        *ok = 0;
    }
}

/* Unit i's IV into out (ivs->len bytes). */
static void iv_of(const Ivs *ivs, Py_ssize_t i, unsigned char *out) {
    if (ivs->table != NULL) {
        memcpy(out, ivs->table + i * ivs->len, ivs->len);
        return;
    }
    uint64_t sector = ivs->first + (uint64_t)i * ivs->step; /* wraps like the kernel's sector_t */
    memset(out, 0, ivs->len);
    for (int b = 0; b < 8 && b < ivs->len; b++)
        out[b] = (unsigned char)(sector >> (8 * b));
}

/* The IVs of the units from unit i on. */
static Ivs ivs_from(const Ivs *ivs, Py_ssize_t i) {
    Ivs rest = *ivs;
    if (rest.table != NULL)
        rest.table += i * rest.len;
    else
        rest.first += (uint64_t)i * rest.step;
    return rest;
}

static void converter_init(Converter *c, const EVP_CIPHER_CTX *template, const Ivs *ivs,
                           int iv_in_place) {
    unsigned char first[EVP_MAX_IV_LENGTH];
    c->live = NULL;
    c->ctx = EVP_CIPHER_CTX_new();
    c->ok = c->ctx != NULL && EVP_CIPHER_CTX_copy(c->ctx, template);
    if (c->ok && iv_in_place) {
        iv_of(ivs, 0, first);
        c->ok = EVP_CipherInit_ex2(c->ctx, NULL, NULL, first, -1, NULL) &&
                (c->live = EVP_CIPHER_CTX_iv_noconst(c->ctx)) != NULL;
    }
}

/* count units of src into dst, each with its IV (ivs: from the first of them on). */
static void converter_run(Converter *c, const unsigned char *src, unsigned char *dst,
                          const Ivs *ivs, Py_ssize_t count, int unit) {
    unsigned char iv[EVP_MAX_IV_LENGTH];
    for (Py_ssize_t i = 0; i < count && c->ok; i++) {
        const unsigned char *in = src + i * unit;
        unsigned char *out = dst + i * unit;
        int done;
        if (c->live != NULL) {
            iv_of(ivs, i, c->live);
            c->ok = EVP_Cipher(c->ctx, out, in, unit) > 0;
            continue;
        }
        if (ivs->len) {
            iv_of(ivs, i, iv);
            if (!EVP_CipherInit_ex2(c->ctx, NULL, NULL, iv, -1, NULL)) {
                c->ok = 0;
                continue;
            }
        }
        c->ok = EVP_CipherUpdate(c->ctx, out, &done, in, unit) && done == unit;
    }
}

/* pread/pwrite all of len bytes at off (retrying short transfers and EINTR): 0, an errno, or
 * DMF_EOF when the file ends first. */
static int read_full(int fd, unsigned char *buf, size_t len, off_t off) {
    while (len > 0) {
        ssize_t got = pread(fd, buf, len, off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return errno;
        if (got == 0)
            return DMF_EOF;
        buf += got, len -= (size_t)got, off += got;
    }
    return 0;
}

static int write_full(int fd, const unsigned char *buf, size_t len, off_t off) {
    while (len > 0) {
        ssize_t put = pwrite(fd, buf, len, off);
        if (put < 0 && errno == EINTR)
            continue;
        if (put < 0)
            return errno;
        buf += put, len -= (size_t)put, off += put;
    }
    return 0;
}

/* The calling thread's scratch buffer for convert_to, grown to size and kept for the thread's
 * life (the trio thread and the worker thread live as long as the process). */
static unsigned char *thread_scratch(size_t size) {
    static _Thread_local unsigned char *buf;
    static _Thread_local size_t have;
    if (have < size) {
        unsigned char *grown = realloc(buf, size);
        if (grown == NULL)
            return NULL;
        buf = grown;
        have = size;
    }
    return buf;
}

static void set_error(int *error, int value) {
    int none = 0;
    __atomic_compare_exchange_n(error, &none, value, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

/* A memory-only conversion (DMF_IO_NONE) or convert_from (DMF_IO_READ) on team threads. */
static int convert_or_read(const EVP_CIPHER_CTX *template, Request *r, int iv_in_place,
                           int team) {
    Py_ssize_t n = r->n;
    int unit = r->unit, reading = r->io == DMF_IO_READ;
    Py_ssize_t per = UNITS_PER_CHUNK;
    if (reading)
        per = READ_PIECE / unit > 0 ? READ_PIECE / unit : 1;
    Py_ssize_t pieces = (n + per - 1) / per;
    int ok = 1;
    long long own_done = 0;
#pragma omp parallel num_threads(team) if (team > 1) shared(ok, own_done)
    {
        Converter c;
        converter_init(&c, template, &r->iv, iv_in_place && n > 0);
#pragma omp for schedule(dynamic, 1) nowait
        for (Py_ssize_t p = 0; p < pieces; p++) {
            Py_ssize_t first = p * per, count = n - first < per ? n - first : per;
            size_t at = (size_t)(first * unit), len = (size_t)(count * unit);
            Ivs piece_ivs = ivs_from(&r->iv, first);
            if (!c.ok || __atomic_load_n(&r->error, __ATOMIC_RELAXED))
                continue;
            if (reading) {
                unsigned char *buf = (unsigned char *)r->dst.buf + at;
                int failed = read_full(r->fd, buf, len, r->offset + (off_t)at);
                if (failed)
                    set_error(&r->error, failed);
                else
                    converter_run(&c, buf, buf, &piece_ivs, count, unit);
            } else {
                converter_run(&c, (const unsigned char *)r->src.buf + at,
                              (unsigned char *)r->dst.buf + at, &piece_ivs, count, unit);
            }
        }
        if (omp_get_thread_num() == 0)
            own_done = dmf_now_ns();
        converter_free(&c, &ok);
    }
    dmf_note_wait(team, own_done);
    return ok;
}

enum { PIECE_PENDING, PIECE_CONVERTED, PIECE_FAILED };

/* One window of a convert_to request (see write_window). */
typedef struct {
    Request *r;
    const unsigned char *src;       /* the window's first unit */
    Ivs ivs;                        /* its IVs */
    unsigned char *scratch;
    off_t offset;                   /* where the window goes in the file */
    Py_ssize_t n, per, pieces;      /* units, units per piece, pieces */
    int state[MAX_PIECES];          /* PIECE_*, set by the converting thread */
    int written[MAX_PIECES];        /* the writer's: pieces written or given up */
    int failed;                     /* a piece failed to convert */
} Window;

/* Units [first, first + count) of piece p. */
static Py_ssize_t piece_units(const Window *w, Py_ssize_t p, Py_ssize_t *first) {
    *first = p * w->per;
    return w->n - *first < w->per ? w->n - *first : w->per;
}

/* The writer's turn: every run of consecutive converted, unwritten pieces at least min_run
 * long is written with one call (a write call costs a few microseconds of file system work
 * besides the copy: inode lock, timestamps, journal).  Returns the pieces it took care of. */
static Py_ssize_t write_runs(Window *w, Py_ssize_t min_run) {
    Py_ssize_t handled = 0, p = 0;
    int unit = w->r->unit;
    while (p < w->pieces) {
        Py_ssize_t end = p;
        while (end < w->pieces && !w->written[end] &&
               __atomic_load_n(&w->state[end], __ATOMIC_ACQUIRE) != PIECE_PENDING)
            end++;
        if (end - p < (min_run > 1 ? min_run : 1)) {
            p = end > p ? end : p + 1;
            continue;
        }
        int converted = 1;
        for (Py_ssize_t q = p; q < end; q++) {
            w->written[q] = 1;
            converted &= __atomic_load_n(&w->state[q], __ATOMIC_RELAXED) == PIECE_CONVERTED;
        }
        handled += end - p;
        if (!converted)
            w->failed = 1;
        if (!w->failed && !w->r->error) { /* after a failure, nothing more is written */
            Py_ssize_t first, last, count = piece_units(w, end - 1, &last);
            piece_units(w, p, &first);
            size_t at = (size_t)(first * unit), len = (size_t)((last + count - first) * unit);
            w->r->error = write_full(w->r->fd, w->scratch + at, len, w->offset + (off_t)at);
        }
        p = end;
    }
    return handled;
}

/* Pieces the writer lets pile up before writing them in one call, while it has other work. */
#define WRITE_RUN_MIN 4

/* convert_to for units [first, first + n) of r: every thread converts pieces into scratch;
 * the calling thread (0) also writes the converted pieces, runs of them at a time, in
 * whatever order they are done.  Only one thread writes because file systems serialise the
 * writes to a file (ext4: the inode lock): a second writer would mostly sleep on the lock,
 * while one writer overlaps its writes with the other threads' cipher work.  Once out of
 * pieces to convert, the calling thread writes the rest as they become ready. */
static int write_window(const EVP_CIPHER_CTX *template, Request *r, int iv_in_place, int team,
                        Py_ssize_t first, Py_ssize_t n, unsigned char *scratch) {
    Window w = {.r = r, .scratch = scratch, .n = n};
    w.src = (const unsigned char *)r->src.buf + first * r->unit;
    w.ivs = ivs_from(&r->iv, first);
    w.offset = r->offset + (off_t)(first * r->unit);
    w.per = WRITE_PIECE / r->unit > 0 ? WRITE_PIECE / r->unit : 1;
    if ((n + w.per - 1) / w.per > MAX_PIECES)
        w.per = (n + MAX_PIECES - 1) / MAX_PIECES;
    w.pieces = (n + w.per - 1) / w.per;
    Py_ssize_t next = 0;
    int ok = 1;
    long long own_done = 0;
#pragma omp parallel num_threads(team) if (team > 1) shared(ok, own_done, next, w)
    {
        Converter c;
        converter_init(&c, template, &w.ivs, iv_in_place && n > 0);
        int writer = omp_get_thread_num() == 0;
        Py_ssize_t left = w.pieces;
        for (;;) {
            Py_ssize_t p = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED), at;
            if (p < w.pieces) {
                Py_ssize_t count = piece_units(&w, p, &at);
                Ivs piece_ivs = ivs_from(&w.ivs, at);
                converter_run(&c, w.src + at * r->unit, w.scratch + at * r->unit, &piece_ivs,
                              count, r->unit);
                __atomic_store_n(&w.state[p], c.ok ? PIECE_CONVERTED : PIECE_FAILED,
                                 __ATOMIC_RELEASE);
            } else if (writer && own_done == 0) {
                own_done = dmf_now_ns();
            }
            if (!writer) {
                if (p >= w.pieces)
                    break;
                continue;
            }
            left -= write_runs(&w, p < w.pieces ? WRITE_RUN_MIN : 1);
            if (left == 0)
                break;
            if (p >= w.pieces)
                sched_yield(); /* the other threads' last pieces are still being converted */
        }
        if (writer && own_done == 0) /* it converted the last piece itself */
            own_done = dmf_now_ns();
        converter_free(&c, &ok);
    }
    dmf_note_wait(team, own_done);
    return ok && !w.failed;
}

/* Runs a request on the calling thread and OpenMP's helpers (each with its own copy of the
 * keyed template); returns 1 if the cipher went well (r->error tells of the file's reads and
 * writes).  parallel: whether helpers may be used. */
static int run_units(const EVP_CIPHER_CTX *template, Request *r, int iv_in_place, int parallel) {
    int team = parallel ? dmf_team_size(r->n * r->unit) : 1;
    r->error = 0;
    if (r->io != DMF_IO_WRITE)
        return convert_or_read(template, r, iv_in_place, team);
    Py_ssize_t window = WRITE_WINDOW / r->unit > 0 ? WRITE_WINDOW / r->unit : 1;
    unsigned char *scratch = thread_scratch((size_t)(window < r->n ? window : r->n) * r->unit);
    if (scratch == NULL && r->n > 0) {
        r->error = ENOMEM;
        return 1;
    }
    int ok = 1;
    for (Py_ssize_t first = 0; first < r->n && ok && !r->error; first += window) {
        Py_ssize_t n = r->n - first < window ? r->n - first : window;
        ok = write_window(template, r, iv_in_place, team, first, n, scratch);
    }
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
    Request r = {.n = UNITS, .unit = UNIT, .io = DMF_IO_NONE, .fd = -1};
    r.src.buf = plain;
    r.iv = (Ivs){.table = ivs, .len = 16};
    for (int enc = 0; enc < 2; enc++) {
        const EVP_CIPHER_CTX *template = enc ? self->encrypt : self->decrypt;
        r.dst.buf = slow;
        int ok = run_units(template, &r, 0, 0);
        r.dst.buf = fast;
        ok = ok && run_units(template, &r, 1, 0);
        if (!ok || memcmp(slow, fast, sizeof slow) != 0 || memcmp(slow, slow + UNIT, UNIT) == 0) {
            ERR_clear_error();
            return 0;
        }
    }
    return 1;
}

/* The ivs argument: a buffer of iv_len bytes per unit, or a tuple (first, step) for plain64
 * IVs made on the fly (see Ivs).  0, or -1 with an exception. */
static int parse_ivs(UnitCipher *self, PyObject *ivs, Request *r) {
    r->iv.len = self->iv_len;
    if (PyTuple_Check(ivs)) {
        PyObject *first_obj, *step_obj;
        if (!PyArg_ParseTuple(ivs, "O!O!", &PyLong_Type, &first_obj, &PyLong_Type, &step_obj))
            return -1;
        unsigned long long first = PyLong_AsUnsignedLongLong(first_obj); /* range-checked */
        unsigned long long step = PyLong_AsUnsignedLongLong(step_obj);
        if (PyErr_Occurred())
            return -1;
        if (self->iv_len < 8) {
            PyErr_Format(PyExc_ValueError, "plain64 IVs need 8 IV bytes, the cipher has %d",
                         self->iv_len);
            return -1;
        }
        r->iv.first = first;
        r->iv.step = step;
        return 0;
    }
    if (PyObject_GetBuffer(ivs, &r->ivs, PyBUF_SIMPLE) < 0)
        return -1;
    if (r->ivs.len != r->n * self->iv_len) {
        PyErr_Format(PyExc_ValueError, "need %zd bytes of IVs, got %zd", r->n * self->iv_len,
                     r->ivs.len);
        return -1;
    }
    r->iv.table = r->ivs.buf;
    return 0;
}

/* Parses the arguments of convert (io DMF_IO_NONE: src, dst), convert_from (DMF_IO_READ: fd,
 * offset, buf) or convert_to (DMF_IO_WRITE: fd, offset, src), then ivs, unit, encrypt. */
int dmf_parse_request(UnitCipher *self, PyObject *args, PyObject *kwds, int io, Request *r) {
    static char *memory_kw[] = {"src", "dst", "ivs", "unit", "encrypt", NULL};
    static char *from_kw[] = {"fd", "offset", "buf", "ivs", "unit", "encrypt", NULL};
    static char *to_kw[] = {"fd", "offset", "src", "ivs", "unit", "encrypt", NULL};
    long long offset = 0;
    PyObject *ivs;
    int parsed;
    memset(r, 0, sizeof *r);
    r->io = io;
    r->fd = -1;
    if (self->decrypt == NULL) {
        PyErr_SetString(PyExc_TypeError, "UnitCipher is not initialised");
        return -1;
    }
    if (io == DMF_IO_READ)
        parsed = PyArg_ParseTupleAndKeywords(args, kwds, "iLw*Oip", from_kw, &r->fd, &offset,
                                             &r->dst, &ivs, &r->unit, &r->encrypt);
    else if (io == DMF_IO_WRITE)
        parsed = PyArg_ParseTupleAndKeywords(args, kwds, "iLy*Oip", to_kw, &r->fd, &offset,
                                             &r->src, &ivs, &r->unit, &r->encrypt);
    else
        parsed = PyArg_ParseTupleAndKeywords(args, kwds, "y*w*Oip", memory_kw, &r->src, &r->dst,
                                             &ivs, &r->unit, &r->encrypt);
    if (!parsed)
        return -1;
    r->offset = (off_t)offset;
    Py_ssize_t len = io == DMF_IO_READ ? r->dst.len : r->src.len;
    r->n = r->unit > 0 ? len / r->unit : 0;
    if (r->unit <= 0 || r->unit % self->block || len % r->unit) {
        PyErr_Format(PyExc_ValueError, "%zd bytes are not whole %d-byte units", len, r->unit);
    } else if (io == DMF_IO_NONE && r->dst.len != r->src.len) {
        PyErr_SetString(PyExc_ValueError, "src and dst differ in length");
    } else if (io != DMF_IO_NONE && (r->fd < 0 || offset < 0)) {
        PyErr_SetString(PyExc_ValueError, "fd and offset must not be negative");
    } else if (parse_ivs(self, ivs, r) == 0) {
        return 0;
    }
    dmf_release_request(r);
    return -1;
}

void dmf_release_request(Request *r) {
    PyBuffer_Release(&r->src); /* a no-op on the buffer a kind of request does not use */
    PyBuffer_Release(&r->dst);
    PyBuffer_Release(&r->ivs);
}

int dmf_run_request(UnitCipher *self, Request *r, int parallel) {
    const EVP_CIPHER_CTX *template = r->encrypt ? self->encrypt : self->decrypt;
    return run_units(template, r, self->iv_in_place, parallel);
}

/* convert, convert_from, convert_to: right here, without the GIL. */
static PyObject *run_now(UnitCipher *self, PyObject *args, PyObject *kwds, int io) {
    Request r;
    int ok;
    if (dmf_parse_request(self, args, kwds, io, &r) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = dmf_run_request(self, &r, 1);
    Py_END_ALLOW_THREADS
    dmf_release_request(&r);
    if (r.error)
        return dmf_io_error(r.error);
    if (!ok)
        return dmf_openssl_error("conversion failed");
    Py_RETURN_NONE;
}

static int run_convert_job(Job *job) {
    int ok = dmf_run_request((UnitCipher *)job->owner, &job->u.convert, 0);
    job->error = job->u.convert.error;
    return ok;
}

static void release_convert_job(Job *job) {
    dmf_release_request(&job->u.convert);
}

/* start, start_from, start_to: the same on the worker thread. */
static PyObject *run_later(UnitCipher *self, PyObject *args, PyObject *kwds, int io) {
    Request r;
    if (dmf_parse_request(self, args, kwds, io, &r) < 0)
        return NULL;
    Job *job = dmf_job_new((PyObject *)self);
    if (job == NULL) {
        dmf_release_request(&r);
        return NULL;
    }
    job->u.convert = r;
    job->run = run_convert_job;
    job->release = release_convert_job;
    return dmf_job_submit(job);
}

#define METHOD(name, how, io)                                                                 \
    static PyObject *UnitCipher_##name(UnitCipher *self, PyObject *args, PyObject *kwds) {   \
        return how(self, args, kwds, io);                                                     \
    }
METHOD(convert, run_now, DMF_IO_NONE)
METHOD(convert_from, run_now, DMF_IO_READ)
METHOD(convert_to, run_now, DMF_IO_WRITE)
METHOD(start, run_later, DMF_IO_NONE)
METHOD(start_from, run_later, DMF_IO_READ)
METHOD(start_to, run_later, DMF_IO_WRITE)
#undef METHOD

#define ENTRY(name, doc) \
    {#name, (PyCFunction)(void (*)(void))UnitCipher_##name, METH_VARARGS | METH_KEYWORDS, doc}
static PyMethodDef UnitCipher_methods[] = {
    ENTRY(convert, "convert(src, dst, ivs, unit, encrypt): every unit of src into dst with its "
                   "own IV"),
    ENTRY(convert_from, "convert_from(fd, offset, buf, ivs, unit, encrypt): read buf from fd at "
                        "offset, converting it in place as it arrives"),
    ENTRY(convert_to, "convert_to(fd, offset, src, ivs, unit, encrypt): write src converted to "
                      "fd at offset (src is not changed)"),
    ENTRY(start, "start(src, dst, ivs, unit, encrypt) -> Job: convert on the worker thread"),
    ENTRY(start_from, "start_from(fd, offset, buf, ivs, unit, encrypt) -> Job: convert_from on "
                      "the worker thread"),
    ENTRY(start_to, "start_to(fd, offset, src, ivs, unit, encrypt) -> Job: convert_to on the "
                    "worker thread"),
    {NULL}};
#undef ENTRY
static PyMemberDef UnitCipher_members[] = {
    {"iv_len", T_INT, offsetof(UnitCipher, iv_len), READONLY, "IV bytes per unit"},
    {"iv_in_place", T_INT, offsetof(UnitCipher, iv_in_place), READONLY,
     "1 if units take their IV by the XTS shortcut (see the module source)"},
    {NULL}};

PyTypeObject dmf_UnitCipherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dmfuse.openssl.loops.UnitCipher",
    .tp_basicsize = sizeof(UnitCipher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "UnitCipher(name, key): an OpenSSL cipher applied unit by unit",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)UnitCipher_init,
    .tp_dealloc = (destructor)UnitCipher_dealloc,
    .tp_methods = UnitCipher_methods,
    .tp_members = UnitCipher_members,
};
