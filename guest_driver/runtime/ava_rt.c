/* Device lifecycle, queues, and the submit/wait path shared by both transports. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ava_pin.h"
#include "rt_internal.h"

static __thread char last_error[512];

const char *ava_last_error(void)
{
    return last_error[0] ? last_error : "no error";
}

int rt_error(int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    if (getenv("AVA_VDEV_DEBUG"))
        fprintf(stderr, "ava-vdev: %s\n", last_error);
    return -(err ? err : EIO);
}

uint32_t ava_read_reg(struct ava_device *dev, uint32_t off)
{
    return dev->ops->read32(dev, off);
}

void ava_write_reg(struct ava_device *dev, uint32_t off, uint32_t value)
{
    dev->ops->write32(dev, off, value, 0);
}

const char *ava_transport_name(const struct ava_device *dev)
{
    return dev->ops->name;
}

/* ---- queues ----------------------------------------------------------------------- */

struct ava_queue {
    struct ava_device *dev;
    unsigned index, slots;
    uint8_t *ring;
    uint64_t ring_gpa;
    size_t ring_bytes;
    uint8_t *staging;          /* per slot: payload then reply, AVA_STAGING_SIZE each */
    uint64_t staging_gpa;
    uint64_t tail;             /* next seq to publish */
    uint64_t posted_tail;      /* the tail after this queue's last posted command */
    int irq_fd;
    int dead;                  /* the device dropped this queue (reset, failure) */
};

static volatile uint64_t *ring_tail(struct ava_queue *q) { return (volatile uint64_t *)(q->ring + 0); }
static volatile uint64_t *ring_head(struct ava_queue *q) { return (volatile uint64_t *)(q->ring + 64); }
static volatile uint32_t *ring_status(struct ava_queue *q) { return (volatile uint32_t *)(q->ring + 128); }
static volatile uint32_t *ring_armed(struct ava_queue *q) { return (volatile uint32_t *)(q->ring + 192); }

static struct ava_command *slot_cmd(struct ava_queue *q, uint64_t seq)
{
    return (struct ava_command *)(q->ring + AVA_RING_HEADER_SIZE + (seq & (q->slots - 1)) * AVA_COMMAND_SIZE);
}

static volatile struct ava_completion *slot_cq(struct ava_queue *q, uint64_t seq)
{
    return (volatile struct ava_completion *)(q->ring + AVA_RING_HEADER_SIZE +
                                              q->slots * AVA_COMMAND_SIZE +
                                              (seq & (q->slots - 1)) * AVA_COMPLETION_SIZE);
}

static uint32_t qreg(unsigned q, uint32_t reg)
{
    return AVA_QUEUE_WINDOW_BASE + q * AVA_QUEUE_WINDOW_SIZE + reg;
}

/* Release queues whose owner process is gone (VM path: processes share the device). */
static void reclaim_dead_owners(struct ava_device *dev)
{
    for (int q = 0; q < dev->num_queues; q++) {
        uint32_t state = ava_read_reg(dev, qreg((unsigned)q, AVA_QREG_CTRL));
        if (!(state & AVA_QUEUE_STATE_CLAIMED))
            continue;
        uint32_t owner = ava_read_reg(dev, qreg((unsigned)q, AVA_QREG_OWNER));
        if (owner && (pid_t)owner != getpid() && kill((pid_t)owner, 0) != 0 && errno == ESRCH)
            ava_write_reg(dev, qreg((unsigned)q, AVA_QREG_CTRL), AVA_QUEUE_CTRL_RELEASE);
    }
}

size_t rt_env_size(const char *name, size_t fallback)
{
    const char *env = getenv(name);
    if (!env || !*env)
        return fallback;
    char *end;
    unsigned long long n = strtoull(env, &end, 0);
    switch (*end) {
    case 'k': case 'K': n <<= 10; end++; break;
    case 'm': case 'M': n <<= 20; end++; break;
    case 'g': case 'G': n <<= 30; end++; break;
    default: break;
    }
    if (*end == 'i' || *end == 'B')        /* 16MiB, 16MB */
        end += *end == 'i' ? 1 + (end[1] == 'B') : 1;
    return *end ? fallback : (size_t)n;
}

