/* The ICD's calls ride on the guest runtime: the calling thread's queue, the slot's
 * staging for arguments and outputs, DMA buffers for application data. */
#include <errno.h>
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

void ava_transport_stage_free(struct ava_stage *st)
{
    struct ava_device *dev = ava_default_device();
    struct ava_buffer *buf = st->priv;
    if (dev && buf)
        ava_buffer_free(dev, buf);
    free(buf);
}
