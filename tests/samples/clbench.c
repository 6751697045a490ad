/* clbench: OpenCL call costs an application sees, for native-vs-device comparisons.
 * Prints one JSON line of figures (vdev.bench opencl runs it natively and through the
 * device in the same run):
 *   info_query_us         clGetDeviceInfo of a param that never changes
 *   forwarded_info_us     clGetContextInfo(CL_CONTEXT_REFERENCE_COUNT): a call that
 *                         must be asked of the implementation (a forwarded null call)
 *   set_arg_us            clSetKernelArg of a buffer, another each time (two in turn)
 *   set_arg_same_us       clSetKernelArg of the buffer the argument already holds
 *   launch4_median_us, launch4_p99_us
 *                         four clSetKernelArg, clEnqueueNDRangeKernel, clFinish, each
 *                         time with the same four values (as programs re-set them)
 *   launch4_changing_median_us
 *                         the same, the first buffer another each time (two in turn)
 *   async_launches_us     1,000 launches back to back, then clFinish (the whole)
 *   {write,read,map}_{4k,1m,64m}_gbs
 *                         blocking transfers; map is map for reading + unmap
 *   build_{cold,warm}_ms, build_inc_{cold,warm}_ms
 *                         clBuildProgram of a new source, then of the same source
 *                         again; _inc: with -I DIR and a header from DIR
 * Usage: clbench [--quick] [--transfers-only] [--include-dir DIR] (--transfers-only:
 * the transfer figures alone, for a slow guest; the header goes in DIR, by default a
 * fresh directory: every file under DIR travels with a build through the device). */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

#define CHECK(x) do { cl_int e_ = (x); if (e_) { fprintf(stderr, "%s = %d\n", #x, e_); exit(1); } } while (0)

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static cl_context ctx;
static cl_device_id dev;
static cl_command_queue q;

/* Milliseconds to build src with options (a new program object each time). */
static double build_ms(const char *src, const char *options)
{
    cl_int err;
    cl_program p = clCreateProgramWithSource(ctx, 1, &src, NULL, &err);
    CHECK(err);
    double t0 = now();
    CHECK(clBuildProgram(p, 1, &dev, options, NULL, NULL));
    double ms = (now() - t0) * 1e3;
    CHECK(clReleaseProgram(p));
    return ms;
}

/* GB/s of reps blocking transfers of size bytes: kind 0 write, 1 read, 2 map+unmap. */
static double transfer_gbs(int kind, size_t size, int reps)
{
    cl_int err;
    char *host = malloc(size);
    memset(host, 1, size);
    cl_mem buf = clCreateBuffer(ctx, CL_MEM_READ_WRITE, size, NULL, &err);
    CHECK(err);
    CHECK(clEnqueueWriteBuffer(q, buf, CL_TRUE, 0, size, host, 0, NULL, NULL));
    double t0 = now();
    for (int i = 0; i < reps; i++) {
        if (kind == 0) {
            CHECK(clEnqueueWriteBuffer(q, buf, CL_TRUE, 0, size, host, 0, NULL, NULL));
        } else if (kind == 1) {
            CHECK(clEnqueueReadBuffer(q, buf, CL_TRUE, 0, size, host, 0, NULL, NULL));
        } else {
            void *p = clEnqueueMapBuffer(q, buf, CL_TRUE, CL_MAP_READ, 0, size, 0, NULL, NULL,
                                         &err);
            CHECK(err);
            CHECK(clEnqueueUnmapMemObject(q, buf, p, 0, NULL, NULL));
            CHECK(clFinish(q));
        }
    }
    double gbs = size * (double)reps / (now() - t0) / 1e9;
    CHECK(clReleaseMemObject(buf));
    free(host);
    return gbs;
}

