#include "common.h"

/* Native kernels: a host (here: guest) function run on a buffer's memory. */
struct native_args {
    int *data;
    int add;
};

static void CL_CALLBACK add_to_all(void *p)
{
    struct native_args *a = p;
    for (int i = 0; i < 16; i++)
        a->data[i] += a->add;
}

int main(void)
{
    if (setup()) return 1;
    cl_int err;
    int v[16];
    for (int i = 0; i < 16; i++) v[i] = i;
    cl_mem buf = clCreateBuffer(context, CL_MEM_COPY_HOST_PTR, sizeof(v), v, &err);
    int pattern = 100;
    clEnqueueFillBuffer(queue, buf, &pattern, sizeof(int), 0, 4 * sizeof(int), 0, NULL, NULL);
    struct native_args a = {NULL, 7};
    const void *loc[1] = {&a.data};
    cl_event ev = NULL;
    CASE("EnqueueNativeKernel", clEnqueueNativeKernel(queue, add_to_all, &a, sizeof(a), 1, &buf, loc, 0, NULL, &ev));
    CASE("its event", clWaitForEvents(1, &ev));
    cl_int st = 99;
    clGetEventInfo(ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof(st), &st, NULL);
    CASE("event status", st);
    clReleaseEvent(ev);
    clEnqueueReadBuffer(queue, buf, CL_TRUE, 0, sizeof(v), v, 0, NULL, NULL);
    CASE("after the fill and the native kernel", v[0] * 1000 + v[15]);
    CASE("caller's args untouched", a.data == NULL);
    CASE("EnqueueNativeKernel(NULL func)", clEnqueueNativeKernel(queue, NULL, &a, sizeof(a), 1, &buf, loc, 0, NULL, NULL));
    CASE("EnqueueNativeKernel(args, size 0)", clEnqueueNativeKernel(queue, add_to_all, &a, 0, 0, NULL, NULL, 0, NULL, NULL));
    CASE("EnqueueNativeKernel(mems without locs)", clEnqueueNativeKernel(queue, add_to_all, &a, sizeof(a), 1, &buf, NULL, 0, NULL, NULL));
    CASE("EnqueueNativeKernel(NULL queue)", clEnqueueNativeKernel(NULL, add_to_all, &a, sizeof(a), 1, &buf, loc, 0, NULL, NULL));
    CASE("EnqueueNativeKernel(wait list mismatch)", clEnqueueNativeKernel(queue, add_to_all, &a, sizeof(a), 1, &buf, loc, 1, NULL, NULL));
    clReleaseMemObject(buf);
    return 0;
}
