/* Job: work on a worker thread (UnitCipher.start*, BlockHasher.start).
 *
 * Worker threads, started on first use, take jobs in order and run each on their own thread
 * alone (no OpenMP helpers: the caller's thread keeps its core).  There is one worker per core
 * but one, which is left to the caller's thread (trio, serving FUSE): on the 2-core machine a
 * second worker (even at a lower priority) made crypt at queue depth 16 no faster (reads:
 * medians 0.75-0.76x of linear against 0.80x with one, six interleaved runs each), the workers
 * taking turns on the core the trio thread needs.  When a job is done, it says so (done) and
 * the eventfd shared by all jobs (fd) becomes readable; the caller waits for that in its event
 * loop, so it can serve other requests meanwhile, then calls finish().  The worker never
 * touches Python objects: the job holds its buffers and owner until it is finished or
 * deallocated, and a job is never freed while the worker may still use it (dealloc waits for
 * "done").
 */
#include "openssl_ext.h"

#include <errno.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdint.h>
#include <structmember.h>
#include <sys/eventfd.h>
#include <unistd.h>

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_changed = PTHREAD_COND_INITIALIZER;
static Job *queue_head, *queue_tail;
static int workers_started;
#define MAX_WORKERS 8
/* One eventfd for all jobs, made at the first submit and kept: the worker adds 1 to it when a
 * job is done.  One fd lets the event loop wait for every job with one registration, instead
 * of an eventfd, an epoll registration and a close per job (trio's share of a 1 MiB crypt
 * write at queue depth 16 was ~8% of the trio thread). */
static int completions = -1;

static void *worker_main(void *unused) {
    (void)unused;
    for (;;) {
        pthread_mutex_lock(&queue_lock);
        while (queue_head == NULL)
            pthread_cond_wait(&queue_changed, &queue_lock);
        Job *job = queue_head;
        queue_head = job->next;
        if (queue_head == NULL)
            queue_tail = NULL;
        pthread_mutex_unlock(&queue_lock);

        int ok = job->run(job);
        ERR_clear_error(); /* this thread's queue: finish() reports a generic failure */
        pthread_mutex_lock(&queue_lock);
        job->ok = ok;
        __atomic_store_n(&job->done, 1, __ATOMIC_RELEASE);
        uint64_t one = 1;
        ssize_t written = write(completions, &one, sizeof one); /* eventfd: cannot fail here */
        (void)written;
        pthread_cond_broadcast(&queue_changed);
        pthread_mutex_unlock(&queue_lock);
    }
    return NULL;
}

/* A job holding a reference to owner; the caller fills in the rest, then submits it. */
Job *dmf_job_new(PyObject *owner) {
    Job *job = PyObject_New(Job, &dmf_JobType);
    if (job == NULL)
        return NULL;
    job->owner = Py_NewRef(owner);
    job->result = NULL;
    job->run = NULL;
    job->release = NULL;
    job->fd = -1;
    job->queued = job->done = job->ok = job->error = 0;
    job->next = NULL;
    return job;
}

static void release_job(Job *job) {
    if (job->owner == NULL)
        return;
    if (job->release != NULL)
        job->release(job);
    Py_CLEAR(job->owner);
    job->fd = -1; /* the shared eventfd stays open */
}

/* Blocks (without the GIL) until the worker thread is done with a queued job. */
static void wait_job(Job *job) {
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&queue_lock);
    while (job->queued && !job->done)
        pthread_cond_wait(&queue_changed, &queue_lock);
    pthread_mutex_unlock(&queue_lock);
    Py_END_ALLOW_THREADS
}

/* Queues a filled-in job (stealing the reference); returns it, or NULL with an exception
 * (the job is then released). */
PyObject *dmf_job_submit(Job *job) {
    int failed = 0;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int workers = cores < 2 ? 1 : cores - 1 > MAX_WORKERS ? MAX_WORKERS : (int)cores - 1;
    pthread_mutex_lock(&queue_lock);
    if (completions < 0 && (completions = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
        failed = errno;
    job->fd = completions;
    while (!failed && workers_started < workers) {
        pthread_t thread;
        int err = pthread_create(&thread, NULL, worker_main, NULL);
        if (err) {
            if (!workers_started)
                failed = err; /* with at least one worker, jobs still get done */
            break;
        }
        pthread_detach(thread);
        workers_started++;
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

static void Job_dealloc(Job *job) {
    wait_job(job); /* never free what the worker thread may still read or write */
    release_job(job);
    Py_CLEAR(job->result);
    Py_TYPE(job)->tp_free((PyObject *)job);
}

static PyObject *Job_finish(Job *job, PyObject *unused) {
    (void)unused;
    if (job->owner == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "job already finished");
        return NULL;
    }
    wait_job(job); /* normally done already: the caller waited for fd */
    int ok = job->ok, error = job->error;
    release_job(job);
    PyObject *result = job->result;
    job->result = NULL;
    if (error) {
        Py_XDECREF(result);
        return dmf_io_error(error);
    }
    if (!ok) {
        Py_XDECREF(result);
        PyErr_SetString(dmf_OpenSSLError, "the job failed in OpenSSL");
        return NULL;
    }
    return result != NULL ? result : Py_NewRef(Py_None);
}

static PyMethodDef Job_methods[] = {
    {"finish", (PyCFunction)Job_finish, METH_NOARGS,
     "finish(): wait for the job if needed, release its buffers, return its result"},
    {NULL}};

static PyMemberDef Job_members[] = {
    {"fd", T_INT, offsetof(Job, fd), READONLY,
     "the eventfd shared by all jobs: readable when a job is done (then look at done)"},
    {NULL}};

static PyObject *Job_get_done(Job *job, void *unused) {
    (void)unused;
    return PyBool_FromLong(__atomic_load_n(&job->done, __ATOMIC_ACQUIRE));
}

static PyGetSetDef Job_getset[] = {
    {"done", (getter)Job_get_done, NULL, "whether the worker thread is done with the job", NULL},
    {NULL}};

PyTypeObject dmf_JobType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dmfuse.openssl.loops.Job",
    .tp_basicsize = sizeof(Job),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Work running on the worker thread (UnitCipher.start, BlockHasher.start)",
    .tp_dealloc = (destructor)Job_dealloc,
    .tp_methods = Job_methods,
    .tp_members = Job_members,
    .tp_getset = Job_getset,
};
