#define CL_USE_DEPRECATED_OPENCL_1_1_APIS
#include "common.h"

/* Images: creation of each type, transfers with and without explicit pitches, copies,
 * fill, map/unmap and a kernel reading through a sampler.  Data travels as checksums
 * (FNV-1a of the bytes), so a wrong span or pitch anywhere shows as a different line. */

static unsigned long sum(const void *p, size_t n)
{
    const unsigned char *b = p;
    unsigned long h = 1469598103934665603UL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211UL;
    return h;
}

#define SUM(name, p, n) printf("%-48s %lx\n", name, sum(p, n))

static void fill_bytes(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 31 + seed);
}

static const char *src =
    "__kernel void rd(read_only image2d_t img, sampler_t s, __global float4 *out)\n"
    "{ int x = get_global_id(0), y = get_global_id(1);\n"
    "  out[y * get_global_size(0) + x] = read_imagef(img, s, (int2)(x, y)); }\n";

static int has_format(cl_mem_object_type type, cl_image_format want)
{
    cl_image_format f[256];
    cl_uint n = 0;
    if (clGetSupportedImageFormats(context, CL_MEM_READ_WRITE, type, 256, f, &n))
        return 0;
    for (cl_uint i = 0; i < n && i < 256; i++)
        if (f[i].image_channel_order == want.image_channel_order &&
            f[i].image_channel_data_type == want.image_channel_data_type)
            return 1;
    return 0;
}

