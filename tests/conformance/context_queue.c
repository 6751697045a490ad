#include "common.h"

int main(void)
{
    if (setup()) return 1;
    cl_int err = 0;
    cl_context_properties bad_props[] = {0x7777, 1, 0};
    cl_context c;
    c = clCreateContext(NULL, 0, &device, NULL, NULL, &err); if (c) clReleaseContext(c);
    CASE("CreateContext(0 devices)", err);
    c = clCreateContext(NULL, 1, NULL, NULL, NULL, &err); if (c) clReleaseContext(c);
    CASE("CreateContext(NULL devices)", err);
    c = clCreateContext(bad_props, 1, &device, NULL, NULL, &err); if (c) clReleaseContext(c);
    CASE("CreateContext(bad property)", err);
    /* (clCreateContextFromType with type 0 aborts PoCL 3.1 natively: not compared) */
    CASE("RetainContext(NULL)", clRetainContext(NULL));
    CASE("ReleaseContext(NULL)", clReleaseContext(NULL));
    CASE("GetContextInfo(bad param)", clGetContextInfo(context, 0x7777, 0, NULL, NULL));
    cl_command_queue q;
    q = clCreateCommandQueue(NULL, device, 0, &err); if (q) clReleaseCommandQueue(q);
    CASE("CreateCommandQueue(NULL context)", err);
    q = clCreateCommandQueue(context, NULL, 0, &err); if (q) clReleaseCommandQueue(q);
    CASE("CreateCommandQueue(NULL device)", err);
    q = clCreateCommandQueue(context, device, 0x7777, &err); if (q) clReleaseCommandQueue(q);
    CASE("CreateCommandQueue(bad properties)", err);
    cl_queue_properties qp[] = {0x7777, 0, 0};
    q = clCreateCommandQueueWithProperties(context, device, qp, &err); if (q) clReleaseCommandQueue(q);
    CASE("CreateCommandQueueWithProperties(bad)", err);
    CASE("GetCommandQueueInfo(bad param)", clGetCommandQueueInfo(queue, 0x7777, 0, NULL, NULL));
    CASE("Flush(NULL)", clFlush(NULL));
    CASE("Finish(NULL)", clFinish(NULL));
    return 0;
}
