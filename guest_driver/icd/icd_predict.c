/* Predicted calls: clSetKernelArg and kernel launches posted without waiting, where
 * the guest knows the status native OpenCL would return.
 *
 * The guest does not reimplement the implementation's checks (which differ between
 * implementations, and the status must be the implementation's own).  It learns
 * instead: a call is posted only when an identical one already succeeded through a
 * round trip.  "Identical" is what the status can depend on:
 *   - a kernel argument: the kernel, the index, the size, how the value travels
 *     (bytes, NULL, a memory object, a sampler), whether pointer-sized bytes are all
 *     zero (a NULL buffer), and for a memory object its flags, size, context, parent
 *     and origin (a sub-buffer), its type and, for an image, the image itself;
 *   - a launch: the kernel, the queue, the work sizes (offset and local size given or
 *     not), and the class of every argument set since, as above.  A wait list is
 *     asked of the host (its events' states and contexts are the host's to know).
 * Everything else takes the round trip and gets the host's status, error cases
 * included; a failed clSetKernelArg leaves the argument's class unknown until it is
 * set again.  A posted call the host answers differently is a misprediction: the
 * host logs it and counts it (vdev's stats), and it is a bug here.
 *
 * A kernel argument set again to exactly the value it holds (the same object by id,
 * or the same bytes), whose last set succeeded, is not sent at all: the host's
 * argument would not change, and the status is that of the identical call that
 * posting already relies on.  Programs set every argument before every launch
 * (pyopencl does), and each set the host runs costs it about 8 us.  A failed or
 * unknown set forgets the value, and AVA_ICD_SYNC=1 sends every call.
 *
 * State lives with the kernel object (its ext), under one lock: the calls it guards
 * take about a microsecond less than the round trip they replace. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ava_icd.h"

#define TRACKED_ARGS 32       /* arguments past this index are never predicted */
#define KNOWN_CLASSES 2       /* per argument: the classes that succeeded last */
#define KNOWN_LAUNCHES 4      /* per kernel */
#define CLASS_UNSET 0         /* w[0]: never set through this guest (a clone's state) */
#define CLASS_SET 1           /* w[0] bit: set; the tag is w[0] >> 8 */
#define CLASS_UNKNOWN 2       /* w[0] bit: a failed set; w[1] counts them */

struct known_launch {
    int valid;
    uint32_t nargs;
    uint64_t untracked;       /* the kernel's count of sets past TRACKED_ARGS */
    struct ava_launch_shape shape;
    struct ava_arg_class args[TRACKED_ARGS];
};

struct kernel_ext {
    uint32_t nargs;                         /* highest index set, plus one */
    uint64_t untracked, failures;
    struct ava_arg_class cur[TRACKED_ARGS];  /* each argument's class now */
    struct ava_arg_class ok[TRACKED_ARGS][KNOWN_CLASSES];
    unsigned ok_next[TRACKED_ARGS];
    /* Each argument's value since its last successful set (valid: known). */
    struct ava_arg_value value[TRACKED_ARGS];
    uint8_t value_valid[TRACKED_ARGS];
    struct known_launch launches[KNOWN_LAUNCHES];
    unsigned launch_next;
};

static pthread_mutex_t predict_lock = PTHREAD_MUTEX_INITIALIZER;

/* The kernel's state, made on first use; NULL for anything but a live kernel of
 * ours (or without memory: the call then simply takes the round trip). */
static struct kernel_ext *kernel_state(cl_kernel kernel)
{
    struct kernel_ext *x = ava_obj_ext(kernel, AVA_OBJ_KERNEL);
    if (x || !ava_obj_is(kernel, AVA_OBJ_KERNEL))
        return x;
    x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    ava_obj_set_ext(kernel, x);
    return x;
}

void ava_kernel_final(void *ext)
{
    free(ext);
}

static int same_class(const struct ava_arg_class *a, const struct ava_arg_class *b)
{
    return memcmp(a, b, sizeof(*a)) == 0;
}

/* 0 and the class of an argument value; -1 when the guest cannot tell (an object
 * it does not know the properties of). */
static int arg_class(size_t size, const void *value, struct ava_arg_class *c)
{
    memset(c, 0, sizeof(*c));
    const void *obj;
    int tag = ava_kernel_arg_tag(size, value, &obj);
    int zero = 0;
    if (tag == AVA_KARG_BYTES && size == sizeof(void *)) {
        static const char zeros[sizeof(void *)];
        zero = memcmp(value, zeros, sizeof(void *)) == 0;
    }
    c->w[0] = CLASS_SET | (uint64_t)tag << 8 | (uint64_t)zero << 16;
    c->w[1] = size;
    if (tag == AVA_KARG_MEM)
        return ava_mem_arg_class(obj, &c->w[2]);
    if (tag == AVA_KARG_SAMPLER)
        c->w[2] = ava_obj_id(obj);
    return 0;
}

