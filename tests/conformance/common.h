/* Conformance-style checks: each case makes one call with invalid arguments and prints
 * its status, so a run through ava-vdev can be compared line by line with a native
 * run.  Only calls whose behaviour the OpenCL spec defines (no dangling pointers). */
#define CL_TARGET_OPENCL_VERSION 300
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#include <CL/cl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CASE(name, expr) printf("%-48s %d\n", name, (int)(expr))

static cl_platform_id platform;
static cl_device_id device;
static cl_context context;
static cl_command_queue queue;

static int setup(void)
{
    cl_int err;
    if (clGetPlatformIDs(1, &platform, NULL) || clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 1, &device, NULL))
        return 1;
    context = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    if (err)
        return 1;
    queue = clCreateCommandQueueWithProperties(context, device, NULL, &err);
    return err != CL_SUCCESS;
}

