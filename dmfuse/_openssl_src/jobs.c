/* ConvertJob: a UnitCipher conversion on the converter thread (UnitCipher.start). */
#include "openssl_ext.h"

#include <errno.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdint.h>
#include <structmember.h>
#include <sys/eventfd.h>
#include <unistd.h>

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

        int ok = dmf_run_request(job->cipher, &job->request, 0);
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
    dmf_release_request(&job->request);
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
        PyErr_SetString(dmf_OpenSSLError, "conversion failed");
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

PyTypeObject dmf_ConvertJobType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dmfuse._openssl.ConvertJob",
    .tp_basicsize = sizeof(ConvertJob),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A conversion running on the converter thread (UnitCipher.start)",
    .tp_dealloc = (destructor)ConvertJob_dealloc,
    .tp_methods = ConvertJob_methods,
    .tp_members = ConvertJob_members,
};

PyObject *dmf_unit_cipher_start(UnitCipher *self, PyObject *args, PyObject *kwds) {
    Request r;
    if (dmf_parse_request(self, args, kwds, &r) < 0)
        return NULL;
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    ConvertJob *job = fd < 0 ? NULL : PyObject_New(ConvertJob, &dmf_ConvertJobType);
    if (job == NULL) {
        if (fd < 0)
            PyErr_SetFromErrno(PyExc_OSError);
        else
            close(fd);
        dmf_release_request(&r);
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
