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
#include <string.h>
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

/* Units per scheduling chunk: threads take chunks of this many units in turn, so a thread that
 * starts late (a sleeping core waking up) just takes fewer. */
#define UNITS_PER_CHUNK 64

/* Converts n units on the calling thread and OpenMP's helpers (each with its own copy of the
 * keyed template); returns 1 if all went well.  parallel: whether helpers may be used. */
static int convert_units(const EVP_CIPHER_CTX *template, const unsigned char *src,
                         unsigned char *dst, const unsigned char *ivs, int iv_len, Py_ssize_t n,
                         int unit, int iv_in_place, int parallel) {
    int ok = 1;
    int team = parallel ? dmf_team_size(n * unit) : 1;
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
            own_done = dmf_now_ns();
        EVP_CIPHER_CTX_free(ctx);
        if (!mine) {
#pragma omp atomic write
            ok = 0;
        }
    }
    dmf_note_wait(team, own_done);
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

int dmf_parse_request(UnitCipher *self, PyObject *args, PyObject *kwds, Request *r) {
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
    dmf_release_request(r);
    return -1;
}

void dmf_release_request(Request *r) {
    PyBuffer_Release(&r->src);
    PyBuffer_Release(&r->dst);
    PyBuffer_Release(&r->ivs);
}

int dmf_run_request(UnitCipher *self, Request *r, int parallel) {
    const EVP_CIPHER_CTX *template = r->encrypt ? self->encrypt : self->decrypt;
    return convert_units(template, r->src.buf, r->dst.buf, r->ivs.buf, self->iv_len, r->n,
                         r->unit, self->iv_in_place, parallel);
}

static PyObject *UnitCipher_convert(UnitCipher *self, PyObject *args, PyObject *kwds) {
    Request r;
    int ok;
    if (dmf_parse_request(self, args, kwds, &r) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ok = dmf_run_request(self, &r, 1);
    Py_END_ALLOW_THREADS
    dmf_release_request(&r);
    if (!ok)
        return dmf_openssl_error("conversion failed");
    Py_RETURN_NONE;
}

static int run_convert_job(Job *job) {
    return dmf_run_request((UnitCipher *)job->owner, &job->u.convert, 0);
}

static void release_convert_job(Job *job) {
    dmf_release_request(&job->u.convert);
}

static PyObject *UnitCipher_start(UnitCipher *self, PyObject *args, PyObject *kwds) {
    Request r;
    if (dmf_parse_request(self, args, kwds, &r) < 0)
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

static PyMethodDef UnitCipher_methods[] = {
    {"convert", (PyCFunction)(void (*)(void))UnitCipher_convert, METH_VARARGS | METH_KEYWORDS,
     "convert(src, dst, ivs, unit, encrypt): every unit of src into dst with its own IV"},
    {"start", (PyCFunction)(void (*)(void))UnitCipher_start, METH_VARARGS | METH_KEYWORDS,
     "start(src, dst, ivs, unit, encrypt) -> Job: convert on the worker thread"},
    {NULL}};

static PyMemberDef UnitCipher_members[] = {
    {"iv_len", T_INT, offsetof(UnitCipher, iv_len), READONLY, "IV bytes per unit"},
    {"iv_in_place", T_INT, offsetof(UnitCipher, iv_in_place), READONLY,
     "1 if units take their IV by the XTS shortcut (see the module source)"},
    {NULL}};

PyTypeObject dmf_UnitCipherType = {
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
