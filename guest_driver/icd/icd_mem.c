/* Memory objects the application maps: a mapping is guest memory filled by a
 * blocking read and written back on unmap, or the application's own
 * CL_MEM_USE_HOST_PTR memory, which the host cannot share (it copies it at creation
 * instead).  Buffers and images keep guest-side state here (mem_ext). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ava_icd.h"
#include "ava_icd_gen.h"
#include "icd_compose.h"

/* ---- buffers: guest-side state ---------------------------------------------------- */

struct mapping {
    struct mapping *next;
    void *ptr;
    size_t offset, size;
    cl_map_flags flags;
    int owned;                 /* we allocated ptr (not the application's host_ptr) */
    void *dma;                 /* ... in the DMA arena (transfers reach it in place) */
    int image;                 /* an image mapping: written back as this rectangle */
    size_t origin[3], region[3], row, slice;
};

struct mem_notify {
    struct mem_notify *next;
    void (CL_CALLBACK *fn)(cl_mem, void *);
    void *data;
};

struct mem_ext {
    cl_mem_flags flags;        /* as the application gave them */
    int flags_here;            /* the host's object has other flags: answer these */
    void *host_ptr;            /* CL_MEM_USE_HOST_PTR memory (at this buffer's origin) */
    size_t size;
    cl_uint map_count;
    struct mapping *maps;      /* guarded by mem_lock, as are map_count and notify */
    struct mem_notify *notify; /* newest first: the order destructors run in */
    cl_mem_object_type image_type;   /* 0 for a buffer */
    size_t elem;               /* an image's bytes per pixel (the host's answer) */
    size_t host_row, host_slice;     /* the pitches of an image's host_ptr */
    /* What a kernel argument's status may depend on (ava_mem_arg_class). */
    uint64_t context_id;       /* the context it was created in */
    uint64_t parent_id;        /* a sub-buffer's buffer, or an image itself */
    size_t origin;             /* a sub-buffer's offset in its buffer */
};

static pthread_mutex_t mem_lock = PTHREAD_MUTEX_INITIALIZER;

/* A buffer the host created: remember what only the guest knows about it. */
static cl_mem buffer_created(cl_mem mem, struct mem_ext *x, cl_mem_flags flags, size_t size,
                             void *host_ptr)
{
    if (!mem) {
        free(x);
        return NULL;
    }
    x->flags = flags;
    x->size = size;
    x->host_ptr = (flags & CL_MEM_USE_HOST_PTR) ? host_ptr : NULL;
    ava_obj_set_ext(mem, x);
    return mem;
}

static struct mem_ext *new_mem_ext(cl_int *errcode_ret)
{
    struct mem_ext *x = calloc(1, sizeof(*x));
    if (!x)
        set_errcode(errcode_ret, CL_OUT_OF_HOST_MEMORY);
    return x;
}

/* CL_MEM_COPY_HOST_PTR from more memory than one command can stage (icd_transfer.c):
 * the buffer is made empty, then filled in pieces, and its flags are answered here. */
static int fill_later(cl_mem_flags flags, size_t size, const void *host_ptr)
{
    return host_ptr && (flags & CL_MEM_COPY_HOST_PTR) && !(flags & CL_MEM_USE_HOST_PTR) &&
           size > ava_transport_piece_limit();
}

/* Fill a buffer made empty by fill_later, on a queue of our own on the context's first
 * device; through a scratch buffer and a copy where the host may not write it. */
static cl_int fill_buffer(cl_context context, cl_mem mem, cl_mem_flags flags, size_t size,
                          const void *host_ptr)
{
    size_t bytes = 0;
    cl_int status = ava_clGetContextInfo(context, CL_CONTEXT_DEVICES, 0, NULL, &bytes);
    cl_device_id *devices = status == CL_SUCCESS && bytes ? malloc(bytes) : NULL;
    if (!devices)
        return status != CL_SUCCESS ? status : CL_OUT_OF_HOST_MEMORY;
    status = ava_clGetContextInfo(context, CL_CONTEXT_DEVICES, bytes, devices, NULL);
    cl_command_queue queue = status == CL_SUCCESS ?
        ava_clCreateCommandQueue(context, devices[0], 0, &status) : NULL;
    free(devices);
    cl_mem scratch = NULL;
    if (queue && (flags & (CL_MEM_HOST_NO_ACCESS | CL_MEM_HOST_READ_ONLY)))
        scratch = ava_clCreateBuffer(context, CL_MEM_READ_WRITE, size, NULL, &status);
    if (status == CL_SUCCESS)
        status = ava_clEnqueueWriteBuffer(queue, scratch ? scratch : mem, CL_TRUE, 0, size,
                                          host_ptr, 0, NULL, NULL);
    if (status == CL_SUCCESS && scratch)
        status = ava_clEnqueueCopyBuffer(queue, scratch, mem, 0, 0, size, 0, NULL, NULL);
    if (status == CL_SUCCESS)
        status = ava_clFinish(queue);
    if (scratch)
        ava_clReleaseMemObject(scratch);
    if (queue)
        ava_clReleaseCommandQueue(queue);
    return status;
}

