/* Argument encoding and reply decoding (the wire format of protocols/opencl_api.py). */
#include <stdlib.h>
#include <string.h>

#include "ava_icd.h"

void ava_enc_init(struct ava_enc *e)
{
    memset(e, 0, sizeof(*e));
}

void ava_enc_free(struct ava_enc *e)
{
    free(e->buf);
    memset(e, 0, sizeof(*e));
}

static uint8_t *enc_reserve(struct ava_enc *e, size_t n)
{
    if (e->oom)
        return NULL;
    if (e->len + n > e->cap) {
        size_t cap = e->cap ? e->cap : 256;
        while (cap < e->len + n)
            cap *= 2;
        uint8_t *buf = realloc(e->buf, cap);
        if (!buf) {
            e->oom = 1;
            return NULL;
        }
        e->buf = buf;
        e->cap = cap;
    }
    uint8_t *p = e->buf + e->len;
    e->len += n;
    return p;
}

void ava_enc_u64(struct ava_enc *e, uint64_t v)
{
    uint8_t *p = enc_reserve(e, 8);
    if (p)
        memcpy(p, &v, 8);
}

void ava_enc_blob(struct ava_enc *e, const void *data, size_t n)
{
    if (!data) {
        ava_enc_u64(e, AVA_NULL_LEN);
        return;
    }
    ava_enc_u64(e, n);
    size_t padded = (n + 7) & ~(size_t)7;
    uint8_t *p = enc_reserve(e, padded);
    if (p) {
        memcpy(p, data, n);
        memset(p + n, 0, padded - n);
    }
}

void ava_enc_cstring(struct ava_enc *e, const char *s)
{
    ava_enc_blob(e, s, s ? strlen(s) + 1 : 0);
}

void ava_enc_handle(struct ava_enc *e, int type, const void *obj)
{
    ava_enc_u64(e, ava_obj_wire_id(type, obj));
}

void ava_enc_handles(struct ava_enc *e, int type, const void *const *objs, uint64_t n)
{
    if (!objs) {
        ava_enc_u64(e, AVA_NULL_LEN);
        return;
    }
    ava_enc_u64(e, n);
    for (uint64_t i = 0; i < n; i++)
        ava_enc_u64(e, ava_obj_wire_id(type, objs[i]));
}

/* Work sizes: never read more than 3 entries (the host pads an invalid work_dim, so
 * the implementation still answers CL_INVALID_WORK_DIMENSION itself). */
void ava_enc_sizes(struct ava_enc *e, const size_t *v, uint64_t n)
{
    if (!v) {
        ava_enc_u64(e, AVA_NULL_LEN);
        return;
    }
    uint64_t k = n < 3 ? n : 3;
    ava_enc_u64(e, k);
    for (uint64_t i = 0; i < k; i++)
        ava_enc_u64(e, v[i]);
}

void ava_enc_strings(struct ava_enc *e, const char **strings, const size_t *lengths, uint64_t n)
{
    if (!strings) {
        ava_enc_u64(e, AVA_NULL_LEN);
        return;
    }
    ava_enc_u64(e, n);
    for (uint64_t i = 0; i < n; i++) {
        if (!strings[i]) {
            ava_enc_u64(e, AVA_NULL_LEN);
            continue;
        }
        size_t len = (lengths && lengths[i]) ? lengths[i] : strlen(strings[i]);
        ava_enc_blob(e, strings[i], len);
    }
}

void ava_enc_properties(struct ava_enc *e, const int64_t *props, const struct ava_handle_key *keys,
                        size_t nkeys)
{
    if (!props) {
        ava_enc_u64(e, AVA_NULL_LEN);
        return;
    }
    uint64_t pairs = 0;
    while (props[2 * pairs] != 0 && pairs < 256)
        pairs++;
    ava_enc_u64(e, pairs);
    for (uint64_t i = 0; i < pairs; i++) {
        int64_t key = props[2 * i], value = props[2 * i + 1];
        uint64_t wire = (uint64_t)value;
        for (size_t k = 0; k < nkeys; k++)
            if (keys[k].key == key)
                wire = ava_obj_wire_id(keys[k].type, (const void *)(intptr_t)value);
        ava_enc_u64(e, (uint64_t)key);
        ava_enc_u64(e, wire);
    }
}