unsigned rt_reply_timeout_ms(void)
{
    const char *env = getenv("AVA_VDEV_TIMEOUT_MS");
    char *end;
    unsigned long ms = env ? strtoul(env, &end, 0) : 0;
    if (!env || *end || ms == 0 || ms > 3600000ul)
        return 10000;
    return (unsigned)ms;
}

int ava_queue_create(struct ava_device *dev, unsigned slots, struct ava_queue **out)
{
    if (slots < AVA_MIN_RING_SLOTS || slots > AVA_MAX_RING_SLOTS || (slots & (slots - 1)))
        return rt_error(EINVAL, "queue of %u slots: need a power of two in [%u, %u]", slots,
                        AVA_MIN_RING_SLOTS, AVA_MAX_RING_SLOTS);
    struct ava_queue *q = calloc(1, sizeof(*q));
    if (!q)
        return rt_error(ENOMEM, "out of memory");
    q->dev = dev;
    q->slots = slots;
    q->irq_fd = -1;
    uint32_t idx = ava_read_reg(dev, AVA_REG_QUEUE_ALLOC);
    if (idx == AVA_NO_QUEUE) {
        reclaim_dead_owners(dev);
        idx = ava_read_reg(dev, AVA_REG_QUEUE_ALLOC);
    }
    if (idx == AVA_NO_QUEUE || idx >= (uint32_t)dev->num_queues) {
        free(q);
        /* A vanished device reads all ones, which is also NO_QUEUE: tell them apart. */
        if (ava_read_reg(dev, AVA_REG_MAGIC) != AVA_MAGIC)
            return rt_error(ENODEV, "the device stopped answering (its registers read all "
                            "ones: the device server stopped, hung or was reset)");
        return rt_error(EBUSY, "all %d device queues are in use (one per thread)", dev->num_queues);
    }
    q->index = idx;
    q->ring_bytes = AVA_RING_HEADER_SIZE + slots * (AVA_COMMAND_SIZE + AVA_COMPLETION_SIZE);
    q->ring = rt_dma_alloc_contig(dev, q->ring_bytes, &q->ring_gpa);
    /* staging: slots * 2 * 4 KiB, in chunk-sized pieces so each slot is contiguous */
    size_t staging = (size_t)slots * 2 * AVA_STAGING_SIZE;
    q->staging = staging <= CHUNK ? rt_dma_alloc_contig(dev, staging, &q->staging_gpa) : NULL;
    int rc = 0;
    if (!q->ring || !q->staging) {
        rc = staging > CHUNK ? rt_error(EINVAL, "%u slots need too much staging", slots) : -ENOMEM;
        goto fail;
    }
    ava_write_reg(dev, qreg(idx, AVA_QREG_RING_LO), (uint32_t)q->ring_gpa);
    ava_write_reg(dev, qreg(idx, AVA_QREG_RING_HI), (uint32_t)(q->ring_gpa >> 32));
    ava_write_reg(dev, qreg(idx, AVA_QREG_SIZE), slots);
    if (!dev->owner)        /* the daemon sets the owner itself; nobody else may */
        ava_write_reg(dev, qreg(idx, AVA_QREG_OWNER), (uint32_t)getpid());
    ava_write_reg(dev, qreg(idx, AVA_QREG_CTRL), AVA_QUEUE_CTRL_ENABLE);
    uint32_t state = ava_read_reg(dev, qreg(idx, AVA_QREG_CTRL));
    if (!(state & AVA_QUEUE_STATE_ENABLED)) {
        uint32_t err = ava_read_reg(dev, qreg(idx, AVA_QREG_ERROR));
        rc = rt_error((int)err, "the device refused queue %u (ring at %#llx, %u slots): %s", idx,
                      (unsigned long long)q->ring_gpa, slots, strerror((int)err));
        goto fail;
    }
    q->irq_fd = dev->ops->irq_fd(dev, idx);     /* may fail: waits then poll on a timer */
    pthread_mutex_lock(&dev->queues_lock);
    dev->queues[idx] = q;
    __atomic_add_fetch(&dev->open_queues, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&dev->queues_lock);
    *out = q;
    return 0;
fail:
    ava_write_reg(dev, qreg(idx, AVA_QREG_CTRL), AVA_QUEUE_CTRL_RELEASE);
    rt_dma_free(dev, q->ring, q->ring_bytes);
    rt_dma_free(dev, q->staging, staging);
    free(q);
    return rc ? rc : rt_error(ENOMEM, "out of DMA memory for a queue");
}

