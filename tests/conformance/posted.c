/* Calls the guest posts without waiting (clSetKernelArg and launches that succeeded
 * the same way before): each case runs several times, so through the device the
 * first goes by round trip and the rest are posted, and every status, error cases
 * included, must read as natively.  Results are read back to show posted work ran,
 * in order, also when another thread posted it. */
#define CL_USE_DEPRECATED_OPENCL_1_1_APIS
#include <pthread.h>

#include "common.h"

static const char *SRC =
    "__kernel void k(__global int *a, __global const int *b, int add, float f,"
    "                __local int *scratch)"
    "{ size_t i = get_global_id(0); scratch[get_local_id(0)] = b ? b[0] : 0;"
    "  a[i] += add + (int)f + scratch[get_local_id(0)]; }\n"
    "__kernel void s(__global int *a, sampler_t smp) { a[0] = 1; }\n";

static cl_program program;
static cl_kernel kern;
static cl_mem a, b;

static int sum_a(void)
{
    int host[64], total = 0;
    if (clEnqueueReadBuffer(queue, a, CL_TRUE, 0, sizeof(host), host, 0, NULL, NULL))
        return -1;
    for (int i = 0; i < 64; i++)
        total += host[i];
    return total;
}

static void set_all(int add)
{
    float f = 1.0f;
    CASE("  set a", clSetKernelArg(kern, 0, sizeof(cl_mem), &a));
    CASE("  set b", clSetKernelArg(kern, 1, sizeof(cl_mem), &b));
    CASE("  set add", clSetKernelArg(kern, 2, sizeof(int), &add));
    CASE("  set f", clSetKernelArg(kern, 3, sizeof(float), &f));
    CASE("  set scratch (local)", clSetKernelArg(kern, 4, 16 * sizeof(int), NULL));
}

static void *other_thread(void *arg)
{
    (void)arg;
    int add = 100;
    /* Posted on this thread's queue; the main thread's launch must see it. */
    for (int i = 0; i < 3; i++)
        clSetKernelArg(kern, 2, sizeof(int), &add);
    return NULL;
}

