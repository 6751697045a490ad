#include "common.h"

#include <sched.h>
#include <time.h>

/* Callbacks arrive on another thread: wait for them, a few seconds at most. */
static volatile int fired, seen_status, order[4], norder;

static void wait_for(volatile int *flag, int want)
{
    for (int i = 0; i < 5000 && *flag < want; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

static void CL_CALLBACK on_event(cl_event ev, cl_int status, void *data)
{
    (void)ev;
    seen_status = status;
    order[norder++ & 3] = (int)(intptr_t)data;
    fired++;
}

static void CL_CALLBACK on_destroy(cl_mem m, void *data)
{
    (void)m;
    order[norder++ & 3] = (int)(intptr_t)data;
    fired++;
}

static unsigned sum(const unsigned char *p, size_t n)
{
    unsigned s = 0;
    for (size_t i = 0; i < n; i++)
        s = s * 31 + p[i];
    return s;
}

int main(void)
{
    if (setup()) return 1;
    cl_int err = 0;
    unsigned char data[4096], back[4096];
    for (int i = 0; i < 4096; i++) data[i] = (unsigned char)(i * 7 + 3);
    cl_mem buf = clCreateBuffer(context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, 4096, data, &err);
    CASE("CreateBuffer(copy)", err);

    /* map for reading sees the contents; a written map lands on unmap */
    unsigned char *p = clEnqueueMapBuffer(queue, buf, CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, 100, 1000, 0, NULL, NULL, &err);
    CASE("MapBuffer(read|write)", err);
    CASE("mapped bytes equal", p && memcmp(p, data + 100, 1000) == 0);
    cl_uint count = 99;
    clGetMemObjectInfo(buf, CL_MEM_MAP_COUNT, sizeof(count), &count, NULL);
    CASE("MAP_COUNT while mapped", count);
    if (p) memset(p, 0xab, 10);
    cl_event unmapped = NULL;
    CASE("UnmapMemObject", clEnqueueUnmapMemObject(queue, buf, p, 0, NULL, &unmapped));
    CASE("unmap event wait", clWaitForEvents(1, &unmapped));
    clReleaseEvent(unmapped);
    clGetMemObjectInfo(buf, CL_MEM_MAP_COUNT, sizeof(count), &count, NULL);
    CASE("MAP_COUNT after unmap", count);
    clEnqueueReadBuffer(queue, buf, CL_TRUE, 0, 4096, back, 0, NULL, NULL);
    CASE("written through the map", back[100] == 0xab && back[109] == 0xab && back[110] == data[110]);
    CASE("untouched bytes", back[99] == data[99] && back[1100] == data[1100]);
    p = clEnqueueMapBuffer(queue, buf, CL_TRUE, CL_MAP_WRITE_INVALIDATE_REGION, 0, 64, 0, NULL, NULL, &err);
    CASE("MapBuffer(invalidate)", err);
    if (p) memset(p, 0x11, 64);
    CASE("Unmap(invalidate)", clEnqueueUnmapMemObject(queue, buf, p, 0, NULL, NULL));
    clFinish(queue);
    clEnqueueReadBuffer(queue, buf, CL_TRUE, 0, 4096, back, 0, NULL, NULL);
    CASE("invalidated region written", back[0] == 0x11 && back[63] == 0x11 && back[64] == data[64]);

    /* invalid maps and unmaps */
    clEnqueueMapBuffer(queue, buf, CL_TRUE, CL_MAP_READ, 4000, 200, 0, NULL, NULL, &err);
    CASE("MapBuffer(beyond end)", err);
    clEnqueueMapBuffer(queue, buf, CL_TRUE, CL_MAP_READ, 0, 0, 0, NULL, NULL, &err);
    CASE("MapBuffer(size 0)", err);
    clEnqueueMapBuffer(queue, NULL, CL_TRUE, CL_MAP_READ, 0, 16, 0, NULL, NULL, &err);
    CASE("MapBuffer(NULL buffer)", err);
    clEnqueueMapBuffer(NULL, buf, CL_TRUE, CL_MAP_READ, 0, 16, 0, NULL, NULL, &err);
    CASE("MapBuffer(NULL queue)", err);
    CASE("Unmap(never mapped)", clEnqueueUnmapMemObject(queue, buf, data, 0, NULL, NULL));
    cl_mem noaccess = clCreateBuffer(context, CL_MEM_HOST_NO_ACCESS, 64, NULL, &err);
    clEnqueueMapBuffer(queue, noaccess, CL_TRUE, CL_MAP_READ, 0, 16, 0, NULL, NULL, &err);
    CASE("MapBuffer(HOST_NO_ACCESS)", err);
    clReleaseMemObject(noaccess);

    /* CL_MEM_USE_HOST_PTR: the map is the application's memory */
    static unsigned char mine[256];
    for (int i = 0; i < 256; i++) mine[i] = (unsigned char)i;
    cl_mem use = clCreateBuffer(context, CL_MEM_USE_HOST_PTR, sizeof(mine), mine, &err);
    CASE("CreateBuffer(use host ptr)", err);
    void *hp = NULL;
    clGetMemObjectInfo(use, CL_MEM_HOST_PTR, sizeof(hp), &hp, NULL);
    CASE("MEM_HOST_PTR is ours", hp == (void *)mine);
    cl_mem_flags fl = 0;
    clGetMemObjectInfo(use, CL_MEM_FLAGS, sizeof(fl), &fl, NULL);
    CASE("MEM_FLAGS as given", fl == CL_MEM_USE_HOST_PTR);
    int pattern = 0x05050505;
    clEnqueueFillBuffer(queue, use, &pattern, 4, 16, 16, 0, NULL, NULL);
    p = clEnqueueMapBuffer(queue, use, CL_TRUE, CL_MAP_READ, 8, 64, 0, NULL, NULL, &err);
    CASE("MapBuffer(use host ptr)", err);
    CASE("map pointer inside host ptr", p == mine + 8);
    CASE("device data visible", mine[16] == 5 && mine[31] == 5 && mine[32] == 32);
    CASE("Unmap(use host ptr)", clEnqueueUnmapMemObject(queue, use, p, 0, NULL, NULL));
    clFinish(queue);

    /* rectangles: a 16x8 window of a 64x32 buffer, host side with its own pitch */
    unsigned char img[64 * 32], win[24 * 8];
    for (int i = 0; i < 64 * 32; i++) img[i] = (unsigned char)(i ^ (i >> 5));
    memset(win, 0xee, sizeof(win));
    cl_mem rect = clCreateBuffer(context, CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR, sizeof(img), img, &err);
    size_t borigin[3] = {5, 3, 0}, horigin[3] = {2, 0, 0}, region[3] = {16, 8, 1};
    CASE("ReadBufferRect", clEnqueueReadBufferRect(queue, rect, CL_TRUE, borigin, horigin, region, 64, 0, 24, 0, win, 0, NULL, NULL));
    CASE("rect rows", sum(win, sizeof(win)));
    CASE("between rows untouched", win[0] == 0xee && win[18] == 0xee && win[24 + 1] == 0xee);
    memset(win, 0x42, sizeof(win));
    CASE("WriteBufferRect", clEnqueueWriteBufferRect(queue, rect, CL_TRUE, borigin, horigin, region, 64, 0, 24, 0, win, 0, NULL, NULL));
    size_t dorigin[3] = {40, 20, 0};
    CASE("CopyBufferRect", clEnqueueCopyBufferRect(queue, rect, rect, borigin, dorigin, region, 64, 0, 64, 0, 0, NULL, NULL));
    clEnqueueReadBuffer(queue, rect, CL_TRUE, 0, sizeof(img), img, 0, NULL, NULL);
    CASE("after write and copy", sum(img, sizeof(img)));
    size_t zero[3] = {0, 0, 0};
    CASE("ReadBufferRect(region 0)", clEnqueueReadBufferRect(queue, rect, CL_TRUE, borigin, horigin, zero, 64, 0, 24, 0, win, 0, NULL, NULL));
    size_t big[3] = {64, 64, 1};
    CASE("ReadBufferRect(beyond end)", clEnqueueReadBufferRect(queue, rect, CL_TRUE, zero, zero, big, 64, 0, 64, 0, img, 0, NULL, NULL));
    CASE("ReadBufferRect(bad pitch)", clEnqueueReadBufferRect(queue, rect, CL_TRUE, zero, zero, region, 8, 0, 24, 0, win, 0, NULL, NULL));
    CASE("ReadBufferRect(NULL ptr)", clEnqueueReadBufferRect(queue, rect, CL_TRUE, zero, zero, region, 64, 0, 24, 0, NULL, 0, NULL, NULL));
    CASE("CopyBufferRect(overlap)", clEnqueueCopyBufferRect(queue, rect, rect, zero, zero, region, 64, 0, 64, 0, 0, NULL, NULL));
    clReleaseMemObject(rect);

    /* event callbacks: on a user event, then on a finished marker */
    cl_event user = clCreateUserEvent(context, &err);
    CASE("SetEventCallback(complete)", clSetEventCallback(user, CL_COMPLETE, on_event, (void *)1));
    CASE("SetEventCallback(bad type)", clSetEventCallback(user, 0x77, on_event, NULL));
    CASE("SetEventCallback(NULL fn)", clSetEventCallback(user, CL_COMPLETE, NULL, NULL));
    CASE("SetEventCallback(NULL event)", clSetEventCallback(NULL, CL_COMPLETE, on_event, NULL));
    CASE("not fired before completion", fired);
    clSetUserEventStatus(user, CL_COMPLETE);
    wait_for(&fired, 1);
    CASE("fired once complete", fired);
    CASE("status passed", seen_status);
    clReleaseEvent(user);
    cl_event marker;
    clEnqueueMarkerWithWaitList(queue, 0, NULL, &marker);
    clFinish(queue);
    CASE("SetEventCallback(done marker)", clSetEventCallback(marker, CL_SUBMITTED, on_event, (void *)2));
    wait_for(&fired, 2);
    CASE("fired for a done event", fired);
    CASE("status passed (submitted)", seen_status);
    clReleaseEvent(marker);

    /* destructor callbacks run newest first when the last reference goes */
    norder = 0;
    cl_mem doomed = clCreateBuffer(context, CL_MEM_READ_WRITE, 64, NULL, &err);
    CASE("SetDestructorCallback", clSetMemObjectDestructorCallback(doomed, on_destroy, (void *)7));
    CASE("SetDestructorCallback(2)", clSetMemObjectDestructorCallback(doomed, on_destroy, (void *)8));
    CASE("SetDestructorCallback(NULL fn)", clSetMemObjectDestructorCallback(doomed, NULL, NULL));
    CASE("SetDestructorCallback(NULL mem)", clSetMemObjectDestructorCallback(NULL, on_destroy, NULL));
    clRetainMemObject(doomed);
    clReleaseMemObject(doomed);
    CASE("not yet destroyed", norder);
    clReleaseMemObject(doomed);
    wait_for(&fired, 4);
    CASE("destructors ran", norder);
    CASE("newest first", order[0] * 10 + order[1]);
    clReleaseMemObject(use);
    clReleaseMemObject(buf);
    return 0;
}
