/* The lane: plain info queries run from the ring in C, before the Python path.
 *
 * A forwarded info query (a context's reference count, an event's status, a kernel's
 * work-group size) costs the host about 7 us in Python: the ring engine's bookkeeping,
 * the payload's and reply's DMA checks, the handle lookup, the call's accounting, the
 * reply's encoding.  The C call itself is under 0.7 us.  Here the same steps run in C
 * for the commands that need nothing else, and everything else returns to Python at
 * the first command the lane does not take: the lane answers only what Python's fast
 * path (host_backend/_fastpath.py, InfoQuery) would answer, byte for byte, and leaves
 * every error and every rare case to the one implementation that has them.
 *
 * What the lane reads is described from Python, from the same sources the Python
 * path uses: each query's shape (InfoQuery's, from the spec), the ring layout
 * (protocols/device_abi.py), the DMA ranges the queue may reach (the DMA map inside
 * the queue's windows), and a mirror of the handle table that HandleTable's mutators
 * keep.  Everything the guest wrote is copied before it is checked. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LANE_MAX_WORDS 6           /* the longest plain info query's arguments */
#define LANE_OUT_MAX 4096          /* longer answers are Python's */
#define LANE_MAX_HANDLES 4
#define LANE_MAX_SCALARS 4
#define LANE_MAX_EXCLUDED 64
#define LANE_MAX_HOOKED 4
#define LANE_MAX_FILLED 8
#define LANE_BUCKETS 65536u
#define HOST_ID_BASE (1ull << 63)
#define NULL_LEN UINT64_MAX

typedef int32_t (*lane_call6)(uint64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);

struct lane_fn {
    void *cfunc;
    uint32_t nwords, param_at, size_at, out_at, size_ret_at;
    uint32_t nhandles, nscalars, nexcluded, nhooked, nfilled;
    uint32_t handle_at[LANE_MAX_HANDLES], handle_type[LANE_MAX_HANDLES];
    uint32_t scalar_at[LANE_MAX_SCALARS];
    uint64_t scalar_limit[LANE_MAX_SCALARS];
    uint64_t excluded[LANE_MAX_EXCLUDED];
    uint64_t hooked[LANE_MAX_HOOKED];
    int32_t filled_on[LANE_MAX_FILLED];
};

struct lane_interval {
    uint64_t start, end;           /* guest addresses [start, end) */
    uint8_t *host;                 /* where start is mapped here */
    uint32_t readable, writable;
};

struct lane_ring {
    uint8_t *ring;                 /* the ring's memory (header, commands, completions) */
    uint64_t slots, owner, owner_tag;
    uint32_t queue, nintervals;
    struct lane_interval *intervals;
    uint8_t *status_cell;          /* command_since u64, queue u32, opcode u32; or NULL */
    uint32_t stop;                 /* set when the queue is disabled: the lane returns */
    uint32_t pad;
};

struct lane_layout {
    uint32_t tail_at, head_at, armed_at, header_size, command_size, completion_size;
};

struct lane_entry {
    struct lane_entry *next;
    uint64_t handle, tag, owner;
    void *ptr;
    uint32_t type, shared;
};

struct lane {
    pthread_mutex_t lock;          /* the mirror's; never held across an OpenCL call */
    struct lane_entry *buckets[LANE_BUCKETS];
    const struct lane_fn *fns[65536];
    struct lane_layout layout;
    int64_t inflight;              /* calls between a lookup and the call's return */
    uint64_t entries;
};

struct lane *lane_new(const struct lane_layout *layout)
{
    struct lane *L = calloc(1, sizeof(*L));
    if (!L)
        return NULL;
    pthread_mutex_init(&L->lock, NULL);
    L->layout = *layout;
    return L;
}

static void lane_clear(struct lane *L)
{
    pthread_mutex_lock(&L->lock);
    for (uint32_t b = 0; b < LANE_BUCKETS; b++) {
        struct lane_entry *e = L->buckets[b];
        while (e) {
            struct lane_entry *next = e->next;
            free(e);
            e = next;
        }
        L->buckets[b] = NULL;
    }
    L->entries = 0;
    pthread_mutex_unlock(&L->lock);
}