/* A cl_mem or cl_sampler argument is recognised by what it points at: one of our live
 * objects.  Anything else is bytes, and NULL is local memory. */
int ava_kernel_arg_tag(size_t size, const void *value, const void **obj)
{
    *obj = NULL;
    if (!value)
        return AVA_KARG_LOCAL;
    if (size == sizeof(void *)) {
        const void *o = *(const void *const *)value;
        if (o && ava_obj_is(o, AVA_OBJ_MEM)) {
            *obj = o;
            return AVA_KARG_MEM;
        }
        if (o && ava_obj_is(o, AVA_OBJ_SAMPLER)) {
            *obj = o;
            return AVA_KARG_SAMPLER;
        }
    }
    return AVA_KARG_BYTES;
}

void ava_enc_kernel_arg(struct ava_enc *e, size_t size, const void *value)
{
    const void *obj;
    int tag = ava_kernel_arg_tag(size, value, &obj);
    ava_enc_u64(e, size);
    ava_enc_u64(e, (uint64_t)tag);
    if (tag == AVA_KARG_MEM || tag == AVA_KARG_SAMPLER)
        ava_enc_u64(e, ava_obj_id(obj));
    else if (tag == AVA_KARG_BYTES)
        ava_enc_blob(e, value, size);
}

int ava_enc_host_data(struct ava_enc *e, struct ava_stage *st, const void *p, size_t n, int dir)
{
    memset(st, 0, sizeof(*st));
    if (!p) {
        ava_enc_u64(e, AVA_NULL_LEN);
        return 0;
    }
    int in_place = dir & AVA_STAGE_IN_PLACE;
    dir &= ~AVA_STAGE_IN_PLACE;
    st->app = (void *)p;
    st->len = n;
    st->out = dir != AVA_STAGE_IN;
    uint64_t mode, addr, count;
    if (in_place && ava_transport_lend(st, &mode, &addr, &count) == 0) {
        /* the device reads and writes the application's pages: nothing to copy */
    } else if (ava_transport_stage_alloc(st, &mode, &addr, &count) != 0) {
        ava_lend_fell_short = in_place;     /* icd_transfer.c goes in pieces instead */
        return -1;
    } else if (dir != AVA_STAGE_OUT && n) {
        memcpy(st->dma, p, n);
    }
    ava_enc_u64(e, mode);
    ava_enc_u64(e, addr);
    ava_enc_u64(e, count);
    return 0;
}


__thread int ava_lend_fell_short;

void ava_stage_finish(struct ava_stage *st, int success)
{
    if (!st->priv)
        return;
    if (success && st->out && st->len && !st->in_place)
        memcpy(st->app, st->dma, st->len);
    ava_transport_stage_free(st);
    memset(st, 0, sizeof(*st));
}

/* protocols.opencl_api.rect_span, in C: SIZE_MAX when it overflows (staging then fails). */
size_t ava_rect_span(const size_t *origin, const size_t *region, size_t row, size_t slice)
{
    if (!origin || !region || !region[0] || !region[1] || !region[2])
        return 0;
    size_t r = row ? row : region[0], s, a, b, c, span;
    if (__builtin_mul_overflow(region[1], r, &s))
        return SIZE_MAX;
    if (slice)
        s = slice;
    if (__builtin_mul_overflow(origin[2] + region[2] - 1, s, &a) ||
        __builtin_mul_overflow(origin[1] + region[1] - 1, r, &b) ||
        __builtin_add_overflow(a, b, &c) || __builtin_add_overflow(c, origin[0] + region[0], &span))
        return SIZE_MAX;
    return span;
}

