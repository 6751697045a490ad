/* What a program reads back about its own objects and the device: property lists
 * and object-valued results give back exactly what it created them with (never a
 * host pointer), memory flags follow the spec's inheritance, write-only maps work
 * on memory the host may only write, and every capability the device reports
 * works: a program that checks before it uses a feature gets what the check says. */
#include "common.h"

#include <stdint.h>

static cl_ulong u64_info(cl_device_info param)
{
    cl_ulong v = 0;
    clGetDeviceInfo(device, param, sizeof(v), &v, NULL);
    return v;
}

static int has_extension(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return 1;
    return 0;
}

/* A property list read back: its length, and whether each pair is the one given. */
static void check_properties(const char *what, const intptr_t *given, const intptr_t *got,
                             size_t size)
{
    size_t n = 0;
    while (given[n])
        n += 2;
    int same = size == (n + 1) * sizeof(intptr_t);
    for (size_t i = 0; same && i <= n; i++)
        same = given[i] == got[i];
    printf("%-48s size %zu same %d\n", what, size, same);
}

static void context_and_queue(void)
{
    cl_int err;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)platform, 0};
    cl_context ctx = clCreateContext(props, 1, &device, NULL, NULL, &err);
    CASE("context with a platform property", err);
    intptr_t got[16] = {0};
    size_t size = 0;
    CASE("CL_CONTEXT_PROPERTIES", clGetContextInfo(ctx, CL_CONTEXT_PROPERTIES, sizeof(got), got, &size));
    check_properties("  the platform given, not another pointer", props, got, size);
    CASE("CL_CONTEXT_PROPERTIES, 8 bytes short", clGetContextInfo(ctx, CL_CONTEXT_PROPERTIES, size - 8, got, NULL));
    CASE("CL_CONTEXT_PROPERTIES, size only", clGetContextInfo(ctx, CL_CONTEXT_PROPERTIES, 0, NULL, &size));
    printf("%-48s %zu\n", "  size", size);
    cl_context plain = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    size = 99;
    CASE("CL_CONTEXT_PROPERTIES without properties", clGetContextInfo(plain, CL_CONTEXT_PROPERTIES, sizeof(got), got, &size));
    printf("%-48s %zu\n", "  size", size);

    cl_queue_properties qprops[] = {CL_QUEUE_PROPERTIES, CL_QUEUE_PROFILING_ENABLE, 0};
    cl_command_queue q = clCreateCommandQueueWithProperties(ctx, device, qprops, &err);
    CASE("queue with properties", err);
    CASE("CL_QUEUE_PROPERTIES_ARRAY", clGetCommandQueueInfo(q, CL_QUEUE_PROPERTIES_ARRAY, sizeof(got), got, &size));
    check_properties("  the properties given", (const intptr_t *)qprops, got, size);
    cl_context qctx = NULL;
    cl_device_id qdev = NULL;
    CASE("CL_QUEUE_CONTEXT", clGetCommandQueueInfo(q, CL_QUEUE_CONTEXT, sizeof(qctx), &qctx, NULL));
    CASE("CL_QUEUE_DEVICE", clGetCommandQueueInfo(q, CL_QUEUE_DEVICE, sizeof(qdev), &qdev, NULL));
    printf("%-48s %d %d\n", "  the context and device it was made in", qctx == ctx, qdev == device);
    cl_command_queue dq = (cl_command_queue)1;
    CASE("CL_QUEUE_DEVICE_DEFAULT", clGetCommandQueueInfo(q, CL_QUEUE_DEVICE_DEFAULT, sizeof(dq), &dq, NULL));
    printf("%-48s %d\n", "  none (no on-device queues)", dq == NULL);
    cl_platform_id dplat = NULL;
    CASE("CL_DEVICE_PLATFORM", clGetDeviceInfo(device, CL_DEVICE_PLATFORM, sizeof(dplat), &dplat, NULL));
    printf("%-48s %d\n", "  the platform enumerated", dplat == platform);
    clReleaseCommandQueue(q);
    clReleaseContext(plain);
    clReleaseContext(ctx);
}

