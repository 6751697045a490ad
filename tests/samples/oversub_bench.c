/* The oversubscription benchmark's workload (python -m vdev.bench oversub runs it).
 *
 *   oversub_bench CAPACITY_BYTES RATIO sweep|hotcold
 *
 * Buffers of CAPACITY/8 bytes, RATIO x CAPACITY of them in all (the working set).
 *   sweep:   every buffer is hot: passes of a kernel over each buffer in turn, 256
 *            launches in all (at least 8 passes).
 *   hotcold: two buffers (a quarter of the capacity) are hot, the rest cold: 128
 *            steps, each running the kernel 4 times over each hot buffer, and every
 *            32nd step once over the next cold buffer (one cold access in 257).
 * The kernel is a[i] = a[i] * 3 + 1 over 32-bit words; every word is checked at the
 * end against the same recurrence on the host.  Prints one JSON line: seconds for
 * the kernels (creation and checks excluded), bytes the kernels went over, and
 * whether every result was right. */
#define CL_TARGET_OPENCL_VERSION 300
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#include <CL/cl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *SOURCE =
    "__kernel void advance(__global uint *a) { size_t i = get_global_id(0); a[i] = a[i] * 3u + 1u; }\n";

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static cl_uint seed(int buffer, size_t word)
{
    return (cl_uint)(buffer * 1000003u + word);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: oversub_bench CAPACITY_BYTES RATIO sweep|hotcold\n");
        return 2;
    }
    size_t capacity = strtoull(argv[1], NULL, 10);
    double ratio = atof(argv[2]);
    int hotcold = !strcmp(argv[3], "hotcold");
    size_t size = capacity / 8, words = size / 4;
    int count = (int)(ratio * 8 + 0.5);
    if (count < (hotcold ? 3 : 1))
        count = hotcold ? 3 : 1;
    cl_platform_id platform;
    cl_device_id device;
    cl_int err;
    if (clGetPlatformIDs(1, &platform, NULL) || clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 1, &device, NULL))
        return 1;
    cl_context ctx = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    cl_command_queue q = clCreateCommandQueue(ctx, device, 0, &err);
    cl_program prog = clCreateProgramWithSource(ctx, 1, &SOURCE, NULL, &err);
    if (clBuildProgram(prog, 1, &device, "", NULL, NULL))
        return 1;
    cl_kernel kernel = clCreateKernel(prog, "advance", &err);
    cl_uint *host = malloc(size);
    cl_mem *bufs = calloc((size_t)count, sizeof(cl_mem));
    int *runs = calloc((size_t)count, sizeof(int));
    for (int b = 0; b < count; b++) {
        for (size_t i = 0; i < words; i++)
            host[i] = seed(b, i);
        bufs[b] = clCreateBuffer(ctx, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, size, host, &err);
        if (err) {
            printf("{\"error\": %d}\n", err);
            return 1;
        }
    }
    long launches = 0;
#define RUN(b) do { clSetKernelArg(kernel, 0, sizeof(cl_mem), &bufs[b]); \
        err = clEnqueueNDRangeKernel(q, kernel, 1, NULL, &words, NULL, 0, NULL, NULL); \
        if (err) { printf("{\"error\": %d}\n", err); return 1; } runs[b]++; launches++; } while (0)
    RUN(0);                 /* warm: the first launch compiles for the device */
    clFinish(q);
    launches = 0;
    double start = now();
    if (!hotcold) {
        int passes = count < 32 ? 256 / count : 8;
        for (int pass = 0; pass < passes; pass++)
            for (int b = 0; b < count; b++)
                RUN(b);
    } else {
        int cold = count - 2, next = 0;
        for (int step = 0; step < 128; step++) {
            for (int k = 0; k < 4; k++) {
                RUN(0);
                RUN(1);
            }
            if (step % 32 == 31) {
                RUN(2 + next);
                next = (next + 1) % cold;
            }
        }
    }
    clFinish(q);
    double seconds = now() - start;
    int correct = 1;
    for (int b = 0; b < count && correct; b++) {
        if (clEnqueueReadBuffer(q, bufs[b], CL_TRUE, 0, size, host, 0, NULL, NULL))
            correct = 0;
        for (size_t i = 0; i < words && correct; i++) {
            cl_uint want = seed(b, i);
            for (int r = 0; r < runs[b]; r++)
                want = want * 3u + 1u;
            correct = host[i] == want;
        }
    }
    printf("{\"seconds\": %.6f, \"bytes\": %zu, \"launches\": %ld, \"buffers\": %d, "
           "\"working_set\": %zu, \"correct\": %s}\n", seconds, (size_t)launches * size, launches,
           count, (size_t)count * size, correct ? "true" : "false");
    for (int b = 0; b < count; b++)
        clReleaseMemObject(bufs[b]);
    clReleaseKernel(kernel);
    clReleaseProgram(prog);
    clReleaseCommandQueue(q);
    clReleaseContext(ctx);
    return correct ? 0 : 3;
}