void ava_queue_destroy(struct ava_queue *q)
{
    if (!q)
        return;
    struct ava_device *dev = q->dev;
    struct ava_result res;
    if (q->tail && !q->dead)
        ava_wait(q, q->tail - 1, &res);     /* posted commands run before the queue goes */
    pthread_mutex_lock(&dev->queues_lock);
    if (dev->queues[q->index] == q) {
        dev->queues[q->index] = NULL;
        __atomic_sub_fetch(&dev->open_queues, 1, __ATOMIC_SEQ_CST);
    }
    pthread_mutex_unlock(&dev->queues_lock);
    ava_write_reg(dev, qreg(q->index, AVA_QREG_CTRL), AVA_QUEUE_CTRL_RELEASE);
    if (q->irq_fd >= 0 && q->irq_fd != dev->uio_fd)
        close(q->irq_fd);
    rt_dma_free(dev, q->ring, q->ring_bytes);
    rt_dma_free(dev, q->staging, (size_t)q->slots * 2 * AVA_STAGING_SIZE);
    free(q);
}

unsigned ava_queue_index(const struct ava_queue *q) { return q->index; }
unsigned ava_queue_slots(const struct ava_queue *q) { return q->slots; }

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int check_alive(struct ava_queue *q)
{
    if (q->dead)
        return -EIO;
    uint32_t state = ava_read_reg(q->dev, qreg(q->index, AVA_QREG_CTRL));
    if (state == 0xffffffffu) {        /* all ones: the device (or its server) is gone */
        q->dead = 1;
        return rt_error(EIO, "queue %u: the device stopped answering; in-flight commands "
                        "are lost", q->index);
    }
    if (!(state & AVA_QUEUE_STATE_ENABLED) || (*ring_status(q) & AVA_RING_STATUS_FAILED)) {
        q->dead = 1;
        return rt_error(EIO, "queue %u was dropped by the device (reset or failure, error %u); "
                        "in-flight commands are lost", q->index,
                        ava_read_reg(q->dev, qreg(q->index, AVA_QREG_ERROR)));
    }
    return 0;
}

/* Room for a command at the tail: its slot, and the slot's staging, are free once the
 * host completed the command that used them last (posted commands may still be in
 * flight).  A full ring holds a whole ring of work for the host, so this waits until
 * a quarter of it is free, napping (10 us, growing to 200 us: far less than the work
 * still queued) instead of spinning for each slot.  Spinning kept a core busy for as
 * long as a burst of posted launches kept the ring full: on a 2-core machine, the core
 * the host's poller and the implementation's threads needed. */
static int wait_ring_room(struct ava_queue *q)
{
    uint64_t head = __atomic_load_n(ring_head(q), __ATOMIC_ACQUIRE);
    if (q->tail - head < q->slots)
        return 0;
    uint64_t want = q->tail - q->slots + (q->slots >= 4 ? q->slots / 4 : 1);
    uint64_t start = now_ns();
    unsigned nap_us = 10;
    while (head < want) {
        if (q->dead)
            return rt_error(EIO, "queue %u is dead (device reset); make a new one", q->index);
        if (now_ns() - start > 500000000ull) {      /* is the queue still there? */
            int rc = check_alive(q);
            if (rc)
                return rc;
            start = now_ns();
        }
        usleep(nap_us);
        nap_us = nap_us * 2 > 200 ? 200 : nap_us * 2;
        head = __atomic_load_n(ring_head(q), __ATOMIC_ACQUIRE);
    }
    return 0;
}