void ava_enc_binaries(struct ava_enc *e, const unsigned char **binaries, const size_t *lengths,
                      uint64_t n)
{
    if (!binaries || !lengths) {
        ava_enc_u64(e, AVA_NULL_LEN);
        return;
    }
    ava_enc_u64(e, n);
    for (uint64_t i = 0; i < n; i++)
        ava_enc_blob(e, binaries[i], binaries[i] ? lengths[i] : 0);
}

void ava_enc_cstrings(struct ava_enc *e, const char **strings, uint64_t n)
{
    if (!strings) {
        ava_enc_u64(e, AVA_NULL_LEN);
        return;
    }
    ava_enc_u64(e, n);
    for (uint64_t i = 0; i < n; i++)
        ava_enc_cstring(e, strings[i]);
}

void ava_enc_new_array(struct ava_enc *e, void **objs, uint64_t n)
{
    ava_enc_u64(e, objs ? n : AVA_NULL_LEN);
    for (uint64_t i = 0; objs && i < n; i++)
        ava_enc_u64(e, ava_obj_id(objs[i]));
}

/* The reply says how many of the fresh objects the host filled: those go to the
 * caller (``dst``), the rest are freed with the array.  d == NULL frees them all. */
void ava_dec_new_array(struct ava_dec *d, void **objs, uint64_t n, int success, void **dst)
{
    uint64_t filled = (d && success) ? ava_dec_u64(d) : 0;
    for (uint64_t i = 0; i < n; i++) {
        if (i < filled)
            dst[i] = objs[i];
        else
            ava_obj_free(objs[i]);
    }
    free(objs);
}

size_t ava_icd_create_info_size(cl_buffer_create_type type)
{
    return type == CL_BUFFER_CREATE_TYPE_REGION ? sizeof(cl_buffer_region) : 0;
}

/* ---- decoding ---------------------------------------------------------------------- */

uint64_t ava_dec_u64(struct ava_dec *d)
{
    uint64_t v = 0;
    if (d->pos + 8 <= d->len)
        memcpy(&v, d->buf + d->pos, 8);
    d->pos += 8;
    return v;
}

size_t ava_dec_out_buffer(struct ava_dec *d, void *dst, size_t cap, int handle_type)
{
    uint64_t n = ava_dec_u64(d);
    if (d->pos > d->len || n > d->len - d->pos)
        return 0;
    size_t take = n < cap ? (size_t)n : cap;
    if (handle_type && take % 8 == 0) {
        /* Object-valued results come back as ids: give the application our objects. */
        for (size_t i = 0; i < take / 8; i++) {
            uint64_t id;
            memcpy(&id, d->buf + d->pos + 8 * i, 8);
            void *obj = ava_obj_from_id(handle_type, id);
            memcpy((uint8_t *)dst + 8 * i, &obj, 8);
        }
    } else {
        memcpy(dst, d->buf + d->pos, take);
    }
    d->pos += (n + 7) & ~(uint64_t)7;
    return take;
}

void ava_dec_out_properties(struct ava_dec *d, void *dst, size_t cap,
                            const struct ava_handle_key *keys, size_t nkeys)
{
    /* The host sent the values of handle keys as ids: give back our objects (the
     * ones the list was created with), in the bytes it wrote and nowhere else. */
    size_t words = ava_dec_out_buffer(d, dst, cap, 0) / 8, n = 0;
    int64_t *props = dst;
    while (n < words && props[n] != 0) {
        for (size_t k = 0; k < nkeys && n + 1 < words; k++) {
            if (props[n] == keys[k].key) {
                void *obj = ava_obj_from_id(keys[k].type, (uint64_t)props[n + 1]);
                props[n + 1] = (int64_t)(intptr_t)obj;
            }
        }
        n += 2;
    }
}

void ava_dec_out_handles(struct ava_dec *d, int type, void **dst, uint64_t cap)
{
    uint64_t n = ava_dec_u64(d);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t id = ava_dec_u64(d);
        if (i < cap)
            dst[i] = ava_obj_from_id(type, id);
    }
}

void ava_dec_free(struct ava_dec *d)
{
    free(d->buf);
    memset(d, 0, sizeof(*d));
}
