/* Makes 64 KiB buffers until an allocation fails (at most 1000), then shows that
 * the device still serves: a release makes room, and the first buffer still holds
 * what it was made with.  Through a server whose device memory and host store are
 * small, the failure comes where both are full, with the status a full device gives.
 *
 *   fill_store */
#define CL_TARGET_OPENCL_VERSION 300
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#include <CL/cl.h>
#include <stdio.h>
#include <string.h>

#define SIZE (64 * 1024)
#define MAX 1000

int main(void)
{
    cl_platform_id platform;
    cl_device_id device;
    cl_int err;
    static unsigned char data[SIZE], back[SIZE];
    static cl_mem bufs[MAX];
    if (clGetPlatformIDs(1, &platform, NULL) || clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 1, &device, NULL))
        return 1;
    cl_context ctx = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    cl_command_queue q = clCreateCommandQueue(ctx, device, 0, &err);
    int made = 0;
    for (; made < MAX; made++) {
        memset(data, made & 0xFF, SIZE);
        bufs[made] = clCreateBuffer(ctx, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, SIZE, data, &err);
        if (err != CL_SUCCESS)
            break;
    }
    printf("made %d buffers, then %d\n", made, err);
    if (made == 0)
        return 1;
    clReleaseMemObject(bufs[--made]);
    cl_mem again = clCreateBuffer(ctx, CL_MEM_READ_WRITE, SIZE, NULL, &err);
    printf("after a release: %d\n", err);
    err = clEnqueueReadBuffer(q, bufs[0], CL_TRUE, 0, SIZE, back, 0, NULL, NULL);
    memset(data, 0, SIZE);
    printf("first buffer read: %d, %s\n", err, memcmp(back, data, SIZE) ? "changed" : "intact");
    if (again)
        clReleaseMemObject(again);
    for (int i = 0; i < made; i++)
        clReleaseMemObject(bufs[i]);
    clReleaseCommandQueue(q);
    clReleaseContext(ctx);
    return 0;
}