static cl_mem filled(cl_context context, cl_mem mem, cl_mem_flags flags, size_t size,
                     const void *host_ptr, cl_int *errcode_ret)
{
    cl_int status = mem ? fill_buffer(context, mem, flags, size, host_ptr) : CL_SUCCESS;
    if (status != CL_SUCCESS) {
        ava_clReleaseMemObject(mem);
        set_errcode(errcode_ret, status);
        return NULL;
    }
    return mem;
}

CL_API_ENTRY cl_mem CL_API_CALL
ava_clCreateBuffer(cl_context context, cl_mem_flags flags, size_t size, void *host_ptr,
                   cl_int *errcode_ret)
{
    struct mem_ext *x = new_mem_ext(errcode_ret);
    if (!x)
        return NULL;
    x->context_id = ava_obj_wire_id(AVA_OBJ_CONTEXT, context);
    int later = x->flags_here = fill_later(flags, size, host_ptr);
    cl_mem_flags made_with = later ? flags & ~CL_MEM_COPY_HOST_PTR : flags;
    cl_mem mem = buffer_created(ava_fwd_clCreateBuffer(context, made_with, size,
                                                       later ? NULL : host_ptr, errcode_ret),
                                x, flags, size, host_ptr);
    return later ? filled(context, mem, flags, size, host_ptr, errcode_ret) : mem;
}

CL_API_ENTRY cl_mem CL_API_CALL
ava_clCreateBufferWithProperties(cl_context context, const cl_mem_properties *properties,
                                 cl_mem_flags flags, size_t size, void *host_ptr,
                                 cl_int *errcode_ret)
{
    struct mem_ext *x = new_mem_ext(errcode_ret);
    if (!x)
        return NULL;
    x->context_id = ava_obj_wire_id(AVA_OBJ_CONTEXT, context);
    int later = x->flags_here = fill_later(flags, size, host_ptr);
    cl_mem_flags made_with = later ? flags & ~CL_MEM_COPY_HOST_PTR : flags;
    cl_mem mem = buffer_created(ava_fwd_clCreateBufferWithProperties(
                                    context, properties, made_with, size,
                                    later ? NULL : host_ptr, errcode_ret),
                                x, flags, size, host_ptr);
    return later ? filled(context, mem, flags, size, host_ptr, errcode_ret) : mem;
}

CL_API_ENTRY cl_mem CL_API_CALL
ava_clCreateSubBuffer(cl_mem buffer, cl_mem_flags flags, cl_buffer_create_type type,
                      const void *info, cl_int *errcode_ret)
{
    struct mem_ext *x = new_mem_ext(errcode_ret);
    if (!x)
        return NULL;
    cl_mem mem = ava_fwd_clCreateSubBuffer(buffer, flags, type, info, errcode_ret);
    if (!mem) {
        free(x);
        return NULL;
    }
    const struct mem_ext *parent = ava_obj_ext(buffer, AVA_OBJ_MEM);
    const cl_buffer_region *region = info;          /* the host accepted it: a region */
    /* The spec's inheritance: the parent's host pointer flags always, its device
     * access and host access flags where the sub-buffer names none of its own. */
    const cl_mem_flags host_ptr = CL_MEM_USE_HOST_PTR | CL_MEM_ALLOC_HOST_PTR |
                                  CL_MEM_COPY_HOST_PTR;
    const cl_mem_flags access = CL_MEM_READ_WRITE | CL_MEM_WRITE_ONLY | CL_MEM_READ_ONLY;
    const cl_mem_flags host_access = CL_MEM_HOST_WRITE_ONLY | CL_MEM_HOST_READ_ONLY |
                                     CL_MEM_HOST_NO_ACCESS;
    x->size = region->size;
    x->origin = region->origin;
    x->parent_id = ava_obj_id(buffer);
    if (parent) {
        x->context_id = parent->context_id;
        x->flags_here = parent->flags_here;
        x->flags = flags | (parent->flags & host_ptr);
        if (!(flags & access))
            x->flags |= parent->flags & access;
        if (!(flags & host_access))
            x->flags |= parent->flags & host_access;
        x->host_ptr = parent->host_ptr ? (char *)parent->host_ptr + region->origin : NULL;
    }
    ava_obj_set_ext(mem, x);
    return mem;
}

