/* Guest objects: what the application holds, each with the id the host knows.
 *
 * Ids of created objects are assigned here (a random base per process plus a
 * counter), so creating calls need no round trip to learn them.  Platforms and
 * devices get the ids the host enumerates them with.  A pointer table answers
 * "is this one of our live objects?" without dereferencing what the application
 * passed, so a stray pointer becomes an invalid-object error, not a crash. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "ava_icd.h"

#define AVA_OBJ_MAGIC 0x41564f42u   /* "AVOB" */
#define INVALID_WIRE_ID 0x7fffffffffffffffull

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t counter;

/* Open-addressing sets keyed by pointer and by id. */
struct slot {
    uintptr_t key;
    struct ava_object *obj;
};
static struct slot *by_ptr, *by_id;
static size_t cap, used;

static size_t hash(uintptr_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (size_t)k;
}

static struct slot *find(struct slot *t, uintptr_t key)
{
    if (!cap || !key)            /* key 0 marks an empty slot */
        return NULL;
    for (size_t i = hash(key) & (cap - 1);; i = (i + 1) & (cap - 1)) {
        if (t[i].key == key)
            return &t[i];
        if (!t[i].key)
            return NULL;
    }
}

static void put(struct slot *t, uintptr_t key, struct ava_object *obj)
{
    size_t i = hash(key) & (cap - 1);
    while (t[i].key && t[i].key != key)
        i = (i + 1) & (cap - 1);
    t[i].key = key;
    t[i].obj = obj;
}

static void del(struct slot *t, uintptr_t key)
{
    struct slot *s = find(t, key);
    if (!s)
        return;
    /* Backward-shift deletion keeps probe chains intact. */
    size_t i = (size_t)(s - t);
    for (size_t j = (i + 1) & (cap - 1); t[j].key; j = (j + 1) & (cap - 1)) {
        size_t home = hash(t[j].key) & (cap - 1);
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            t[i] = t[j];
            i = j;
        }
    }
    t[i].key = 0;
    t[i].obj = NULL;
}

static int grow(void)
{
    if ((used + 1) * 2 <= cap)
        return 0;
    size_t ncap = cap ? cap * 2 : 256;
    struct slot *np = calloc(ncap, sizeof(*np)), *ni = calloc(ncap, sizeof(*ni));
    if (!np || !ni) {
        free(np);
        free(ni);
        return -1;
    }
    struct slot *op = by_ptr, *oi = by_id;
    size_t ocap = cap;
    by_ptr = np;
    by_id = ni;
    cap = ncap;
    for (size_t i = 0; i < ocap; i++) {
        if (op[i].key)
            put(by_ptr, op[i].key, op[i].obj);
        if (oi[i].key)
            put(by_id, oi[i].key, oi[i].obj);
    }
    free(op);
    free(oi);
    return 0;
}

static struct ava_object *insert(int type, uint64_t id)
{
    struct ava_object *o = calloc(1, sizeof(*o));
    if (!o)
        return NULL;
    o->dispatch = &ava_dispatch;
    o->magic = AVA_OBJ_MAGIC ^ (uint32_t)type;
    o->type = (uint32_t)type;
    o->id = id;
    o->refs = 1;
    if (grow() != 0) {
        free(o);
        return NULL;
    }
    put(by_ptr, (uintptr_t)o, o);
    put(by_id, (uintptr_t)id, o);
    used++;
    return o;
}

/* One kept answer: which query (opcode), param and selector (a device, an argument
 * index), and the bytes the host gave. */
struct ava_info {
    struct ava_info *next;
    uint32_t fn, param;
    uint64_t key;
    size_t size;
    unsigned char value[];
};

#define INFO_MAX_BYTES (64u << 10)     /* larger answers are asked every time */

static void remove_locked(struct ava_object *o)
{
    del(by_ptr, (uintptr_t)o);
    del(by_id, (uintptr_t)o->id);
    used--;
    o->magic = 0;
    for (struct ava_info *i = o->info, *next; i; i = next) {
        next = i->next;
        free(i);
    }
    free(o);
}

int ava_info_lookup(const void *obj, uint32_t fn, uint32_t param, uint64_t key, size_t size,
                    void *value, size_t *size_ret, cl_int *status)
{
    int found = 0;
    pthread_mutex_lock(&lock);
    struct slot *s = find(by_ptr, (uintptr_t)obj);
    for (struct ava_info *i = s ? s->obj->info : NULL; i && !found; i = i->next) {
        if (i->fn != fn || i->param != param || i->key != key)
            continue;
        found = 1;
        /* What the implementation does: a buffer too small is refused (the size
         * left alone), otherwise the value and its size. */
        if (value && size < i->size) {
            *status = CL_INVALID_VALUE;
        } else {
            if (value)
                memcpy(value, i->value, i->size);
            if (size_ret)
                *size_ret = i->size;
            *status = CL_SUCCESS;
        }
    }
    pthread_mutex_unlock(&lock);
    return found;
}