int ava_submit(struct ava_queue *q, const struct ava_cmd *cmd, uint64_t *seq)
{
    if (q->dead)
        return rt_error(EIO, "queue %u is dead (device reset); make a new one", q->index);
    uint64_t t = q->tail;
    int rc = wait_ring_room(q);
    if (rc)
        return rc;
    struct ava_command *c = slot_cmd(q, t);
    c->opcode = cmd->opcode;
    c->flags = cmd->flags;
    c->payload_len = cmd->payload_len;
    c->seq = t;
    c->payload_addr = cmd->payload_addr;
    c->reply_addr = cmd->reply_addr;
    c->reply_len = cmd->reply_len;
    c->reserved = 0;
    c->arg0 = cmd->arg[0];
    c->arg1 = cmd->arg[1];
    c->arg2 = cmd->arg[2];
    q->tail = t + 1;
    __atomic_store_n(ring_tail(q), t + 1, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (*ring_status(q) & AVA_RING_STATUS_IDLE)
        q->dev->ops->write32(q->dev, AVA_REG_DOORBELL, q->index, 1);
    if (seq)
        *seq = t;
    return 0;
}

static int done(struct ava_queue *q, uint64_t seq)
{
    return __atomic_load_n(ring_head(q), __ATOMIC_ACQUIRE) > seq && slot_cq(q, seq)->seq == seq;
}

/* How long a wait yields before it sleeps on the interrupt: about what waking by
 * interrupt costs (a spin-then-block wait that spins for the cost of blocking is never
 * more than twice the best).  Here an interrupt's wake-up took 390 us past the
 * command's end (a 1 ms SLEEP, median; 100 us yielding throughout): idle cores of a
 * virtual machine wake slowly, and the interrupt crosses the executor, the server and
 * the application.  At 200 us, commands of 0.2-0.6 ms (a 1 MiB transfer, a launch's
 * slow tail) paid that wake-up: 400 us made 1 MiB transfers 36-59 % faster and the
 * launch + finish p99 27-46 % lower. */
#define YIELD_NS 400000ull

int ava_wait(struct ava_queue *q, uint64_t seq, struct ava_result *res)
{
    uint64_t start = now_ns(), last_check = start;
    unsigned spins = 0;
    while (!done(q, seq)) {
        if (q->dead)
            return rt_error(EIO, "queue %u is dead (device reset)", q->index);
        uint64_t t = now_ns();
        if (t - start < 20000) {                    /* spin 20 us */
            __builtin_ia32_pause();
            continue;
        }
        if (t - start < YIELD_NS || spins++ < 64) {  /* then yield */
            sched_yield();
            continue;
        }
        if (t - last_check > 500000000ull) {       /* every 0.5 s: is the queue still there? */
            last_check = t;
            int rc = check_alive(q);
            if (rc)
                return rc;
        }
        /* Sleep on the interrupt: arm, re-check, block (10 ms safety net). */
        __atomic_store_n(ring_armed(q), 1, __ATOMIC_SEQ_CST);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (done(q, seq))
            break;
        if (q->irq_fd >= 0) {
            struct pollfd p = {.fd = q->irq_fd, .events = POLLIN};
            if (poll(&p, 1, 10) > 0)
                q->dev->ops->irq_ack(q->dev, q->irq_fd);
        } else {
            usleep(1000);
        }
    }
    volatile struct ava_completion *cq = slot_cq(q, seq);
    if (res) {
        res->status = cq->status;
        res->result_len = cq->result_len;
    }
    return 0;
}

/* Commands another thread posted (a kernel argument, a launch) come before this
 * thread's next command: the program saw them return, so the host must run them
 * first.  Queues of other threads are drained up to their last post; with one open
 * queue (most programs) this costs one load. */
static int order_after_other_queues(struct ava_queue *q)
{
    struct ava_device *dev = q->dev;
    if (__atomic_load_n(&dev->open_queues, __ATOMIC_SEQ_CST) <= 1)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&dev->queues_lock);
    for (int i = 0; i < dev->num_queues && rc == 0; i++) {
        struct ava_queue *p = dev->queues[i];
        if (!p || p == q || p->dead)
            continue;
        uint64_t posted = __atomic_load_n(&p->posted_tail, __ATOMIC_ACQUIRE);
        uint64_t start = 0;
        while (__atomic_load_n(ring_head(p), __ATOMIC_ACQUIRE) < posted) {
            uint64_t t = now_ns();
            if (!start) {
                start = t;
            } else if (t - start > 500000000ull) {
                if ((rc = check_alive(p)) != 0) {
                    rc = 0;            /* that queue is dead: nothing of it will run */
                    break;
                }
                start = t;
            }
            sched_yield();
        }
    }
    pthread_mutex_unlock(&dev->queues_lock);
    return rc;
}

