/* Runtime internals shared by the transports, the allocator and the rings. */
#ifndef AVA_RT_INTERNAL_H
#define AVA_RT_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>

#include "ava_abi.h"
#include "ava_rt.h"

#define CHUNK (2u << 20)     /* DMA memory comes in 2 MiB physically contiguous chunks */

struct transport_ops {
    const char *name;
    uint32_t (*read32)(struct ava_device *dev, uint32_t off);
    void (*write32)(struct ava_device *dev, uint32_t off, uint32_t v, int posted);
    /* Make queue q's interrupt reachable; returns an fd to poll, or -errno. */
    int (*irq_fd)(struct ava_device *dev, unsigned q);
    /* After an interrupt woke us: re-arm it. */
    void (*irq_ack)(struct ava_device *dev, int fd);
    void (*close)(struct ava_device *dev);
    /* Zero-copy (rt_pin.c), optional: have whoever must keep the pages pinned should
     * this process die mid-transfer take a dup of the pin's fd, and give it back. */
    int (*lend)(struct ava_device *dev, int fd, uint64_t token);
    void (*unlend)(struct ava_device *dev, uint64_t token);
    /* Zero-copy for an ordinary user: hand a pin of the ava_vdev_pin module (fd) to
     * whoever opens the device's windows over it; fills its scatter list (at most cap
     * entries).  Returned with unlend. */
    int (*pin)(struct ava_device *dev, int fd, uint64_t token, struct ava_sg_entry *sg,
               uint32_t cap, uint32_t *count);
};

struct ava_device {
    const struct transport_ops *ops;
    /* DMA arena: chunks of CHUNK bytes, virtually contiguous from base */
    uint8_t *base;
    size_t arena_size;
    uint64_t *chunk_gpa;     /* per chunk */
    size_t nchunks;
    pthread_mutex_t alloc_lock;
    struct free_range *free;
    /* transport state */
    int sock;                /* loopback */
    pthread_mutex_t sock_lock;
    int sock_broken;         /* loopback: a request failed (timeout, reset); all later fail */
    uint16_t msg_id;
    int memfd;
    uint32_t owner;          /* daemon: the owner tag it gave this process (0: none) */
    int zero_copy;           /* application pages may be lent in place (rt_pin.c) */
    uint64_t pin_tokens;     /* the last token given to a pin (atomic) */
    int can_lend;            /* daemon: it holds our pins (HELLO said so) */
    int can_pin;             /* daemon: it takes pins of the ava_vdev_pin module */
    int pin_dev;             /* /dev/ava-vdev-pin when zero-copy goes through it, else -1 */
    pthread_key_t pin_key;   /* each thread's pinning ring (rt_pin.c) */
    int pin_key_ok;
    size_t zero_copy_min;    /* ... from this many bytes on */
    volatile uint32_t *bar0; /* uio */
    int uio_fd;
    int config_fd;           /* uio: the PCI config space (INTx is re-armed there) */
    char bdf[32];
    pthread_key_t queue_key;
    int num_queues;
    /* The process's open queues by index (queues_lock): a call on one queue first
     * waits for what other queues posted, so the host sees the program's order. */
    pthread_mutex_t queues_lock;
    struct ava_queue **queues;
    int open_queues;
};

int rt_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* How long a reply from the device server may take before the call fails with
 * ETIMEDOUT: AVA_VDEV_TIMEOUT_MS, default 10000 (QEMU itself waits 5 s). */
unsigned rt_reply_timeout_ms(void);
/* A size from the environment: bytes, or with a K, M or G suffix (16M, 16MiB); the
 * fallback when unset or unreadable. */
size_t rt_env_size(const char *name, size_t fallback);

int rt_loopback_open(struct ava_device *dev, const char *path);
int rt_uio_open(struct ava_device *dev);
int rt_daemon_open(struct ava_device *dev, const char *path);
/* Shared by the loopback and daemon transports (both hold a socket, a memfd arena
 * and eventfd interrupts): re-arm an eventfd, and close all three. */
void rt_eventfd_drain(struct ava_device *dev, int fd);
void rt_socket_memfd_close(struct ava_device *dev);
/* Send all of buf on socket fd, with pass_fd (unless -1) as SCM_RIGHTS on the first
 * part (a SEQPACKET record goes whole); 0 or -errno. */
int rt_send_all(int fd, const void *buf, size_t len, int pass_fd);
/* The daemon's socket: AVA_VDEV_DAEMON, or the default. */
const char *rt_daemon_path(void);
int rt_arena_init(struct ava_device *dev);
/* Zero-copy's per-thread state, once dev->zero_copy is decided (rt_pin.c). */
void rt_pin_setup(struct ava_device *dev);
void rt_pin_fini(struct ava_device *dev);     /* before the transport closes */
void rt_arena_fini(struct ava_device *dev);
/* Contiguous DMA memory (never crosses a chunk), zeroed; returns ptr and gpa. */
void *rt_dma_alloc_contig(struct ava_device *dev, size_t size, uint64_t *gpa);
void rt_dma_free(struct ava_device *dev, void *ptr, size_t size);
uint64_t rt_gpa(struct ava_device *dev, const void *ptr);
/* The scatter list of [p, p + size) inside the arena: one entry per physically
 * contiguous run (malloc'd; NULL when out of memory). */
struct ava_sg_entry *rt_arena_runs(struct ava_device *dev, const void *p, size_t size,
                                   uint32_t *count);

/* Append ``len`` bytes at ``gpa`` to the scatter list sg[0..*n): the last entry grows
 * when they follow it (entries stay under 1 GiB: u32 lengths), else a new one starts. */
static inline void rt_sg_add(struct ava_sg_entry *sg, uint32_t *n, uint64_t gpa, size_t len)
{
    struct ava_sg_entry *last = *n ? &sg[*n - 1] : NULL;
    if (last && last->addr + last->len == gpa && last->len + len < (1u << 30))
        last->len += (uint32_t)len;
    else
        sg[(*n)++] = (struct ava_sg_entry){.addr = gpa, .len = (uint32_t)len};
}

#endif