int main(void)
{
    if (setup()) return 1;
    cl_int err = 0;
    const cl_image_format rgba8 = {CL_RGBA, CL_UNORM_INT8}, rf = {CL_R, CL_FLOAT};
    const cl_mem_object_type types[] = {CL_MEM_OBJECT_IMAGE2D, CL_MEM_OBJECT_IMAGE3D,
                                        CL_MEM_OBJECT_IMAGE1D_ARRAY, CL_MEM_OBJECT_IMAGE1D_BUFFER};
    for (int i = 0; i < 4; i++) {
        char name[64];
        snprintf(name, sizeof name, "formats(%x) rgba8 rf", types[i]);
        printf("%-48s %d %d\n", name, has_format(types[i], rgba8), has_format(types[i], rf));
    }
    static unsigned char host[64 * 64 * 16], back[64 * 64 * 16], pitched[64 * 64 * 16];

    /* 2D RGBA8 16x8 with COPY_HOST_PTR, read back tight and pitched. */
    fill_bytes(host, sizeof host, 1);
    cl_image_desc d2 = {CL_MEM_OBJECT_IMAGE2D, 16, 8};
    cl_mem im2 = clCreateImage(context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, &rgba8, &d2,
                               host, &err);
    CASE("CreateImage(2D rgba8 copy)", err);
    size_t o0[3] = {0, 0, 0}, r2[3] = {16, 8, 1};
    memset(back, 0, sizeof back);
    CASE("ReadImage(2D tight)", clEnqueueReadImage(queue, im2, CL_TRUE, o0, r2, 0, 0, back, 0, NULL, NULL));
    SUM("ReadImage(2D tight) data", back, 16 * 8 * 4);
    memset(pitched, 0xAB, sizeof pitched);
    size_t o1[3] = {2, 1, 0}, r1[3] = {5, 3, 1};
    CASE("ReadImage(2D pitched part)", clEnqueueReadImage(queue, im2, CL_TRUE, o1, r1, 40, 0, pitched, 0, NULL, NULL));
    SUM("ReadImage(2D pitched part) data", pitched, 40 * 3);
    fill_bytes(pitched, sizeof pitched, 7);
    CASE("WriteImage(2D pitched part)", clEnqueueWriteImage(queue, im2, CL_TRUE, o1, r1, 48, 0, pitched, 0, NULL, NULL));
    CASE("ReadImage(2D after write)", clEnqueueReadImage(queue, im2, CL_TRUE, o0, r2, 0, 0, back, 0, NULL, NULL));
    SUM("ReadImage(2D after write) data", back, 16 * 8 * 4);
    size_t es = 0, rp = 0;
    CASE("GetImageInfo(ELEMENT_SIZE)", clGetImageInfo(im2, CL_IMAGE_ELEMENT_SIZE, sizeof es, &es, NULL));
    printf("%-48s %zu\n", "element size", es);
    CASE("GetImageInfo(ROW_PITCH)", clGetImageInfo(im2, CL_IMAGE_ROW_PITCH, sizeof rp, &rp, NULL));

    /* 2D R float with an explicit host row pitch at creation. */
    float fh[12 * 4];
    for (int i = 0; i < 12 * 4; i++) fh[i] = (float)i * 0.5f;
    cl_image_desc df = {CL_MEM_OBJECT_IMAGE2D, 10, 4, 0, 0, 12 * sizeof(float)};
    cl_mem imf = clCreateImage(context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, &rf, &df, fh, &err);
    CASE("CreateImage(2D R float, row pitch)", err);
    size_t rf2[3] = {10, 4, 1};
    memset(back, 0, sizeof back);
    CASE("ReadImage(2D float)", clEnqueueReadImage(queue, imf, CL_TRUE, o0, rf2, 0, 0, back, 0, NULL, NULL));
    SUM("ReadImage(2D float) data", back, 10 * 4 * 4);

    /* 3D RGBA8 8x4x3, written with explicit row and slice pitches. */
    cl_image_desc d3 = {CL_MEM_OBJECT_IMAGE3D, 8, 4, 3};
    cl_mem im3 = clCreateImage(context, CL_MEM_READ_WRITE, &rgba8, &d3, NULL, &err);
    CASE("CreateImage(3D rgba8)", err);
    size_t r3[3] = {8, 4, 3}, o3[3] = {1, 1, 1}, p3[3] = {6, 2, 2};
    fill_bytes(host, sizeof host, 3);
    CASE("WriteImage(3D tight)", clEnqueueWriteImage(queue, im3, CL_TRUE, o0, r3, 0, 0, host, 0, NULL, NULL));
    fill_bytes(pitched, sizeof pitched, 9);
    CASE("WriteImage(3D pitched)", clEnqueueWriteImage(queue, im3, CL_TRUE, o3, p3, 32, 100, pitched, 0, NULL, NULL));
    memset(back, 0, sizeof back);
    CASE("ReadImage(3D tight)", clEnqueueReadImage(queue, im3, CL_TRUE, o0, r3, 0, 0, back, 0, NULL, NULL));
    SUM("ReadImage(3D tight) data", back, 8 * 4 * 3 * 4);
    memset(pitched, 0x5A, sizeof pitched);
    CASE("ReadImage(3D pitched)", clEnqueueReadImage(queue, im3, CL_TRUE, o3, p3, 28, 120, pitched, 0, NULL, NULL));
    SUM("ReadImage(3D pitched) data", pitched, 120 * 2);

    /* 1D array R float: 20 wide, 3 layers; slice pitch applies to region[1]. */
    cl_image_desc da = {CL_MEM_OBJECT_IMAGE1D_ARRAY, 20, 0, 0, 3};
    cl_mem ima = clCreateImage(context, CL_MEM_READ_WRITE, &rf, &da, NULL, &err);
    CASE("CreateImage(1D array R float)", err);
    size_t ra[3] = {20, 3, 1}, oa[3] = {4, 1, 0}, pa[3] = {7, 2, 1};
    fill_bytes(host, sizeof host, 5);
    CASE("WriteImage(1D array tight)", clEnqueueWriteImage(queue, ima, CL_TRUE, o0, ra, 0, 0, host, 0, NULL, NULL));
    fill_bytes(pitched, sizeof pitched, 11);
    CASE("WriteImage(1D array slice pitch)", clEnqueueWriteImage(queue, ima, CL_TRUE, oa, pa, 0, 64, pitched, 0, NULL, NULL));
    memset(back, 0, sizeof back);
    CASE("ReadImage(1D array tight)", clEnqueueReadImage(queue, ima, CL_TRUE, o0, ra, 0, 0, back, 0, NULL, NULL));
    SUM("ReadImage(1D array tight) data", back, 20 * 3 * 4);
    memset(pitched, 0x11, sizeof pitched);
    CASE("ReadImage(1D array slice pitch)", clEnqueueReadImage(queue, ima, CL_TRUE, oa, pa, 0, 96, pitched, 0, NULL, NULL));
    SUM("ReadImage(1D array slice pitch) data", pitched, 96 * 2);

    /* 1D buffer image over a buffer. */
    cl_mem buf = clCreateBuffer(context, CL_MEM_READ_WRITE, 4096, NULL, &err);
    CASE("CreateBuffer(for images)", err);
    fill_bytes(host, 4096, 13);
    CASE("WriteBuffer(for images)", clEnqueueWriteBuffer(queue, buf, CL_TRUE, 0, 4096, host, 0, NULL, NULL));
    cl_image_desc db = {CL_MEM_OBJECT_IMAGE1D_BUFFER, 256};
    db.buffer = buf;
    cl_mem imb = clCreateImage(context, CL_MEM_READ_WRITE, &rgba8, &db, NULL, &err);
    CASE("CreateImage(1D buffer)", err);
    size_t rb[3] = {256, 1, 1};
    memset(back, 0, sizeof back);
    CASE("ReadImage(1D buffer)", clEnqueueReadImage(queue, imb, CL_TRUE, o0, rb, 0, 0, back, 0, NULL, NULL));
    SUM("ReadImage(1D buffer) data", back, 256 * 4);
    cl_mem got = NULL;
    CASE("GetImageInfo(IMAGE_BUFFER)", clGetImageInfo(imb, CL_IMAGE_BUFFER, sizeof got, &got, NULL));
    printf("%-48s %d\n", "IMAGE_BUFFER is the buffer", got == buf);

    /* Copies: image to image, image to buffer, buffer to image. */
    cl_mem im2b = clCreateImage(context, CL_MEM_READ_WRITE, &rgba8, &d2, NULL, &err);
    CASE("CreateImage(2D second)", err);
    fill_bytes(host, sizeof host, 17);
    CASE("WriteImage(2D second)", clEnqueueWriteImage(queue, im2b, CL_TRUE, o0, r2, 0, 0, host, 0, NULL, NULL));
    size_t co[3] = {3, 2, 0}, cr[3] = {8, 4, 1};
    CASE("CopyImage(2D)", clEnqueueCopyImage(queue, im2, im2b, o0, co, cr, 0, NULL, NULL));
    CASE("CopyBufferToImage", clEnqueueCopyBufferToImage(queue, buf, im2b, 64, o0, cr, 0, NULL, NULL));
    CASE("CopyImageToBuffer", clEnqueueCopyImageToBuffer(queue, im2b, buf, o0, r2, 512, 0, NULL, NULL));
    CASE("Finish(copies)", clFinish(queue));
    memset(back, 0, 4096);
    CASE("ReadBuffer(after copies)", clEnqueueReadBuffer(queue, buf, CL_TRUE, 0, 4096, back, 0, NULL, NULL));
    SUM("ReadBuffer(after copies) data", back, 4096);

    /* Fill: unorm (float colour) and float images. */
    float colour[4] = {0.25f, 0.5f, 0.75f, 1.0f};
    size_t fo[3] = {4, 2, 0}, fr[3] = {6, 3, 1};
    CASE("FillImage(2D rgba8)", clEnqueueFillImage(queue, im2b, colour, fo, fr, 0, NULL, NULL));
    CASE("FillImage(3D)", clEnqueueFillImage(queue, im3, colour, o3, p3, 0, NULL, NULL));
    CASE("Finish(fills)", clFinish(queue));
    memset(back, 0, sizeof back);
    CASE("ReadImage(2D after fill)", clEnqueueReadImage(queue, im2b, CL_TRUE, o0, r2, 0, 0, back, 0, NULL, NULL));
    SUM("ReadImage(2D after fill) data", back, 16 * 8 * 4);
    CASE("ReadImage(3D after fill)", clEnqueueReadImage(queue, im3, CL_TRUE, o0, r3, 0, 0, back, 0, NULL, NULL));
    SUM("ReadImage(3D after fill) data", back, 8 * 4 * 3 * 4);

    /* Map for reading, map for writing, unmap writes back. */
    size_t mrow = 0, mslice = 0, mo[3] = {1, 2, 0}, mr[3] = {7, 5, 1};
    unsigned char *mp = clEnqueueMapImage(queue, im2, CL_TRUE, CL_MAP_READ, mo, mr, &mrow, NULL,
                                          0, NULL, NULL, &err);
    CASE("MapImage(2D read)", err);
    unsigned long acc = 0;
    for (size_t y = 0; mp && y < mr[1]; y++)
        acc = acc * 31 + sum(mp + y * mrow, mr[0] * 4);
    printf("%-48s %lx\n", "MapImage(2D read) data", acc);
    cl_uint mc = 0;
    clGetMemObjectInfo(im2, CL_MEM_MAP_COUNT, sizeof mc, &mc, NULL);
    printf("%-48s %u\n", "map count", mc);
    CASE("UnmapMemObject(2D read)", clEnqueueUnmapMemObject(queue, im2, mp, 0, NULL, NULL));
    mp = clEnqueueMapImage(queue, im3, CL_TRUE, CL_MAP_WRITE, o3, p3, &mrow, &mslice, 0, NULL,
                           NULL, &err);
    CASE("MapImage(3D write)", err);
    for (size_t z = 0; mp && z < p3[2]; z++)
        for (size_t y = 0; y < p3[1]; y++)
            fill_bytes(mp + z * mslice + y * mrow, p3[0] * 4, (unsigned)(z * 5 + y));
    CASE("UnmapMemObject(3D write)", clEnqueueUnmapMemObject(queue, im3, mp, 0, NULL, NULL));
    CASE("Finish(unmap)", clFinish(queue));
    memset(back, 0, sizeof back);
    CASE("ReadImage(3D after map write)", clEnqueueReadImage(queue, im3, CL_TRUE, o0, r3, 0, 0, back, 0, NULL, NULL));
    SUM("ReadImage(3D after map write) data", back, 8 * 4 * 3 * 4);
    mp = clEnqueueMapImage(queue, ima, CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, oa, pa, &mrow, &mslice,
                           0, NULL, NULL, &err);
    CASE("MapImage(1D array read/write)", err);
    acc = 0;
    for (size_t s = 0; mp && s < pa[1]; s++) {
        acc = acc * 31 + sum(mp + s * mslice, pa[0] * 4);
        memset(mp + s * mslice, (int)(0x40 + s), pa[0] * 4);
    }
    printf("%-48s %lx\n", "MapImage(1D array) data", acc);
    CASE("UnmapMemObject(1D array)", clEnqueueUnmapMemObject(queue, ima, mp, 0, NULL, NULL));
    CASE("ReadImage(1D array after map)", clEnqueueReadImage(queue, ima, CL_TRUE, o0, ra, 0, 0, back, 0, NULL, NULL));
    SUM("ReadImage(1D array after map) data", back, 20 * 3 * 4);

    /* A kernel reads the image through a sampler and writes a buffer. */
    cl_program prog = clCreateProgramWithSource(context, 1, &src, NULL, &err);
    CASE("CreateProgramWithSource(image kernel)", err);
    CASE("BuildProgram(image kernel)", clBuildProgram(prog, 1, &device, NULL, NULL, NULL));
    cl_kernel k = clCreateKernel(prog, "rd", &err);
    CASE("CreateKernel(rd)", err);
    cl_sampler smp = clCreateSampler(context, CL_FALSE, CL_ADDRESS_CLAMP_TO_EDGE, CL_FILTER_NEAREST, &err);
    CASE("CreateSampler", err);
    cl_mem out = clCreateBuffer(context, CL_MEM_WRITE_ONLY, 16 * 8 * 16, NULL, &err);
    CASE("CreateBuffer(kernel out)", err);
    CASE("SetKernelArg(image)", clSetKernelArg(k, 0, sizeof im2, &im2));
    CASE("SetKernelArg(sampler)", clSetKernelArg(k, 1, sizeof smp, &smp));
    CASE("SetKernelArg(out)", clSetKernelArg(k, 2, sizeof out, &out));
    CASE("SetKernelArg(buffer as image)", clSetKernelArg(k, 0, sizeof buf, &buf));
    CASE("SetKernelArg(image again)", clSetKernelArg(k, 0, sizeof im2, &im2));
    size_t gws[2] = {16, 8};
    CASE("NDRangeKernel(rd)", clEnqueueNDRangeKernel(queue, k, 2, NULL, gws, NULL, 0, NULL, NULL));
    memset(back, 0, sizeof back);
    CASE("ReadBuffer(kernel out)", clEnqueueReadBuffer(queue, out, CL_TRUE, 0, 16 * 8 * 16, back, 0, NULL, NULL));
    SUM("ReadBuffer(kernel out) data", back, 16 * 8 * 16);

    /* Deprecated 1.x creation. */
    cl_mem old2 = clCreateImage2D(context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, &rgba8, 16, 8, 0, host, &err);
    CASE("CreateImage2D(copy)", err);
    memset(back, 0, sizeof back);
    CASE("ReadImage(CreateImage2D)", clEnqueueReadImage(queue, old2, CL_TRUE, o0, r2, 0, 0, back, 0, NULL, NULL));
    SUM("ReadImage(CreateImage2D) data", back, 16 * 8 * 4);
    cl_mem old3 = clCreateImage3D(context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, &rgba8, 8, 4, 3, 40, 200, host, &err);
    CASE("CreateImage3D(copy, pitches)", err);
    CASE("ReadImage(CreateImage3D)", clEnqueueReadImage(queue, old3, CL_TRUE, o0, r3, 0, 0, back, 0, NULL, NULL));
    SUM("ReadImage(CreateImage3D) data", back, 8 * 4 * 3 * 4);
    cl_mem m;
    m = clCreateImage3D(context, CL_MEM_READ_WRITE, &rgba8, 8, 4, 1, 0, 0, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage3D(depth 1)", err);

    /* USE_HOST_PTR: the map answers in the application's memory. */
    static unsigned char uhp[16 * 8 * 4];
    fill_bytes(uhp, sizeof uhp, 21);
    cl_mem imu = clCreateImage(context, CL_MEM_READ_WRITE | CL_MEM_USE_HOST_PTR, &rgba8, &d2, uhp, &err);
    CASE("CreateImage(2D use host ptr)", err);
    mp = clEnqueueMapImage(queue, imu, CL_TRUE, CL_MAP_READ, mo, mr, &mrow, NULL, 0, NULL, NULL, &err);
    CASE("MapImage(use host ptr)", err);
    printf("%-48s %d\n", "mapped inside host_ptr", mp == uhp + 2 * 64 + 4);
    CASE("UnmapMemObject(use host ptr)", clEnqueueUnmapMemObject(queue, imu, mp, 0, NULL, NULL));

    /* Invalid arguments. */
    const cl_image_format bad_fmt = {0x7777, CL_UNORM_INT8}, bad_type = {CL_RGBA, 0x7777};
    m = clCreateImage(context, CL_MEM_READ_WRITE, &bad_fmt, &d2, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage(bad channel order)", err);
    m = clCreateImage(context, CL_MEM_READ_WRITE, &bad_type, &d2, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage(bad data type)", err);
    m = clCreateImage(context, CL_MEM_READ_WRITE, NULL, &d2, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage(NULL format)", err);
    m = clCreateImage(context, CL_MEM_READ_WRITE, &rgba8, NULL, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage(NULL desc)", err);
    cl_image_desc dbad = {0x7777, 16, 8};
    m = clCreateImage(context, CL_MEM_READ_WRITE, &rgba8, &dbad, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage(bad image type)", err);
    cl_image_desc dzero = {CL_MEM_OBJECT_IMAGE2D, 0, 8};
    m = clCreateImage(context, CL_MEM_READ_WRITE, &rgba8, &dzero, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage(width 0)", err);
    cl_image_desc dhuge = {CL_MEM_OBJECT_IMAGE2D, 1 << 20, 1 << 20};
    m = clCreateImage(context, CL_MEM_READ_WRITE, &rgba8, &dhuge, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage(huge)", err);
    cl_image_desc dpitch = {CL_MEM_OBJECT_IMAGE2D, 16, 8, 0, 0, 8};
    m = clCreateImage(context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, &rgba8, &dpitch, host, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage(row pitch too small)", err);
    m = clCreateImage(context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, &rgba8, &d2, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage(COPY_HOST_PTR, NULL)", err);
    m = clCreateImage(context, CL_MEM_READ_WRITE, &rgba8, &d2, host, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage(host ptr without flag)", err);
    m = clCreateImage(NULL, CL_MEM_READ_WRITE, &rgba8, &d2, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage(NULL context)", err);
    cl_image_desc dnobuf = {CL_MEM_OBJECT_IMAGE1D_BUFFER, 256};
    m = clCreateImage(context, CL_MEM_READ_WRITE, &rgba8, &dnobuf, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage(1D buffer without buffer)", err);
    cl_image_desc dimgbuf = {CL_MEM_OBJECT_IMAGE1D_BUFFER, 256};
    dimgbuf.buffer = im2;
    m = clCreateImage(context, CL_MEM_READ_WRITE, &rgba8, &dimgbuf, NULL, &err); if (m) clReleaseMemObject(m);
    CASE("CreateImage(1D buffer over an image)", err);
    size_t rbig[3] = {17, 8, 1}, rz[3] = {0, 8, 1}, r2d3[3] = {16, 8, 2};
    CASE("ReadImage(region beyond image)", clEnqueueReadImage(queue, im2, CL_TRUE, o0, rbig, 0, 0, back, 0, NULL, NULL));
    CASE("ReadImage(origin beyond image)", clEnqueueReadImage(queue, im2, CL_TRUE, o1, r2, 0, 0, back, 0, NULL, NULL));
    CASE("ReadImage(region 0)", clEnqueueReadImage(queue, im2, CL_TRUE, o0, rz, 0, 0, back, 0, NULL, NULL));
    CASE("ReadImage(2D with depth 2)", clEnqueueReadImage(queue, im2, CL_TRUE, o0, r2d3, 0, 0, back, 0, NULL, NULL));
    CASE("ReadImage(NULL ptr)", clEnqueueReadImage(queue, im2, CL_TRUE, o0, r2, 0, 0, NULL, 0, NULL, NULL));
    CASE("ReadImage(NULL region)", clEnqueueReadImage(queue, im2, CL_TRUE, o0, NULL, 0, 0, back, 0, NULL, NULL));
    CASE("ReadImage(row pitch too small)", clEnqueueReadImage(queue, im2, CL_TRUE, o0, r2, 8, 0, back, 0, NULL, NULL));
    CASE("ReadImage(buffer as image)", clEnqueueReadImage(queue, buf, CL_TRUE, o0, r2, 0, 0, back, 0, NULL, NULL));
    CASE("ReadImage(NULL image)", clEnqueueReadImage(queue, NULL, CL_TRUE, o0, r2, 0, 0, back, 0, NULL, NULL));
    CASE("ReadImage(sampler as image)", clEnqueueReadImage(queue, (cl_mem)smp, CL_TRUE, o0, r2, 0, 0, back, 0, NULL, NULL));
    CASE("WriteImage(region beyond image)", clEnqueueWriteImage(queue, im3, CL_TRUE, o3, r3, 0, 0, host, 0, NULL, NULL));
    CASE("WriteImage(NULL ptr)", clEnqueueWriteImage(queue, im3, CL_TRUE, o0, r3, 0, 0, NULL, 0, NULL, NULL));
    CASE("WriteImage(NULL queue)", clEnqueueWriteImage(NULL, im3, CL_TRUE, o0, r3, 0, 0, host, 0, NULL, NULL));
    CASE("CopyImage(format mismatch)", clEnqueueCopyImage(queue, im2, imf, o0, o0, rf2, 0, NULL, NULL));
    CASE("CopyImage(region beyond)", clEnqueueCopyImage(queue, im2, im2b, co, o0, r2, 0, NULL, NULL));
    CASE("CopyImage(buffer as image)", clEnqueueCopyImage(queue, buf, im2b, o0, o0, cr, 0, NULL, NULL));
    CASE("CopyImageToBuffer(beyond buffer)", clEnqueueCopyImageToBuffer(queue, im2, buf, o0, r2, 4000, 0, NULL, NULL));
    CASE("CopyBufferToImage(image as buffer)", clEnqueueCopyBufferToImage(queue, im2, im2b, 0, o0, cr, 0, NULL, NULL));
    CASE("FillImage(NULL colour)", clEnqueueFillImage(queue, im2, NULL, o0, r2, 0, NULL, NULL));
    CASE("FillImage(region beyond)", clEnqueueFillImage(queue, im2, colour, o1, r2, 0, NULL, NULL));
    CASE("FillImage(buffer)", clEnqueueFillImage(queue, buf, colour, o0, r2, 0, NULL, NULL));
    mp = clEnqueueMapImage(queue, buf, CL_TRUE, CL_MAP_READ, o0, r2, &mrow, NULL, 0, NULL, NULL, &err);
    CASE("MapImage(buffer)", err);
    mp = clEnqueueMapImage(queue, im3, CL_TRUE, CL_MAP_READ, o0, r3, &mrow, NULL, 0, NULL, NULL, &err);
    CASE("MapImage(3D without slice pitch)", err);
    mp = clEnqueueMapImage(queue, im2, CL_TRUE, CL_MAP_READ, o0, r2, NULL, NULL, 0, NULL, NULL, &err);
    CASE("MapImage(NULL row pitch)", err);
    mp = clEnqueueMapImage(queue, im2, CL_TRUE, CL_MAP_READ, o0, rbig, &mrow, NULL, 0, NULL, NULL, &err);
    CASE("MapImage(region beyond)", err);
    mp = clEnqueueMapImage(queue, im2, CL_TRUE, 0x100, o0, r2, &mrow, NULL, 0, NULL, NULL, &err);
    CASE("MapImage(bad flags)", err);
    CASE("UnmapMemObject(image, not mapped)", clEnqueueUnmapMemObject(queue, im2, back, 0, NULL, NULL));
    void *mb = clEnqueueMapBuffer(queue, im2, CL_TRUE, CL_MAP_READ, 0, 64, 0, NULL, NULL, &err);
    CASE("MapBuffer(image)", err);
    (void)mb;
    CASE("GetImageInfo(buffer)", clGetImageInfo(buf, CL_IMAGE_ELEMENT_SIZE, sizeof es, &es, NULL));

    CASE("ReleaseMemObject(1D buffer image)", clReleaseMemObject(imb));
    cl_mem all[] = {im2, imf, im3, ima, buf, im2b, out, old2, old3, imu};
    int ok = 0;
    for (int i = 0; i < 10; i++)
        ok += clReleaseMemObject(all[i]) == CL_SUCCESS;
    printf("%-48s %d\n", "released", ok);
    clReleaseSampler(smp);
    clReleaseKernel(k);
    clReleaseProgram(prog);
    return 0;
}