int main(int argc, char **argv)
{
    int quick = 0, transfers_only = 0;
    const char *inc = NULL;     /* default: a fresh directory holding just the header */
    char inc_dir[] = "/tmp/clbench-XXXXXX";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--transfers-only"))
            transfers_only = 1;
        else if (!strcmp(argv[i], "--include-dir") && i + 1 < argc)
            inc = argv[++i];
    }
    cl_platform_id p;
    cl_int err;
    CHECK(clGetPlatformIDs(1, &p, NULL));
    CHECK(clGetDeviceIDs(p, CL_DEVICE_TYPE_ALL, 1, &dev, NULL));
    char name[256];
    CHECK(clGetDeviceInfo(dev, CL_DEVICE_NAME, sizeof(name), name, NULL));
    ctx = clCreateContext(NULL, 1, &dev, NULL, NULL, &err);
    CHECK(err);
    q = clCreateCommandQueue(ctx, dev, 0, &err);
    CHECK(err);
    int n = quick ? 500 : 5000;
    static const size_t sizes[3] = {4096, 1 << 20, 64u << 20};
    static const char *size_names[3] = {"4k", "1m", "64m"};
    static const char *kinds[3] = {"write", "read", "map"};
    double gbs[3][3];
    for (int s = 0; s < 3; s++) {
        int reps = s == 0 ? (quick ? 200 : 2000) : s == 1 ? (quick ? 20 : 200) : (quick ? 2 : 5);
        for (int kind = 0; kind < 3; kind++)
            gbs[kind][s] = transfer_gbs(kind, sizes[s], reps);
    }
    if (transfers_only) {
        printf("{\"device\": \"%s\"", name);
        for (int kind = 0; kind < 3; kind++)
            for (int s = 0; s < 3; s++)
                printf(", \"%s_%s_gbs\": %.5g", kinds[kind], size_names[s], gbs[kind][s]);
        printf("}\n");
        return 0;
    }

    /* The best of three rounds, the first call (which fills the guest's cache) apart:
     * a preemption on a loaded machine is not the call's cost. */
    double info_us = 1e30, forwarded_us = 1e30, t0;
    cl_uint units, refs;
    CHECK(clGetDeviceInfo(dev, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof(units), &units, NULL));
    for (int r = 0; r < 3; r++) {
        t0 = now();
        for (int i = 0; i < n; i++)
            CHECK(clGetDeviceInfo(dev, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof(units), &units, NULL));
        double us = (now() - t0) * 1e6 / n;
        info_us = us < info_us ? us : info_us;
        t0 = now();
        for (int i = 0; i < n; i++)
            CHECK(clGetContextInfo(ctx, CL_CONTEXT_REFERENCE_COUNT, sizeof(refs), &refs, NULL));
        us = (now() - t0) * 1e6 / n;
        forwarded_us = us < forwarded_us ? us : forwarded_us;
    }

    const char *src =
        "__kernel void inc(__global int *a, __global int *b, int k, float f)"
        " { size_t i = get_global_id(0); a[i] += k + (int)f + b[0]; }";
    cl_program prog = clCreateProgramWithSource(ctx, 1, &src, NULL, &err);
    CHECK(err);
    CHECK(clBuildProgram(prog, 1, &dev, "", NULL, NULL));
    cl_kernel k = clCreateKernel(prog, "inc", &err);
    CHECK(err);
    cl_mem a = clCreateBuffer(ctx, CL_MEM_READ_WRITE, 4096, NULL, &err);
    CHECK(err);
    cl_mem a2 = clCreateBuffer(ctx, CL_MEM_READ_WRITE, 4096, NULL, &err);
    CHECK(err);
    cl_mem b = clCreateBuffer(ctx, CL_MEM_READ_ONLY, 4096, NULL, &err);
    CHECK(err);
    cl_mem turns[2] = {a, a2};
    int kval = 1;
    float fval = 0.5f;
    size_t g = 1024;
    CHECK(clSetKernelArg(k, 0, sizeof(a2), &a2));
    CHECK(clSetKernelArg(k, 0, sizeof(a), &a));
    t0 = now();
    for (int i = 0; i < n; i++)
        CHECK(clSetKernelArg(k, 0, sizeof(a), &turns[i & 1]));
    double set_arg_us = (now() - t0) * 1e6 / n;
    t0 = now();
    for (int i = 0; i < n; i++)
        CHECK(clSetKernelArg(k, 0, sizeof(a), &a));
    double set_arg_same_us = (now() - t0) * 1e6 / n;

    int m = quick ? 1000 : 10000;
    double *lat = malloc(sizeof(double) * m);
    double launch_median = 0, launch_p99 = 0, launch_changing_median = 0;
    for (int changing = 0; changing < 2; changing++) {
        for (int i = -10; i < m; i++) {       /* ten to warm up */
            double s = now();
            CHECK(clSetKernelArg(k, 0, sizeof(a), changing ? &turns[i & 1] : &a));
            CHECK(clSetKernelArg(k, 1, sizeof(b), &b));
            CHECK(clSetKernelArg(k, 2, sizeof(kval), &kval));
            CHECK(clSetKernelArg(k, 3, sizeof(fval), &fval));
            CHECK(clEnqueueNDRangeKernel(q, k, 1, NULL, &g, NULL, 0, NULL, NULL));
            CHECK(clFinish(q));
            if (i >= 0)
                lat[i] = (now() - s) * 1e6;
        }
        qsort(lat, m, sizeof(double), cmp_double);
        if (changing) {
            launch_changing_median = lat[m / 2];
        } else {
            launch_median = lat[m / 2];
            launch_p99 = lat[m * 99 / 100];
        }
    }
    CHECK(clSetKernelArg(k, 0, sizeof(a), &a));

    int burst = 1000;
    double async_us = 1e30;
    for (int r = 0; r < (quick ? 1 : 3); r++) {   /* the best of three */
        t0 = now();
        for (int i = 0; i < burst; i++)
            CHECK(clEnqueueNDRangeKernel(q, k, 1, NULL, &g, NULL, 0, NULL, NULL));
        CHECK(clFinish(q));
        double us = (now() - t0) * 1e6;
        if (us < async_us)
            async_us = us;
    }

    /* Builds: a source no cache has seen (a nonce), then the same again. */
    char nonce[64], header[512], cold_src[512], inc_src[512], opts[600];
    snprintf(nonce, sizeof(nonce), "%ld_%d", (long)time(NULL), (int)getpid());
    snprintf(cold_src, sizeof(cold_src),
             "__kernel void k_%s(__global int *a) { a[get_global_id(0)] *= 2; }", nonce);
    double build_cold = build_ms(cold_src, "");
    double build_warm = build_ms(cold_src, "");
    if (!inc && !(inc = mkdtemp(inc_dir))) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(header, sizeof(header), "%s/clbench_%s.h", inc, nonce);
    FILE *h = fopen(header, "w");
    if (!h) {
        perror(header);
        return 1;
    }
    fprintf(h, "#define CLBENCH_SCALE_%s 3\n", nonce);
    fclose(h);
    snprintf(inc_src, sizeof(inc_src),
             "#include \"clbench_%s.h\"\n"
             "__kernel void j_%s(__global int *a) { a[get_global_id(0)] *= CLBENCH_SCALE_%s; }",
             nonce, nonce, nonce);
    snprintf(opts, sizeof(opts), "-I %s", inc);
    double build_inc_cold = build_ms(inc_src, opts);
    double build_inc_warm = build_ms(inc_src, opts);
    unlink(header);
    if (inc == inc_dir)
        rmdir(inc_dir);

    printf("{\"device\": \"%s\", \"info_query_us\": %.4f, \"forwarded_info_us\": %.4f, "
           "\"set_arg_us\": %.4f, \"set_arg_same_us\": %.4f, \"launch4_median_us\": %.2f, "
           "\"launch4_p99_us\": %.2f, \"launch4_changing_median_us\": %.2f, "
           "\"async_launches_us\": %.1f, ", name, info_us, forwarded_us, set_arg_us,
           set_arg_same_us, launch_median, launch_p99, launch_changing_median, async_us);
    for (int kind = 0; kind < 3; kind++)
        for (int s = 0; s < 3; s++)
            printf("\"%s_%s_gbs\": %.5g, ", kinds[kind], size_names[s], gbs[kind][s]);
    printf("\"build_cold_ms\": %.1f, \"build_warm_ms\": %.1f, \"build_inc_cold_ms\": %.1f, "
           "\"build_inc_warm_ms\": %.1f}\n", build_cold, build_warm, build_inc_cold,
           build_inc_warm);
    return 0;
}