static void memory_objects(void)
{
    cl_int err;
    intptr_t got[16] = {0};
    size_t size = 0;
    cl_mem_properties none[] = {0};
    cl_mem buf = clCreateBufferWithProperties(context, none, CL_MEM_READ_WRITE, 64, NULL, &err);
    CASE("buffer with an empty property list", err);
    CASE("CL_MEM_PROPERTIES", clGetMemObjectInfo(buf, CL_MEM_PROPERTIES, sizeof(got), got, &size));
    printf("%-48s %zu\n", "  size", size);
    cl_buffer_region region = {0, 32};
    cl_mem sub = clCreateSubBuffer(buf, 0, CL_BUFFER_CREATE_TYPE_REGION, &region, &err);
    cl_mem parent = NULL;
    CASE("CL_MEM_ASSOCIATED_MEMOBJECT", clGetMemObjectInfo(sub, CL_MEM_ASSOCIATED_MEMOBJECT, sizeof(parent), &parent, NULL));
    printf("%-48s %d\n", "  the parent", parent == buf);
    clReleaseMemObject(sub);

    cl_image_format fmt = {CL_RGBA, CL_UNORM_INT8};
    cl_image_desc desc = {.image_type = CL_MEM_OBJECT_IMAGE2D, .image_width = 4, .image_height = 4};
    cl_mem img = clCreateImage(context, CL_MEM_READ_WRITE, &fmt, &desc, NULL, &err);
    size = 99;
    CASE("CL_MEM_PROPERTIES of an image", clGetMemObjectInfo(img, CL_MEM_PROPERTIES, sizeof(got), got, &size));
    printf("%-48s %zu\n", "  size", size);
    err = 12345;
    cl_mem pimg = clCreateImageWithProperties(context, none, CL_MEM_READ_WRITE, &fmt, &desc, NULL, &err);
    CASE("clCreateImageWithProperties", err);
    printf("%-48s %d\n", "  an image", pimg != NULL);
    size = 99;
    CASE("CL_MEM_PROPERTIES of it", clGetMemObjectInfo(pimg, CL_MEM_PROPERTIES, sizeof(got), got, &size));
    printf("%-48s %zu\n", "  size", size);
    cl_mem_object_type type = 0;
    CASE("CL_MEM_TYPE of it", clGetMemObjectInfo(pimg, CL_MEM_TYPE, sizeof(type), &type, NULL));
    printf("%-48s %#x\n", "  type", (unsigned)type);
    err = 12345;
    cl_image_desc bad = desc;
    bad.image_width = 0;
    cl_mem none_img = clCreateImageWithProperties(context, none, CL_MEM_READ_WRITE, &fmt, &bad, NULL, &err);
    CASE("clCreateImageWithProperties, width 0", err);
    printf("%-48s %d\n", "  NULL", none_img == NULL);
    clReleaseMemObject(pimg);
    clReleaseMemObject(img);

    cl_sampler_properties sprops[] = {CL_SAMPLER_NORMALIZED_COORDS, CL_TRUE, 0};
    cl_sampler smp = clCreateSamplerWithProperties(context, sprops, &err);
    CASE("sampler with properties", err);
    CASE("CL_SAMPLER_PROPERTIES", clGetSamplerInfo(smp, CL_SAMPLER_PROPERTIES, sizeof(got), got, &size));
    check_properties("  the properties given", (const intptr_t *)sprops, got, size);
    cl_context sctx = NULL;
    CASE("CL_SAMPLER_CONTEXT", clGetSamplerInfo(smp, CL_SAMPLER_CONTEXT, sizeof(sctx), &sctx, NULL));
    printf("%-48s %d\n", "  the context", sctx == context);
    clReleaseSampler(smp);
    clReleaseMemObject(buf);
}

/* CL_MEM_FLAGS of sub-buffers: the parent's host pointer flags always, its access
 * and host access flags where the sub-buffer names none. */