int ava_call(struct ava_queue *q, uint16_t opcode, const void *payload, size_t len, void *reply,
             size_t cap, const uint64_t args[3], struct ava_result *res)
{
    struct ava_device *dev = q->dev;
    struct ava_buffer big_in = {0}, big_out = {0};
    struct ava_cmd cmd = {.opcode = opcode};
    if (args)
        memcpy(cmd.arg, args, sizeof(cmd.arg));
    uint64_t slot = q->tail & (q->slots - 1);
    uint8_t *in = q->staging + slot * 2 * AVA_STAGING_SIZE, *out = in + AVA_STAGING_SIZE;
    uint64_t in_gpa = q->staging_gpa + slot * 2 * AVA_STAGING_SIZE, out_gpa = in_gpa + AVA_STAGING_SIZE;
    int rc = order_after_other_queues(q);
    if (rc == 0)
        rc = wait_ring_room(q);
    if (rc)
        return rc;
    if (len > AVA_STAGING_SIZE) {
        if ((rc = ava_buffer_alloc(dev, len, &big_in)))
            return rc;
        memcpy(big_in.ptr, payload, len);
        cmd.flags |= AVA_CMD_FLAG_PAYLOAD_SG;
        cmd.payload_addr = big_in.sg_gpa;
        cmd.payload_len = big_in.nsg;
    } else {
        if (len)
            memcpy(in, payload, len);
        cmd.payload_addr = in_gpa;
        cmd.payload_len = (uint32_t)len;
    }
    if (cap > AVA_STAGING_SIZE) {
        if ((rc = ava_buffer_alloc(dev, cap, &big_out)))
            goto out;
        cmd.flags |= AVA_CMD_FLAG_REPLY_SG;
        cmd.reply_addr = big_out.sg_gpa;
        cmd.reply_len = big_out.nsg;
    } else {
        cmd.reply_addr = out_gpa;
        cmd.reply_len = (uint32_t)cap;
    }
    /* The staging slot belongs to the command at q->tail: wait for everything
     * before it so no earlier asynchronous command still uses that slot. */
    uint64_t seq;
    if ((rc = ava_submit(q, &cmd, &seq)) == 0 && (rc = ava_wait(q, seq, res)) == 0 && reply) {
        size_t n = res->result_len < cap ? res->result_len : cap;
        memcpy(reply, cap > AVA_STAGING_SIZE ? big_out.ptr : out, n);
    }
out:
    ava_buffer_free(dev, &big_in);
    ava_buffer_free(dev, &big_out);
    return rc;
}

int ava_post(struct ava_queue *q, uint16_t opcode, const void *payload, size_t len)
{
    if (len > AVA_STAGING_SIZE)
        return -E2BIG;
    struct ava_cmd cmd = {.opcode = opcode, .flags = AVA_CMD_FLAG_POSTED};
    uint64_t slot = q->tail & (q->slots - 1);
    uint64_t in_gpa = q->staging_gpa + slot * 2 * AVA_STAGING_SIZE;
    int rc = order_after_other_queues(q);
    if (rc == 0)
        rc = wait_ring_room(q);
    if (rc)
        return rc;
    if (len)
        memcpy(q->staging + slot * 2 * AVA_STAGING_SIZE, payload, len);
    cmd.payload_addr = in_gpa;
    cmd.payload_len = (uint32_t)len;
    cmd.reply_addr = in_gpa + AVA_STAGING_SIZE;
    cmd.reply_len = 8;                       /* the status, which nobody reads */
    rc = ava_submit(q, &cmd, NULL);
    if (rc == 0)
        __atomic_store_n(&q->posted_tail, q->tail, __ATOMIC_RELEASE);
    return rc;
}

