/* Commands held back by a user event the program sets only after enqueueing them:
 * non-blocking transfers and maps return at once (waiting would never end), their
 * data is in place once the program sees them complete (a wait, a finish, a status
 * query, a marker after them), and callbacks registered before they ran fire for
 * every state, from several threads at once. */
#include "common.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#define N 4096

static volatile int fired[64];
static void CL_CALLBACK count(cl_event e, cl_int status, void *data)
{
    (void)e;
    __sync_fetch_and_add(&fired[(long)data], status == CL_COMPLETE || status == CL_RUNNING ||
                                             status == CL_SUBMITTED ? 1 : 100);
}

static void on_alarm(int sig)
{
    (void)sig;
    printf("hung: a command waited for its own gate\n");
    fflush(stdout);
    _exit(3);
}

static const cl_int types[3] = {CL_SUBMITTED, CL_RUNNING, CL_COMPLETE};

static void watch(cl_event ev, long slot)
{
    for (int i = 0; i < 3; i++)
        clSetEventCallback(ev, types[i], count, (void *)slot);
}

static int wait_fired(long slot, int want)
{
    for (int i = 0; i < 500 && fired[slot] < want; i++)
        usleep(10000);
    return fired[slot];
}

static int check(const unsigned char *p, unsigned char v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != v)
            return 0;
    return 1;
}

/* Each transfer kind behind a gate, seen complete one way or another. */
static void transfers(void)
{
    cl_int err;
    static unsigned char host[N], back[N];
    cl_mem buf = clCreateBuffer(context, CL_MEM_READ_WRITE, N, NULL, &err);
    unsigned char v = 0x33;
    clEnqueueFillBuffer(queue, buf, &v, 1, 0, N, 0, NULL, NULL);
    clFinish(queue);

    cl_event gate = clCreateUserEvent(context, &err), ev;
    CASE("read behind a gate", clEnqueueReadBuffer(queue, buf, CL_FALSE, 0, N, back, 1, &gate, &ev));
    watch(ev, 0);
    cl_int st = 99;
    clGetEventInfo(ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof(st), &st, NULL);
    printf("%-48s %d\n", "  not complete before the gate", st != CL_COMPLETE);
    CASE("  open the gate", clSetUserEventStatus(gate, CL_COMPLETE));
    CASE("  wait", clWaitForEvents(1, &ev));
    printf("%-48s %d\n", "  the data is there", check(back, 0x33, N));
    printf("%-48s %d\n", "  callbacks for all three states", wait_fired(0, 3));
    clReleaseEvent(ev);
    clReleaseEvent(gate);

    memset(host, 0x44, N);
    gate = clCreateUserEvent(context, &err);
    CASE("write behind a gate, no event", clEnqueueWriteBuffer(queue, buf, CL_FALSE, 0, N, host, 1, &gate, NULL));
    memset(back, 0, N);
    CASE("read after it, no event", clEnqueueReadBuffer(queue, buf, CL_FALSE, 0, N, back, 0, NULL, NULL));
    cl_event marker;
    CASE("marker after both", clEnqueueMarkerWithWaitList(queue, 0, NULL, &marker));
    CASE("  open the gate", clSetUserEventStatus(gate, CL_COMPLETE));
    do {
        clGetEventInfo(marker, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof(st), &st, NULL);
    } while (st > CL_COMPLETE);
    printf("%-48s %d\n", "  the marker's completion shows the read's data", check(back, 0x44, N));
    clReleaseEvent(marker);
    clReleaseEvent(gate);

    gate = clCreateUserEvent(context, &err);
    size_t origin[3] = {0, 0, 0}, region[3] = {64, 4, 1};
    memset(back, 0, N);
    CASE("rectangle read behind a gate", clEnqueueReadBufferRect(queue, buf, CL_FALSE, origin, origin, region, 64, 0, 64, 0, back, 1, &gate, NULL));
    void *p = clEnqueueMapBuffer(queue, buf, CL_FALSE, CL_MAP_READ, 0, N, 1, &gate, &ev, &err);
    CASE("map for reading behind a gate", err);
    watch(ev, 1);
    CASE("  open the gate", clSetUserEventStatus(gate, CL_COMPLETE));
    CASE("  finish", clFinish(queue));
    printf("%-48s %d %d\n", "  the rectangle and the mapping hold the data", check(back, 0x44, 256), p && check(p, 0x44, N));
    printf("%-48s %d\n", "  callbacks for all three states", wait_fired(1, 3));
    clReleaseEvent(gate);
    gate = clCreateUserEvent(context, &err);
    cl_event unmapped;
    CASE("unmap behind a gate", clEnqueueUnmapMemObject(queue, buf, p, 1, &gate, &unmapped));
    watch(unmapped, 2);
    CASE("  open the gate", clSetUserEventStatus(gate, CL_COMPLETE));
    CASE("  wait", clWaitForEvents(1, &unmapped));
    printf("%-48s %d\n", "  callbacks for all three states", wait_fired(2, 3));
    clReleaseEvent(unmapped);
    clReleaseEvent(ev);
    clReleaseEvent(gate);

    gate = clCreateUserEvent(context, &err);
    CASE("read behind a gate that fails", clEnqueueReadBuffer(queue, buf, CL_FALSE, 0, N, back, 1, &gate, &ev));
    watch(ev, 3);
    CASE("  fail the gate", clSetUserEventStatus(gate, -1234));
    err = clWaitForEvents(1, &ev);
    printf("%-48s %d\n", "  the wait reports it", err == CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST);
    clGetEventInfo(ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof(st), &st, NULL);
    printf("%-48s %d\n", "  its status is an error", st < 0);
    clReleaseEvent(ev);
    clReleaseEvent(gate);
    clFinish(queue);
    clReleaseMemObject(buf);
}