/* 1 and the exact value of an argument (``ava_enc_kernel_arg``'s, without the
 * encoding); 0 for bytes too long to keep. */
static int arg_value(size_t size, const void *value, struct ava_arg_value *v)
{
    memset(v, 0, sizeof(*v));
    const void *obj;
    v->tag = (uint64_t)ava_kernel_arg_tag(size, value, &obj);
    v->size = size;
    if (v->tag == AVA_KARG_MEM || v->tag == AVA_KARG_SAMPLER)
        v->id = ava_obj_id(obj);
    else if (v->tag == AVA_KARG_BYTES) {
        if (size > AVA_ARG_VALUE_BYTES)
            return 0;
        memcpy(v->bytes, value, size);
    }
    return 1;
}

int ava_predict_clSetKernelArg(struct ava_prediction *p, cl_kernel kernel, cl_uint arg_index,
                               size_t arg_size, const void *arg_value_)
{
    memset(p, 0, sizeof(*p));
    if (arg_class(arg_size, arg_value_, &p->cls) != 0) {
        p->cls.w[0] = CLASS_UNKNOWN;        /* still learnt from: it changes the state */
    }
    p->has_value = arg_value(arg_size, arg_value_, &p->value);
    int hit = 0;
    pthread_mutex_lock(&predict_lock);
    struct kernel_ext *x = kernel_state(kernel);
    if (x) {
        p->kernel = kernel;
        p->index = arg_index;
        if (arg_index < TRACKED_ARGS && !(p->cls.w[0] & CLASS_UNKNOWN)) {
            for (int i = 0; i < KNOWN_CLASSES; i++)
                hit |= same_class(&x->ok[arg_index][i], &p->cls);
            if (hit && p->has_value && x->value_valid[arg_index] &&
                memcmp(&x->value[arg_index], &p->value, sizeof(p->value)) == 0)
                hit = AVA_IN_PLACE;
        }
    }
    pthread_mutex_unlock(&predict_lock);
    return hit;
}

/* 0 and the shape of a launch that may be predicted; -1 if it is asked of the host. */
static int launch_shape(struct ava_launch_shape *s, cl_command_queue queue, cl_uint dim,
                        const size_t *offset, const size_t *global, const size_t *local,
                        cl_uint num_events, const cl_event *wait_list)
{
    memset(s, 0, sizeof(*s));
    if (num_events || wait_list || !ava_obj_is(queue, AVA_OBJ_COMMAND_QUEUE))
        return -1;
    if (dim > 3 || (dim && !global))
        return -1;
    s->queue = ava_obj_id(queue);
    s->dim = dim;
    s->has_offset = offset != NULL;
    s->has_local = local != NULL;
    for (cl_uint i = 0; i < dim; i++) {
        s->global[i] = global[i];
        s->offset[i] = offset ? offset[i] : 0;
        s->local[i] = local ? local[i] : 0;
    }
    return 0;
}

static int predict_launch(struct ava_prediction *p, cl_kernel kernel)
{
    p->launch = 1;
    int hit = 0;
    pthread_mutex_lock(&predict_lock);
    struct kernel_ext *x = kernel_state(kernel);
    if (x) {
        p->kernel = kernel;
        for (int i = 0; i < KNOWN_LAUNCHES && !hit; i++) {
            const struct known_launch *k = &x->launches[i];
            hit = k->valid && k->nargs == x->nargs && k->untracked == x->untracked &&
                  memcmp(&k->shape, &p->shape, sizeof(p->shape)) == 0 &&
                  memcmp(k->args, x->cur, x->nargs * sizeof(x->cur[0])) == 0;
        }
    }
    pthread_mutex_unlock(&predict_lock);
    return hit;
}

int ava_predict_clEnqueueNDRangeKernel(struct ava_prediction *p, cl_command_queue queue,
                                       cl_kernel kernel, cl_uint work_dim,
                                       const size_t *global_work_offset,
                                       const size_t *global_work_size,
                                       const size_t *local_work_size, cl_uint num_events,
                                       const cl_event *wait_list, cl_event *event)
{
    (void)event;                /* a posted launch's event is ours already (its id) */
    memset(p, 0, sizeof(*p));
    if (work_dim == 0 || launch_shape(&p->shape, queue, work_dim, global_work_offset,
                                      global_work_size, local_work_size, num_events,
                                      wait_list) != 0)
        return 0;
    return predict_launch(p, kernel);
}