/* ---- device ------------------------------------------------------------------------ */

static void thread_queue_dtor(void *p)
{
    ava_queue_destroy(p);
}

/* Which way to the device: a device server's socket on this machine (AVA_VDEV_SOCKET:
 * the host, no VM); else the guest daemon, whenever its socket exists (any user in its
 * group); else, with no daemon, the device itself (root only: the direct path, kept
 * for debugging). */
static int open_transport(struct ava_device *dev)
{
    const char *sock = getenv("AVA_VDEV_SOCKET");
    if (sock && *sock)
        return rt_loopback_open(dev, sock);
    const char *daemon = rt_daemon_path();
    int explicit_daemon = getenv("AVA_VDEV_DAEMON") && *getenv("AVA_VDEV_DAEMON");
    if (explicit_daemon || access(daemon, F_OK) == 0) {
        int rc = rt_daemon_open(dev, daemon);
        if (rc == 0 || explicit_daemon || geteuid() != 0 || rc != -ECONNREFUSED)
            return rc;
        /* root, and a socket nobody serves: the daemon is gone; go direct */
        dev->ops->close(dev);
        dev->sock = dev->memfd = -1;
        dev->base = NULL;
    }
    if (geteuid() != 0)
        return rt_error(EACCES, "no ava-vdev daemon (%s does not exist), and only root may "
                        "use the device directly; hint: python3 -m guest_driver install "
                        "starts the daemon", daemon);
    return rt_uio_open(dev);
}

/* In a VM, root's transfers may lend the application's pages in place (rt_pin.c):
 * its pages are guest RAM and it may read their frame numbers.  Through the daemon,
 * only where its HELLO says so (a VM's device; a root process's queues then have a
 * window over all guest memory); never over loopback, where the application's
 * memory is not the "guest RAM" the server maps.  An ordinary user's transfers may
 * too where the daemon takes pins of the ava_vdev_pin module (HELLO says so). */
static void zero_copy_setup(struct ava_device *dev)
{
    const char *env = getenv("AVA_VDEV_ZERO_COPY");
    int off = env && strcmp(env, "0") == 0;
    int lends = strcmp(dev->ops->name, "uio") == 0 ||
                (strcmp(dev->ops->name, "daemon") == 0 && dev->can_lend);
    dev->zero_copy = lends && geteuid() == 0 && !off;
    dev->pin_dev = -1;
    if (!dev->zero_copy && dev->can_pin && !off) {
        dev->pin_dev = open("/dev/" AVA_PIN_DEVICE_NAME, O_RDWR | O_CLOEXEC);
        if (dev->pin_dev < 0)
            rt_error(errno, "zero-copy: cannot open /dev/" AVA_PIN_DEVICE_NAME ": %s; "
                     "transfers are copied", strerror(errno));
        dev->zero_copy = dev->pin_dev >= 0;
    }
    /* Through the module a transfer costs two daemon round trips and two window loads
     * of each queue: worth it from 4 MiB on (a copy of 1 MiB costs less). */
    dev->zero_copy_min = rt_env_size("AVA_VDEV_ZERO_COPY_MIN",
                                     dev->pin_dev >= 0 ? 4u << 20 : 256u << 10);
    rt_pin_setup(dev);
}

int ava_zero_copy(const struct ava_device *dev)
{
    return dev->zero_copy;
}

size_t ava_zero_copy_min(const struct ava_device *dev)
{
    return dev->zero_copy_min;
}

size_t ava_arena_size(const struct ava_device *dev)
{
    return dev->arena_size;
}