static void sub_buffer_flags(void)
{
    static char host[256];
    const cl_mem_flags parents[] = {
        CL_MEM_READ_WRITE, CL_MEM_USE_HOST_PTR, CL_MEM_READ_WRITE | CL_MEM_USE_HOST_PTR,
        CL_MEM_USE_HOST_PTR | CL_MEM_HOST_READ_ONLY, CL_MEM_READ_WRITE | CL_MEM_USE_HOST_PTR | CL_MEM_HOST_READ_ONLY,
        CL_MEM_READ_ONLY | CL_MEM_USE_HOST_PTR, CL_MEM_READ_WRITE | CL_MEM_USE_HOST_PTR | CL_MEM_HOST_WRITE_ONLY,
        CL_MEM_COPY_HOST_PTR | CL_MEM_HOST_NO_ACCESS, CL_MEM_ALLOC_HOST_PTR | CL_MEM_HOST_READ_ONLY,
    };
    const cl_mem_flags subs[] = {0, CL_MEM_READ_WRITE, CL_MEM_READ_ONLY, CL_MEM_HOST_READ_ONLY,
                                 CL_MEM_HOST_WRITE_ONLY, CL_MEM_READ_ONLY | CL_MEM_HOST_NO_ACCESS};
    cl_buffer_region region = {0, 64};
    for (unsigned i = 0; i < sizeof(parents) / sizeof(*parents); i++) {
        cl_int err;
        void *ptr = parents[i] & (CL_MEM_USE_HOST_PTR | CL_MEM_COPY_HOST_PTR) ? host : NULL;
        cl_mem buf = clCreateBuffer(context, parents[i], sizeof(host), ptr, &err);
        cl_mem_flags flags = 0;
        clGetMemObjectInfo(buf, CL_MEM_FLAGS, sizeof(flags), &flags, NULL);
        printf("buffer %#-6lx err %d flags %#lx\n", (unsigned long)parents[i], err, (unsigned long)flags);
        for (unsigned j = 0; j < sizeof(subs) / sizeof(*subs); j++) {
            cl_mem sub = clCreateSubBuffer(buf, subs[j], CL_BUFFER_CREATE_TYPE_REGION, &region, &err);
            flags = 0;
            if (sub)
                clGetMemObjectInfo(sub, CL_MEM_FLAGS, sizeof(flags), &flags, NULL);
            printf("  sub-buffer %#-6lx err %d flags %#lx\n", (unsigned long)subs[j], err, (unsigned long)flags);
            if (sub)
                clReleaseMemObject(sub);
        }
        clReleaseMemObject(buf);
    }
}

/* A write-only map of memory the host may only write: it starts with the contents,
 * and the unmap writes back what the program wrote. */
