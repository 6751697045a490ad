/* clbench: OpenCL call costs an application sees, for native-vs-device comparisons.
 * Prints one JSON line: info-query latency, small-kernel enqueue+finish latency,
 * 64 MiB write and read bandwidth. */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

#define CHECK(x) do { cl_int e_ = (x); if (e_) { fprintf(stderr, "%s = %d\n", #x, e_); return 1; } } while (0)

int main(void)
{
    cl_platform_id p;
    cl_device_id d;
    cl_int err;
    CHECK(clGetPlatformIDs(1, &p, NULL));
    CHECK(clGetDeviceIDs(p, CL_DEVICE_TYPE_ALL, 1, &d, NULL));
    char name[256];
    CHECK(clGetDeviceInfo(d, CL_DEVICE_NAME, sizeof(name), name, NULL));
    cl_context ctx = clCreateContext(NULL, 1, &d, NULL, NULL, &err);
    CHECK(err);
    cl_command_queue q = clCreateCommandQueue(ctx, d, 0, &err);
    CHECK(err);
    int n = 5000;
    double t0 = now();
    for (int i = 0; i < n; i++) {
        cl_uint units;
        CHECK(clGetDeviceInfo(d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof(units), &units, NULL));
    }
    double info_us = (now() - t0) * 1e6 / n;
    /* A param that can change (a reference count) is asked of the host every time. */
    t0 = now();
    for (int i = 0; i < n; i++) {
        cl_uint refs;
        CHECK(clGetContextInfo(ctx, CL_CONTEXT_REFERENCE_COUNT, sizeof(refs), &refs, NULL));
    }
    double forwarded_us = (now() - t0) * 1e6 / n;
    const char *src = "__kernel void inc(__global int *a) { a[get_global_id(0)] += 1; }";
    cl_program prog = clCreateProgramWithSource(ctx, 1, &src, NULL, &err);
    CHECK(err);
    CHECK(clBuildProgram(prog, 1, &d, "", NULL, NULL));
    cl_kernel k = clCreateKernel(prog, "inc", &err);
    CHECK(err);
    cl_mem small = clCreateBuffer(ctx, CL_MEM_READ_WRITE, 4096, NULL, &err);
    CHECK(err);
    CHECK(clSetKernelArg(k, 0, sizeof(small), &small));
    size_t g = 1024;
    int m = 2000;
    CHECK(clEnqueueNDRangeKernel(q, k, 1, NULL, &g, NULL, 0, NULL, NULL));
    CHECK(clFinish(q));
    t0 = now();
    for (int i = 0; i < m; i++) {
        CHECK(clEnqueueNDRangeKernel(q, k, 1, NULL, &g, NULL, 0, NULL, NULL));
        CHECK(clFinish(q));
    }
    double launch_us = (now() - t0) * 1e6 / m;
    size_t big = 64u << 20;
    char *host = malloc(big);
    memset(host, 1, big);
    cl_mem dev = clCreateBuffer(ctx, CL_MEM_READ_WRITE, big, NULL, &err);
    CHECK(err);
    CHECK(clEnqueueWriteBuffer(q, dev, CL_TRUE, 0, big, host, 0, NULL, NULL));
    int reps = 5;
    t0 = now();
    for (int i = 0; i < reps; i++)
        CHECK(clEnqueueWriteBuffer(q, dev, CL_TRUE, 0, big, host, 0, NULL, NULL));
    double write_gbs = big * (double)reps / (now() - t0) / 1e9;
    t0 = now();
    for (int i = 0; i < reps; i++)
        CHECK(clEnqueueReadBuffer(q, dev, CL_TRUE, 0, big, host, 0, NULL, NULL));
    double read_gbs = big * (double)reps / (now() - t0) / 1e9;
    printf("{\"device\": \"%s\", \"info_query_us\": %.4f, \"forwarded_info_us\": %.4f, "
           "\"kernel_launch_finish_us\": %.2f, "
           "\"write_64m_gbs\": %.2f, \"read_64m_gbs\": %.2f}\n", name, info_us, forwarded_us, launch_us,
           write_gbs, read_gbs);
    return 0;
}