CL_API_ENTRY cl_int CL_API_CALL
ava_clGetMemObjectInfo(cl_mem memobj, cl_mem_info param_name, size_t param_value_size,
                       void *param_value, size_t *param_value_size_ret)
{
    cl_int status = ava_fwd_clGetMemObjectInfo(memobj, param_name, param_value_size, param_value,
                                               param_value_size_ret);
    struct mem_ext *x = ava_obj_ext(memobj, AVA_OBJ_MEM);
    if (status != CL_SUCCESS || !x || !param_value)
        return status;
    /* What the host cannot know: the guest's pointer, the flags as given, our maps. */
    pthread_mutex_lock(&mem_lock);
    if (param_name == CL_MEM_HOST_PTR && param_value_size >= sizeof(void *))
        memcpy(param_value, &x->host_ptr, sizeof(void *));
    else if (param_name == CL_MEM_FLAGS && (x->host_ptr || x->flags_here) &&
             param_value_size >= sizeof(cl_mem_flags))
        memcpy(param_value, &x->flags, sizeof(cl_mem_flags));
    else if (param_name == CL_MEM_MAP_COUNT && param_value_size >= sizeof(cl_uint))
        memcpy(param_value, &x->map_count, sizeof(cl_uint));
    pthread_mutex_unlock(&mem_lock);
    return status;
}

size_t ava_mem_buffer_size(cl_mem mem)
{
    struct mem_ext *x = ava_obj_ext(mem, AVA_OBJ_MEM);
    return x && !x->image_type ? x->size : 0;
}

/* What a mapping we allocated is freed with. */
static void mapping_release(struct mapping *m, void *ptr)
{
    if (m && m->dma)
        ava_transport_map_free(m->dma);
    else if (m && m->owned)
        free(ptr);
}

/* A map was made (or failed with ``status``): the mapping joins the object's list,
 * or what was allocated for it goes. */
static void *map_finish(struct mem_ext *x, struct mapping *m, void *ptr, cl_int status,
                        cl_int *errcode_ret)
{
    set_errcode(errcode_ret, status);
    if (status != CL_SUCCESS) {
        mapping_release(m, ptr);
        free(m);
        return NULL;
    }
    m->ptr = ptr;
    pthread_mutex_lock(&mem_lock);
    m->next = x->maps;
    x->maps = m;
    x->map_count++;
    pthread_mutex_unlock(&mem_lock);
    return ptr;
}

/* What a map of ``flags`` may do to a buffer created with ``mem_flags``. */
static cl_int map_allowed(cl_mem_flags mem_flags, cl_map_flags flags)
{
    const cl_map_flags writes = CL_MAP_WRITE | CL_MAP_WRITE_INVALIDATE_REGION;
    if ((flags & ~(CL_MAP_READ | writes)) ||
        ((flags & CL_MAP_WRITE_INVALIDATE_REGION) && (flags & (CL_MAP_READ | CL_MAP_WRITE))))
        return CL_INVALID_VALUE;
    if ((mem_flags & CL_MEM_HOST_NO_ACCESS) ||
        ((mem_flags & CL_MEM_HOST_READ_ONLY) && (flags & writes)) ||
        ((mem_flags & CL_MEM_HOST_WRITE_ONLY) && (flags & CL_MAP_READ)))
        return CL_INVALID_OPERATION;
    return CL_SUCCESS;
}

/* A temporary buffer in ``mem``'s context, for the copies below. */
static cl_mem scratch_buffer(cl_mem mem, size_t size, cl_int *status)
{
    cl_context context = NULL;
    *status = ava_clGetMemObjectInfo(mem, CL_MEM_CONTEXT, sizeof(context), &context, NULL);
    if (*status != CL_SUCCESS)
        return NULL;
    return ava_clCreateBuffer(context, CL_MEM_READ_WRITE, size, NULL, status);
}

