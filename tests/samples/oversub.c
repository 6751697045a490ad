/* Memory objects four times the device memory a server is given (its
 * --device-memory), used every way a program uses them: kernels, transfers, fills,
 * copies, maps, rectangles, sub-buffers, images, a write held back by a user event.
 * Prints a digest of every object and the status of every call, so a run through the
 * device can be compared line by line with a native one.
 *
 *   oversub [BUFFER_KIB [COUNT]]     (default: 16 buffers of 64 KiB) */
#define CL_TARGET_OPENCL_VERSION 300
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#include <CL/cl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(what, expr) do { cl_int s_ = (expr); if (s_) { printf("%s: %d\n", what, s_); } } while (0)

static const char *SOURCE =
    "__kernel void bump(__global uint *a, uint by) { a[get_global_id(0)] = a[get_global_id(0)] * 3u + by; }\n"
    "__kernel void shade(__read_only image2d_t in, __write_only image2d_t out) {\n"
    "  int2 p = (int2)(get_global_id(0), get_global_id(1));\n"
    "  uint4 v = read_imageui(in, p); write_imageui(out, p, v + (uint4)(1, 2, 3, 4)); }\n";

static uint64_t digest(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

int main(int argc, char **argv)
{
    size_t size = (argc > 1 ? (size_t)atoi(argv[1]) : 64) * 1024;
    int count = argc > 2 ? atoi(argv[2]) : 16;
    cl_platform_id platform;
    cl_device_id device;
    cl_int err;
    if (clGetPlatformIDs(1, &platform, NULL) || clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 1, &device, NULL))
        return 1;
    cl_context ctx = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    cl_command_queue q = clCreateCommandQueue(ctx, device, 0, &err);
    cl_command_queue side = clCreateCommandQueue(ctx, device, 0, &err);
    cl_program prog = clCreateProgramWithSource(ctx, 1, &SOURCE, NULL, &err);
    CHECK("build", clBuildProgram(prog, 1, &device, "", NULL, NULL));
    cl_kernel bump = clCreateKernel(prog, "bump", &err);
    cl_kernel shade = clCreateKernel(prog, "shade", &err);
    unsigned char *host = malloc(size);
    cl_mem *bufs = calloc((size_t)count, sizeof(cl_mem));
    size_t words = size / 4;

    /* Made from host data, or written after. */
    for (int i = 0; i < count; i++) {
        for (size_t j = 0; j < size; j++)
            host[j] = (unsigned char)(i * 31 + j);
        cl_mem_flags flags = CL_MEM_READ_WRITE | (i % 2 ? CL_MEM_COPY_HOST_PTR : 0);
        if (i % 4 == 3)
            flags |= CL_MEM_HOST_NO_ACCESS;
        bufs[i] = clCreateBuffer(ctx, flags, size, i % 2 ? host : NULL, &err);
        CHECK("create", err);
        if (!(i % 2))
            CHECK("write", clEnqueueWriteBuffer(q, bufs[i], CL_TRUE, 0, size, host, 0, NULL, NULL));
    }
    /* Kernels, each argument set once per launch, three rounds over everything. */
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < count; i++) {
            cl_uint by = (cl_uint)(round * 100 + i);
            CHECK("arg0", clSetKernelArg(bump, 0, sizeof(cl_mem), &bufs[i]));
            CHECK("arg1", clSetKernelArg(bump, 1, sizeof(by), &by));
            CHECK("launch", clEnqueueNDRangeKernel(q, bump, 1, NULL, &words, NULL, 0, NULL, NULL));
        }
    /* Fills and copies, non-blocking, one after another on the queue. */
    cl_uint fill = 0xA5A5A5A5u;
    for (int i = 0; i < count; i++) {
        CHECK("fill", clEnqueueFillBuffer(q, bufs[i], &fill, 4, size - 256, 256, 0, NULL, NULL));
        CHECK("copy", clEnqueueCopyBuffer(q, bufs[i], bufs[(i + 1) % count], 0, size / 2, 1024, 0, NULL, NULL));
    }
    CHECK("finish", clFinish(q));
    /* Maps: read, then write in place. */
    for (int i = 0; i < count; i++) {
        if (i % 4 == 3)
            continue;                   /* CL_MEM_HOST_NO_ACCESS: not mappable */
        unsigned char *p = clEnqueueMapBuffer(q, bufs[i], CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, 0, size, 0, NULL, NULL, &err);
        CHECK("map", err);
        if (p) {
            p[7] ^= 0xFF;
            memcpy(p + 64, "mapped", 6);
            CHECK("unmap", clEnqueueUnmapMemObject(q, bufs[i], p, 0, NULL, NULL));
        }
    }
    /* A rectangle across two buffers' worth of rows. */
    size_t origin[3] = {16, 2, 0}, hostorg[3] = {0, 0, 0}, region[3] = {32, 4, 1};
    memset(host, 0x5C, size);
    CHECK("rect", clEnqueueWriteBufferRect(q, bufs[2], CL_TRUE, origin, hostorg, region, 128, 0, 128, 0, host, 0, NULL, NULL));
    /* Sub-buffers of the first and the last, a kernel on each. */
    cl_buffer_region sub = {size / 4, size / 4};
    cl_mem subs[2] = {clCreateSubBuffer(bufs[0], CL_MEM_READ_WRITE, CL_BUFFER_CREATE_TYPE_REGION, &sub, &err),
                      clCreateSubBuffer(bufs[count - 2], CL_MEM_READ_WRITE, CL_BUFFER_CREATE_TYPE_REGION, &sub, &err)};
    CHECK("sub", err);
    size_t subwords = sub.size / 4;
    for (int k = 0; k < 2; k++) {
        cl_uint by = 7;
        CHECK("sarg0", clSetKernelArg(bump, 0, sizeof(cl_mem), &subs[k]));
        CHECK("sarg1", clSetKernelArg(bump, 1, sizeof(by), &by));
        CHECK("slaunch", clEnqueueNDRangeKernel(q, bump, 1, NULL, &subwords, NULL, 0, NULL, NULL));
        for (int i = 0; i < count; i += 3)     /* others come and go meanwhile */
            CHECK("churn", clEnqueueReadBuffer(q, bufs[i], CL_TRUE, 0, 64, host, 0, NULL, NULL));
    }
    /* Images: made, drawn on by a kernel, read back. */
    cl_image_format fmt = {CL_RGBA, CL_UNSIGNED_INT8};
    cl_image_desc desc = {.image_type = CL_MEM_OBJECT_IMAGE2D, .image_width = 64, .image_height = 64};
    cl_mem img[4];
    for (int i = 0; i < 4; i++) {
        for (size_t j = 0; j < 64 * 64 * 4; j++)
            host[j] = (unsigned char)(j * (i + 1));
        img[i] = clCreateImage(ctx, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, &fmt, &desc, host, &err);
        CHECK("image", err);
    }
    size_t zero[3] = {0, 0, 0}, whole[3] = {64, 64, 1};
    for (int i = 0; i < 4; i++) {
        CHECK("iarg0", clSetKernelArg(shade, 0, sizeof(cl_mem), &img[i]));
        CHECK("iarg1", clSetKernelArg(shade, 1, sizeof(cl_mem), &img[(i + 1) % 4]));
        CHECK("ilaunch", clEnqueueNDRangeKernel(q, shade, 2, NULL, whole, NULL, 0, NULL, NULL));
        CHECK("ifinish", clFinish(q));
        for (int j = 0; j < count; j += 2)
            CHECK("ichurn", clEnqueueReadBuffer(q, bufs[j], CL_TRUE, 0, 64, host, 0, NULL, NULL));
    }
    /* A write held back by a user event: its buffer must keep it while others move. */
    cl_event gate = clCreateUserEvent(ctx, &err), wrote;
    memset(host, 0x3E, size);
    CHECK("gated", clEnqueueWriteBuffer(side, bufs[1], CL_FALSE, 0, size, host, 1, &gate, &wrote));
    for (int i = 2; i < count; i++) {
        cl_uint by = 1;
        CHECK("garg0", clSetKernelArg(bump, 0, sizeof(cl_mem), &bufs[i]));
        CHECK("garg1", clSetKernelArg(bump, 1, sizeof(by), &by));
        CHECK("glaunch", clEnqueueNDRangeKernel(q, bump, 1, NULL, &words, NULL, 0, NULL, NULL));
    }
    CHECK("gfinish", clFinish(q));
    CHECK("open", clSetUserEventStatus(gate, CL_COMPLETE));
    CHECK("wait", clWaitForEvents(1, &wrote));

    /* Everything read back (through a readable copy where the host may not read). */
    cl_mem probe = clCreateBuffer(ctx, CL_MEM_READ_WRITE, size, NULL, &err);
    for (int i = 0; i < count; i++) {
        CHECK("pcopy", clEnqueueCopyBuffer(q, bufs[i], probe, 0, 0, size, 0, NULL, NULL));
        CHECK("read", clEnqueueReadBuffer(q, probe, CL_TRUE, 0, size, host, 0, NULL, NULL));
        printf("buffer %2d %016llx\n", i, (unsigned long long)digest(host, size));
    }
    for (int i = 0; i < 4; i++) {
        CHECK("iread", clEnqueueReadImage(q, img[i], CL_TRUE, zero, whole, 0, 0, host, 0, NULL, NULL));
        printf("image %d %016llx\n", i, (unsigned long long)digest(host, 64 * 64 * 4));
    }
    for (int k = 0; k < 2; k++) {
        CHECK("sread", clEnqueueReadBuffer(q, subs[k], CL_TRUE, 0, sub.size, host, 0, NULL, NULL));
        printf("sub-buffer %d %016llx\n", k, (unsigned long long)digest(host, sub.size));
    }
    cl_uint refs;
    clGetContextInfo(ctx, CL_CONTEXT_REFERENCE_COUNT, sizeof(refs), &refs, NULL);
    printf("context references %u\n", refs);
    clGetMemObjectInfo(bufs[0], CL_MEM_REFERENCE_COUNT, sizeof(refs), &refs, NULL);
    printf("buffer 0 references %u\n", refs);
    cl_mem_flags flags;
    for (int i = 0; i < 4; i++) {
        clGetMemObjectInfo(bufs[i], CL_MEM_FLAGS, sizeof(flags), &flags, NULL);
        printf("buffer %d flags %#llx\n", i, (unsigned long long)flags);
    }
    clReleaseEvent(wrote);
    clReleaseEvent(gate);
    for (int k = 0; k < 2; k++)
        clReleaseMemObject(subs[k]);
    for (int i = 0; i < count; i++)
        clReleaseMemObject(bufs[i]);
    for (int i = 0; i < 4; i++)
        clReleaseMemObject(img[i]);
    clReleaseMemObject(probe);
    clReleaseKernel(bump);
    clReleaseKernel(shade);
    clReleaseProgram(prog);
    clReleaseCommandQueue(side);
    clReleaseCommandQueue(q);
    clReleaseContext(ctx);
    printf("done\n");
    return 0;
}
