/* Callbacks never cross the device.  A runtime thread delivers them: build
 * notifications once the host's call returned, event callbacks once polling the
 * event's status shows it reached the registered state.  Destructor callbacks run
 * when the guest's last reference goes (memory objects: icd_mem.c; contexts here). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ava_icd.h"
#include "ava_icd_gen.h"
#include "icd_compose.h"

/* ---- callbacks: the runtime thread -------------------------------------------------- */

struct watch {                 /* an event callback waiting for its state */
    struct watch *next;
    cl_event event;            /* we hold a reference until the callback ran */
    cl_int want;
    void (CL_CALLBACK *fn)(cl_event, cl_int, void *);
    void *data;
};

struct ready {                 /* a program notification due now */
    struct ready *next;
    cl_program program;        /* referenced until the callback ran */
    void (CL_CALLBACK *fn)(cl_program, void *);
    void *data;
};

static pthread_mutex_t cb_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cb_wake = PTHREAD_COND_INITIALIZER;
static struct watch *watches;
static struct ready *ready_head, **ready_tail = &ready_head;
static int cb_thread_running;

#define NAP_MIN_US 20
#define NAP_MAX_US 2000

static void run_ready(struct ready *r)
{
    for (struct ready *next; r; r = next) {
        next = r->next;
        r->fn(r->program, r->data);
        ava_clReleaseProgram(r->program);
        free(r);
    }
}

/* Poll every watched event once; fire the callbacks whose state was reached.
 * Returns the watches still waiting; *fired says whether any ran. */
static struct watch *poll_watches(struct watch *w, int *fired)
{
    struct watch *keep = NULL;
    for (struct watch *next; w; w = next) {
        next = w->next;
        cl_int state = CL_QUEUED;
        cl_int status = ava_clGetEventInfo(w->event, CL_EVENT_COMMAND_EXECUTION_STATUS,
                                           sizeof(state), &state, NULL);
        if (status != CL_SUCCESS)
            state = status;                     /* cannot know more: report the error */
        if (state > w->want) {
            w->next = keep;
            keep = w;
            continue;
        }
        w->fn(w->event, state < 0 ? state : w->want, w->data);
        ava_clReleaseEvent(w->event);
        free(w);
        *fired = 1;
    }
    return keep;
}

static void *callback_thread(void *arg)
{
    (void)arg;
    unsigned nap_us = NAP_MIN_US;
    pthread_mutex_lock(&cb_lock);
    for (;;) {
        while (!watches && !ready_head) {
            nap_us = NAP_MIN_US;
            pthread_cond_wait(&cb_wake, &cb_lock);
        }
        struct ready *r = ready_head;
        ready_head = NULL;
        ready_tail = &ready_head;
        struct watch *w = watches;
        watches = NULL;
        pthread_mutex_unlock(&cb_lock);

        int fired = 0;
        run_ready(r);
        w = poll_watches(w, &fired);

        pthread_mutex_lock(&cb_lock);
        while (w) {                              /* back with any registered meanwhile */
            struct watch *next = w->next;
            w->next = watches;
            watches = w;
            w = next;
        }
        if (watches && !ready_head) {
            nap_us = fired || r ? NAP_MIN_US : (nap_us * 2 > NAP_MAX_US ? NAP_MAX_US : nap_us * 2);
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += (long)nap_us * 1000;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&cb_wake, &cb_lock, &until);
        }
    }
    return NULL;
}

/* With cb_lock held: make sure the thread runs, and wake it. */
static int wake_callback_thread(void)
{
    if (!cb_thread_running) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, callback_thread, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            return -rc;
        cb_thread_running = 1;
    }
    pthread_cond_signal(&cb_wake);
    return 0;
}

CL_API_ENTRY cl_int CL_API_CALL
ava_clSetEventCallback(cl_event event, cl_int command_exec_callback_type,
                       void (CL_CALLBACK *pfn_notify)(cl_event, cl_int, void *), void *user_data)
{
    if (!ava_obj_is(event, AVA_OBJ_EVENT))
        return CL_INVALID_EVENT;
    if (!pfn_notify || (command_exec_callback_type != CL_COMPLETE &&
                        command_exec_callback_type != CL_SUBMITTED &&
                        command_exec_callback_type != CL_RUNNING))
        return CL_INVALID_VALUE;
    struct watch *w = malloc(sizeof(*w));
    if (!w)
        return CL_OUT_OF_HOST_MEMORY;
    cl_int status = ava_clRetainEvent(event);
    if (status != CL_SUCCESS) {
        free(w);
        return status;
    }
    w->event = event;
    w->want = command_exec_callback_type;
    w->fn = pfn_notify;
    w->data = user_data;
    pthread_mutex_lock(&cb_lock);
    int rc = wake_callback_thread();
    if (rc == 0) {
        w->next = watches;
        watches = w;
    }
    pthread_mutex_unlock(&cb_lock);
    if (rc != 0) {
        ava_clReleaseEvent(event);
        free(w);
        return CL_OUT_OF_HOST_MEMORY;
    }
    return CL_SUCCESS;
}

/* A build, compile or link finished (well or not): its notification is due. */
void ava_notify_program(cl_program program, void (CL_CALLBACK *fn)(cl_program, void *),
                        void *data)
{
    struct ready *r = malloc(sizeof(*r));
    if (!r || ava_clRetainProgram(program) != CL_SUCCESS) {
        free(r);
        return;
    }
    r->next = NULL;
    r->program = program;
    r->fn = fn;
    r->data = data;
    pthread_mutex_lock(&cb_lock);
    if (wake_callback_thread() == 0) {
        *ready_tail = r;
        ready_tail = &r->next;
        r = NULL;
    }
    pthread_mutex_unlock(&cb_lock);
    if (r) {                                     /* no thread: deliver it here */
        run_ready(r);
    }
}

/* Contexts keep only their destructor callbacks (made on first registration). */
static pthread_mutex_t context_lock = PTHREAD_MUTEX_INITIALIZER;

struct context_ext {
    struct context_notify {
        struct context_notify *next;
        void (CL_CALLBACK *fn)(cl_context, void *);
        void *data;
    } *notify;                 /* newest first */
};

CL_API_ENTRY cl_int CL_API_CALL
ava_clSetContextDestructorCallback(cl_context context,
                                   void (CL_CALLBACK *pfn_notify)(cl_context, void *),
                                   void *user_data)
{
    if (!ava_obj_is(context, AVA_OBJ_CONTEXT))
        return CL_INVALID_CONTEXT;
    if (!pfn_notify)
        return CL_INVALID_VALUE;
    struct context_notify *n = malloc(sizeof(*n));
    if (!n)
        return CL_OUT_OF_HOST_MEMORY;
    n->fn = pfn_notify;
    n->data = user_data;
    pthread_mutex_lock(&context_lock);
    struct context_ext *x = ava_obj_ext(context, AVA_OBJ_CONTEXT);
    if (!x && (x = calloc(1, sizeof(*x))))
        ava_obj_set_ext(context, x);
    if (x) {
        n->next = x->notify;
        x->notify = n;
    }
    pthread_mutex_unlock(&context_lock);
    if (!x) {
        free(n);
        return CL_OUT_OF_HOST_MEMORY;
    }
    return CL_SUCCESS;
}

void ava_context_final(cl_context context, void *ext)
{
    struct context_ext *x = ext;
    for (struct context_notify *n = x->notify, *next; n; n = next) {
        next = n->next;
        n->fn(context, n->data);
        free(n);
    }
    free(x);
}