/* The contents a CL_MAP_WRITE mapping of CL_MEM_HOST_WRITE_ONLY memory starts with:
 * the host may not read such memory, so the device copies it into a scratch buffer
 * first (as a native map reads it without asking the host-access rule), and the
 * scratch buffer is read.  The caller's event is the read's, after the copy. */
static cl_int read_host_write_only(cl_command_queue queue, cl_mem buffer, size_t offset,
                                   size_t size, void *ptr, cl_uint num_events,
                                   const cl_event *wait_list, cl_event *event)
{
    cl_int status;
    cl_event copied = NULL;
    cl_mem scratch = scratch_buffer(buffer, size, &status);
    if (!scratch)
        return status;
    status = ava_clEnqueueCopyBuffer(queue, buffer, scratch, offset, 0, size, num_events,
                                     wait_list, &copied);
    if (status == CL_SUCCESS) {
        status = ava_clEnqueueReadBuffer(queue, scratch, CL_TRUE, 0, size, ptr, 1, &copied,
                                         event);
        ava_clReleaseEvent(copied);
    }
    ava_clReleaseMemObject(scratch);
    return status;
}

/* Whether a map's read blocks.  A non-blocking map must not wait (its wait list may
 * hold a user event set later): its read is deferred like any non-blocking read, and
 * the data is in place once the map's event is seen complete.  A map for writing
 * still blocks: its unmap writes the mapping back, and must never write back bytes
 * the read has not delivered yet. */
static cl_bool map_blocks(cl_bool blocking_map, cl_map_flags map_flags)
{
    return blocking_map || (map_flags & CL_MAP_WRITE) ? CL_TRUE : CL_FALSE;
}

