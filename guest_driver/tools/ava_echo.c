/* ava-echo: verified echo round trips through the device (threads x iterations),
 * a large scatter-list echo, or a long SLEEP command (to be killed mid-command).
 *   ava-echo [--threads N] [--iters M] [--size S] [--big BYTES] [--sleep-us US [--fill N]]
 *            [--reset-at I]
 * --fill posts the SLEEP and then N NOPs without waiting: past the ring's size, the
 * process waits for room in its ring behind the SLEEP. 
 * --reset-at resets the device (STATUS = 0) before round trip I and checks that the
 * call in flight fails cleanly and the runtime carries on with a fresh queue. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ava_abi.h"
#include "ava_rt.h"

static struct ava_device *dev;
static long iters = 1000;
static size_t size = 256;
static volatile int failures;
static long reset_at = -1;      /* reset the device before this iteration (single thread) */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u + 1;
    struct ava_queue *q = ava_thread_queue(dev);
    if (!q) {
        fprintf(stderr, "ava-echo: no queue: %s\n", ava_last_error());
        __atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    unsigned char *in = malloc(size), *out = malloc(size);
    int recovered = 0;
    for (long i = 0; i < iters && in && out; i++) {
        if (i == reset_at) {
            ava_write_reg(dev, AVA_REG_STATUS, 0);      /* what a driver reload would do */
            struct ava_result r0;
            int rc0 = ava_call(q, AVA_SELFTEST_OP_NOP, NULL, 0, NULL, 0, NULL, &r0);
            printf("ava-echo: device reset before round trip %ld: in-flight call %s (%s)\n", i,
                   rc0 ? "failed" : "succeeded", rc0 ? ava_last_error() : "?");
            q = ava_thread_queue(dev);                    /* a fresh queue */
            if (!q || rc0 == 0) {
                __atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
                break;
            }
            recovered = 1;
        }
        size_t n = 1 + rand_r(&seed) % size;
        for (size_t k = 0; k < n; k++)
            in[k] = (unsigned char)rand_r(&seed);
        struct ava_result r;
        int rc = ava_call(q, AVA_SELFTEST_OP_ECHO, in, n, out, size, NULL, &r);
        if (rc || r.status || r.result_len != n || memcmp(in, out, n)) {
            fprintf(stderr, "ava-echo: round trip %ld of %zu bytes failed: rc=%d status=%d len=%u %s\n",
                    i, n, rc, r.status, r.result_len, rc ? ava_last_error() : "");
            __atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
            break;
        }
    }
    if (recovered)
        printf("ava-echo: recovered from the reset on queue %u\n", ava_queue_index(q));
    free(in);
    free(out);
    return NULL;
}

static int big_echo(size_t bytes)
{
    struct ava_buffer in, out;
    if (ava_buffer_alloc(dev, bytes, &in) || ava_buffer_alloc(dev, bytes, &out)) {
        fprintf(stderr, "ava-echo: %s\n", ava_last_error());
        return 1;
    }
    uint64_t *p = in.ptr;
    for (size_t i = 0; i < bytes / 8; i++)
        p[i] = i * 0x9E3779B97F4A7C15ull;
    struct ava_cmd cmd = {.opcode = AVA_SELFTEST_OP_ECHO,
                          .flags = AVA_CMD_FLAG_PAYLOAD_SG | AVA_CMD_FLAG_REPLY_SG,
                          .payload_addr = in.sg_gpa, .payload_len = in.nsg,
                          .reply_addr = out.sg_gpa, .reply_len = out.nsg};
    struct ava_queue *q = ava_thread_queue(dev);
    uint64_t seq;
    struct ava_result r = {0};
    double t0 = now();
    if (!q || ava_submit(q, &cmd, &seq) || ava_wait(q, seq, &r)) {
        fprintf(stderr, "ava-echo: %s\n", ava_last_error());
        return 1;
    }
    double dt = now() - t0;
    int ok = r.status == 0 && r.result_len == (uint32_t)bytes && memcmp(in.ptr, out.ptr, bytes) == 0;
    printf("ava-echo: %zu MiB echo in %u+%u scatter entries: %s (%.0f MB/s)\n", bytes >> 20, in.nsg,
           out.nsg, ok ? "ok" : "MISMATCH", bytes / dt / 1e6);
    ava_buffer_free(dev, &in);
    ava_buffer_free(dev, &out);
    return !ok;
}

int main(int argc, char **argv)
{
    int threads = 1;
    size_t big = 0;
    long sleep_us = -1, fill = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atol(argv[++i]);
        else if (!strcmp(argv[i], "--size") && i + 1 < argc) size = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--big") && i + 1 < argc) big = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--sleep-us") && i + 1 < argc) sleep_us = atol(argv[++i]);
        else if (!strcmp(argv[i], "--fill") && i + 1 < argc) fill = atol(argv[++i]);
        else if (!strcmp(argv[i], "--reset-at") && i + 1 < argc) reset_at = atol(argv[++i]);
        else {
            fprintf(stderr, "usage: ava-echo [--threads N] [--iters M] [--size S] [--big BYTES] "
                            "[--sleep-us US [--fill N]] [--reset-at I]\n");
            return 2;
        }
    }
    if (ava_open(&dev) != 0) {
        fprintf(stderr, "ava-echo: %s\n", ava_last_error());
        return 1;
    }
    if (sleep_us >= 0) {
        struct ava_result r;
        uint64_t args[3] = {(uint64_t)sleep_us, 0, 0};
        printf("ava-echo: sleeping %ld us on the device\n", sleep_us);
        fflush(stdout);
        struct ava_queue *q = ava_thread_queue(dev);
        if (!q) {
            fprintf(stderr, "ava-echo: no queue: %s\n", ava_last_error());
            ava_close(dev);
            return 1;
        }
        int rc;
        if (fill > 0) {
            struct ava_cmd cmd = {.opcode = AVA_SELFTEST_OP_SLEEP, .arg = {(uint64_t)sleep_us}};
            uint64_t seq = 0;
            rc = ava_submit(q, &cmd, &seq);
            struct ava_cmd nop = {.opcode = AVA_SELFTEST_OP_NOP};
            for (long i = 0; i < fill && rc == 0; i++)
                rc = ava_submit(q, &nop, &seq);
            if (rc == 0)
                rc = ava_wait(q, seq, &r);
            if (rc == 0)
                printf("ava-echo: %ld commands behind the sleep: ok\n", fill);
        } else {
            rc = ava_call(q, AVA_SELFTEST_OP_SLEEP, NULL, 0, NULL, 0, args, &r);
        }
        if (rc)
            fprintf(stderr, "ava-echo: %s\n", ava_last_error());
        ava_close(dev);
        return rc || r.status;
    }
    if (big) {
        int rc = big_echo(big);
        ava_close(dev);
        return rc;
    }
    pthread_t t[256];
    if (threads < 1 || threads > 256)
        threads = 1;
    double t0 = now();
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    double dt = now() - t0;
    printf("ava-echo: %d threads x %ld verified round trips (up to %zu bytes) over %s: %s, %.1f us each\n",
           threads, iters, size, ava_transport_name(dev), failures ? "FAILED" : "ok",
           dt * 1e6 * threads / ((double)threads * iters));
    ava_close(dev);
    return failures ? 1 : 0;
}