/* Larger than one 2 MiB hugepage: in a VM its staging may be a scatter list. */
static void large(void)
{
    cl_int err;
    size_t n = 6u << 20;
    unsigned char *in = malloc(n), *out = calloc(1, n);
    for (size_t i = 0; i < n; i++)
        in[i] = (unsigned char)(i * 13 + (i >> 20));
    cl_mem buf = clCreateBuffer(context, CL_MEM_READ_WRITE, n, NULL, &err);
    cl_event gate = clCreateUserEvent(context, &err), ev;
    CASE("6 MiB write behind a gate", clEnqueueWriteBuffer(queue, buf, CL_FALSE, 0, n, in, 1, &gate, NULL));
    CASE("6 MiB read after it", clEnqueueReadBuffer(queue, buf, CL_FALSE, 0, n, out, 0, NULL, &ev));
    CASE("  open the gate", clSetUserEventStatus(gate, CL_COMPLETE));
    CASE("  wait", clWaitForEvents(1, &ev));
    printf("%-48s %d\n", "  the data is there", memcmp(in, out, n) == 0);
    clReleaseEvent(ev);
    clReleaseEvent(gate);
    clReleaseMemObject(buf);
    free(in);
    free(out);
}

static void images(void)
{
    cl_int err;
    static unsigned char pixels[16 * 16 * 4], back[16 * 16 * 4];
    cl_image_format fmt = {CL_RGBA, CL_UNSIGNED_INT8};
    cl_image_desc desc = {.image_type = CL_MEM_OBJECT_IMAGE2D, .image_width = 16, .image_height = 16};
    cl_mem img = clCreateImage(context, CL_MEM_READ_WRITE, &fmt, &desc, NULL, &err);
    size_t origin[3] = {0, 0, 0}, region[3] = {16, 16, 1};
    memset(pixels, 0x55, sizeof(pixels));
    cl_event gate = clCreateUserEvent(context, &err), ev;
    CASE("image write behind a gate", clEnqueueWriteImage(queue, img, CL_FALSE, origin, region, 0, 0, pixels, 1, &gate, NULL));
    CASE("image read after it", clEnqueueReadImage(queue, img, CL_FALSE, origin, region, 0, 0, back, 0, NULL, &ev));
    watch(ev, 4);
    CASE("  open the gate", clSetUserEventStatus(gate, CL_COMPLETE));
    CASE("  wait", clWaitForEvents(1, &ev));
    printf("%-48s %d\n", "  the data is there", check(back, 0x55, sizeof(back)));
    printf("%-48s %d\n", "  callbacks for all three states", wait_fired(4, 3));
    clReleaseEvent(ev);
    clReleaseEvent(gate);
    clReleaseMemObject(img);
}

/* Several threads, each with its own commands in flight behind one gate. */
#define THREADS 4
static cl_event shared_gate;
static cl_mem shared_buf;

static void *thread_main(void *arg)
{
    long id = (long)arg;
    static unsigned char out[THREADS][N];
    cl_event ev;
    cl_int err = clEnqueueReadBuffer(queue, shared_buf, CL_FALSE, 0, N, out[id], 1, &shared_gate, &ev);
    if (err == CL_SUCCESS) {
        watch(ev, 10 + id);
        clWaitForEvents(1, &ev);
        clReleaseEvent(ev);
    }
    return (void *)(long)(err == CL_SUCCESS && check(out[id], 0x66, N));
}

static void threads(void)
{
    cl_int err;
    shared_buf = clCreateBuffer(context, CL_MEM_READ_WRITE, N, NULL, &err);
    unsigned char v = 0x66;
    clEnqueueFillBuffer(queue, shared_buf, &v, 1, 0, N, 0, NULL, NULL);
    clFinish(queue);
    shared_gate = clCreateUserEvent(context, &err);
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, thread_main, (void *)i);
    usleep(200000);
    CASE("threads: open the gate", clSetUserEventStatus(shared_gate, CL_COMPLETE));
    int good = 0, callbacks = 0;
    for (long i = 0; i < THREADS; i++) {
        void *ok;
        pthread_join(t[i], &ok);
        good += (int)(long)ok;
        callbacks += wait_fired(10 + i, 3);
    }
    printf("%-48s %d of %d, %d callbacks\n", "  threads whose data arrived", good, THREADS, callbacks);
    clReleaseEvent(shared_gate);
    clReleaseMemObject(shared_buf);
}

int main(void)
{
    if (setup())
        return 1;
    signal(SIGALRM, on_alarm);
    alarm(60);
    transfers();
    large();
    images();
    threads();
    return 0;
}