void lane_free(struct lane *L)
{
    if (!L)
        return;
    lane_clear(L);
    pthread_mutex_destroy(&L->lock);
    free(L);
}

void lane_set_fn(struct lane *L, uint32_t opcode, const struct lane_fn *fn)
{
    if (opcode < 65536 && (!fn || (fn->nwords <= LANE_MAX_WORDS && fn->nhandles <= LANE_MAX_HANDLES &&
                                   fn->nscalars <= LANE_MAX_SCALARS && fn->nexcluded <= LANE_MAX_EXCLUDED &&
                                   fn->nhooked <= LANE_MAX_HOOKED && fn->nfilled <= LANE_MAX_FILLED)))
        L->fns[opcode] = fn;
}

int64_t lane_inflight(struct lane *L)
{
    return __atomic_load_n(&L->inflight, __ATOMIC_ACQUIRE);
}

uint64_t lane_entries(struct lane *L)
{
    return L->entries;
}

static uint32_t bucket_of(uint64_t handle, uint64_t tag)
{
    uint64_t h = (handle ^ (tag * 0x9E3779B97F4A7C15ull)) * 0xBF58476D1CE4E5B9ull;
    return (uint32_t)(h >> 48) & (LANE_BUCKETS - 1);
}

/* The table's key for an id, as HandleTable.key: enumerated ids are everyone's. */
static uint64_t tag_for(uint64_t handle, uint64_t owner_tag)
{
    return handle >= HOST_ID_BASE ? 0 : owner_tag;
}

/* handle/tag: the Python key split (key & (2**64-1), key >> 64).  0 on success, -1 when
 * out of memory (the caller turns the lane off: the mirror would be incomplete). */
int lane_put(struct lane *L, uint64_t handle, uint64_t tag, uint32_t type, uint64_t owner,
             uint32_t shared, void *ptr)
{
    uint32_t b = bucket_of(handle, tag);
    pthread_mutex_lock(&L->lock);
    struct lane_entry *e = L->buckets[b];
    while (e && !(e->handle == handle && e->tag == tag))
        e = e->next;
    if (!e) {
        e = calloc(1, sizeof(*e));
        if (!e) {
            pthread_mutex_unlock(&L->lock);
            return -1;
        }
        e->handle = handle;
        e->tag = tag;
        e->next = L->buckets[b];
        L->buckets[b] = e;
        L->entries++;
    }
    e->type = type;
    e->owner = owner;
    e->shared = shared;
    e->ptr = ptr;
    pthread_mutex_unlock(&L->lock);
    return 0;
}

void lane_drop(struct lane *L, uint64_t handle, uint64_t tag)
{
    uint32_t b = bucket_of(handle, tag);
    pthread_mutex_lock(&L->lock);
    struct lane_entry **at = &L->buckets[b];
    while (*at && !((*at)->handle == handle && (*at)->tag == tag))
        at = &(*at)->next;
    if (*at) {
        struct lane_entry *gone = *at;
        *at = gone->next;
        free(gone);
        L->entries--;
    }
    pthread_mutex_unlock(&L->lock);
}

/* The real object of an id the ring's owner may use as `type` (NULL: Python's). */
static void *lookup(struct lane *L, uint64_t handle, const struct lane_ring *R, uint32_t type)
{
    uint64_t tag = tag_for(handle, R->owner_tag);
    void *ptr = NULL;
    for (struct lane_entry *e = L->buckets[bucket_of(handle, tag)]; e; e = e->next) {
        if (e->handle == handle && e->tag == tag) {
            if (e->type == type && (e->shared || e->owner == R->owner))
                ptr = e->ptr;
            break;
        }
    }
    return ptr;
}

/* Where [iova, iova+len) is mapped, inside one interval that permits the access. */
static uint8_t *translate(const struct lane_ring *R, uint64_t iova, uint64_t len, int write)
{
    for (uint32_t i = 0; i < R->nintervals; i++) {
        const struct lane_interval *iv = &R->intervals[i];
        if (iova >= iv->start && iova < iv->end && len <= iv->end - iova &&
            (write ? iv->writable : iv->readable))
            return iv->host + (iova - iv->start);
    }
    return NULL;
}

