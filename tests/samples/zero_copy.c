/* Transfers of application memory that the runtime may lend the device in place
 * (zero-copy, guest_driver/runtime/rt_pin.c), checked byte for byte: SIZE MiB (the
 * only argument, default 64, at least 8) written and read back, a read at an odd
 * offset into an odd address, a transfer just over the zero-copy threshold, a write from memory that cannot be pinned for writing
 * (read-only), a map (its memory is the DMA arena), and a non-blocking write and
 * read of a quarter of SIZE behind a user event, and buffers made from SIZE bytes of
 * host memory (CL_MEM_COPY_HOST_PTR).  Prints one line per case,
 * "ok" or what differed; exit status 0 only if every case is right.  With
 * AVA_ICD_DEBUG=1 the ICD says on stderr which transfers went in place. */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define MIB (1u << 20)

static unsigned char pattern(size_t i, unsigned seed)
{
    return (unsigned char)(i * 131 + seed + (i >> 12));
}

static int report(const char *what, cl_int status, size_t wrong)
{
    if (status != CL_SUCCESS)
        printf("%s: status %d\n", what, status);
    else if (wrong)
        printf("%s: %zu bytes wrong\n", what, wrong);
    else
        printf("%s: ok\n", what);
    return status != CL_SUCCESS || wrong;
}

static size_t differ(const unsigned char *p, size_t n, size_t from, unsigned seed)
{
    size_t wrong = 0;
    for (size_t i = 0; i < n; i++)
        wrong += p[i] != pattern(from + i, seed);
    return wrong;
}

/* Write n bytes of src at offset, read them back into dst, compare with pattern(seed). */
static int round_trip(const char *what, cl_command_queue q, cl_mem buf, size_t offset, size_t n,
                      const void *src, unsigned char *dst, unsigned seed)
{
    cl_int err = clEnqueueWriteBuffer(q, buf, CL_TRUE, offset, n, src, 0, NULL, NULL);
    memset(dst, 0, n);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(q, buf, CL_TRUE, offset, n, dst, 0, NULL, NULL);
    return report(what, err, err ? 0 : differ(dst, n, 0, seed));
}

