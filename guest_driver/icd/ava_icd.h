/* The guest ICD's internal interface: argument encoding, guest objects, and the
 * call path into the device.  The OpenCL entry points themselves are generated
 * (ava_icd_stubs.c, from protocols/opencl_api.py); this header is what they use.
 *
 * Conventions (libvfio-user style): functions returning int give 0 or -1/-errno;
 * an OpenCL status travels as int64_t.  Encoders never fail individually: an
 * allocation failure marks the encoder and the call then fails with
 * CL_OUT_OF_HOST_MEMORY. */
#ifndef AVA_ICD_H
#define AVA_ICD_H

#define CL_TARGET_OPENCL_VERSION 300
#define CL_USE_DEPRECATED_OPENCL_1_0_APIS
#define CL_USE_DEPRECATED_OPENCL_1_1_APIS
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#define CL_USE_DEPRECATED_OPENCL_2_0_APIS
#include <CL/cl.h>
#include <CL/cl_icd.h>
#include <stddef.h>
#include <stdint.h>

#define AVA_NULL_LEN UINT64_MAX

/* Kernel argument tags and data reference modes: protocols/opencl_api.py. */
#define AVA_KARG_BYTES 0
#define AVA_KARG_MEM 1
#define AVA_KARG_SAMPLER 2
#define AVA_KARG_LOCAL 3
#define AVA_HOSTDATA_RANGE 0
#define AVA_HOSTDATA_SG 1

typedef void (*ava_context_notify)(const char *, const void *, size_t, void *);
typedef void (*ava_program_notify)(cl_program, void *);
typedef void (*ava_event_notify)(cl_event, cl_int, void *);
typedef void (*ava_mem_notify)(cl_mem, void *);

/* ---- guest objects ------------------------------------------------------------ */

enum ava_obj_type {
    AVA_OBJ_NONE = 0,
    AVA_OBJ_PLATFORM, AVA_OBJ_DEVICE, AVA_OBJ_CONTEXT, AVA_OBJ_COMMAND_QUEUE, AVA_OBJ_MEM,
    AVA_OBJ_PROGRAM, AVA_OBJ_KERNEL, AVA_OBJ_EVENT, AVA_OBJ_SAMPLER,
    AVA_OBJ_TYPES
};

/* Every object the application sees starts with the ICD dispatch pointer. */
struct ava_object {
    const struct _cl_icd_dispatch *dispatch;
    uint32_t magic;          /* AVA_OBJ_MAGIC ^ type while alive */
    uint32_t type;
    uint64_t id;             /* what the host knows it by */
    uint32_t refs;           /* mirror of the user-visible reference count */
    void *ext;               /* guest-side state of some types (icd_mem.c, icd_callbacks.c) */
    struct ava_info *info;   /* answers that never change (icd_objects.c), under its lock */
};

/* Info answers kept per object: a param the spec marks immutable (protocols'
 * OutBuffer.immutable) is asked of the host once and answered here after. */
int ava_info_lookup(const void *obj, uint32_t fn, uint32_t param, uint64_t key, size_t size,
                    void *value, size_t *size_ret, cl_int *status);
void ava_info_store(const void *obj, uint32_t fn, uint32_t param, uint64_t key,
                    const void *value, size_t size);

/* Guest-side state (icd_mem.c, icd_callbacks.c): set once on a live object, finalised (callbacks
 * run, memory freed) by ava_obj_release when the last reference goes. */
void ava_obj_set_ext(void *obj, void *ext);
void *ava_obj_ext(const void *obj, int type);   /* NULL unless a live object of type */
void ava_ext_final(int type, void *obj, void *ext);

void *ava_obj_new(int type);                  /* fresh guest-assigned id; NULL on ENOMEM */
void *ava_obj_new_array(int type, uint64_t n);   /* n fresh objects (void **); NULL on ENOMEM */
void ava_obj_free(void *obj);                 /* a creation that failed */
uint64_t ava_obj_id(const void *obj);
/* The id to send for an application-supplied object of ``type``: 0 for NULL, an id
 * the host rejects (so it answers with the right CL_INVALID_*) for anything that is
 * not a live object of ours of that type. */
uint64_t ava_obj_wire_id(int type, const void *obj);
void *ava_obj_from_id(int type, uint64_t id); /* host ids (platforms, devices) and known ids */
int ava_obj_is(const void *obj, int type);
void ava_obj_retain(void *obj);
void ava_obj_release(void *obj);              /* frees the guest struct at zero */

/* ---- encoding ------------------------------------------------------------------- */

struct ava_enc {
    uint8_t *buf;
    size_t len, cap;
    int oom;
};

struct ava_dec {
    uint8_t *buf;            /* owned: freed by ava_dec_free */
    size_t len, pos;
};

struct ava_handle_key {
    int64_t key;
    int type;
};

/* Application memory handed to an enqueue, staged in DMA memory. */
struct ava_stage {
    void *app;               /* the caller's pointer */
    void *dma;               /* the staging copy */
    size_t len;
    int out;                 /* copy back to app on success */
    int in_place;            /* no copy: the device reaches app's own pages (dma NULL) */
    void *priv;              /* transport's allocation, or its pin */
};

