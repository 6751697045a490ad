/* What the hand-written entry points share (icd_mem.c, icd_callbacks.c,
 * icd_programs.c, icd_native.c).  The spec marks them ``guest_wrap`` (they wrap the
 * generated forwarder ava_fwd_<name>) or lists them in GUEST_COMPOSED (built from
 * forwarded calls); ava_icd_gen.h declares them all. */
#ifndef ICD_COMPOSE_H
#define ICD_COMPOSE_H

#include "ava_icd.h"

static inline void set_errcode(cl_int *errcode_ret, cl_int status)
{
    if (errcode_ret)
        *errcode_ret = status;
}

/* A build, compile or link finished: deliver its notification on the callback thread. */
void ava_notify_program(cl_program program, void (CL_CALLBACK *fn)(cl_program, void *),
                        void *data);
/* A context's last reference went: its destructor callbacks (newest first). */
void ava_context_final(cl_context context, void *ext);

#endif
