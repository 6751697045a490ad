/* tenant_load: one tenant's workload for `python -m vdev.bench tenants`.
 *
 *   tenant_load MODE ITERATIONS SECONDS
 *
 * MODE interactive: a small kernel launch, then clFinish, again and again; every
 * launch's latency (launch to finish) is kept.  MODE batch: kernels of ITERATIONS
 * loop steps per work-item back to back, two in the queue at a time.  Runs for
 * SECONDS, then prints one JSON line: launches, kernel work done (launches times
 * ITERATIONS), seconds, and (interactive) the latencies in microseconds, sorted. */
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

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define CHECK(x) do { cl_int e_ = (x); if (e_) { fprintf(stderr, "%s = %d\n", #x, e_); return 1; } } while (0)

static const char *SOURCE =
    "__kernel void spin(__global float *a, int n) {\n"
    "    int i = get_global_id(0); float x = a[i];\n"
    "    for (int j = 0; j < n; j++) x = x * 1.0001f + 0.5f;\n"
    "    a[i] = x;\n"
    "}\n";

int main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[1], "interactive") && strcmp(argv[1], "batch"))) {
        fprintf(stderr, "usage: %s interactive|batch ITERATIONS SECONDS\n", argv[0]);
        return 2;
    }
    int interactive = !strcmp(argv[1], "interactive");
    cl_int iterations = atoi(argv[2]);
    double seconds = atof(argv[3]);
    cl_platform_id p;
    cl_device_id d;
    cl_int err;
    CHECK(clGetPlatformIDs(1, &p, NULL));
    CHECK(clGetDeviceIDs(p, CL_DEVICE_TYPE_ALL, 1, &d, NULL));
    cl_context ctx = clCreateContext(NULL, 1, &d, NULL, NULL, &err);
    CHECK(err);
    cl_command_queue q = clCreateCommandQueue(ctx, d, 0, &err);
    CHECK(err);
    cl_program prog = clCreateProgramWithSource(ctx, 1, &SOURCE, NULL, &err);
    CHECK(err);
    CHECK(clBuildProgram(prog, 1, &d, "", NULL, NULL));
    cl_kernel k = clCreateKernel(prog, "spin", &err);
    CHECK(err);
    size_t items = 4096;
    cl_mem buf = clCreateBuffer(ctx, CL_MEM_READ_WRITE, items * sizeof(float), NULL, &err);
    CHECK(err);
    float zero = 0;
    CHECK(clEnqueueFillBuffer(q, buf, &zero, sizeof(zero), 0, items * sizeof(float), 0, NULL,
                              NULL));
    CHECK(clSetKernelArg(k, 0, sizeof(buf), &buf));
    CHECK(clSetKernelArg(k, 1, sizeof(iterations), &iterations));
    CHECK(clFinish(q));
    size_t cap = 1 << 20, n = 0;
    double *lat = malloc(cap * sizeof(double));
    long launches = 0;
    cl_event previous = NULL;
    double start = now(), t = start;
    while (t - start < seconds) {
        if (interactive) {
            CHECK(clEnqueueNDRangeKernel(q, k, 1, NULL, &items, NULL, 0, NULL, NULL));
            CHECK(clFinish(q));
            double t2 = now();
            if (n < cap)
                lat[n++] = (t2 - t) * 1e6;
            t = t2;
        } else {
            cl_event e;
            CHECK(clEnqueueNDRangeKernel(q, k, 1, NULL, &items, NULL, 0, NULL, &e));
            if (previous) {
                CHECK(clWaitForEvents(1, &previous));
                clReleaseEvent(previous);
            }
            previous = e;
            t = now();
        }
        launches++;
    }
    CHECK(clFinish(q));
    if (previous)
        clReleaseEvent(previous);
    double elapsed = now() - start;
    qsort(lat, n, sizeof(double), by_value);
    printf("{\"mode\": \"%s\", \"launches\": %ld, \"work\": %.0f, \"seconds\": %.4f, "
           "\"latencies_us\": [", argv[1], launches, (double)launches * iterations, elapsed);
    for (size_t i = 0; i < n; i++)
        printf("%s%.1f", i ? ", " : "", lat[i]);
    printf("]}\n");
    clReleaseMemObject(buf);
    clReleaseKernel(k);
    clReleaseProgram(prog);
    clReleaseCommandQueue(q);
    clReleaseContext(ctx);
    return 0;
}
