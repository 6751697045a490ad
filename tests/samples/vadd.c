/* A plain OpenCL program (no ava-vdev knowledge): vector add with events, a
 * sub-buffer, a fill and profiling; checks its own results and error codes. */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(x) do { cl_int e_ = (x); if (e_ != CL_SUCCESS) { \
    fprintf(stderr, "%s:%d: %s = %d\n", __FILE__, __LINE__, #x, e_); return 1; } } while (0)

static const char *src =
    "__kernel void add(__global const float *a, __global const float *b, __global float *c,\n"
    "                  float k) { size_t i = get_global_id(0); c[i] = a[i] + k * b[i]; }\n";

int main(void)
{
    cl_platform_id platform;
    cl_device_id device;
    cl_uint n;
    cl_int err;
    CHECK(clGetPlatformIDs(1, &platform, &n));
    CHECK(clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 1, &device, NULL));
    char name[256];
    CHECK(clGetDeviceInfo(device, CL_DEVICE_NAME, sizeof(name), name, NULL));
    printf("device: %s\n", name);
    cl_context ctx = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    CHECK(err);
    cl_command_queue q = clCreateCommandQueue(ctx, device, CL_QUEUE_PROFILING_ENABLE, &err);
    CHECK(err);
    enum { N = 1 << 20 };
    float *a = malloc(N * sizeof(float)), *b = malloc(N * sizeof(float)), *c = malloc(N * sizeof(float));
    for (int i = 0; i < N; i++) { a[i] = (float)i; b[i] = (float)(N - i); }
    cl_mem da = clCreateBuffer(ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, N * sizeof(float), a, &err);
    CHECK(err);
    cl_mem db = clCreateBuffer(ctx, CL_MEM_READ_ONLY, N * sizeof(float), NULL, &err);
    CHECK(err);
    cl_mem dc = clCreateBuffer(ctx, CL_MEM_WRITE_ONLY, N * sizeof(float), NULL, &err);
    CHECK(err);
    cl_event wrote, ran;
    CHECK(clEnqueueWriteBuffer(q, db, CL_FALSE, 0, N * sizeof(float), b, 0, NULL, &wrote));
    cl_program prog = clCreateProgramWithSource(ctx, 1, &src, NULL, &err);
    CHECK(err);
    CHECK(clBuildProgram(prog, 1, &device, "", NULL, NULL));
    cl_kernel k = clCreateKernel(prog, "add", &err);
    CHECK(err);
    float two = 2.0f;
    CHECK(clSetKernelArg(k, 0, sizeof(cl_mem), &da));
    CHECK(clSetKernelArg(k, 1, sizeof(cl_mem), &db));
    CHECK(clSetKernelArg(k, 2, sizeof(cl_mem), &dc));
    CHECK(clSetKernelArg(k, 3, sizeof(float), &two));
    if (clSetKernelArg(k, 4, sizeof(float), &two) != CL_INVALID_ARG_INDEX) {
        fprintf(stderr, "expected CL_INVALID_ARG_INDEX\n");
        return 1;
    }
    size_t global = N;
    CHECK(clEnqueueNDRangeKernel(q, k, 1, NULL, &global, NULL, 1, &wrote, &ran));
    CHECK(clEnqueueReadBuffer(q, dc, CL_TRUE, 0, N * sizeof(float), c, 1, &ran, NULL));
    for (int i = 0; i < N; i++)
        if (c[i] != a[i] + 2.0f * b[i]) { fprintf(stderr, "c[%d] = %f\n", i, c[i]); return 1; }
    cl_ulong t0, t1;
    CHECK(clGetEventProfilingInfo(ran, CL_PROFILING_COMMAND_START, sizeof(t0), &t0, NULL));
    CHECK(clGetEventProfilingInfo(ran, CL_PROFILING_COMMAND_END, sizeof(t1), &t1, NULL));
    /* a sub-buffer and a fill */
    cl_buffer_region region = {4096, 4096};
    cl_mem sub = clCreateSubBuffer(dc, CL_MEM_WRITE_ONLY, CL_BUFFER_CREATE_TYPE_REGION, &region, &err);
    CHECK(err);
    float seven = 7.0f;
    CHECK(clEnqueueFillBuffer(q, sub, &seven, sizeof(seven), 0, 4096, 0, NULL, NULL));
    CHECK(clEnqueueReadBuffer(q, dc, CL_TRUE, 0, 3 * 4096, c, 0, NULL, NULL));
    if (c[1023] == 7.0f || c[1024] != 7.0f || c[2047] != 7.0f || c[2048] == 7.0f) {
        fprintf(stderr, "sub-buffer fill landed in the wrong place\n");
        return 1;
    }
    if (clReleaseMemObject(NULL) != CL_INVALID_MEM_OBJECT) {
        fprintf(stderr, "expected CL_INVALID_MEM_OBJECT\n");
        return 1;
    }
    CHECK(clReleaseMemObject(sub));
    CHECK(clReleaseEvent(wrote));
    CHECK(clReleaseEvent(ran));
    CHECK(clReleaseKernel(k));
    CHECK(clReleaseProgram(prog));
    CHECK(clReleaseMemObject(da));
    CHECK(clReleaseMemObject(db));
    CHECK(clReleaseMemObject(dc));
    CHECK(clReleaseCommandQueue(q));
    CHECK(clReleaseContext(ctx));
    printf("vadd: %d elements correct, kernel %.3f ms\n", N, (t1 - t0) / 1e6);
    return 0;
}