static void write_maps_of_host_write_only_memory(void)
{
    cl_int err;
    unsigned char pattern = 0x5a, back[256] = {0};
    cl_mem buf = clCreateBuffer(context, CL_MEM_READ_WRITE | CL_MEM_HOST_WRITE_ONLY, 256, NULL, &err);
    CASE("fill a host-write-only buffer", clEnqueueFillBuffer(queue, buf, &pattern, 1, 0, 256, 0, NULL, NULL));
    unsigned char *p = clEnqueueMapBuffer(queue, buf, CL_TRUE, CL_MAP_WRITE, 16, 64, 0, NULL, NULL, &err);
    CASE("CL_MAP_WRITE of it", err);
    if (p) {
        printf("%-48s %d\n", "  starts with its contents", p[0] == 0x5a && p[63] == 0x5a);
        memset(p, 0x11, 8);
        CASE("  unmap", clEnqueueUnmapMemObject(queue, buf, p, 0, NULL, NULL));
    }
    CASE("CL_MAP_READ of it", (clEnqueueMapBuffer(queue, buf, CL_TRUE, CL_MAP_READ, 0, 64, 0, NULL, NULL, &err), err));
    cl_buffer_region region = {128, 64};   /* at CL_DEVICE_MEM_BASE_ADDR_ALIGN */
    cl_mem sub = clCreateSubBuffer(buf, 0, CL_BUFFER_CREATE_TYPE_REGION, &region, &err);
    p = clEnqueueMapBuffer(queue, sub, CL_TRUE, CL_MAP_WRITE, 0, 64, 0, NULL, NULL, &err);
    CASE("CL_MAP_WRITE of a sub-buffer of it", err);
    if (p) {
        printf("%-48s %d\n", "  starts with its contents", p[0] == 0x5a);
        p[63] = 0x22;
        CASE("  unmap", clEnqueueUnmapMemObject(queue, sub, p, 0, NULL, NULL));
    }
    cl_mem readable = clCreateBuffer(context, CL_MEM_READ_WRITE, 256, NULL, &err);
    clEnqueueCopyBuffer(queue, buf, readable, 0, 0, 256, 0, NULL, NULL);
    CASE("read it back through a copy", clEnqueueReadBuffer(queue, readable, CL_TRUE, 0, 256, back, 0, NULL, NULL));
    int same = 1;
    for (int i = 0; i < 256; i++)
        same &= back[i] == (i >= 16 && i < 24 ? 0x11 : i == 191 ? 0x22 : 0x5a);
    printf("%-48s %d\n", "  only the written bytes changed", same);

    cl_image_format fmt = {CL_RGBA, CL_UNSIGNED_INT8};
    cl_image_desc desc = {.image_type = CL_MEM_OBJECT_IMAGE2D, .image_width = 8, .image_height = 4};
    cl_mem img = clCreateImage(context, CL_MEM_READ_WRITE | CL_MEM_HOST_WRITE_ONLY, &fmt, &desc, NULL, &err);
    cl_uint4 color = {{7, 7, 7, 7}};
    size_t origin[3] = {0, 0, 0}, region3[3] = {8, 4, 1}, row = 0;
    CASE("fill a host-write-only image", clEnqueueFillImage(queue, img, &color, origin, region3, 0, NULL, NULL));
    size_t at[3] = {2, 1, 0}, part[3] = {4, 2, 1};
    unsigned char *q = clEnqueueMapImage(queue, img, CL_TRUE, CL_MAP_WRITE, at, part, &row, NULL, 0, NULL, NULL, &err);
    CASE("CL_MAP_WRITE of it", err);
    if (q) {
        printf("%-48s %d\n", "  starts with its contents", q[0] == 7 && q[row + 15] == 7);
        q[0] = 9;
        CASE("  unmap", clEnqueueUnmapMemObject(queue, img, q, 0, NULL, NULL));
    }
    clEnqueueCopyImageToBuffer(queue, img, readable, origin, region3, 0, 0, NULL, NULL);
    CASE("read it back through a copy", clEnqueueReadBuffer(queue, readable, CL_TRUE, 0, 128, back, 0, NULL, NULL));
    same = 1;
    for (int i = 0; i < 128; i++)
        same &= back[i] == (i == 4 * (8 + 2) ? 9 : 7);
    printf("%-48s %d\n", "  only the written byte changed", same);
    clReleaseMemObject(img);
    clReleaseMemObject(readable);
    clReleaseMemObject(sub);
    clReleaseMemObject(buf);
}

/* Partition property lists (a list by counts carries its own 0 before the end),
 * read back from the sub-device with its parent. */
static void sub_devices(void)
{
    cl_device_partition_property one[] = {CL_DEVICE_PARTITION_BY_COUNTS, 1,
                                          CL_DEVICE_PARTITION_BY_COUNTS_LIST_END, 0};
    cl_device_partition_property two[] = {CL_DEVICE_PARTITION_BY_COUNTS, 1, 1,
                                          CL_DEVICE_PARTITION_BY_COUNTS_LIST_END, 0};
    cl_device_partition_property equally[] = {CL_DEVICE_PARTITION_EQUALLY, 1, 0};
    cl_device_partition_property *lists[] = {one, two, equally};
    for (int i = 0; i < 3; i++) {
        cl_device_id sub[64];
        cl_uint n = 0;
        cl_int err = clCreateSubDevices(device, lists[i], 64, sub, &n);
        printf("%-48s %d %d\n", "clCreateSubDevices", err, err == CL_SUCCESS && n > 0);
        if (err != CL_SUCCESS)
            continue;
        cl_device_partition_property got[16] = {0};
        size_t size = 0;
        err = clGetDeviceInfo(sub[0], CL_DEVICE_PARTITION_TYPE, sizeof(got), got, &size);
        printf("%-48s %d size %zu %#lx %ld %ld\n", "  CL_DEVICE_PARTITION_TYPE", err, size,
               (long)got[0], (long)got[1], (long)got[2]);
        cl_device_id parent = NULL;
        clGetDeviceInfo(sub[0], CL_DEVICE_PARENT_DEVICE, sizeof(parent), &parent, NULL);
        printf("%-48s %d\n", "  CL_DEVICE_PARENT_DEVICE is the device", parent == device);
        for (cl_uint j = 0; j < n && j < 64; j++)
            clReleaseDevice(sub[j]);
    }
}

