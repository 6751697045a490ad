#include "common.h"

static const char *good = "__kernel void k(__global int *a, int b) { a[get_global_id(0)] = b; }";
static const char *bad = "__kernel void k( {";

int main(void)
{
    if (setup()) return 1;
    cl_int err = 0;
    cl_program p;
    p = clCreateProgramWithSource(context, 0, &good, NULL, &err); if (p) clReleaseProgram(p);
    CASE("CreateProgramWithSource(count 0)", err);
    /* (NULL strings crash PoCL 3.1 natively: not compared) */
    p = clCreateProgramWithSource(NULL, 1, &good, NULL, &err); if (p) clReleaseProgram(p);
    CASE("CreateProgramWithSource(NULL context)", err);
    cl_program broken = clCreateProgramWithSource(context, 1, &bad, NULL, &err);
    CASE("BuildProgram(syntax error)", clBuildProgram(broken, 1, &device, NULL, NULL, NULL));
    cl_build_status st;
    CASE("GetProgramBuildInfo(status)", clGetProgramBuildInfo(broken, device, CL_PROGRAM_BUILD_STATUS, sizeof(st), &st, NULL));
    printf("%-48s %d\n", "  build status", (int)st);
    cl_kernel k = clCreateKernel(broken, "k", &err); if (k) clReleaseKernel(k);
    CASE("CreateKernel(unbuilt program)", err);
    cl_program prog = clCreateProgramWithSource(context, 1, &good, NULL, &err);
    CASE("BuildProgram(bad option)", clBuildProgram(prog, 1, &device, "-fno-such-option", NULL, NULL));
    CASE("BuildProgram(ok)", clBuildProgram(prog, 1, &device, "", NULL, NULL));
    k = clCreateKernel(prog, "nope", &err); if (k) clReleaseKernel(k);
    CASE("CreateKernel(no such kernel)", err);
    k = clCreateKernel(prog, NULL, &err); if (k) clReleaseKernel(k);
    CASE("CreateKernel(NULL name)", err);
    cl_kernel kern = clCreateKernel(prog, "k", &err);
    CASE("CreateKernel(ok)", err);
    int v = 1;
    CASE("SetKernelArg(bad index)", clSetKernelArg(kern, 2, sizeof(int), &v));
    CASE("SetKernelArg(bad size)", clSetKernelArg(kern, 1, 2, &v));
    CASE("SetKernelArg(buffer from int)", clSetKernelArg(kern, 0, sizeof(int), &v));
    size_t g = 16, l = 5;
    CASE("EnqueueNDRange(args not set)", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g, NULL, 0, NULL, NULL));
    cl_mem buf = clCreateBuffer(context, CL_MEM_READ_WRITE, 64, NULL, &err);
    clSetKernelArg(kern, 0, sizeof(buf), &buf);
    clSetKernelArg(kern, 1, sizeof(int), &v);
    CASE("EnqueueNDRange(work_dim 0)", clEnqueueNDRangeKernel(queue, kern, 0, NULL, &g, NULL, 0, NULL, NULL));
    CASE("EnqueueNDRange(work_dim 9)", clEnqueueNDRangeKernel(queue, kern, 9, NULL, &g, NULL, 0, NULL, NULL));
    CASE("EnqueueNDRange(NULL global)", clEnqueueNDRangeKernel(queue, kern, 1, NULL, NULL, NULL, 0, NULL, NULL));
    CASE("EnqueueNDRange(local not dividing)", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g, &l, 0, NULL, NULL));
    CASE("EnqueueNDRange(ok)", clEnqueueNDRangeKernel(queue, kern, 1, NULL, &g, NULL, 0, NULL, NULL));
    CASE("GetKernelInfo(bad param)", clGetKernelInfo(kern, 0x7777, 0, NULL, NULL));
    CASE("GetKernelWorkGroupInfo(bad param)", clGetKernelWorkGroupInfo(kern, device, 0x7777, 0, NULL, NULL));
    CASE("Finish", clFinish(queue));
    return 0;
}