static int member(uint64_t value, const uint64_t *set, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (set[i] == value)
            return 1;
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void put64(uint8_t *at, uint64_t v) { memcpy(at, &v, 8); }

/* Run one command if the lane takes it: 1 done, 0 Python's.  `reply` has room for the
 * longest reply the lane writes. */
static int run_one(struct lane *L, const struct lane_ring *R, uint64_t index, uint8_t *scratch,
                   uint32_t counts_adjusted)
{
    const struct lane_layout *lay = &L->layout;
    uint8_t cmd[64];
    memcpy(cmd, R->ring + lay->header_size + (index & (R->slots - 1)) * lay->command_size, 64);
    uint16_t opcode, flags;
    uint32_t payload_len, reply_len;
    uint64_t seq, payload_addr, reply_addr;
    memcpy(&opcode, cmd, 2);
    memcpy(&flags, cmd + 2, 2);
    memcpy(&payload_len, cmd + 4, 4);
    memcpy(&seq, cmd + 8, 8);
    memcpy(&payload_addr, cmd + 16, 8);
    memcpy(&reply_addr, cmd + 24, 8);
    memcpy(&reply_len, cmd + 32, 4);
    const struct lane_fn *fn = L->fns[opcode];
    if (seq != index || flags != 0 || !fn || payload_len != fn->nwords * 8u)
        return 0;
    const uint8_t *src = translate(R, payload_addr, payload_len, 0);
    if (!src)
        return 0;
    uint64_t words[LANE_MAX_WORDS] = {0};
    memcpy(words, src, payload_len);
    uint64_t param = words[fn->param_at];
    if (member(param, fn->excluded, fn->nexcluded))
        return 0;
    if (counts_adjusted && member(param, fn->hooked, fn->nhooked))
        return 0;
    for (uint32_t i = 0; i < fn->nscalars; i++)
        if (words[fn->scalar_at[i]] > fn->scalar_limit[i])
            return 0;
    uint64_t cap = words[fn->out_at], flag = words[fn->size_ret_at];
    if (flag != 1 && flag != NULL_LEN)
        return 0;
    uint64_t alloc = 0;
    if (cap != NULL_LEN) {
        if (cap != words[fn->size_at] || cap > LANE_OUT_MAX)
            return 0;
        alloc = cap;
    }
    /* The longest reply: status, the answer's length and bytes (padded), its size. */
    uint64_t longest = 8 + (cap != NULL_LEN ? 8 + (alloc + 7) / 8 * 8 : 0) + (flag == 1 ? 8 : 0);
    if (longest > reply_len)
        return 0;
    uint8_t *dst = translate(R, reply_addr, reply_len, 1);
    if (!dst)
        return 0;
    /* The handles: looked up with the call counted, so a teardown that took them off
     * the table waits for the call to return before it releases them. */
    __atomic_add_fetch(&L->inflight, 1, __ATOMIC_ACQ_REL);
    pthread_mutex_lock(&L->lock);
    int found = 1;
    for (uint32_t i = 0; i < fn->nhandles && found; i++) {
        uint64_t handle = words[fn->handle_at[i]];
        void *ptr = handle ? lookup(L, handle, R, fn->handle_type[i]) : NULL;
        if (!ptr)
            found = 0;
        else
            words[fn->handle_at[i]] = (uint64_t)(uintptr_t)ptr;
    }
    pthread_mutex_unlock(&L->lock);
    if (!found) {
        __atomic_sub_fetch(&L->inflight, 1, __ATOMIC_ACQ_REL);
        return 0;
    }
    uint8_t *out = scratch + 16;
    size_t size_ret = 0;
    if (cap != NULL_LEN) {
        memset(out, 0, alloc);
        words[fn->out_at] = (uint64_t)(uintptr_t)out;
    } else {
        words[fn->out_at] = 0;
    }
    words[fn->size_ret_at] = (uint64_t)(uintptr_t)&size_ret;
    if (R->status_cell) {
        uint32_t q = R->queue, op = opcode;
        memcpy(R->status_cell + 8, &q, 4);
        memcpy(R->status_cell + 12, &op, 4);
        __atomic_store_n((uint64_t *)R->status_cell, now_ns(), __ATOMIC_RELEASE);
    }
    int32_t status = ((lane_call6)fn->cfunc)(words[0], words[1], words[2], words[3], words[4],
                                             words[5]);
    if (R->status_cell)
        __atomic_store_n((uint64_t *)R->status_cell, 0, __ATOMIC_RELEASE);
    __atomic_sub_fetch(&L->inflight, 1, __ATOMIC_ACQ_REL);

    /* The reply, as InfoQuery encodes it. */
    put64(scratch, (uint64_t)(int64_t)status);
    uint64_t n = 8;
    if (cap != NULL_LEN) {
        int filled = 0;
        for (uint32_t i = 0; i < fn->nfilled; i++)
            filled |= fn->filled_on[i] == status;
        if (filled) {
            uint64_t written = size_ret < alloc ? size_ret : alloc;
            if (written < alloc && alloc <= 16)
                written = alloc;
            put64(scratch + 8, written);
            uint64_t padded = (written + 7) / 8 * 8;
            memset(out + written, 0, padded - written);
            n = 16 + padded;
        } else {
            put64(scratch + 8, 0);
            n = 16;
        }
    }
    if (flag == 1) {
        put64(scratch + n, size_ret);
        n += 8;
    }
    memcpy(dst, scratch, n);

    /* The completion, then the head: the guest reads the head first. */
    uint8_t *cqe = R->ring + lay->header_size + R->slots * lay->command_size +
                   (index & (R->slots - 1)) * lay->completion_size;
    int32_t done_status = 0;
    uint32_t result_len = (uint32_t)n;
    memcpy(cqe, &index, 8);
    memcpy(cqe + 8, &done_status, 4);
    memcpy(cqe + 12, &result_len, 4);
    __atomic_store_n((uint64_t *)(R->ring + lay->head_at), index + 1, __ATOMIC_RELEASE);
    return 1;
}

static void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* Run the commands from head that the lane takes, in order: those at [head, tail),
 * then those the guest publishes within spin_ns of the last one's completion (a
 * program's next query comes a microsecond or two after its reply: answered here, it
 * need not wait for the Python loop to come round), LANE_MAX_RUN at most.  Returns
 * how many, times 2, plus 1 when the last one's guest asked for an interrupt (armed;
 * cleared here), which the caller raises.  counts_adjusted: a hooked param's answer
 * is not the implementation's now (Python's). */
