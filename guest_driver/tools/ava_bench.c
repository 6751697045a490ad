/* ava-bench: transport figures with native baselines from the same run, as JSON.
 *   null round trip (median, p99) vs a call through a function pointer;
 *   asynchronous NOPs per second (no per-command wait) vs the same calls natively;
 *   echo bandwidth for 4 KiB, 1 MiB, 64 MiB vs memcpy of the same size. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ava_abi.h"
#include "ava_rt.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

__attribute__((noinline)) static int nop_fn(int x) { __asm__ volatile("" ::: "memory"); return x; }
static int (*volatile nop_ptr)(int) = nop_fn;

static double echo_bw(struct ava_device *dev, struct ava_queue *q, size_t size, double *memcpy_bw)
{
    struct ava_buffer in, out;
    if (ava_buffer_alloc(dev, size, &in) || ava_buffer_alloc(dev, size, &out))
        return -1;
    memset(in.ptr, 0x5a, size);
    memset(out.ptr, 0, size);
    struct ava_cmd cmd = {.opcode = AVA_SELFTEST_OP_ECHO,
                          .flags = AVA_CMD_FLAG_PAYLOAD_SG | AVA_CMD_FLAG_REPLY_SG,
                          .payload_addr = in.sg_gpa, .payload_len = in.nsg,
                          .reply_addr = out.sg_gpa, .reply_len = out.nsg};
    int reps = size >= (32u << 20) ? 5 : size >= (1u << 20) ? 50 : 2000;
    struct ava_result r;
    uint64_t seq;
    ava_submit(q, &cmd, &seq);          /* warm up */
    ava_wait(q, seq, &r);
    double t0 = now();
    for (int i = 0; i < reps; i++) {
        ava_submit(q, &cmd, &seq);
        ava_wait(q, seq, &r);
    }
    double dev_bw = (double)size * reps / (now() - t0);
    memcpy(out.ptr, in.ptr, size);      /* warm up */
    t0 = now();
    for (int i = 0; i < reps; i++) {
        memcpy(out.ptr, in.ptr, size);
        __asm__ volatile("" ::: "memory");
    }
    *memcpy_bw = (double)size * reps / (now() - t0);
    ava_buffer_free(dev, &in);
    ava_buffer_free(dev, &out);
    return r.status == 0 ? dev_bw : -1;
}

int main(int argc, char **argv)
{
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
    struct ava_device *dev;
    if (ava_open(&dev) != 0) {
        fprintf(stderr, "ava-bench: %s\n", ava_last_error());
        return 1;
    }
    struct ava_queue *q = ava_thread_queue(dev);
    if (!q) {
        fprintf(stderr, "ava-bench: %s\n", ava_last_error());
        return 1;
    }
    /* null round trips */
    int n = quick ? 2000 : 20000;
    double *lat = malloc(sizeof(double) * (size_t)n);
    struct ava_cmd nop = {.opcode = AVA_SELFTEST_OP_NOP};
    struct ava_result r;
    uint64_t seq;
    for (int i = 0; i < n / 10; i++) {  /* warm up */
        ava_submit(q, &nop, &seq);
        ava_wait(q, seq, &r);
    }
    for (int i = 0; i < n; i++) {
        double t0 = now();
        ava_submit(q, &nop, &seq);
        ava_wait(q, seq, &r);
        lat[i] = (now() - t0) * 1e6;
    }
    qsort(lat, (size_t)n, sizeof(double), cmp);
    long calls = 20000000;
    double t0 = now();
    int acc = 0;
    for (long i = 0; i < calls; i++)
        acc += nop_ptr((int)i);
    double call_ns = (now() - t0) * 1e9 / calls;
    /* asynchronous throughput */
    long m = quick ? 20000 : 300000;
    t0 = now();
    for (long i = 0; i < m; i++)
        ava_submit(q, &nop, &seq);
    ava_wait(q, seq, &r);
    double async_rate = m / (now() - t0);
    printf("{\"transport\": \"%s\", \"null_rt_us\": {\"median\": %.2f, \"p99\": %.2f, \"n\": %d},"
           " \"native_call_ns\": %.3f, \"async_cmds_per_s\": %.0f, \"native_calls_per_s\": %.0f,"
           " \"echo\": [", ava_transport_name(dev), lat[n / 2], lat[n * 99 / 100], n, call_ns,
           async_rate, 1e9 / call_ns);
    size_t sizes[] = {4096, 1u << 20, 64u << 20};
    for (int i = 0; i < 3; i++) {
        double mbw = 0, bw = echo_bw(dev, q, quick && sizes[i] > (1u << 20) ? (8u << 20) : sizes[i], &mbw);
        printf("%s{\"size\": %zu, \"bytes_per_s\": %.0f, \"memcpy_bytes_per_s\": %.0f}", i ? ", " : "",
               quick && sizes[i] > (1u << 20) ? (size_t)(8u << 20) : sizes[i], bw, mbw);
    }
    printf("], \"checksum\": %d}\n", acc & 1);
    free(lat);
    ava_close(dev);
    return 0;
}