int ava_predict_clEnqueueTask(struct ava_prediction *p, cl_command_queue queue,
                              cl_kernel kernel, cl_uint num_events, const cl_event *wait_list,
                              cl_event *event)
{
    (void)event;
    memset(p, 0, sizeof(*p));
    if (launch_shape(&p->shape, queue, 0, NULL, NULL, NULL, num_events, wait_list) != 0)
        return 0;
    p->shape.dim = UINT64_MAX;            /* a task, never an NDRange's shape */
    return predict_launch(p, kernel);
}

static void learn_arg(struct kernel_ext *x, const struct ava_prediction *p, int64_t status,
                      int posted)
{
    if (p->index >= TRACKED_ARGS) {
        x->untracked++;                   /* launches learnt before no longer match */
        return;
    }
    struct ava_arg_class *cur = &x->cur[p->index];
    if (status != CL_SUCCESS || (p->cls.w[0] & CLASS_UNKNOWN)) {
        /* The argument's state is not known now (a failure may or may not have
         * changed it): no launch learnt before matches until it is set again. */
        memset(cur, 0, sizeof(*cur));
        cur->w[0] = CLASS_UNKNOWN;
        cur->w[1] = ++x->failures;
        x->value_valid[p->index] = 0;
    } else {
        *cur = p->cls;
        x->value_valid[p->index] = (uint8_t)p->has_value;
        if (p->has_value)
            x->value[p->index] = p->value;
        if (!posted) {
            int known = 0;
            for (int i = 0; i < KNOWN_CLASSES; i++)
                known |= same_class(&x->ok[p->index][i], &p->cls);
            if (!known) {
                x->ok[p->index][x->ok_next[p->index]] = p->cls;
                x->ok_next[p->index] = (x->ok_next[p->index] + 1) % KNOWN_CLASSES;
            }
        }
    }
    if (p->index + 1 > x->nargs)
        x->nargs = p->index + 1;
}

static void learn_launch(struct kernel_ext *x, const struct ava_prediction *p)
{
    struct known_launch *k = &x->launches[x->launch_next];
    x->launch_next = (x->launch_next + 1) % KNOWN_LAUNCHES;
    k->valid = 1;
    k->nargs = x->nargs;
    k->untracked = x->untracked;
    k->shape = p->shape;
    memcpy(k->args, x->cur, x->nargs * sizeof(x->cur[0]));
}

static void learn_payload(const struct ava_prediction *p);

void ava_predict_done(struct ava_prediction *p, int64_t status, int posted)
{
    if (p->key_len) {
        if (status == CL_SUCCESS && !posted) {
            pthread_mutex_lock(&predict_lock);
            learn_payload(p);
            pthread_mutex_unlock(&predict_lock);
        }
        return;
    }
    if (!p->kernel)
        return;
    pthread_mutex_lock(&predict_lock);
    struct kernel_ext *x = ava_obj_ext(p->kernel, AVA_OBJ_KERNEL);
    if (x && !p->launch)
        learn_arg(x, p, status, posted);
    else if (x && status == CL_SUCCESS && !posted)
        learn_launch(x, p);
    pthread_mutex_unlock(&predict_lock);
}

/* Payload-learned calls: a direct-mapped table of keys (opcode, then the encoded
 * arguments with the new event's id replaced by whether there is one), compared
 * whole, so a collision only forgets, never matches wrongly. */
#define KNOWN_PAYLOADS 256

static struct {
    size_t len;
    uint8_t key[AVA_PREDICT_KEY_MAX];
} known_payloads[KNOWN_PAYLOADS];

static size_t payload_slot(const uint8_t *key, size_t len)
{
    uint64_t h = 1469598103934665603ull;          /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ key[i]) * 1099511628211ull;
    return (size_t)(h % KNOWN_PAYLOADS);
}

int ava_predict_payload(struct ava_prediction *p, uint16_t opcode, const struct ava_enc *e,
                        int has_wait, int has_event)
{
    p->kernel = NULL;
    p->key_len = 0;
    size_t n = 2 + e->len;
    if (has_wait || e->oom || n > AVA_PREDICT_KEY_MAX || (has_event && e->len < 8))
        return 0;
    memcpy(p->key, &opcode, 2);
    memcpy(p->key + 2, e->buf, e->len);
    if (has_event) {                       /* the event's id is last: a fresh one */
        uint64_t one = 1;
        memcpy(p->key + n - 8, &one, 8);
    }
    p->key_len = n;
    size_t slot = payload_slot(p->key, n);
    pthread_mutex_lock(&predict_lock);
    int hit = known_payloads[slot].len == n && memcmp(known_payloads[slot].key, p->key, n) == 0;
    pthread_mutex_unlock(&predict_lock);
    return hit;
}

static void learn_payload(const struct ava_prediction *p)
{
    size_t slot = payload_slot(p->key, p->key_len);
    known_payloads[slot].len = p->key_len;
    memcpy(known_payloads[slot].key, p->key, p->key_len);
}