#define LANE_MAX_RUN 256
uint64_t lane_run(struct lane *L, const struct lane_ring *R, uint64_t head, uint64_t tail,
                  uint32_t counts_adjusted, uint64_t spin_ns)
{
    uint32_t irq = 0;
    /* Room for the longest reply: status, length, LANE_OUT_MAX bytes, size. */
    uint8_t scratch[16 + LANE_OUT_MAX + 8];
    uint64_t done = 0;
    if (!R->slots || (R->slots & (R->slots - 1)))
        return 0;
    const uint64_t *tail_word = (const uint64_t *)(R->ring + L->layout.tail_at);
    uint32_t *armed = (uint32_t *)(R->ring + L->layout.armed_at);
    uint64_t index = head;
    while (done < LANE_MAX_RUN && !__atomic_load_n(&R->stop, __ATOMIC_ACQUIRE)) {
        if (index == tail) {
            /* Wait a little for the next command; a tail that is not ahead of the
             * head by at most the ring's size is Python's to refuse. */
            uint64_t until = spin_ns ? now_ns() + spin_ns : 0;
            for (;;) {
                uint64_t t = __atomic_load_n(tail_word, __ATOMIC_ACQUIRE);
                if (t != index) {
                    if (t - index > R->slots)
                        return done << 1;
                    tail = t;
                    break;
                }
                if (!until || now_ns() >= until || __atomic_load_n(&R->stop, __ATOMIC_ACQUIRE))
                    return done << 1;
                relax();
            }
        }
        if (!run_one(L, R, index, scratch, counts_adjusted))
            break;
        index++;
        done++;
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(armed, __ATOMIC_RELAXED)) {
            __atomic_store_n(armed, 0, __ATOMIC_RELAXED);
            irq = 1;
            break;
        }
    }
    return done << 1 | irq;
}