int main(int argc, char **argv)
{
    size_t size = (argc > 1 ? (size_t)atoi(argv[1]) : 64) * MIB;
    if (size < 8 * MIB) {
        printf("usage: zero_copy [MiB, at least 8]\n");
        return 2;
    }
    cl_platform_id platform;
    cl_device_id device;
    cl_int err;
    if (clGetPlatformIDs(1, &platform, NULL) != CL_SUCCESS ||
        clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 1, &device, NULL) != CL_SUCCESS) {
        printf("no device\n");
        return 2;
    }
    cl_context ctx = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    cl_command_queue q = clCreateCommandQueue(ctx, device, 0, &err);
    cl_mem buf = clCreateBuffer(ctx, CL_MEM_READ_WRITE, size, NULL, &err);
    unsigned char *src = malloc(size), *dst = malloc(size + 64);
    if (!src || !dst || err != CL_SUCCESS) {
        printf("setup failed\n");
        return 2;
    }
    int failed = 0;
    for (size_t i = 0; i < size; i++)
        src[i] = pattern(i, 1);

    failed |= round_trip("written and read back", q, buf, 0, size, src, dst, 1);

    size_t off = 4097, n = size - MIB - 11;
    memset(dst, 0, size + 64);
    err = clEnqueueReadBuffer(q, buf, CL_TRUE, off, n, dst + 37, 0, NULL, NULL);
    size_t wrong = err ? 0 : differ(dst + 37, n, off, 1);
    for (size_t i = 0; i < 37; i++)
        wrong += dst[i] != 0;                    /* nothing before the destination */
    for (size_t i = 37 + n; i < size + 64; i++)
        wrong += dst[i] != 0;                    /* nor after it */
    failed |= report("odd offset, odd length, odd address", err, wrong);

    size_t small = 256 * 1024 + 1;
    for (size_t i = 0; i < small; i++)
        src[i] = pattern(i, 2);
    failed |= round_trip("just over 256 KiB", q, buf, 5, small, src, dst, 2);

    size_t ro_size = 4 * MIB;
    unsigned char *ro = mmap(NULL, ro_size, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < ro_size; i++)
        ro[i] = pattern(i, 3);
    mprotect(ro, ro_size, PROT_READ);
    failed |= round_trip("written from read-only memory", q, buf, 0, ro_size, ro, dst, 3);

    unsigned char *mapped = clEnqueueMapBuffer(q, buf, CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, 0,
                                               8 * MIB, 0, NULL, NULL, &err);
    wrong = 0;
    if (err == CL_SUCCESS) {
        wrong = differ(mapped, ro_size, 0, 3);
        for (size_t i = 0; i < 8 * MIB; i++)
            mapped[i] = pattern(i, 4);
        err = clEnqueueUnmapMemObject(q, buf, mapped, 0, NULL, NULL);
    }
    memset(dst, 0, 8 * MIB);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(q, buf, CL_TRUE, 0, 8 * MIB, dst, 0, NULL, NULL);
    failed |= report("mapped, written, unmapped", err,
                     wrong + (err ? 0 : differ(dst, 8 * MIB, 0, 4)));
    /* Non-blocking, behind a user event the program sets only afterwards: nothing may
     * wait for it, and the read's bytes are there once its event is seen complete. */
    size_t quarter = size / 4;
    cl_event gate = clCreateUserEvent(ctx, &err), wrote = NULL, read = NULL;
    for (size_t i = 0; i < quarter; i++)
        src[i] = pattern(i, 5);
    memset(dst, 0, quarter);
    err = clEnqueueWriteBuffer(q, buf, CL_FALSE, 0, quarter, src, 1, &gate, &wrote);
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(q, buf, CL_FALSE, 0, quarter, dst, 1, &wrote, &read);
    cl_int early = CL_COMPLETE;
    if (err == CL_SUCCESS)
        clGetEventInfo(read, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof(early), &early, NULL);
    clSetUserEventStatus(gate, CL_COMPLETE);
    cl_command_type type = 0;
    if (err == CL_SUCCESS)
        err = clWaitForEvents(1, &read);
    if (err == CL_SUCCESS)
        err = clGetEventInfo(read, CL_EVENT_COMMAND_TYPE, sizeof(type), &type, NULL);
    wrong = err ? 0 : differ(dst, quarter, 0, 5);
    if (early == CL_COMPLETE || type != CL_COMMAND_READ_BUFFER)
        printf("non-blocking: ran before its gate opened (%d) or its event is a %#x\n",
               early, type);
    failed |= report("non-blocking, behind a user event", err,
                     wrong + (early == CL_COMPLETE) + (type != CL_COMMAND_READ_BUFFER));
    clReleaseEvent(gate);
    if (wrote)
        clReleaseEvent(wrote);
    if (read)
        clReleaseEvent(read);
    /* Buffers made from all SIZE bytes of host memory (CL_MEM_COPY_HOST_PTR), one the
     * host may not access, read back through a copy: contents and flags as given. */
    for (size_t i = 0; i < size; i++)
        src[i] = pattern(i, 6);
    const cl_mem_flags made_with[2] = {CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                                       CL_MEM_COPY_HOST_PTR | CL_MEM_HOST_NO_ACCESS};
    for (int k = 0; k < 2; k++) {
        cl_mem made = clCreateBuffer(ctx, made_with[k], size, src, &err);
        cl_mem_flags flags = 0;
        if (err == CL_SUCCESS)
            err = clGetMemObjectInfo(made, CL_MEM_FLAGS, sizeof(flags), &flags, NULL);
        if (err == CL_SUCCESS)
            err = clEnqueueCopyBuffer(q, made, buf, 0, 0, size, 0, NULL, NULL);
        memset(dst, 0, size);
        if (err == CL_SUCCESS)
            err = clEnqueueReadBuffer(q, buf, CL_TRUE, 0, size, dst, 0, NULL, NULL);
        if (flags != made_with[k])
            printf("made from host memory: flags %#llx, not %#llx\n", (unsigned long long)flags,
                   (unsigned long long)made_with[k]);
        failed |= report(k ? "made from host memory, no host access" : "made from host memory",
                         err, (err ? 0 : differ(dst, size, 0, 6)) + (flags != made_with[k]));
        if (made)
            clReleaseMemObject(made);
    }
    printf("%s\n", failed ? "zero-copy: FAILED" : "zero-copy: all right");
    return failed;
}
