/* tenant_stats: a known number of device commands, for checking a manager's statistics.
 *
 *   tenant_stats LAUNCHES BIG_BYTES
 *
 * Makes a 4 KiB buffer, writes it (4096 bytes), launches a kernel LAUNCHES times,
 * reads it back (4096 bytes), then asks for a second buffer of BIG_BYTES (past the
 * VM's memory quota, say) and prints one JSON line: the status of that creation,
 * whether the data came back right, and the device's memory and compute units as
 * the program sees them. */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(x) do { cl_int e_ = (x); if (e_) { fprintf(stderr, "%s = %d\n", #x, e_); return 1; } } while (0)

static const char *SOURCE =
    "__kernel void inc(__global int *a) { a[get_global_id(0)] += 1; }\n";

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s LAUNCHES BIG_BYTES\n", argv[0]);
        return 2;
    }
    int launches = atoi(argv[1]);
    size_t big = strtoull(argv[2], NULL, 0);
    cl_platform_id p;
    cl_device_id d;
    cl_int err;
    CHECK(clGetPlatformIDs(1, &p, NULL));
    CHECK(clGetDeviceIDs(p, CL_DEVICE_TYPE_ALL, 1, &d, NULL));
    cl_ulong global = 0, max_alloc = 0;
    cl_uint units = 0;
    CHECK(clGetDeviceInfo(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof(global), &global, NULL));
    CHECK(clGetDeviceInfo(d, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof(max_alloc), &max_alloc, NULL));
    CHECK(clGetDeviceInfo(d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof(units), &units, NULL));
    cl_context ctx = clCreateContext(NULL, 1, &d, NULL, NULL, &err);
    CHECK(err);
    cl_command_queue q = clCreateCommandQueue(ctx, d, 0, &err);
    CHECK(err);
    cl_program prog = clCreateProgramWithSource(ctx, 1, &SOURCE, NULL, &err);
    CHECK(err);
    CHECK(clBuildProgram(prog, 1, &d, "", NULL, NULL));
    cl_kernel k = clCreateKernel(prog, "inc", &err);
    CHECK(err);
    int host[1024] = {0};
    size_t items = 1024;
    cl_mem buf = clCreateBuffer(ctx, CL_MEM_READ_WRITE, sizeof(host), NULL, &err);
    CHECK(err);
    CHECK(clEnqueueWriteBuffer(q, buf, CL_TRUE, 0, sizeof(host), host, 0, NULL, NULL));
    CHECK(clSetKernelArg(k, 0, sizeof(buf), &buf));
    for (int i = 0; i < launches; i++)
        CHECK(clEnqueueNDRangeKernel(q, k, 1, NULL, &items, NULL, 0, NULL, NULL));
    CHECK(clEnqueueReadBuffer(q, buf, CL_TRUE, 0, sizeof(host), host, 0, NULL, NULL));
    int right = 1;
    for (size_t i = 0; i < items; i++)
        right &= host[i] == launches;
    cl_int big_status;
    cl_mem other = clCreateBuffer(ctx, CL_MEM_READ_WRITE, big, NULL, &big_status);
    if (other)
        clReleaseMemObject(other);
    printf("{\"big_status\": %d, \"right\": %d, \"global_mem_size\": %llu, "
           "\"max_mem_alloc_size\": %llu, \"compute_units\": %u}\n", big_status, right,
           (unsigned long long)global, (unsigned long long)max_alloc, units);
    clReleaseMemObject(buf);
    clReleaseKernel(k);
    clReleaseProgram(prog);
    clReleaseCommandQueue(q);
    clReleaseContext(ctx);
    return 0;
}
