#include "common.h"

int main(void)
{
    if (setup()) return 1;
    cl_int err = 0;
    char host[64] = {0};
    cl_mem m;
    m = clCreateBuffer(context, CL_MEM_READ_WRITE, 0, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateBuffer(size 0)", err);
    m = clCreateBuffer(context, CL_MEM_READ_WRITE | CL_MEM_WRITE_ONLY, 64, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateBuffer(conflicting flags)", err);
    m = clCreateBuffer(context, CL_MEM_COPY_HOST_PTR, 64, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateBuffer(COPY_HOST_PTR, NULL)", err);
    m = clCreateBuffer(NULL, CL_MEM_READ_WRITE, 64, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateBuffer(NULL context)", err);
    m = clCreateBuffer(context, CL_MEM_READ_WRITE, (size_t)1 << 62, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateBuffer(huge)", err);
    cl_mem buf = clCreateBuffer(context, CL_MEM_READ_WRITE, 4096, NULL, &err);
    CASE("CreateBuffer(ok)", err);
    cl_buffer_region r = {8192, 64};
    m = clCreateSubBuffer(buf, 0, CL_BUFFER_CREATE_TYPE_REGION, &r, &err); if (m) clReleaseMemObject(m);
    CASE("CreateSubBuffer(out of range)", err);
    m = clCreateSubBuffer(buf, 0, 0x7777, &r, &err); if (m) clReleaseMemObject(m);
    CASE("CreateSubBuffer(bad type)", err);
    CASE("EnqueueReadBuffer(beyond end)", clEnqueueReadBuffer(queue, buf, CL_TRUE, 4090, 64, host, 0, NULL, NULL));
    CASE("EnqueueReadBuffer(NULL ptr)", clEnqueueReadBuffer(queue, buf, CL_TRUE, 0, 64, NULL, 0, NULL, NULL));
    CASE("EnqueueWriteBuffer(NULL buffer)", clEnqueueWriteBuffer(queue, NULL, CL_TRUE, 0, 64, host, 0, NULL, NULL));
    CASE("EnqueueWriteBuffer(wait list mismatch)", clEnqueueWriteBuffer(queue, buf, CL_TRUE, 0, 64, host, 1, NULL, NULL));
    CASE("EnqueueCopyBuffer(overlap)", clEnqueueCopyBuffer(queue, buf, buf, 0, 32, 64, 0, NULL, NULL));
    int pattern = 1;
    CASE("EnqueueFillBuffer(pattern size 3)", clEnqueueFillBuffer(queue, buf, &pattern, 3, 0, 64, 0, NULL, NULL));
    CASE("EnqueueFillBuffer(unaligned size)", clEnqueueFillBuffer(queue, buf, &pattern, 4, 0, 63, 0, NULL, NULL));
    CASE("GetMemObjectInfo(bad param)", clGetMemObjectInfo(buf, 0x7777, 0, NULL, NULL));
    CASE("RetainMemObject(NULL)", clRetainMemObject(NULL));
    CASE("ReleaseMemObject(NULL)", clReleaseMemObject(NULL));
    CASE("ReleaseMemObject(ok)", clReleaseMemObject(buf));
    return 0;
}
