/* Creates and releases many objects: more than a session may hold at once, so every
 * release must really reach the host, posted or not.  Prints the time per pair. */
#define CL_TARGET_OPENCL_VERSION 300
#include <CL/cl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 100000;
    cl_platform_id platform;
    cl_device_id device;
    cl_int err;
    if (clGetPlatformIDs(1, &platform, NULL) || clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 1, &device, NULL))
        return 1;
    cl_context ctx = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    double t0 = now();
    for (int i = 0; i < n; i++) {
        cl_event ev = clCreateUserEvent(ctx, &err);
        if (err != CL_SUCCESS) {
            fprintf(stderr, "release_storm: create %d failed: %d\n", i, err);
            return 1;
        }
        if ((err = clReleaseEvent(ev)) != CL_SUCCESS) {
            fprintf(stderr, "release_storm: release %d failed: %d\n", i, err);
            return 1;
        }
    }
    double dt = now() - t0;
    /* a burst: many objects made, then all released in a row */
    enum { BURST = 10000 };
    static cl_event evs[BURST];
    for (int i = 0; i < BURST; i++)
        evs[i] = clCreateUserEvent(ctx, &err);
    double t1 = now();
    for (int i = 0; i < BURST; i++)
        clReleaseEvent(evs[i]);
    double burst = now() - t1;
    cl_uint refs = 0;
    clGetContextInfo(ctx, CL_CONTEXT_REFERENCE_COUNT, sizeof(refs), &refs, NULL);
    printf("%d create/release pairs, %.2f us each; release burst %.2f us each; context refs %u\n",
           n, dt / n * 1e6, burst / BURST * 1e6, refs);
    return clReleaseContext(ctx) != CL_SUCCESS;
}
