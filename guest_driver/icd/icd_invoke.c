/* One call through the device: payload out, reply in, status out of the reply. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ava_icd.h"
#include "ava_rt.h"

/* AVA_ICD_DEBUG: every round trip's status and time, and every failure to reach the
 * device. */
static int debugging(void)
{
    static int debug = -1;
    if (debug < 0)
        debug = getenv("AVA_ICD_DEBUG") != NULL;
    return debug;
}

static void report(const char *name, int err)
{
    static int reported;
    if (!reported || debugging()) {
        reported = 1;
        /* The runtime's own words (which path, why, and a hint) when it has them. */
        const char *why = ava_last_error();
        fprintf(stderr, "ava-vdev ICD: %s could not reach the device: %s\n", name,
                strcmp(why, "no error") ? why : strerror(err));
    }
}

int64_t ava_icd_invoke(uint16_t opcode, const char *name, struct ava_enc *e, size_t reply_cap,
                       struct ava_dec *d)
{
    memset(d, 0, sizeof(*d));
    if (e->oom)
        return CL_OUT_OF_HOST_MEMORY;
    d->buf = malloc(reply_cap);
    if (!d->buf)
        return CL_OUT_OF_HOST_MEMORY;
    size_t got = 0;
    struct timespec start, end;
    if (debugging())
        clock_gettime(CLOCK_MONOTONIC, &start);
    int rc = ava_transport_call(opcode, e->buf, e->len, d->buf, reply_cap, &got);
    if (rc != 0) {
        report(name, rc < 0 ? -rc : EIO);
        return CL_OUT_OF_RESOURCES;
    }
    if (got < 8)
        return CL_OUT_OF_RESOURCES;
    d->len = got;
    d->pos = 0;
    int64_t status = (int64_t)ava_dec_u64(d);
    if (debugging()) {
        clock_gettime(CLOCK_MONOTONIC, &end);
        fprintf(stderr, "ava-vdev ICD: %s -> %lld (%.1f us)\n", name, (long long)status,
                (end.tv_sec - start.tv_sec) * 1e6 + (end.tv_nsec - start.tv_nsec) / 1e3);
    }
    return status;
}

/* AVA_ICD_SYNC=1: every call goes by round trip. */
static int synchronous(void)
{
    static int sync = -1;
    if (sync < 0)
        sync = getenv("AVA_ICD_SYNC") != NULL && strcmp(getenv("AVA_ICD_SYNC"), "0") != 0;
    return sync;
}

/* Post a call whose status the caller can already know (spec: async_ok).  Returns 0
 * when it went out; otherwise the caller makes the call synchronously, which also
 * yields the right error.  AVA_ICD_SYNC=1 turns posting off. */
int ava_icd_post(uint16_t opcode, struct ava_enc *e)
{
    if (synchronous() || e->oom)
        return -1;
    return ava_transport_post(opcode, e->buf, e->len) == 0 ? 0 : -1;
}

int ava_icd_predicted(int prediction, uint16_t opcode, const char *name, struct ava_enc *e)
{
    if (prediction == AVA_POSTED)
        return ava_icd_post(opcode, e);
    if (prediction != AVA_IN_PLACE || synchronous())
        return -1;
    if (debugging())
        fprintf(stderr, "ava-vdev ICD: %s -> 0 (in place: the same value is set)\n", name);
    return 0;
}
