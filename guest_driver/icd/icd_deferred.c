/* Non-blocking transfers of application memory.  A read or write the application
 * asked not to block must not block: its wait list may hold a user event that the
 * application sets only after the call returns (waiting would never end).  So the
 * host runs it asynchronously on the staging copy, and the staging is kept here
 * until the command is known to be complete; a read's data reaches the
 * application's memory at that moment, before the application can tell the
 * command finished: when a wait, a finish, a blocking transfer on the queue, a
 * status query or an event callback shows it.  The host decides how: a staging it
 * reaches as one range, or a buffer transfer through a scatter list (one command
 * per piece, chained), runs asynchronously; a rectangle or image through a scatter
 * list needs the host's bounce buffer, which lives for one call, so the host blocks
 * on it (correct, but it would wait behind a user event set later). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ava_icd.h"
#include "ava_icd_gen.h"
#include "icd_compose.h"

struct deferred {
    struct deferred *next;
    cl_command_queue queue;
    cl_event event;            /* ours: created for it, or retained from the caller's */
    struct ava_stage stage;
};

static pthread_mutex_t deferred_lock = PTHREAD_MUTEX_INITIALIZER;   /* the list */
/* One settling at a time: a thread that finds the list empty must not return while
 * another thread is still copying what this one's caller is about to read. */
static pthread_mutex_t settle_lock = PTHREAD_MUTEX_INITIALIZER;
static struct deferred *pending;

/* The command is over with ``status`` (CL_COMPLETE or an error): the data is the
 * application's now, the staging and our event reference go. */
static void settle(struct deferred *p, cl_int status)
{
    ava_stage_finish(&p->stage, status == CL_COMPLETE);
    ava_clReleaseEvent(p->event);
    free(p);
}

void ava_deferred_add(cl_command_queue queue, cl_event event, int caller_has_event,
                      struct ava_stage *st)
{
    struct deferred *p = malloc(sizeof(*p));
    if (!p || (caller_has_event && ava_clRetainEvent(event) != CL_SUCCESS)) {
        /* Cannot keep it: the command is on its way, so wait for it here. */
        free(p);
        cl_int state = CL_COMPLETE;
        if (ava_fwd_clWaitForEvents(1, &event) != CL_SUCCESS)
            state = CL_OUT_OF_RESOURCES;
        ava_stage_finish(st, state == CL_COMPLETE);
        if (!caller_has_event)
            ava_clReleaseEvent(event);
        return;
    }
    p->queue = queue;
    p->event = event;
    p->stage = *st;
    memset(st, 0, sizeof(*st));        /* the exit path's ava_stage_finish does nothing */
    pthread_mutex_lock(&deferred_lock);
    p->next = pending;
    pending = p;
    pthread_mutex_unlock(&deferred_lock);
}

void ava_deferred_forget(const void *app)
{
    pthread_mutex_lock(&deferred_lock);
    for (struct deferred *p = pending; p; p = p->next)
        if (p->stage.app == app)
            p->stage.out = 0;           /* its memory goes: the data is not wanted */
    pthread_mutex_unlock(&deferred_lock);
}

static int in_list(cl_event event, const cl_event *events, cl_uint n)
{
    for (cl_uint i = 0; i < n; i++)
        if (events[i] == event)
            return 1;
    return 0;
}

/* Settle what is known to be over: the transfers of ``events`` (a wait returned),
 * those on ``queue`` (all of them after a finish, ``queue_done``; otherwise, after a
 * blocking transfer there, those the host reports complete: an out-of-order queue
 * may still run them), and with ``ask_others`` every other one the host reports
 * complete (a marker or a later event may have shown it).  The rest stay. */
static void settle_known(cl_command_queue queue, int queue_done, const cl_event *events,
                         cl_uint n, int ask_others)
{
    pthread_mutex_lock(&settle_lock);
    pthread_mutex_lock(&deferred_lock);
    struct deferred *mine = pending;
    pending = NULL;
    pthread_mutex_unlock(&deferred_lock);
    struct deferred *keep = NULL;
    for (struct deferred *p = mine, *next; p; p = next) {
        next = p->next;
        cl_int state = CL_QUEUED;
        int mine_queue = queue && p->queue == queue;
        if (in_list(p->event, events, n) || (mine_queue && queue_done))
            state = CL_COMPLETE;
        else if ((mine_queue || ask_others) &&
                 ava_fwd_clGetEventInfo(p->event, CL_EVENT_COMMAND_EXECUTION_STATUS,
                                        sizeof(state), &state, NULL) != CL_SUCCESS)
            state = CL_OUT_OF_RESOURCES;
        if (state <= CL_COMPLETE) {
            settle(p, state);
        } else {
            p->next = keep;
            keep = p;
        }
    }
    pthread_mutex_lock(&deferred_lock);
    while (keep) {
        struct deferred *next = keep->next;
        keep->next = pending;
        pending = keep;
        keep = next;
    }
    pthread_mutex_unlock(&deferred_lock);
    pthread_mutex_unlock(&settle_lock);
}

void ava_deferred_queue_observed(cl_command_queue queue)
{
    settle_known(queue, 0, NULL, 0, 0);
}

CL_API_ENTRY cl_int CL_API_CALL
ava_clWaitForEvents(cl_uint num_events, const cl_event *event_list)
{
    cl_int status = ava_fwd_clWaitForEvents(num_events, event_list);
    if (status == CL_SUCCESS)
        settle_known(NULL, 0, event_list, num_events, 1);
    else if (status == CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST)
        settle_known(NULL, 0, NULL, 0, 1);      /* some failed: the host says which */
    return status;
}

CL_API_ENTRY cl_int CL_API_CALL
ava_clFinish(cl_command_queue command_queue)
{
    cl_int status = ava_fwd_clFinish(command_queue);
    if (status == CL_SUCCESS)
        settle_known(command_queue, 1, NULL, 0, 0);
    return status;
}

CL_API_ENTRY cl_int CL_API_CALL
ava_clGetEventInfo(cl_event event, cl_event_info param_name, size_t param_value_size,
                   void *param_value, size_t *param_value_size_ret)
{
    cl_int status = ava_fwd_clGetEventInfo(event, param_name, param_value_size, param_value,
                                           param_value_size_ret);
    cl_int state;
    if (status == CL_SUCCESS && param_name == CL_EVENT_COMMAND_EXECUTION_STATUS &&
        param_value && param_value_size >= sizeof(state)) {
        memcpy(&state, param_value, sizeof(state));
        if (state == CL_COMPLETE)
            settle_known(NULL, 0, &event, 1, 1);
        else if (state < 0)
            settle_known(NULL, 0, NULL, 0, 1);  /* failed: the host says with what */
    }
    return status;
}