void ava_enc_init(struct ava_enc *e);
void ava_enc_free(struct ava_enc *e);
void ava_enc_u64(struct ava_enc *e, uint64_t v);
void ava_enc_blob(struct ava_enc *e, const void *p, size_t n);
void ava_enc_cstring(struct ava_enc *e, const char *s);
void ava_enc_handle(struct ava_enc *e, int type, const void *obj);
void ava_enc_handles(struct ava_enc *e, int type, const void *const *objs, uint64_t n);
void ava_enc_sizes(struct ava_enc *e, const size_t *v, uint64_t n);
void ava_enc_strings(struct ava_enc *e, const char **strings, const size_t *lengths, uint64_t n);
void ava_enc_properties(struct ava_enc *e, const int64_t *props, const struct ava_handle_key *keys,
                        size_t nkeys);
void ava_enc_kernel_arg(struct ava_enc *e, size_t size, const void *value);
void ava_enc_build_options(struct ava_enc *e, const char *options);
/* Which way application data travels through its staging copy. */
#define AVA_STAGE_IN 0       /* the call reads it */
#define AVA_STAGE_OUT 1      /* the call writes all of it */
#define AVA_STAGE_INOUT 2    /* the call writes part of it (a rectangle) */
/* Or'ed in: the device may use the application's memory in place for the length of
 * the call (a blocking buffer transfer), where the transport can lend its pages. */
#define AVA_STAGE_IN_PLACE 4
int ava_enc_host_data(struct ava_enc *e, struct ava_stage *st, const void *p, size_t n, int dir);
size_t ava_rect_span(const size_t *origin, const size_t *region, size_t row, size_t slice);
/* Image data sizes (protocols.opencl_api.image_host_size / image_span, icd_mem.c):
 * what clCreateImage reads from host_ptr (0 when none or unknown), and what an image
 * transfer touches (0 when the region or object is invalid; SIZE_MAX on overflow). */
size_t ava_image_host_size(cl_mem_flags flags, const cl_image_format *format,
                           const cl_image_desc *desc);
size_t ava_image_span(cl_mem image, const size_t *region, size_t row, size_t slice);
void ava_enc_binaries(struct ava_enc *e, const unsigned char **binaries, const size_t *lengths,
                      uint64_t n);
void ava_enc_cstrings(struct ava_enc *e, const char **strings, uint64_t n);
void ava_enc_new_array(struct ava_enc *e, void **objs, uint64_t n);
void ava_dec_new_array(struct ava_dec *d, void **objs, uint64_t n, int success, void **dst);
void ava_stage_finish(struct ava_stage *st, int success);
/* Non-blocking transfers (icd_deferred.c): kept until their command is seen over. */
void ava_deferred_add(cl_command_queue queue, cl_event event, int caller_has_event,
                      struct ava_stage *st);
void ava_deferred_queue_observed(cl_command_queue queue);
/* Memory a deferred read was to fill is going away (an unmap): copy nothing there. */
void ava_deferred_forget(const void *app);
size_t ava_icd_create_info_size(cl_buffer_create_type type);

uint64_t ava_dec_u64(struct ava_dec *d);
size_t ava_dec_out_buffer(struct ava_dec *d, void *dst, size_t cap, int handle_type);
void ava_dec_out_properties(struct ava_dec *d, void *dst, size_t cap,
                            const struct ava_handle_key *keys, size_t nkeys);
void ava_dec_out_handles(struct ava_dec *d, int type, void **dst, uint64_t cap);
void ava_dec_free(struct ava_dec *d);

/* ---- the call --------------------------------------------------------------------- */

/* Send the encoded call; on return ``d`` holds the outputs after the status.  Returns
 * the OpenCL status: the host's, or CL_OUT_OF_HOST_MEMORY / CL_OUT_OF_RESOURCES when
 * the call could not be made (the reason goes to stderr once, see AVA_ICD_DEBUG). */
int64_t ava_icd_invoke(uint16_t opcode, const char *name, struct ava_enc *e, size_t reply_cap,
                       struct ava_dec *d);

int ava_icd_post(uint16_t opcode, struct ava_enc *e);

/* A predicted call (spec: predicted) as its prediction says: 0 when it was posted
 * (AVA_POSTED) or needs no sending (AVA_IN_PLACE, traced under AVA_ICD_DEBUG); -1
 * when it must go by round trip (no prediction, AVA_ICD_SYNC=1, a post that failed). */
int ava_icd_predicted(int prediction, uint16_t opcode, const char *name, struct ava_enc *e);

/* ---- predicted calls (icd_predict.c; spec: predicted) ----------------------------- */

/* What a kernel argument's status can depend on: its size, how the guest sends it
 * (tag), and for an object, what the implementation may check about it. */
struct ava_arg_class {
    uint64_t w[8];                /* tag and zero-ness, size, then ava_mem_arg_class's */
};

