#include "common.h"

/* OpenCL 2.x / 3.0 entry points: whatever the implementation answers, we answer. */
static int destroyed[2], ndestroyed;

static void CL_CALLBACK on_context_gone(cl_context c, void *data)
{
    (void)c;
    destroyed[ndestroyed++ & 1] = (int)(intptr_t)data;
}

int main(void)
{
    if (setup()) return 1;
    cl_int err;
    cl_mem pipe = clCreatePipe(context, CL_MEM_READ_WRITE, 16, 64, NULL, &err);
    CASE("CreatePipe", err);
    if (pipe) {
        cl_uint v = 0;
        CASE("GetPipeInfo(packet size)", clGetPipeInfo(pipe, CL_PIPE_PACKET_SIZE, sizeof(v), &v, NULL));
        CASE("packet size", v);
        CASE("GetPipeInfo(bad param)", clGetPipeInfo(pipe, 0x7777, sizeof(v), &v, NULL));
        clEnqueueMapBuffer(queue, pipe, CL_TRUE, CL_MAP_READ, 0, 16, 0, NULL, NULL, &err);
        CASE("MapBuffer(pipe)", err);
        clReleaseMemObject(pipe);
    }
    clCreatePipe(context, CL_MEM_READ_WRITE, 0, 64, NULL, &err);
    CASE("CreatePipe(packet size 0)", err);
    cl_pipe_properties bogus_pipe[] = {0x7777, 1, 0};
    clCreatePipe(context, CL_MEM_READ_WRITE, 16, 64, bogus_pipe, &err);
    CASE("CreatePipe(bad property)", err);

    cl_sampler_properties sp[] = {CL_SAMPLER_NORMALIZED_COORDS, CL_FALSE, CL_SAMPLER_FILTER_MODE, CL_FILTER_LINEAR, 0};
    cl_sampler s = clCreateSamplerWithProperties(context, sp, &err);
    CASE("CreateSamplerWithProperties", err);
    if (s) {
        cl_filter_mode fm = 0;
        clGetSamplerInfo(s, CL_SAMPLER_FILTER_MODE, sizeof(fm), &fm, NULL);
        CASE("filter mode", fm);
        clReleaseSampler(s);
    }
    cl_sampler_properties bad_sp[] = {0x7777, 1, 0};
    clCreateSamplerWithProperties(context, bad_sp, &err);
    CASE("CreateSamplerWithProperties(bad)", err);

    int data[4] = {1, 2, 3, 4};
    cl_mem_properties none[] = {0};
    cl_mem b = clCreateBufferWithProperties(context, none, CL_MEM_COPY_HOST_PTR, sizeof(data), data, &err);
    CASE("CreateBufferWithProperties", err);
    int *p = clEnqueueMapBuffer(queue, b, CL_TRUE, CL_MAP_READ, 0, sizeof(data), 0, NULL, NULL, &err);
    CASE("map it", err);
    CASE("mapped value", p ? p[3] : -1);
    clEnqueueUnmapMemObject(queue, b, p, 0, NULL, NULL);
    cl_mem_properties bad_mp[] = {0x7777, 1, 0};
    clCreateBufferWithProperties(context, bad_mp, CL_MEM_READ_WRITE, 64, NULL, &err);
    CASE("CreateBufferWithProperties(bad)", err);

    const char *src = "__kernel void inc(__global int *a) { a[get_global_id(0)] += 1; }";
    cl_program prog = clCreateProgramWithSource(context, 1, &src, NULL, &err);
    clBuildProgram(prog, 1, &device, NULL, NULL, NULL);
    cl_kernel k = clCreateKernel(prog, "inc", &err);
    clSetKernelArg(k, 0, sizeof(b), &b);
    cl_kernel k2 = clCloneKernel(k, &err);
    CASE("CloneKernel", err);
    size_t n = 4;
    CASE("run the clone", clEnqueueNDRangeKernel(queue, k2, 1, NULL, &n, NULL, 0, NULL, NULL));
    clEnqueueReadBuffer(queue, b, CL_TRUE, 0, sizeof(data), data, 0, NULL, NULL);
    CASE("clone kept the argument", data[0] * 10 + data[3]);
    clCloneKernel(NULL, &err);
    CASE("CloneKernel(NULL)", err);
    size_t local = 4, sg = 0;
    CASE("GetKernelSubGroupInfo", clGetKernelSubGroupInfo(k, device, CL_KERNEL_MAX_SUB_GROUP_SIZE_FOR_NDRANGE, sizeof(local), &local, sizeof(sg), &sg, NULL));
    CASE("GetKernelSubGroupInfo(bad param)", clGetKernelSubGroupInfo(k, device, 0x7777, sizeof(local), &local, sizeof(sg), &sg, NULL));
    cl_ulong t1 = 0, t2 = 0;
    err = clGetHostTimer(device, &t1);
    CASE("GetHostTimer", err);
    CASE("host timer ticks", err || t1 > 0);
    CASE("GetDeviceAndHostTimer", clGetDeviceAndHostTimer(device, &t1, &t2));
    CASE("GetHostTimer(NULL)", clGetHostTimer(device, NULL));
    unsigned char junk[16] = {0x03, 0x02, 0x23, 0x07};
    clCreateProgramWithIL(context, junk, sizeof(junk), &err);
    CASE("CreateProgramWithIL(junk)", err);
    clCreateProgramWithIL(context, NULL, 0, &err);
    CASE("CreateProgramWithIL(NULL)", err);
    CASE("SetDefaultDeviceCommandQueue(host queue)", clSetDefaultDeviceCommandQueue(context, device, queue));
    int one = 1;
    CASE("SetProgramSpecializationConstant(source program)", clSetProgramSpecializationConstant(prog, 0, sizeof(one), &one));
    cl_context c2 = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    CASE("SetContextDestructorCallback", clSetContextDestructorCallback(c2, on_context_gone, (void *)1));
    CASE("SetContextDestructorCallback(2)", clSetContextDestructorCallback(c2, on_context_gone, (void *)2));
    CASE("SetContextDestructorCallback(NULL fn)", clSetContextDestructorCallback(c2, NULL, NULL));
    CASE("SetContextDestructorCallback(NULL context)", clSetContextDestructorCallback(NULL, on_context_gone, NULL));
    clReleaseContext(c2);
    CASE("context destructors ran, newest first", ndestroyed * 100 + destroyed[0] * 10 + destroyed[1]);
    clReleaseKernel(k2);
    clReleaseKernel(k);
    clReleaseProgram(prog);
    clReleaseMemObject(b);
    return 0;
}
