/* Native kernels (guest functions run in the guest) and the 1.1 wait-for-events command. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ava_icd.h"
#include "ava_icd_gen.h"
#include "icd_compose.h"

/* ---- native kernels ------------------------------------------------------------------ */

/* A native kernel is a guest function: it runs here, on the calling thread, once the
 * commands before it are done.  Its buffers are mapped for it (the pointers patched
 * into its copy of the arguments, as the spec describes) and written back after. */
CL_API_ENTRY cl_int CL_API_CALL
ava_clEnqueueNativeKernel(cl_command_queue queue, void (CL_CALLBACK *user_func)(void *),
                          void *args, size_t cb_args, cl_uint num_mem_objects,
                          const cl_mem *mem_list, const void **args_mem_loc,
                          cl_uint num_events_in_wait_list, const cl_event *event_wait_list,
                          cl_event *event)
{
    if (!ava_obj_is(queue, AVA_OBJ_COMMAND_QUEUE))
        return CL_INVALID_COMMAND_QUEUE;
    if (!user_func || (!args && cb_args) || (args && !cb_args) ||
        (num_mem_objects && (!mem_list || !args_mem_loc)) || (!num_mem_objects && (mem_list || args_mem_loc)))
        return CL_INVALID_VALUE;
    if ((num_events_in_wait_list && !event_wait_list) || (!num_events_in_wait_list && event_wait_list))
        return CL_INVALID_EVENT_WAIT_LIST;
    cl_device_id device = NULL;
    cl_device_exec_capabilities caps = 0;
    cl_int status = ava_clGetCommandQueueInfo(queue, CL_QUEUE_DEVICE, sizeof(device), &device, NULL);
    if (status == CL_SUCCESS)
        status = ava_clGetDeviceInfo(device, CL_DEVICE_EXECUTION_CAPABILITIES, sizeof(caps), &caps, NULL);
    if (status != CL_SUCCESS)
        return status;
    if (!(caps & CL_EXEC_NATIVE_KERNEL))
        return CL_INVALID_OPERATION;
    for (cl_uint i = 0; i < num_mem_objects; i++) {
        if (!ava_obj_ext(mem_list[i], AVA_OBJ_MEM))
            return CL_INVALID_MEM_OBJECT;
        const char *loc = args_mem_loc[i];
        if (!loc || loc < (const char *)args || loc + sizeof(void *) > (const char *)args + cb_args)
            return CL_INVALID_VALUE;
    }
    char *copy = malloc(cb_args ? cb_args : 1);
    void **mapped = calloc(num_mem_objects ? num_mem_objects : 1, sizeof(void *));
    if (!copy || !mapped) {
        free(copy);
        free(mapped);
        return CL_OUT_OF_HOST_MEMORY;
    }
    if (cb_args)
        memcpy(copy, args, cb_args);
    if (num_events_in_wait_list)
        status = ava_clWaitForEvents(num_events_in_wait_list, event_wait_list);
    cl_uint n = 0;
    for (; status == CL_SUCCESS && n < num_mem_objects; n++) {
        size_t size = 0;
        status = ava_clGetMemObjectInfo(mem_list[n], CL_MEM_SIZE, sizeof(size), &size, NULL);
        if (status == CL_SUCCESS)
            mapped[n] = ava_clEnqueueMapBuffer(queue, mem_list[n], CL_TRUE, CL_MAP_READ | CL_MAP_WRITE,
                                               0, size, 0, NULL, NULL, &status);
        if (status == CL_SUCCESS)
            memcpy(copy + ((const char *)args_mem_loc[n] - (const char *)args), &mapped[n],
                   sizeof(void *));
        else
            break;
    }
    if (status == CL_SUCCESS)
        user_func(cb_args ? copy : NULL);
    for (cl_uint i = 0; i < n; i++) {
        cl_int unmapped = ava_clEnqueueUnmapMemObject(queue, mem_list[i], mapped[i], 0, NULL, NULL);
        if (status == CL_SUCCESS)
            status = unmapped;
    }
    if (status == CL_SUCCESS)        /* an event that is complete, like the command */
        status = ava_clEnqueueMarkerWithWaitList(queue, 0, NULL, event);
    free(copy);
    free(mapped);
    return status;
}

/* OpenCL 1.1's wait-for-events command is a barrier on those events (PoCL has no
 * implementation of it and would end the host's server). */
CL_API_ENTRY cl_int CL_API_CALL
ava_clEnqueueWaitForEvents(cl_command_queue queue, cl_uint num_events, const cl_event *event_list)
{
    if (!ava_obj_is(queue, AVA_OBJ_COMMAND_QUEUE))
        return CL_INVALID_COMMAND_QUEUE;
    if (!num_events || !event_list)
        return CL_INVALID_VALUE;
    return ava_clEnqueueBarrierWithWaitList(queue, num_events, event_list, NULL);
}