CL_API_ENTRY void *CL_API_CALL
ava_clEnqueueMapBuffer(cl_command_queue queue, cl_mem buffer, cl_bool blocking_map,
                       cl_map_flags map_flags, size_t offset, size_t size,
                       cl_uint num_events_in_wait_list, const cl_event *event_wait_list,
                       cl_event *event, cl_int *errcode_ret)
{
    struct mem_ext *x = ava_obj_ext(buffer, AVA_OBJ_MEM);
    struct mapping *m = NULL;
    void *ptr = NULL;
    cl_int status;
    if (!ava_obj_is(queue, AVA_OBJ_COMMAND_QUEUE))
        status = CL_INVALID_COMMAND_QUEUE;
    else if (!x || x->image_type)
        status = CL_INVALID_MEM_OBJECT;
    else if (size == 0 || offset > x->size || size > x->size - offset)
        status = CL_INVALID_VALUE;
    else if ((status = map_allowed(x->flags, map_flags)) != CL_SUCCESS)
        ;
    else if (!(m = calloc(1, sizeof(*m))))
        status = CL_OUT_OF_HOST_MEMORY;
    else if (x->host_ptr)
        ptr = (char *)x->host_ptr + offset;
    else if ((ptr = ava_transport_map_alloc(size, &m->dma)) != NULL)
        m->owned = 1;        /* DMA memory: the map's read and the unmap's write go in place */
    else if (posix_memalign(&ptr, 4096, size) != 0)
        status = CL_MAP_FAILURE;
    else
        m->owned = 1;
    if (status == CL_SUCCESS) {
        if (map_flags & CL_MAP_WRITE_INVALIDATE_REGION)
            status = ava_clEnqueueMarkerWithWaitList(queue, num_events_in_wait_list,
                                                     event_wait_list, event);
        else if (x->flags & CL_MEM_HOST_WRITE_ONLY)
            status = read_host_write_only(queue, buffer, offset, size, ptr,
                                          num_events_in_wait_list, event_wait_list, event);
        else
            status = ava_clEnqueueReadBuffer(queue, buffer, map_blocks(blocking_map, map_flags),
                                             offset, size, ptr, num_events_in_wait_list,
                                             event_wait_list, event);
    }
    if (status == CL_SUCCESS) {
        m->offset = offset;
        m->size = size;
        m->flags = map_flags;
    }
    return map_finish(x, m, ptr, status, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL
ava_clEnqueueUnmapMemObject(cl_command_queue queue, cl_mem memobj, void *mapped_ptr,
                            cl_uint num_events_in_wait_list, const cl_event *event_wait_list,
                            cl_event *event)
{
    if (!ava_obj_is(queue, AVA_OBJ_COMMAND_QUEUE))
        return CL_INVALID_COMMAND_QUEUE;
    struct mem_ext *x = ava_obj_ext(memobj, AVA_OBJ_MEM);
    if (!x)
        return CL_INVALID_MEM_OBJECT;
    struct mapping *m = NULL;
    pthread_mutex_lock(&mem_lock);
    for (struct mapping **p = &x->maps; *p; p = &(*p)->next) {
        if ((*p)->ptr == mapped_ptr) {
            m = *p;
            *p = m->next;
            break;
        }
    }
    pthread_mutex_unlock(&mem_lock);
    if (!m)
        return CL_INVALID_VALUE;
    cl_int status;
    if ((m->flags & (CL_MAP_WRITE | CL_MAP_WRITE_INVALIDATE_REGION)) && m->image)
        status = ava_clEnqueueWriteImage(queue, memobj, CL_TRUE, m->origin, m->region, m->row,
                                         m->slice, m->ptr, num_events_in_wait_list,
                                         event_wait_list, event);
    else if (m->flags & (CL_MAP_WRITE | CL_MAP_WRITE_INVALIDATE_REGION))
        status = ava_clEnqueueWriteBuffer(queue, memobj, CL_TRUE, m->offset, m->size, m->ptr,
                                          num_events_in_wait_list, event_wait_list, event);
    else
        status = ava_clEnqueueMarkerWithWaitList(queue, num_events_in_wait_list, event_wait_list,
                                                 event);
    pthread_mutex_lock(&mem_lock);
    if (status != CL_SUCCESS) {            /* still mapped: the caller may retry */
        m->next = x->maps;
        x->maps = m;
        m = NULL;
    } else {
        x->map_count--;
    }
    pthread_mutex_unlock(&mem_lock);
    if (m) {
        if (m->owned) {
            ava_deferred_forget(m->ptr);
            mapping_release(m, m->ptr);
        }
        free(m);
    }
    return status;
}

/* ---- images: sizes both ends agree on, and guest-side state ---------------------- */

/* 1D image arrays count their slices in region[1] (and in the array size). */
static int is_1d_array(cl_mem_object_type t)
{
    return t == CL_MEM_OBJECT_IMAGE1D_ARRAY;
}

static int is_layered(cl_mem_object_type t)
{
    return t == CL_MEM_OBJECT_IMAGE3D || t == CL_MEM_OBJECT_IMAGE2D_ARRAY;
}

/* Default pitches of an image's host memory (the spec's rules). */
static void image_host_pitches(const cl_image_desc *desc, size_t elem, size_t *row,
                               size_t *slice)
{
    *row = desc->image_row_pitch ? desc->image_row_pitch : desc->image_width * elem;
    if (is_1d_array(desc->image_type))
        *slice = desc->image_slice_pitch ? desc->image_slice_pitch : *row;
    else
        *slice = desc->image_slice_pitch ? desc->image_slice_pitch : *row * desc->image_height;
}

/* protocols.opencl_api.image_host_size, in C: 0 where the host expects no bytes. */
size_t ava_image_host_size(cl_mem_flags flags, const cl_image_format *format,
                           const cl_image_desc *desc)
{
    if (!(flags & (CL_MEM_COPY_HOST_PTR | CL_MEM_USE_HOST_PTR)) || !format || !desc)
        return 0;
    size_t elem = ava_image_element_size(format->image_channel_order,
                                         format->image_channel_data_type);
    cl_mem_object_type t = desc->image_type;
    size_t row, slice, n, size;
    if (!elem || __builtin_mul_overflow(desc->image_width, elem, &row))
        return 0;
    if (desc->image_row_pitch)
        row = desc->image_row_pitch;
    if (t == CL_MEM_OBJECT_IMAGE1D || t == CL_MEM_OBJECT_IMAGE1D_BUFFER)
        slice = row, n = 1;
    else if (t == CL_MEM_OBJECT_IMAGE2D)
        slice = row, n = desc->image_height;
    else if (is_1d_array(t))
        slice = desc->image_slice_pitch ? desc->image_slice_pitch : row,
        n = desc->image_array_size;
    else if (is_layered(t)) {
        if (__builtin_mul_overflow(row, desc->image_height, &slice))
            return 0;
        if (desc->image_slice_pitch)
            slice = desc->image_slice_pitch;
        n = t == CL_MEM_OBJECT_IMAGE3D ? desc->image_depth : desc->image_array_size;
    } else
        return 0;
    if (__builtin_mul_overflow(slice, n, &size) || size > AVA_MAX_IMAGE_HOST_BYTES)
        return 0;
    return size;
}

/* protocols.opencl_api.image_span, in C, for one of our images. */
size_t ava_image_span(cl_mem image, const size_t *region, size_t row, size_t slice)
{
    const struct mem_ext *x = ava_obj_ext(image, AVA_OBJ_MEM);
    if (!x || !x->elem || !region || !region[0] || !region[1] || !region[2])
        return 0;
    cl_mem_object_type t = x->image_type;
    size_t w, rows = 1, slices = 1, a, b, c, span;
    if (__builtin_mul_overflow(region[0], x->elem, &w))
        return SIZE_MAX;
    if (!row)
        row = w;
    if (t == CL_MEM_OBJECT_IMAGE1D || t == CL_MEM_OBJECT_IMAGE1D_BUFFER) {
        if (region[1] != 1 || region[2] != 1)
            return 0;
    } else if (t == CL_MEM_OBJECT_IMAGE2D) {
        if (region[2] != 1)
            return 0;
        rows = region[1];
    } else if (is_1d_array(t)) {
        if (region[2] != 1)
            return 0;
        slices = region[1];
        if (!slice)
            slice = row;
    } else if (is_layered(t)) {
        rows = region[1];
        slices = region[2];
        if (!slice && __builtin_mul_overflow(row, rows, &slice))
            return SIZE_MAX;
    } else {
        return 0;
    }
    if (__builtin_mul_overflow(slices - 1, slice, &a) ||
        __builtin_mul_overflow(rows - 1, row, &b) ||
        __builtin_add_overflow(a, b, &c) || __builtin_add_overflow(c, w, &span))
        return SIZE_MAX;
    return span;
}

/* Our images keep their type and pixel size (to size transfers the way the host
 * does) and, with CL_MEM_USE_HOST_PTR, the application's memory and its pitches
 * (maps answer with it, as the host cannot share it). */
static cl_mem image_created(cl_mem mem, struct mem_ext *x, cl_mem_flags flags,
                            const cl_image_desc *image_desc, void *host_ptr);

CL_API_ENTRY cl_mem CL_API_CALL
ava_clCreateImage(cl_context context, cl_mem_flags flags, const cl_image_format *image_format,
                  const cl_image_desc *image_desc, void *host_ptr, cl_int *errcode_ret)
{
    struct mem_ext *x = new_mem_ext(errcode_ret);
    if (!x)
        return NULL;
    x->context_id = ava_obj_wire_id(AVA_OBJ_CONTEXT, context);
    return image_created(ava_fwd_clCreateImage(context, flags, image_format, image_desc,
                                               host_ptr, errcode_ret),
                         x, flags, image_desc, host_ptr);
}

CL_API_ENTRY cl_mem CL_API_CALL
ava_clCreateImageWithProperties(cl_context context, const cl_mem_properties *properties,
                                cl_mem_flags flags, const cl_image_format *image_format,
                                const cl_image_desc *image_desc, void *host_ptr,
                                cl_int *errcode_ret)
{
    struct mem_ext *x = new_mem_ext(errcode_ret);
    if (!x)
        return NULL;
    x->context_id = ava_obj_wire_id(AVA_OBJ_CONTEXT, context);
    return image_created(ava_fwd_clCreateImageWithProperties(context, properties, flags,
                                                             image_format, image_desc,
                                                             host_ptr, errcode_ret),
                         x, flags, image_desc, host_ptr);
}

/* An image the host created: its guest-side state, as for buffers. */
static cl_mem image_created(cl_mem mem, struct mem_ext *x, cl_mem_flags flags,
                            const cl_image_desc *image_desc, void *host_ptr)
{
    if (!mem) {
        free(x);
        return NULL;
    }
    /* The host's answer, so both ends size transfers alike even for a format the
     * spec's table does not know. */
    if (ava_clGetImageInfo(mem, CL_IMAGE_ELEMENT_SIZE, sizeof(x->elem), &x->elem, NULL) !=
        CL_SUCCESS)
        x->elem = 0;
    x->flags = flags;
    x->image_type = image_desc->image_type;
    x->parent_id = ava_obj_id(mem);      /* its format and sizes: told apart by identity */
    if (flags & CL_MEM_USE_HOST_PTR) {
        x->host_ptr = host_ptr;
        image_host_pitches(image_desc, x->elem, &x->host_row, &x->host_slice);
    }
    ava_obj_set_ext(mem, x);
    return mem;
}

CL_API_ENTRY cl_mem CL_API_CALL
ava_clCreateImage2D(cl_context context, cl_mem_flags flags, const cl_image_format *image_format,
                    size_t width, size_t height, size_t row_pitch, void *host_ptr,
                    cl_int *errcode_ret)
{
    cl_image_desc desc = {.image_type = CL_MEM_OBJECT_IMAGE2D, .image_width = width,
                          .image_height = height, .image_row_pitch = row_pitch};
    return ava_clCreateImage(context, flags, image_format, &desc, host_ptr, errcode_ret);
}

CL_API_ENTRY cl_mem CL_API_CALL
ava_clCreateImage3D(cl_context context, cl_mem_flags flags, const cl_image_format *image_format,
                    size_t width, size_t height, size_t depth, size_t row_pitch,
                    size_t slice_pitch, void *host_ptr, cl_int *errcode_ret)
{
    cl_image_desc desc = {.image_type = CL_MEM_OBJECT_IMAGE3D, .image_width = width,
                          .image_height = height, .image_depth = depth,
                          .image_row_pitch = row_pitch, .image_slice_pitch = slice_pitch};
    return ava_clCreateImage(context, flags, image_format, &desc, host_ptr, errcode_ret);
}

/* The checks of clEnqueueMapImage the implementation would make before mapping. */
static cl_int map_image_allowed(cl_command_queue queue, const struct mem_ext *x,
                                cl_map_flags map_flags, const size_t *origin,
                                const size_t *region, size_t *row_pitch, size_t *slice_pitch)
{
    if (!ava_obj_is(queue, AVA_OBJ_COMMAND_QUEUE))
        return CL_INVALID_COMMAND_QUEUE;
    if (!x || !x->image_type)
        return CL_INVALID_MEM_OBJECT;
    if (!origin || !region || !row_pitch ||
        (!slice_pitch && (is_layered(x->image_type) || is_1d_array(x->image_type))))
        return CL_INVALID_VALUE;
    /* Unknown map bits are ignored, as the implementation does for images. */
    return map_allowed(x->flags, map_flags & (CL_MAP_READ | CL_MAP_WRITE |
                                              CL_MAP_WRITE_INVALIDATE_REGION));
}

/* read_host_write_only for an image: the region copied into a scratch buffer (packed
 * rows), then read at the mapping's pitches. */
static cl_int read_image_host_write_only(cl_command_queue queue, cl_mem image,
                                         const struct mem_ext *x, const size_t *origin,
                                         const size_t *region, size_t row, size_t slice,
                                         void *ptr, cl_uint num_events,
                                         const cl_event *wait_list, cl_event *event)
{
    size_t packed_row = region[0] * x->elem, bytes;
    if (__builtin_mul_overflow(packed_row, region[1], &bytes) ||
        __builtin_mul_overflow(bytes, region[2], &bytes))
        return CL_INVALID_VALUE;
    cl_int status;
    cl_event copied = NULL;
    cl_mem scratch = scratch_buffer(image, bytes ? bytes : 1, &status);
    if (!scratch)
        return status;
    status = ava_clEnqueueCopyImageToBuffer(queue, image, scratch, origin, region, 0,
                                            num_events, wait_list, &copied);
    if (status == CL_SUCCESS) {
        /* A 1D array's slices are its rows. */
        size_t host_row = is_1d_array(x->image_type) ? slice : row;
        size_t host_slice = is_1d_array(x->image_type) ? 0 : slice;
        const size_t zero[3] = {0, 0, 0};
        const size_t bytes_region[3] = {packed_row, region[1], region[2]};
        status = ava_clEnqueueReadBufferRect(queue, scratch, CL_TRUE, zero, zero, bytes_region,
                                             packed_row, packed_row * region[1], host_row,
                                             host_slice, ptr, 1, &copied, event);
        ava_clReleaseEvent(copied);
    }
    ava_clReleaseMemObject(scratch);
    return status;
}

/* A mapping is a rectangle read into guest memory: packed rows (our pitches) in
 * memory we own, or the application's host_ptr at its own pitches. */
CL_API_ENTRY void *CL_API_CALL
ava_clEnqueueMapImage(cl_command_queue queue, cl_mem image, cl_bool blocking_map,
                      cl_map_flags map_flags, const size_t *origin, const size_t *region,
                      size_t *image_row_pitch, size_t *image_slice_pitch,
                      cl_uint num_events_in_wait_list, const cl_event *event_wait_list,
                      cl_event *event, cl_int *errcode_ret)
{
    struct mem_ext *x = ava_obj_ext(image, AVA_OBJ_MEM);
    struct mapping *m = NULL;
    void *ptr = NULL;
    size_t row = 0, slice = 0, span = 0;
    cl_int status = map_image_allowed(queue, x, map_flags, origin, region, image_row_pitch,
                                      image_slice_pitch);
    if (status == CL_SUCCESS && !(m = calloc(1, sizeof(*m))))
        status = CL_OUT_OF_HOST_MEMORY;
    if (status == CL_SUCCESS && x->host_ptr) {
        row = x->host_row;
        slice = is_layered(x->image_type) || is_1d_array(x->image_type) ? x->host_slice : 0;
        size_t skip = is_1d_array(x->image_type) ? origin[1] * slice
                                                 : origin[2] * slice + origin[1] * row;
        ptr = (char *)x->host_ptr + skip + origin[0] * x->elem;
    } else if (status == CL_SUCCESS) {
        row = region[0] * x->elem;
        slice = is_layered(x->image_type) ? row * region[1] :
                is_1d_array(x->image_type) ? row : 0;
        span = ava_image_span(image, region, row, slice);
        if (span == SIZE_MAX || posix_memalign(&ptr, 4096, span ? span : 1) != 0)
            status = span == SIZE_MAX ? CL_INVALID_VALUE : CL_MAP_FAILURE;
        else
            m->owned = 1;
    }
    if (status == CL_SUCCESS) {
        if (map_flags & CL_MAP_WRITE_INVALIDATE_REGION)
            status = ava_clEnqueueMarkerWithWaitList(queue, num_events_in_wait_list,
                                                     event_wait_list, event);
        else if (x->flags & CL_MEM_HOST_WRITE_ONLY)
            status = read_image_host_write_only(queue, image, x, origin, region, row, slice,
                                                ptr, num_events_in_wait_list,
                                                event_wait_list, event);
        else
            status = ava_clEnqueueReadImage(queue, image, map_blocks(blocking_map, map_flags),
                                            origin, region, row, slice, ptr,
                                            num_events_in_wait_list, event_wait_list, event);
    }
    if (status == CL_SUCCESS) {
        m->flags = map_flags;
        m->image = 1;
        memcpy(m->origin, origin, sizeof(m->origin));
        memcpy(m->region, region, sizeof(m->region));
        m->row = row;
        m->slice = slice;
        *image_row_pitch = row;
        if (image_slice_pitch)
            *image_slice_pitch = slice;
    }
    return map_finish(x, m, ptr, status, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL
ava_clSetMemObjectDestructorCallback(cl_mem memobj, void (CL_CALLBACK *pfn_notify)(cl_mem, void *),
                                     void *user_data)
{
    struct mem_ext *x = ava_obj_ext(memobj, AVA_OBJ_MEM);
    if (!x)
        return CL_INVALID_MEM_OBJECT;
    if (!pfn_notify)
        return CL_INVALID_VALUE;
    struct mem_notify *n = malloc(sizeof(*n));
    if (!n)
        return CL_OUT_OF_HOST_MEMORY;
    n->fn = pfn_notify;
    n->data = user_data;
    pthread_mutex_lock(&mem_lock);
    n->next = x->notify;
    x->notify = n;
    pthread_mutex_unlock(&mem_lock);
    return CL_SUCCESS;
}

/* The fields read are set before the object is handed out and never change. */
int ava_mem_arg_class(const void *mem, uint64_t w[6])
{
    const struct mem_ext *x = ava_obj_ext(mem, AVA_OBJ_MEM);
    if (!x || !x->context_id)
        return -1;
    w[0] = x->flags;
    w[1] = x->size;
    w[2] = x->context_id;
    w[3] = x->parent_id;
    w[4] = x->origin;
    w[5] = x->image_type;
    return 0;
}

/* The last reference went (ava_obj_release): destructor callbacks newest first,
 * then what the object kept. */
void ava_ext_final(int type, void *obj, void *ext)
{
    if (type == AVA_OBJ_CONTEXT)
        ava_context_final(obj, ext);
    if (type == AVA_OBJ_KERNEL)
        ava_kernel_final(ext);
    if (type != AVA_OBJ_MEM)
        return;
    struct mem_ext *x = ext;
    for (struct mem_notify *n = x->notify, *next; n; n = next) {
        next = n->next;
        n->fn((cl_mem)obj, n->data);
        free(n);
    }
    for (struct mapping *m = x->maps, *next; m; m = next) {
        next = m->next;
        mapping_release(m, m->ptr);
        free(m);
    }
    free(x);
}