/* What is reported works, what does not work is not reported. */
static void capabilities(void)
{
    cl_int err;
    void *svm = clSVMAlloc(context, CL_MEM_READ_WRITE, 4096, 0);
    printf("%-48s %d\n", "SVM reported exactly when clSVMAlloc works", (u64_info(CL_DEVICE_SVM_CAPABILITIES) != 0) == (svm != NULL));
    if (svm)
        clSVMFree(context, svm);
    cl_ulong enqueue = u64_info(CL_DEVICE_DEVICE_ENQUEUE_CAPABILITIES);
    err = clSetDefaultDeviceCommandQueue(context, device, queue);
    printf("%-48s %d\n", "no device enqueue: no default device queue", enqueue != 0 || err == CL_INVALID_OPERATION);
    CASE("clSetDefaultDeviceCommandQueue, NULL queue", clSetDefaultDeviceCommandQueue(context, device, NULL));
    CASE("clSetDefaultDeviceCommandQueue, NULL context", clSetDefaultDeviceCommandQueue(NULL, device, queue));
    char ext[8192] = "";
    clGetDeviceInfo(device, CL_DEVICE_EXTENSIONS, sizeof(ext), ext, NULL);
    char pext[4096] = "";
    clGetPlatformInfo(platform, CL_PLATFORM_EXTENSIONS, sizeof(pext), pext, NULL);
    /* Extensions with entry points: reported only when the entry points are there. */
    static const struct { const char *ext, *fn; } entry[] = {
        {"cl_khr_command_buffer", "clCreateCommandBufferKHR"},
        {"cl_pocl_content_size", "clSetContentSizeBufferPoCL"},
        {"cl_khr_il_program", "clCreateProgramWithILKHR"},
        {"cl_khr_subgroups", "clGetKernelSubGroupInfoKHR"},
        {"cl_khr_create_command_queue", "clCreateCommandQueueWithPropertiesKHR"},
        {"cl_khr_suggested_local_work_size", "clGetKernelSuggestedLocalWorkSizeKHR"},
        {"cl_khr_gl_sharing", "clGetGLContextInfoKHR"},
        {"cl_intel_unified_shared_memory", "clDeviceMemAllocINTEL"},
    };
    for (unsigned i = 0; i < sizeof(entry) / sizeof(*entry); i++) {
        int reported = has_extension(ext, entry[i].ext) || has_extension(pext, entry[i].ext);
        void *fn = clGetExtensionFunctionAddressForPlatform(platform, entry[i].fn);
        printf("%-48s %d\n", entry[i].ext, !reported || fn != NULL);
    }
    size_t size = 0, vsize = 0;
    clGetDeviceInfo(device, CL_DEVICE_EXTENSIONS_WITH_VERSION, 0, NULL, &vsize);
    cl_name_version *v = malloc(vsize + 1);
    clGetDeviceInfo(device, CL_DEVICE_EXTENSIONS_WITH_VERSION, vsize, v, NULL);
    int agree = 1;
    for (size_t i = 0; i < vsize / sizeof(*v); i++)
        agree &= has_extension(ext, v[i].name);
    clGetDeviceInfo(device, CL_DEVICE_EXTENSIONS, 0, NULL, &size);
    printf("%-48s %d\n", "extension list and versions agree", agree && size == strlen(ext) + 1);
    CASE("CL_DEVICE_EXTENSIONS, 1 byte short", clGetDeviceInfo(device, CL_DEVICE_EXTENSIONS, size - 1, ext, NULL));
    free(v);
}

/* Answers the guest keeps (immutable params) keep the implementation's rules when
 * asked again: the same bytes and size, a short buffer refused, a size-only query. */
