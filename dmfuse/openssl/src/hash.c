/* BlockHasher: an OpenSSL digest applied block by block, salted as dm-verity salts. */
#include "openssl_ext.h"

#include <omp.h>
#include <openssl/err.h>
#include <structmember.h>

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
        dmf_openssl_error("no such digest");
    else if (self->start == NULL || !EVP_DigestInit_ex2(self->start, self->md, NULL) ||
             !EVP_DigestUpdate(self->start, prefix.buf, prefix.len))
        dmf_openssl_error("cannot start the digest");
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

/* The digests of blocks [lo, hi) into out; parallel: whether helpers may be used. */
static int hash_blocks(BlockHasher *self, const unsigned char *data, Py_ssize_t block,
                       Py_ssize_t lo, Py_ssize_t hi, unsigned char *out, int parallel) {
    const EVP_MD_CTX *start = self->start;
    const char *suffix = PyBytes_AS_STRING(self->suffix); /* immutable: no GIL needed */
    Py_ssize_t suffix_len = PyBytes_GET_SIZE(self->suffix);
    int size = self->size;
    int ok = 1;
    int team = parallel ? dmf_team_size((hi - lo) * block) : 1;
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
            own_done = dmf_now_ns();
        EVP_MD_CTX_free(h);
        if (!mine) {
#pragma omp atomic write
            ok = 0;
        }
    }
    dmf_note_wait(team, own_done);
    return ok;
}

/* Parses (data, block, lo, hi) and makes the digests' bytes object; NULL on error. */
static PyObject *parse_blocks(BlockHasher *self, PyObject *args, PyObject *kwds, Py_buffer *data,
                              Py_ssize_t *block, Py_ssize_t *lo, Py_ssize_t *hi) {
    static char *kwlist[] = {"data", "block", "lo", "hi", NULL};
    if (self->suffix == NULL) {
        PyErr_SetString(PyExc_TypeError, "BlockHasher is not initialised");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*nnn", kwlist, data, block, lo, hi))
        return NULL;
    if (*block <= 0 || *lo < 0 || *hi < *lo || *hi > data->len / *block) {
        PyErr_Format(PyExc_ValueError, "blocks [%zd, %zd) of %zd bytes are not in the data",
                     *lo, *hi, *block);
    } else {
        PyObject *out = PyBytes_FromStringAndSize(NULL, (*hi - *lo) * self->size);
        if (out != NULL)
            return out;
    }
    PyBuffer_Release(data);
    return NULL;
}

static PyObject *BlockHasher_digests(BlockHasher *self, PyObject *args, PyObject *kwds) {
    Py_buffer data;
    Py_ssize_t block, lo, hi;
    PyObject *out = parse_blocks(self, args, kwds, &data, &block, &lo, &hi);
    if (out == NULL)
        return NULL;
    unsigned char *digests = (unsigned char *)PyBytes_AS_STRING(out);
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = hash_blocks(self, data.buf, block, lo, hi, digests, 1);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (!ok) {
        Py_DECREF(out);
        return dmf_openssl_error("hashing failed");
    }
    return out;
}

static int run_hash_job(Job *job) {
    return hash_blocks((BlockHasher *)job->owner, job->u.hash.data.buf, job->u.hash.block,
                       job->u.hash.lo, job->u.hash.hi,
                       (unsigned char *)PyBytes_AS_STRING(job->result), 0);
}

static void release_hash_job(Job *job) {
    PyBuffer_Release(&job->u.hash.data);
}

static PyObject *BlockHasher_start(BlockHasher *self, PyObject *args, PyObject *kwds) {
    Py_buffer data;
    Py_ssize_t block, lo, hi;
    PyObject *out = parse_blocks(self, args, kwds, &data, &block, &lo, &hi);
    if (out == NULL)
        return NULL;
    Job *job = dmf_job_new((PyObject *)self);
    if (job == NULL) {
        Py_DECREF(out);
        PyBuffer_Release(&data);
        return NULL;
    }
    job->result = out; /* filled in by the worker; nobody else sees it before finish() */
    job->u.hash.data = data;
    job->u.hash.block = block;
    job->u.hash.lo = lo;
    job->u.hash.hi = hi;
    job->run = run_hash_job;
    job->release = release_hash_job;
    return dmf_job_submit(job);
}

static PyMethodDef BlockHasher_methods[] = {
    {"digests", (PyCFunction)(void (*)(void))BlockHasher_digests, METH_VARARGS | METH_KEYWORDS,
     "digests(data, block, lo, hi): the salted digests of blocks [lo, hi), back to back"},
    {"start", (PyCFunction)(void (*)(void))BlockHasher_start, METH_VARARGS | METH_KEYWORDS,
     "start(data, block, lo, hi) -> Job: digests() on the worker thread; finish() returns them"},
    {NULL}};

static PyMemberDef BlockHasher_members[] = {
    {"digest_size", T_INT, offsetof(BlockHasher, size), READONLY, "bytes per digest"},
    {NULL}};

PyTypeObject dmf_BlockHasherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dmfuse.openssl.loops.BlockHasher",
    .tp_basicsize = sizeof(BlockHasher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BlockHasher(name, prefix, suffix): an OpenSSL digest applied block by block",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)BlockHasher_init,
    .tp_dealloc = (destructor)BlockHasher_dealloc,
    .tp_methods = BlockHasher_methods,
    .tp_members = BlockHasher_members,
};