int main(void)
{
    if (setup())
        return 1;
    cl_int err;
    program = clCreateProgramWithSource(context, 1, &SRC, NULL, &err);
    CASE("create program", err);
    CASE("build", clBuildProgram(program, 1, &device, "", NULL, NULL));
    kern = clCreateKernel(program, "k", &err);
    CASE("create kernel", err);
    int zeros[64] = {0}, ones[64];
    for (int i = 0; i < 64; i++)
        ones[i] = 1;
    a = clCreateBuffer(context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, sizeof(zeros), zeros,
                       &err);
    b = clCreateBuffer(context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof(ones), ones, &err);
    cl_sampler smp = clCreateSampler(context, CL_FALSE, CL_ADDRESS_NONE, CL_FILTER_NEAREST, &err);
    CASE("create sampler", err);
    size_t g = 64, l = 16, bad_l = 7, zero = 0, big_l = 1 << 20;

    printf("-- arguments left unset, then set one by one\n");
    for (int r = 0; r < 3; r++)
        CASE("launch with no argument set", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g, &l,
                                                                    0, NULL, NULL));
    for (int r = 0; r < 3; r++) {
        int add = 2;
        CASE(" set a", clSetKernelArg(kern, 0, sizeof(cl_mem), &a));
        CASE(" set b", clSetKernelArg(kern, 1, sizeof(cl_mem), &b));
        CASE(" set add", clSetKernelArg(kern, 2, sizeof(int), &add));
        CASE("launch with three of five set", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g,
                                                                      &l, 0, NULL, NULL));
    }

    printf("-- bad arguments, each several times\n");
    for (int r = 0; r < 3; r++) {
        int add = 1;
        long wide = 1;
        CASE("index past the last", clSetKernelArg(kern, 5, sizeof(int), &add));
        CASE("index far past the last", clSetKernelArg(kern, 1000, sizeof(int), &add));
        CASE("int argument, 8 bytes", clSetKernelArg(kern, 2, sizeof(long), &wide));
        CASE("int argument, 0 bytes", clSetKernelArg(kern, 2, 0, &add));
        CASE("int argument, NULL value", clSetKernelArg(kern, 2, sizeof(int), NULL));
        CASE("buffer argument, 4 bytes", clSetKernelArg(kern, 0, sizeof(int), &add));
        CASE("local argument, 0 bytes", clSetKernelArg(kern, 4, 0, NULL));
        CASE("local argument, a value", clSetKernelArg(kern, 4, sizeof(int), &add));
        CASE("NULL kernel", clSetKernelArg(NULL, 0, sizeof(cl_mem), &a));
        CASE("buffer argument, NULL buffer", clSetKernelArg(kern, 0, sizeof(cl_mem), NULL));
    }
    printf("-- after failures the arguments are set again, launches run\n");
    for (int r = 0; r < 3; r++) {
        set_all(1);
        CASE("launch", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g, &l, 0, NULL, NULL));
    }
    CASE("finish", clFinish(queue));
    CASE("sum after three launches", sum_a());

    printf("-- bad launches, each several times\n");
    for (int r = 0; r < 3; r++) {
        CASE("global size 0", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &zero, &l, 0, NULL,
                                                      NULL));
        CASE("local size not dividing", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g, &bad_l,
                                                                0, NULL, NULL));
        CASE("local size past the device's", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g,
                                                                     &big_l, 0, NULL, NULL));
        CASE("NULL queue", clEnqueueNDRangeKernel(NULL, kern, 1, NULL, &g, &l, 0, NULL, NULL));
    }

    printf("-- good launches with events, offsets, no local size\n");
    size_t off = 0;
    for (int r = 0; r < 3; r++) {
        cl_event ev = NULL;
        CASE("launch with an event", clEnqueueNDRangeKernel(queue, kern, 1, &off, &g, NULL, 0,
                                                             NULL, &ev));
        CASE("  wait for it", clWaitForEvents(1, &ev));
        cl_int state = 1;
        CASE("  its status query", clGetEventInfo(ev, CL_EVENT_COMMAND_EXECUTION_STATUS,
                                                  sizeof(state), &state, NULL));
        CASE("  its status", state);
        CASE("  release it", clReleaseEvent(ev));
        CASE("launch as a task (not 1x1x1 local)", clEnqueueTask(queue, kern, 0, NULL, NULL));
    }
    CASE("finish", clFinish(queue));
    CASE("sum after three more", sum_a());

    printf("-- an argument changed to another class between launches\n");
    cl_mem small = clCreateBuffer(context, CL_MEM_READ_WRITE, 16, NULL, &err);
    for (int r = 0; r < 3; r++) {
        set_all(0);
        CASE("launch", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g, &l, 0, NULL, NULL));
        CASE("  b a sub-sized buffer", clSetKernelArg(kern, 1, sizeof(cl_mem), &small));
        CASE("  launch", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g, &l, 0, NULL, NULL));
        CASE("  b NULL", clSetKernelArg(kern, 1, sizeof(cl_mem), NULL));
        CASE("  launch", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g, &l, 0, NULL, NULL));
    }
    CASE("finish", clFinish(queue));
    /* b was NULL in the last launch: what a read shows after that is the
     * implementation's to decide, so only the status is compared. */
    int host[64];
    CASE("read back", clEnqueueReadBuffer(queue, a, CL_TRUE, 0, sizeof(host), host, 0, NULL,
                                          NULL));

    printf("-- a sampler argument\n");
    cl_kernel ks = clCreateKernel(program, "s", &err);
    CASE("create kernel s", err);
    for (int r = 0; r < 3; r++) {
        CASE("s: buffer", clSetKernelArg(ks, 0, sizeof(cl_mem), &a));
        CASE("s: sampler", clSetKernelArg(ks, 1, sizeof(cl_sampler), &smp));
        CASE("s: launch again", clEnqueueTask(queue, ks, 0, NULL, NULL));
        CASE("s: sampler again", clSetKernelArg(ks, 1, sizeof(cl_sampler), &smp));
        CASE("s: launch", clEnqueueTask(queue, ks, 0, NULL, NULL));
    }
    CASE("finish", clFinish(queue));

    printf("-- copies, fills, markers and barriers, good and bad, each several times\n");
    cl_mem c = clCreateBuffer(context, CL_MEM_READ_WRITE, sizeof(zeros), NULL, &err);
    int pattern = 7;
    for (int r = 0; r < 3; r++) {
        CASE("fill", clEnqueueFillBuffer(queue, c, &pattern, sizeof(int), 0, sizeof(zeros), 0,
                                         NULL, NULL));
        CASE("fill, pattern size 3", clEnqueueFillBuffer(queue, c, &pattern, 3, 0, 12, 0, NULL,
                                                         NULL));
        CASE("fill past the end", clEnqueueFillBuffer(queue, c, &pattern, sizeof(int), 4,
                                                      sizeof(zeros), 0, NULL, NULL));
        CASE("copy c to a", clEnqueueCopyBuffer(queue, c, a, 0, 0, sizeof(zeros), 0, NULL,
                                                NULL));
        CASE("copy past the end", clEnqueueCopyBuffer(queue, c, a, 8, 0, sizeof(zeros), 0, NULL,
                                                      NULL));
        CASE("copy onto itself, overlapping", clEnqueueCopyBuffer(queue, c, c, 0, 4, 16, 0,
                                                                  NULL, NULL));
        cl_event ev = NULL;
        CASE("marker with an event", clEnqueueMarkerWithWaitList(queue, 0, NULL, &ev));
        CASE("  wait for it", clWaitForEvents(1, &ev));
        CASE("  release it", clReleaseEvent(ev));
        CASE("barrier", clEnqueueBarrierWithWaitList(queue, 0, NULL, NULL));
        CASE("1.1 marker", clEnqueueMarker(queue, &ev));
        CASE("  release it", clReleaseEvent(ev));
        CASE("1.1 marker without an event", clEnqueueMarker(queue, NULL));
        CASE("1.1 barrier", clEnqueueBarrier(queue));
        CASE("marker on a NULL queue", clEnqueueMarkerWithWaitList(NULL, 0, NULL, NULL));
    }
    CASE("finish", clFinish(queue));
    CASE("sum after the copies (7 each)", sum_a());
    CASE("release c", clReleaseMemObject(c));

    printf("-- another thread's posted argument comes first\n");
    int reset[64] = {0};
    CASE("reset a", clEnqueueWriteBuffer(queue, a, CL_TRUE, 0, sizeof(reset), reset, 0, NULL,
                                         NULL));
    set_all(0);
    pthread_t t;
    pthread_create(&t, NULL, other_thread, NULL);
    pthread_join(t, NULL);
    CASE("launch after the other thread set add", clEnqueueNDRangeKernel(queue, kern, 1, NULL,
                                                                         &g, &l, 0, NULL, NULL));
    CASE("sum (add = 100 from the other thread)", sum_a());

    /* Set again to the value it holds, an argument is not sent through the device
     * (nothing would change); another object is, even at the address of one released
     * (the allocator gives it again, natively and in the guest). */
    printf("-- arguments set again to the values they hold, and to new buffers\n");
    for (int r = 0; r < 3; r++) {
        int add = r + 1;
        set_all(add);
        CASE("launch", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g, &l, 0, NULL, NULL));
        CASE("  set add again, the same", clSetKernelArg(kern, 2, sizeof(int), &add));
        CASE("  launch", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g, &l, 0, NULL, NULL));
    }
    CASE("sum", sum_a());
    for (int r = 0; r < 3; r++) {
        CASE("release a", clReleaseMemObject(a));
        a = clCreateBuffer(context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, sizeof(zeros),
                           zeros, &err);
        CASE("  another a", err);
        set_all(r);
        CASE("  launch on it", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g, &l, 0, NULL,
                                                      NULL));
        CASE("  its sum", sum_a());
    }
    CASE("release kernel", clReleaseKernel(kern));
    CASE("release kernel s", clReleaseKernel(ks));
    return 0;
}