static void asked_again(void)
{
    for (int round = 0; round < 3; round++) {
        char name[256];
        size_t size = 0, size2 = 0;
        memset(name, 0x7e, sizeof(name));
        cl_int a = clGetDeviceInfo(device, CL_DEVICE_NAME, sizeof(name), name, &size);
        cl_int b = clGetDeviceInfo(device, CL_DEVICE_NAME, 0, NULL, &size2);
        cl_int c = clGetDeviceInfo(device, CL_DEVICE_NAME, size - 1, name, NULL);
        cl_int d = clGetDeviceInfo(device, CL_DEVICE_NAME, 0, name, NULL);
        cl_int e = clGetDeviceInfo(device, CL_DEVICE_NAME, 0, NULL, NULL);
        printf("round %d CL_DEVICE_NAME %d %d %d %d %d sizes %d, tail kept %d\n", round, a, b, c, d, e,
               size == size2 && size == strlen(name) + 1, name[size] == 0x7e);
        cl_uint units = 0xabababab;
        cl_ulong wide = 0xabababababababab;
        a = clGetDeviceInfo(device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof(units), &units, &size);
        b = clGetDeviceInfo(device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof(wide), &wide, NULL);
        c = clGetDeviceInfo(device, CL_DEVICE_MAX_COMPUTE_UNITS, 2, &units, NULL);
        printf("  units %d %d %d size %zu same %d upper kept %d\n", a, b, c, size,
               (cl_uint)wide == units, (wide >> 32) == 0xabababab);
        char pname[256];
        a = clGetPlatformInfo(platform, CL_PLATFORM_NAME, sizeof(pname), pname, &size);
        printf("  platform name %d size %zu\n", a, size);
    }
    cl_int err;
    const char *src = "__kernel void k(__global int *a, __local int *l, int n) { l[0] = n; a[0] = l[0]; }";
    cl_program prog = clCreateProgramWithSource(context, 1, &src, NULL, &err);
    clBuildProgram(prog, 1, &device, "-cl-kernel-arg-info", NULL, NULL);
    cl_kernel k = clCreateKernel(prog, "k", &err);
    for (int round = 0; round < 2; round++) {
        size_t wg = 0, size = 0;
        cl_ulong local = 0;
        cl_int a = clGetKernelWorkGroupInfo(k, device, CL_KERNEL_WORK_GROUP_SIZE, sizeof(wg), &wg, &size);
        cl_int b = clGetKernelWorkGroupInfo(k, NULL, CL_KERNEL_WORK_GROUP_SIZE, sizeof(wg), &wg, NULL);
        clSetKernelArg(k, 1, 64 * (round + 1), NULL);
        cl_int c = clGetKernelWorkGroupInfo(k, device, CL_KERNEL_LOCAL_MEM_SIZE, sizeof(local), &local, NULL);
        printf("round %d work-group size %d %d %zu, local memory %d %lu\n", round, a, b, size, c,
               (unsigned long)local);
        char arg[64];
        for (cl_uint i = 0; i < 4; i++) {
            cl_int st = clGetKernelArgInfo(k, i, CL_KERNEL_ARG_NAME, sizeof(arg), arg, &size);
            printf("  arg %u: %d %s\n", i, st, st == CL_SUCCESS ? arg : "-");
        }
        cl_uint nargs = 0;
        CASE("  CL_KERNEL_NUM_ARGS", clGetKernelInfo(k, CL_KERNEL_NUM_ARGS, sizeof(nargs), &nargs, NULL));
        printf("  %u\n", nargs);
    }
    cl_uint refs = 0;
    clRetainKernel(k);
    CASE("CL_KERNEL_REFERENCE_COUNT after a retain", clGetKernelInfo(k, CL_KERNEL_REFERENCE_COUNT, sizeof(refs), &refs, NULL));
    printf("  %u\n", refs);
    clReleaseKernel(k);
    CASE("CL_KERNEL_REFERENCE_COUNT after a release", clGetKernelInfo(k, CL_KERNEL_REFERENCE_COUNT, sizeof(refs), &refs, NULL));
    printf("  %u\n", refs);
    clReleaseKernel(k);
    clReleaseProgram(prog);
}

int main(void)
{
    if (setup())
        return 1;
    context_and_queue();
    memory_objects();
    sub_buffer_flags();
    write_maps_of_host_write_only_memory();
    sub_devices();
    capabilities();
    asked_again();
    return 0;
}