int ava_open(struct ava_device **out)
{
    struct ava_device *dev = calloc(1, sizeof(*dev));
    if (!dev)
        return rt_error(ENOMEM, "out of memory");
    dev->sock = dev->memfd = dev->uio_fd = dev->pin_dev = -1;
    int rc = open_transport(dev);
    if (rc == 0)
        rc = rt_arena_init(dev);
    if (rc == 0)
        zero_copy_setup(dev);
    if (rc == 0) {
        uint32_t magic = ava_read_reg(dev, AVA_REG_MAGIC);
        uint32_t ver = ava_read_reg(dev, AVA_REG_ABI_VERSION);
        if (magic != AVA_MAGIC)
            rc = rt_error(ENODEV, "BAR0 magic is %#x, expected %#x: not an ava-vdev device", magic,
                          AVA_MAGIC);
        else if (ver >> 16 != AVA_ABI_MAJOR)
            rc = rt_error(EPROTO, "device ABI %u.%u, this runtime speaks %u.x", ver >> 16,
                          ver & 0xffff, AVA_ABI_MAJOR);
    }
    if (rc == 0) {
        if (!dev->owner) {      /* the daemon brought the device up already */
            uint32_t offered = ava_read_reg(dev, AVA_REG_DEVICE_FEATURES_LO);
            ava_write_reg(dev, AVA_REG_DRIVER_FEATURES_LO, offered & (AVA_FEATURE_INTX | AVA_FEATURE_MSIX));
            uint32_t status = ava_read_reg(dev, AVA_REG_STATUS);
            if (!(status & AVA_DEVICE_STATUS_DRIVER_OK))   /* first user: never reset a shared device */
                ava_write_reg(dev, AVA_REG_STATUS, AVA_DEVICE_STATUS_ACKNOWLEDGE | AVA_DEVICE_STATUS_DRIVER_OK);
        }
        dev->num_queues = (int)ava_read_reg(dev, AVA_REG_NUM_QUEUES);
        if (dev->num_queues > (int)AVA_NUM_QUEUES)
            dev->num_queues = AVA_NUM_QUEUES;
        if (dev->ops == NULL || strcmp(dev->ops->name, "uio") == 0)
            reclaim_dead_owners(dev);
        if (pthread_key_create(&dev->queue_key, thread_queue_dtor) != 0)
            rc = rt_error(EAGAIN, "out of thread keys");
        else if (!(dev->queues = calloc((size_t)dev->num_queues + 1, sizeof(*dev->queues))))
            rc = rt_error(ENOMEM, "out of memory");
        pthread_mutex_init(&dev->queues_lock, NULL);
    }
    if (rc != 0) {
        if (dev->ops)
            dev->ops->close(dev);
        rt_arena_fini(dev);
        free(dev->queues);
        free(dev);
        return rc;
    }
    *out = dev;
    return 0;
}

void ava_close(struct ava_device *dev)
{
    if (!dev)
        return;
    struct ava_queue *q = pthread_getspecific(dev->queue_key);
    if (q) {
        pthread_setspecific(dev->queue_key, NULL);
        ava_queue_destroy(q);
    }
    pthread_key_delete(dev->queue_key);
    rt_pin_fini(dev);
    dev->ops->close(dev);
    rt_arena_fini(dev);
    free(dev->queues);
    free(dev);
}

struct ava_queue *ava_thread_queue(struct ava_device *dev)
{
    struct ava_queue *q = pthread_getspecific(dev->queue_key);
    if (q && q->dead) {                 /* the device was reset: start over */
        pthread_setspecific(dev->queue_key, NULL);
        ava_queue_destroy(q);
        q = NULL;
    }
    if (!q) {
        if (ava_queue_create(dev, 256, &q) != 0)
            return NULL;
        pthread_setspecific(dev->queue_key, q);
    }
    return q;
}

static pthread_once_t default_once = PTHREAD_ONCE_INIT;
static struct ava_device *default_dev;
static char default_error[512];

static void open_default(void)
{
    if (ava_open(&default_dev) != 0) {
        default_dev = NULL;
        snprintf(default_error, sizeof(default_error), "%s", ava_last_error());
    }
}

struct ava_device *ava_default_device(void)
{
    pthread_once(&default_once, open_default);
    if (!default_dev)
        rt_error(ENODEV, "%s", default_error);
    return default_dev;
}
