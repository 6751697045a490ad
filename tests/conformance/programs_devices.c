#include "common.h"

#include <time.h>

static volatile int notified;

static void CL_CALLBACK on_build(cl_program p, void *data)
{
    (void)p;
    notified += (int)(intptr_t)data;
}

static void wait_notified(int want)
{
    for (int i = 0; i < 5000 && notified < want; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

static const char *src =
    "#include \"scale.h\"\n"
    "__kernel void scale(__global int *a) { a[get_global_id(0)] *= FACTOR; }\n"
    "__kernel void twice(__global int *a) { a[get_global_id(0)] += a[get_global_id(0)]; }\n";
static const char *header = "#define FACTOR 3\n";
static const char *plain =
    "__kernel void scale(__global int *a) { a[get_global_id(0)] *= FACTOR; }\n";

static int run_scale(cl_program prog, const char *name)
{
    cl_int err;
    int v[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    cl_kernel k = clCreateKernel(prog, name, &err);
    if (err) return err;
    cl_mem m = clCreateBuffer(context, CL_MEM_COPY_HOST_PTR, sizeof(v), v, &err);
    clSetKernelArg(k, 0, sizeof(m), &m);
    size_t n = 8;
    clEnqueueNDRangeKernel(queue, k, 1, NULL, &n, NULL, 0, NULL, NULL);
    clEnqueueReadBuffer(queue, m, CL_TRUE, 0, sizeof(v), v, 0, NULL, NULL);
    clReleaseMemObject(m);
    clReleaseKernel(k);
    return v[0] * 1000 + v[7];
}

int main(void)
{
    if (setup()) return 1;
    cl_int err;

    /* compile with an embedded header, link, run */
    cl_program hdr = clCreateProgramWithSource(context, 1, &header, NULL, &err);
    cl_program obj = clCreateProgramWithSource(context, 1, &src, NULL, &err);
    const char *names[] = {"scale.h"};
    CASE("CompileProgram(with header)", clCompileProgram(obj, 1, &device, "", 1, &hdr, names, on_build, (void *)1));
    wait_notified(1);
    CASE("compile notified", notified);
    cl_program linked = clLinkProgram(context, 1, &device, "", 1, &obj, on_build, (void *)10, &err);
    CASE("LinkProgram", err);
    wait_notified(11);
    CASE("link notified", notified);
    CASE("linked program runs", run_scale(linked, "scale"));
    cl_program bad = clCreateProgramWithSource(context, 1, &src, NULL, &err);
    CASE("CompileProgram(missing header)", clCompileProgram(bad, 1, &device, "", 0, NULL, NULL, NULL, NULL));
    CASE("CompileProgram(user_data without fn)", clCompileProgram(bad, 1, &device, "", 0, NULL, NULL, NULL, (void *)1));
    clLinkProgram(context, 1, &device, "", 0, NULL, NULL, NULL, &err);
    CASE("LinkProgram(no inputs)", err);
    clReleaseProgram(bad);

    /* kernels in program, sorted by name */
    cl_uint nk = 0;
    CASE("CreateKernelsInProgram(count)", clCreateKernelsInProgram(linked, 0, NULL, &nk));
    CASE("kernels", nk);
    cl_kernel ks[4] = {0};
    CASE("CreateKernelsInProgram", clCreateKernelsInProgram(linked, 4, ks, &nk));
    char kn[2][32] = {{0}};
    for (cl_uint i = 0; i < nk && i < 2; i++)
        clGetKernelInfo(ks[i], CL_KERNEL_FUNCTION_NAME, sizeof(kn[i]), kn[i], NULL);
    CASE("both names", (!strcmp(kn[0], "scale") && !strcmp(kn[1], "twice")) || (!strcmp(kn[1], "scale") && !strcmp(kn[0], "twice")));
    for (cl_uint i = 0; i < nk; i++)
        CASE("ReleaseKernel(from array)", clReleaseKernel(ks[i]));
    CASE("CreateKernelsInProgram(too few)", clCreateKernelsInProgram(linked, 1, ks, NULL));

    /* binaries: fetch, rebuild from them, run */
    cl_program built = clCreateProgramWithSource(context, 1, &plain, NULL, &err);
    CASE("BuildProgram(notify)", clBuildProgram(built, 1, &device, "-DFACTOR=5", on_build, (void *)100));
    wait_notified(111);
    CASE("build notified", notified);
    size_t bsize = 0;
    CASE("GetProgramInfo(BINARY_SIZES)", clGetProgramInfo(built, CL_PROGRAM_BINARY_SIZES, sizeof(bsize), &bsize, NULL));
    CASE("binary size > 0", bsize > 0);
    unsigned char *bin = malloc(bsize);
    unsigned char *bins[1] = {bin};
    size_t ret = 0;
    CASE("GetProgramInfo(BINARIES)", clGetProgramInfo(built, CL_PROGRAM_BINARIES, sizeof(bins), bins, &ret));
    CASE("BINARIES size_ret", ret);
    CASE("GetProgramInfo(BINARIES, small)", clGetProgramInfo(built, CL_PROGRAM_BINARIES, 4, bins, NULL));
    const unsigned char *cbin = bin;
    cl_int bstatus = 99;
    cl_program again = clCreateProgramWithBinary(context, 1, &device, &bsize, &cbin, &bstatus, &err);
    CASE("CreateProgramWithBinary", err);
    CASE("binary status", bstatus);
    CASE("BuildProgram(from binary)", clBuildProgram(again, 1, &device, NULL, NULL, NULL));
    CASE("binary program runs", run_scale(again, "scale"));
    clReleaseProgram(again);
    size_t one = 1;
    const unsigned char junk[8] = "garbage";
    const unsigned char *pj = junk;
    bstatus = 99;
    clCreateProgramWithBinary(context, 1, &device, &one, &pj, &bstatus, &err);
    CASE("CreateProgramWithBinary(junk)", err);
    CASE("junk binary status", bstatus);
    clCreateProgramWithBinary(context, 1, &device, NULL, &cbin, NULL, &err);
    CASE("CreateProgramWithBinary(NULL lengths)", err);
    clCreateProgramWithBinary(context, 0, NULL, &bsize, &cbin, NULL, &err);
    CASE("CreateProgramWithBinary(no devices)", err);
    free(bin);

    /* built-in kernels and sub-devices: whatever the implementation says */
    cl_program builtin = clCreateProgramWithBuiltInKernels(context, 1, &device, "no.such.kernel", &err);
    CASE("CreateProgramWithBuiltInKernels(unknown)", err);
    if (builtin) clReleaseProgram(builtin);
    cl_device_partition_property equally[] = {CL_DEVICE_PARTITION_EQUALLY, 1, 0};
    cl_uint nsub = 0;
    err = clCreateSubDevices(device, equally, 0, NULL, &nsub);
    CASE("CreateSubDevices(count)", err);
    cl_device_id subs[64] = {0};
    if (err == CL_SUCCESS && nsub <= 64) {
        CASE("CreateSubDevices", clCreateSubDevices(device, equally, nsub, subs, NULL));
        cl_device_id parent = NULL;
        clGetDeviceInfo(subs[0], CL_DEVICE_PARENT_DEVICE, sizeof(parent), &parent, NULL);
        CASE("parent is the root device", parent == device);
        cl_uint cu = 0;
        clGetDeviceInfo(subs[0], CL_DEVICE_MAX_COMPUTE_UNITS, sizeof(cu), &cu, NULL);
        CASE("sub-device compute units", cu);
        cl_context sc = clCreateContext(NULL, 1, &subs[0], NULL, NULL, &err);
        CASE("context on a sub-device", err);
        if (sc) clReleaseContext(sc);
        for (cl_uint i = 0; i < nsub; i++)
            clReleaseDevice(subs[i]);
    }
    cl_device_partition_property bogus[] = {0x7777, 1, 0};
    CASE("CreateSubDevices(bad property)", clCreateSubDevices(device, bogus, 4, subs, NULL));
    CASE("CreateSubDevices(NULL device)", clCreateSubDevices(NULL, equally, 4, subs, NULL));
    CASE("ReleaseDevice(root)", clReleaseDevice(device));

    clReleaseProgram(built);
    clReleaseProgram(linked);
    clReleaseProgram(obj);
    clReleaseProgram(hdr);
    return 0;
}