void ava_info_store(const void *obj, uint32_t fn, uint32_t param, uint64_t key,
                    const void *value, size_t size)
{
    if (size > INFO_MAX_BYTES)
        return;
    struct ava_info *i = malloc(sizeof(*i) + size);
    if (!i)
        return;
    i->fn = fn;
    i->param = param;
    i->key = key;
    i->size = size;
    memcpy(i->value, value, size);
    pthread_mutex_lock(&lock);
    struct slot *s = find(by_ptr, (uintptr_t)obj);
    int known = 0;
    for (struct ava_info *j = s ? s->obj->info : NULL; j; j = j->next)
        known |= j->fn == fn && j->param == param && j->key == key;
    if (s && !known) {
        i->next = s->obj->info;
        s->obj->info = i;
        i = NULL;
    }
    pthread_mutex_unlock(&lock);
    free(i);
}

/* Ids need only be unique within this process: the host keeps each guest process's
 * ids apart (an id another process uses answers like an unused one).  They start at a
 * random point so that they tell nothing of the process either (no pid, no count). */
static uint64_t id_base(void)
{
    static uint64_t base;
    if (!base) {
        uint64_t r = 0;
        if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
            r = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull ^ (uint64_t)time(NULL);
        base = (r & 0x3fffffff00000000ull) | 0x100000000ull;   /* bit 63 clear, never 0 */
    }
    return base;
}

void *ava_obj_new(int type)
{
    pthread_mutex_lock(&lock);
    uint64_t id = id_base() | (++counter & 0xffffffffu);
    struct ava_object *o = insert(type, id);
    pthread_mutex_unlock(&lock);
    return o;
}

void *ava_obj_new_array(int type, uint64_t n)
{
    if (n > (1u << 16))
        return NULL;
    void **objs = calloc(n ? n : 1, sizeof(void *));
    for (uint64_t i = 0; objs && i < n; i++) {
        if (!(objs[i] = ava_obj_new(type))) {
            while (i--)
                ava_obj_free(objs[i]);
            free(objs);
            return NULL;
        }
    }
    return objs;
}

void ava_obj_set_ext(void *obj, void *ext)
{
    pthread_mutex_lock(&lock);
    struct slot *s = find(by_ptr, (uintptr_t)obj);
    if (s)
        s->obj->ext = ext;
    pthread_mutex_unlock(&lock);
}

void *ava_obj_ext(const void *obj, int type)
{
    pthread_mutex_lock(&lock);
    struct slot *s = find(by_ptr, (uintptr_t)obj);
    void *ext = (s && s->obj->type == (uint32_t)type) ? s->obj->ext : NULL;
    pthread_mutex_unlock(&lock);
    return ext;
}

void ava_obj_free(void *obj)
{
    pthread_mutex_lock(&lock);
    if (find(by_ptr, (uintptr_t)obj))
        remove_locked(obj);
    pthread_mutex_unlock(&lock);
}

uint64_t ava_obj_id(const void *obj)
{
    return ((const struct ava_object *)obj)->id;
}

int ava_obj_is(const void *obj, int type)
{
    pthread_mutex_lock(&lock);
    struct slot *s = find(by_ptr, (uintptr_t)obj);
    int ok = s && s->obj->type == (uint32_t)type;
    pthread_mutex_unlock(&lock);
    return ok;
}

uint64_t ava_obj_wire_id(int type, const void *obj)
{
    if (!obj)
        return 0;
    pthread_mutex_lock(&lock);
    struct slot *s = find(by_ptr, (uintptr_t)obj);
    uint64_t id = (s && s->obj->type == (uint32_t)type) ? s->obj->id : INVALID_WIRE_ID;
    pthread_mutex_unlock(&lock);
    return id;
}

void *ava_obj_from_id(int type, uint64_t id)
{
    if (!id)
        return NULL;
    pthread_mutex_lock(&lock);
    struct slot *s = find(by_id, (uintptr_t)id);
    struct ava_object *o = s ? s->obj : NULL;
    if (!o && (type == AVA_OBJ_PLATFORM || type == AVA_OBJ_DEVICE))
        o = insert(type, id);          /* enumerated objects live as long as the process */
    pthread_mutex_unlock(&lock);
    return o;
}

void ava_obj_retain(void *obj)
{
    pthread_mutex_lock(&lock);
    struct slot *s = find(by_ptr, (uintptr_t)obj);
    if (s)
        s->obj->refs++;
    pthread_mutex_unlock(&lock);
}

void ava_obj_release(void *obj)
{
    void *ext = NULL;
    int type = 0;
    pthread_mutex_lock(&lock);
    struct slot *s = find(by_ptr, (uintptr_t)obj);
    /* Root devices (host-assigned ids, top bit set) are not reference counted;
     * sub-devices (ids we made) are. */
    if (s && s->obj->type != AVA_OBJ_PLATFORM &&
        !(s->obj->type == AVA_OBJ_DEVICE && (s->obj->id >> 63)) &&
        --s->obj->refs == 0) {
        ext = s->obj->ext;
        type = (int)s->obj->type;
        remove_locked(s->obj);
    }
    pthread_mutex_unlock(&lock);
    if (ext)
        ava_ext_final(type, obj, ext);      /* callbacks run without our lock held */
}