/* A launch's shape: the queue and the work sizes. */
struct ava_launch_shape {
    uint64_t queue, dim, has_offset, has_local;
    uint64_t offset[3], global[3], local[3];
};

#define AVA_PREDICT_KEY_MAX 256

#define AVA_ARG_VALUE_BYTES 32

/* A kernel argument's value exactly, as the host receives it: how it travels, its
 * size, the object's id (ids are never reused) or the bytes themselves. */
struct ava_arg_value {
    uint64_t tag, size, id;
    uint8_t bytes[AVA_ARG_VALUE_BYTES];
};

/* One call's prediction, from ava_predict_<name> to ava_predict_done. */
struct ava_prediction {
    void *kernel;                 /* NULL: nothing to learn from this call */
    int launch;                   /* a launch; else a kernel argument */
    uint32_t index;
    struct ava_arg_class cls;
    int has_value;                /* a kernel argument: ``value`` is known */
    struct ava_arg_value value;
    struct ava_launch_shape shape;
    size_t key_len;               /* a payload-learned call (spec: "payload"): its key */
    uint8_t key[AVA_PREDICT_KEY_MAX];
};

/* What a prediction answers: the call goes by round trip (0), is posted (AVA_POSTED),
 * or need not be sent at all (AVA_IN_PLACE: a kernel argument set again to the value
 * it holds, whose set succeeded: nothing would change on the host). */
#define AVA_POSTED 1
#define AVA_IN_PLACE 2

/* Whether the call may be posted: AVA_POSTED when an identical call succeeded
 * before (a kernel argument: AVA_IN_PLACE when it holds that value now). */
int ava_predict_clSetKernelArg(struct ava_prediction *p, cl_kernel kernel, cl_uint arg_index,
                               size_t arg_size, const void *arg_value);
int ava_predict_clEnqueueNDRangeKernel(struct ava_prediction *p, cl_command_queue queue,
                                       cl_kernel kernel, cl_uint work_dim,
                                       const size_t *global_work_offset,
                                       const size_t *global_work_size,
                                       const size_t *local_work_size, cl_uint num_events,
                                       const cl_event *wait_list, cl_event *event);
int ava_predict_clEnqueueTask(struct ava_prediction *p, cl_command_queue queue,
                              cl_kernel kernel, cl_uint num_events, const cl_event *wait_list,
                              cl_event *event);
/* Spec "payload": 1 when a call with the same encoded arguments (its own event's id
 * apart) succeeded before; never with a wait list (``has_wait``). */
int ava_predict_payload(struct ava_prediction *p, uint16_t opcode, const struct ava_enc *e,
                        int has_wait, int has_event);
/* The call's status (the host's, or CL_SUCCESS when posted): what is learned. */
void ava_predict_done(struct ava_prediction *p, int64_t status, int posted);
/* A kernel's last reference went. */
void ava_kernel_final(void *ext);

/* How a kernel argument travels (AVA_KARG_*), and the object it names, if any. */
int ava_kernel_arg_tag(size_t size, const void *value, const void **obj);
/* What a memory object's use as a kernel argument can depend on (icd_mem.c): 0 and
 * the words, or -1 when the guest does not know the object. */
int ava_mem_arg_class(const void *mem, uint64_t w[6]);

/* Transport hooks (icd_transport.c, over the guest runtime). */
int ava_transport_post(uint16_t opcode, const void *payload, size_t len);
int ava_transport_call(uint16_t opcode, const void *payload, size_t len, void *reply,
                       size_t cap, size_t *reply_len);
int ava_transport_stage_alloc(struct ava_stage *st, uint64_t *mode, uint64_t *addr,
                              uint64_t *len_or_count);
void ava_transport_stage_free(struct ava_stage *st);
/* Memory for a mapping in the DMA arena, which transfers reach in place (NULL: none;
 * allocate elsewhere); freed with its priv. */
void *ava_transport_map_alloc(size_t size, void **priv);
void ava_transport_map_free(void *priv);
/* Bytes a transfer may stage in one command: a quarter of the DMA memory. */
size_t ava_transport_piece_limit(void);
/* Set (on this thread) when a transfer meant to lend its pages in place could not
 * (ava_pin refused it) and its staging did not fit either: the call sent nothing
 * and failed with CL_OUT_OF_RESOURCES, and may go again in pieces (icd_transfer.c). */
extern __thread int ava_lend_fell_short;
/* Whether a blocking transfer of application memory this large may lend its pages. */
int ava_transport_may_lend(size_t size);
/* A live buffer's size (0: not a live buffer, or an image). */
size_t ava_mem_buffer_size(cl_mem mem);
/* The application's own pages instead of a staging copy (-1: stage a copy). */
int ava_transport_lend(struct ava_stage *st, uint64_t *mode, uint64_t *addr,
                       uint64_t *len_or_count);

extern struct _cl_icd_dispatch ava_dispatch;   /* filled at load time */
void ava_icd_fill_dispatch(struct _cl_icd_dispatch *t);
extern const char *const ava_icd_forwarded[];

#endif
