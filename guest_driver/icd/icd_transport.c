/* The ICD's calls ride on the guest runtime: the calling thread's queue, the slot's
 * staging for arguments and outputs, DMA buffers for application data. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ava_icd.h"
#include "ava_abi.h"
#include "ava_rt.h"

int ava_transport_call(uint16_t opcode, const void *payload, size_t len, void *reply,
                       size_t cap, size_t *reply_len)
{
    struct ava_device *dev = ava_default_device();
    if (!dev)
        return -ENODEV;
    struct ava_queue *q = ava_thread_queue(dev);
    if (!q)
        return -EAGAIN;
    struct ava_result res;
    int rc = ava_call(q, opcode, payload, len, reply, cap, NULL, &res);
    if (rc)
        return rc;
    if (res.status)
        return res.status;          /* the device refused the call itself (malformed, ENOSYS) */
    *reply_len = res.result_len < cap ? res.result_len : cap;
    return 0;
}

int ava_transport_post(uint16_t opcode, const void *payload, size_t len)
{
    struct ava_device *dev = ava_default_device();
    if (!dev)
        return -ENODEV;
    struct ava_queue *q = ava_thread_queue(dev);
    if (!q)
        return -EAGAIN;
    return ava_post(q, opcode, payload, len);
}

int ava_transport_stage_alloc(struct ava_stage *st, uint64_t *mode, uint64_t *addr,
                              uint64_t *len_or_count)
{
    struct ava_device *dev = ava_default_device();
    struct ava_buffer *buf = calloc(1, sizeof(*buf));
    if (!dev || !buf || ava_buffer_alloc(dev, st->len, buf) != 0) {
        free(buf);
        return -1;
    }
    st->dma = buf->ptr;
    st->priv = buf;
    if (buf->nsg == 1 || st->len == 0) {
        *mode = AVA_HOSTDATA_RANGE;
        *addr = buf->gpa ? buf->gpa : buf->sg_gpa;  /* any mapped address will do for 0 bytes */
        *len_or_count = st->len;
    } else {
        *mode = AVA_HOSTDATA_SG;
        *addr = buf->sg_gpa;
        *len_or_count = buf->nsg;
    }
    return 0;
}

int ava_transport_lend(struct ava_stage *st, uint64_t *mode, uint64_t *addr,
                       uint64_t *len_or_count)
{
    struct ava_device *dev = ava_default_device();
    if (!dev)
        return -1;
    struct ava_pin *pin = malloc(sizeof(*pin));
    int rc = pin ? ava_pin(dev, st->app, st->len, pin) : -ENOMEM;
    if (rc != 0) {
        if (rc != -ERANGE && getenv("AVA_ICD_DEBUG"))
            fprintf(stderr, "ava-vdev ICD: %zu bytes at %p are copied, not lent: %s\n",
                    st->len, st->app, ava_last_error());
        free(pin);
        return -1;
    }
    if (getenv("AVA_ICD_DEBUG"))
        fprintf(stderr, "ava-vdev ICD: %zu bytes at %p lent in place, in %u pieces\n", st->len,
                st->app, pin->nsg);
    st->priv = pin;
    st->in_place = 1;
    st->dma = NULL;
    *mode = pin->nsg == 1 ? AVA_HOSTDATA_RANGE : AVA_HOSTDATA_SG;
    *addr = pin->addr;
    *len_or_count = pin->nsg == 1 ? st->len : pin->nsg;
    return 0;
}

/* Bytes of the arena that mappings hold: at most half of it, so that a program that
 * keeps many mappings never starves the staging its transfers need. */
static size_t mapped_bytes;
static pthread_mutex_t mapped_lock = PTHREAD_MUTEX_INITIALIZER;

void *ava_transport_map_alloc(size_t size, void **priv)
{
    struct ava_device *dev = ava_default_device();
    *priv = NULL;
    if (!dev || size == 0)
        return NULL;
    pthread_mutex_lock(&mapped_lock);
    int room = size <= ava_arena_size(dev) / 2 - mapped_bytes;
    if (room)
        mapped_bytes += size;
    pthread_mutex_unlock(&mapped_lock);
    struct ava_buffer *buf = room ? calloc(1, sizeof(*buf)) : NULL;
    if (!buf || ava_buffer_alloc(dev, size, buf) != 0) {
        free(buf);
        if (room) {
            pthread_mutex_lock(&mapped_lock);
            mapped_bytes -= size;
            pthread_mutex_unlock(&mapped_lock);
        }
        return NULL;
    }
    *priv = buf;
    return buf->ptr;
}

void ava_transport_map_free(void *priv)
{
    struct ava_device *dev = ava_default_device();
    struct ava_buffer *buf = priv;
    if (!buf)
        return;
    pthread_mutex_lock(&mapped_lock);
    mapped_bytes -= buf->size;
    pthread_mutex_unlock(&mapped_lock);
    if (dev)
        ava_buffer_free(dev, buf);
    free(buf);
}

size_t ava_transport_piece_limit(void)
{
    struct ava_device *dev = ava_default_device();
    size_t limit = dev ? ava_arena_size(dev) / 4 / 4096 * 4096 : 0;
    return limit > 4096 ? limit : 4096;
}

int ava_transport_may_lend(size_t size)
{
    struct ava_device *dev = ava_default_device();
    return dev && ava_pin_eligible(dev, size);
}

void ava_transport_stage_free(struct ava_stage *st)
{
    struct ava_device *dev = ava_default_device();
    if (st->in_place) {
        if (dev)
            ava_unpin(dev, st->priv);
    } else if (dev && st->priv) {
        ava_buffer_free(dev, st->priv);
    }
    free(st->priv);
}
