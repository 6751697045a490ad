/* Zero-copy: application memory lent to the device in place.
 *
 * In a VM an application's pages are guest RAM, which the host already maps, so a
 * transfer can name them directly instead of copying them through DMA staging.  Two
 * things make that safe and exact:
 *   - the pages must stay the application's, at the same guest-physical address,
 *     for as long as the host may touch them.  An io_uring buffer registration pins
 *     them (the kernel's long-term pin: no swap-out, no migration, no reuse while the
 *     ring holds them, even if the range is unmapped meanwhile) and leaves the
 *     application's own mappings and locks as they were.  Each thread has one ring
 *     for it, and a transfer registers its range there, then unregisters it;
 *   - their guest-physical addresses come from /proc/self/pagemap, which shows frame
 *     numbers to root only.
 * So only callers that may already reach all guest memory use it: root, directly
 * or through a daemon that says so in its HELLO (it serves a VM's device, and then
 * gives a root process's queues a window over all guest memory).
 *
 * An ordinary user cannot read frame numbers, and no userspace mechanism lets the
 * daemon hold another process's anonymous pages, so windows over them could outlive
 * the pages.  Where the guest has the ava_vdev_pin module (protocols/guest_pin.py),
 * the kernel does both: the process pins its range there, gets an fd that holds the
 * pin, and hands it to the daemon (PIN), which reads the frames from the kernel,
 * opens the windows of the process's queues over exactly those pages and answers
 * the scatter list; RETURN removes the windows, then the daemon drops the pin.
 * Without the module an ordinary user's transfers keep the copy.  Over loopback the
 * application's memory is not the shared "guest RAM" at all, so the copy stays there
 * too.
 *
 * Should the process die while the host still writes into its pages, its pins must
 * outlive it: through the daemon, the daemon takes a dup of each thread's ring (LEND,
 * once, when the ring is made) and keeps it until the thread ends, or the process's
 * queues are released and their quarantine is over.  The direct path (root, no
 * daemon, for debugging) has nobody to hand them to.
 *
 * Anything that fails here (no io_uring, a file-backed or read-only range, a page
 * not present, too long a scatter list) is not an error: the caller stages a copy. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ava_daemon.h"
#include "ava_pin.h"
#include "rt_internal.h"

#define PAGE 4096u
#define PFN_MASK ((1ull << 55) - 1)
#define PRESENT (1ull << 63)
/* One registered buffer is at most 1 GiB (the kernel's limit). */
#define MAX_PIN (1ull << 30)

/* A thread's ring for pinning, lent to the transport under `token` (0: not lent). */
struct pinner {
    struct ava_device *dev;
    int ring;
    uint64_t token;
    int busy;                  /* a range is registered */
};

struct pin_priv {
    struct pinner *pinner;     /* NULL: DMA arena memory, nothing pinned */
    uint64_t token;            /* a pin of the module's the daemon holds (0: none) */
    void *table;               /* the scatter list, in DMA memory */
    size_t table_size;
};

static void pinner_free(void *arg)
{
    struct pinner *pn = arg;
    if (pn->token)
        pn->dev->ops->unlend(pn->dev, pn->token);
    if (pn->ring >= 0)
        close(pn->ring);
    free(pn);
}

static void pin_key_make(struct ava_device *dev)
{
    if (pthread_key_create(&dev->pin_key, pinner_free) == 0)
        dev->pin_key_ok = 1;
}

/* The calling thread's pinner, made (and lent) on first use; NULL if it cannot be. */
static struct pinner *thread_pinner(struct ava_device *dev)
{
    if (!dev->pin_key_ok)
        return NULL;
    struct pinner *pn = pthread_getspecific(dev->pin_key);
    if (pn)
        return pn->ring >= 0 ? pn : NULL;
    pn = calloc(1, sizeof(*pn));
    if (!pn)
        return NULL;
    pn->dev = dev;
    struct io_uring_params params;
    memset(&params, 0, sizeof(params));
    pn->ring = (int)syscall(__NR_io_uring_setup, 1, &params);
    if (pn->ring < 0) {
        rt_error(errno, "zero-copy: no io_uring: %s", strerror(errno));
    } else if (dev->ops->lend) {
        uint64_t token = __atomic_add_fetch(&dev->pin_tokens, 1, __ATOMIC_RELAXED);
        int rc = dev->ops->lend(dev, pn->ring, token);
        if (rc != 0) {
            rt_error(-rc, "zero-copy: the daemon did not take this thread's pinning ring: %s",
                     strerror(-rc));
            close(pn->ring);
            pn->ring = -1;
        } else {
            pn->token = token;
        }
    }
    pthread_setspecific(dev->pin_key, pn);  /* a failed one too: not tried again */
    return pn->ring >= 0 ? pn : NULL;
}

/* The scatter list of [p, p + n): one entry per physically contiguous run. */
static struct ava_sg_entry *translate(const void *p, size_t n, uint32_t *count)
{
    uintptr_t first = (uintptr_t)p / PAGE, last = ((uintptr_t)p + n - 1) / PAGE;
    size_t pages = last - first + 1;
    uint64_t *frames = malloc(pages * sizeof(*frames));
    struct ava_sg_entry *sg = malloc(pages * sizeof(*sg));
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    ssize_t want = (ssize_t)(pages * sizeof(*frames));
    int ok = frames && sg && fd >= 0 &&
             pread(fd, frames, (size_t)want, (off_t)(first * sizeof(*frames))) == want;
    if (fd >= 0)
        close(fd);
    uint32_t k = 0;
    size_t done = 0;
    for (size_t i = 0; ok && i < pages; i++) {
        uint64_t e = frames[i];
        if (!(e & PRESENT) || !(e & PFN_MASK)) {       /* not present, or frames hidden */
            ok = 0;
            break;
        }
        size_t skip = i == 0 ? (uintptr_t)p % PAGE : 0;
        size_t run = PAGE - skip < n - done ? PAGE - skip : n - done;
        rt_sg_add(sg, &k, (e & PFN_MASK) * PAGE + skip, run);
        done += run;
    }
    free(frames);
    if (!ok) {
        free(sg);
        rt_error(EFAULT, "zero-copy: no frame number for a page of %zu bytes at %p in "
                 "/proc/self/pagemap", n, p);
        return NULL;
    }
    *count = k;
    return sg;
}

void rt_pin_setup(struct ava_device *dev)
{
    if (dev->zero_copy)
        pin_key_make(dev);
}

void rt_pin_fini(struct ava_device *dev)
{
    if (dev->pin_dev >= 0) {
        close(dev->pin_dev);
        dev->pin_dev = -1;
    }
    if (!dev->pin_key_ok)
        return;
    struct pinner *pn = pthread_getspecific(dev->pin_key);
    if (pn) {
        pthread_setspecific(dev->pin_key, NULL);
        pinner_free(pn);
    }
    pthread_key_delete(dev->pin_key);
    dev->pin_key_ok = 0;
}

/* Where the device finds the scatter list ``sg``: its one run itself, or a table in
 * DMA memory (priv keeps it until ava_unpin). */
static int place(struct ava_device *dev, const struct ava_sg_entry *sg, uint32_t count,
                 size_t n, struct pin_priv *priv, struct ava_pin *out)
{
    uint64_t table_gpa = 0;
    if (count > 1) {
        priv->table_size = (size_t)count * sizeof(*sg);
        if (priv->table_size <= CHUNK)
            priv->table = rt_dma_alloc_contig(dev, priv->table_size, &table_gpa);
        if (!priv->table)
            return rt_error(ENOMEM, "no DMA memory for a scatter list of %u entries", count);
        memcpy(priv->table, sg, priv->table_size);
    }
    out->addr = count == 1 ? sg[0].addr : table_gpa;
    out->nsg = count;
    out->len = n;
    out->priv = priv;
    return 0;
}

/* Memory of the DMA arena itself (a mapping made there, icd_mem.c): the device
 * reaches it as it is, for any process on any transport; nothing to pin. */
static int arena_range(struct ava_device *dev, const void *p, size_t n, struct ava_pin *out)
{
    uint32_t count = 0;
    struct ava_sg_entry *sg = rt_arena_runs(dev, p, n, &count);
    struct pin_priv *priv = sg ? calloc(1, sizeof(*priv)) : NULL;
    int rc = priv ? place(dev, sg, count, n, priv, out) : -ENOMEM;
    if (rc != 0)
        free(priv);
    free(sg);
    return rc;
}

/* A size worth pinning (AVA_VDEV_ZERO_COPY_MIN), and one a registration takes. */
static int pin_size(const struct ava_device *dev, size_t n)
{
    return n && n >= dev->zero_copy_min && n <= MAX_PIN;
}

int ava_pin_eligible(const struct ava_device *dev, size_t n)
{
    return dev->zero_copy && pin_size(dev, n);
}

/* An ordinary user's range, through the ava_vdev_pin module and the daemon. */
static int module_pin(struct ava_device *dev, const void *p, size_t n, struct ava_pin *out)
{
    struct ava_pin_request req = {.addr = (uintptr_t)p, .length = n};
    int fd = ioctl(dev->pin_dev, AVA_PIN_IOC_PIN, &req);
    if (fd < 0)
        return rt_error(errno, "zero-copy: cannot pin %zu bytes at %p: %s%s", n, p,
                        strerror(errno), errno == ENOMEM ? " (RLIMIT_MEMLOCK, ulimit -l)" : "");
    uint64_t token = __atomic_add_fetch(&dev->pin_tokens, 1, __ATOMIC_RELAXED);
    struct ava_sg_entry *sg = malloc(AVA_MAX_PIN_RUNS * sizeof(*sg));
    struct pin_priv *priv = calloc(1, sizeof(*priv));
    uint32_t count = 0;
    int rc = sg && priv ? dev->ops->pin(dev, fd, token, sg, AVA_MAX_PIN_RUNS, &count) : -ENOMEM;
    close(fd);                  /* the daemon holds the pin now (or refused it) */
    uint64_t total = 0;
    for (uint32_t i = 0; rc == 0 && i < count; i++)
        total += sg[i].len;
    if (rc == 0 && (count == 0 || total != n)) {
        dev->ops->unlend(dev, token);
        rc = -EPROTO;
    }
    if (rc != 0) {
        free(sg);
        free(priv);
        return rt_error(-rc, "zero-copy: the daemon did not take the pin of %zu bytes at %p: "
                        "%s", n, p, strerror(-rc));
    }
    priv->token = token;
    rc = place(dev, sg, count, n, priv, out);
    free(sg);
    if (rc != 0) {
        dev->ops->unlend(dev, token);
        free(priv);
    }
    return rc;
}

int ava_pin(struct ava_device *dev, const void *p, size_t n, struct ava_pin *out)
{
    memset(out, 0, sizeof(*out));
    const uint8_t *b = p;
    if (b && n && n <= MAX_PIN && b >= dev->base && b + n <= dev->base + dev->arena_size)
        return arena_range(dev, p, n, out);
    if (!p || !pin_size(dev, n))
        return -ERANGE;
    if (!dev->zero_copy)
        return rt_error(EOPNOTSUPP, "zero-copy is for root's processes in a VM, and other "
                        "users' where ava-vdevd has the ava_vdev_pin module (this one: %s, uid "
                        "%u%s)", dev->ops->name, (unsigned)geteuid(),
                        getenv("AVA_VDEV_ZERO_COPY") ? ", AVA_VDEV_ZERO_COPY set" : "");
    if (dev->pin_dev >= 0)
        return module_pin(dev, p, n, out) == 0 ? 0 : -EOPNOTSUPP;
    struct pinner *pn = thread_pinner(dev);
    if (!pn)
        return -EOPNOTSUPP;
    if (pn->busy)           /* this thread lends a range already (not a blocking call?) */
        return rt_error(EBUSY, "zero-copy: this thread's pinning ring is in use");
    uintptr_t start = (uintptr_t)p / PAGE * PAGE;
    struct iovec iov = {.iov_base = (void *)start,
                        .iov_len = ((uintptr_t)p + n - start + PAGE - 1) / PAGE * PAGE};
    if (syscall(__NR_io_uring_register, pn->ring, IORING_REGISTER_BUFFERS, &iov, 1) != 0)
        return rt_error(errno, "zero-copy: cannot pin %zu bytes at %p: %s", iov.iov_len,
                        iov.iov_base, strerror(errno));
    pn->busy = 1;
    struct pin_priv *priv = calloc(1, sizeof(*priv));
    uint32_t count = 0;
    struct ava_sg_entry *sg = NULL;
    /* A pinned page stays where it is, but its page table entry may read "not present"
     * for a moment (khugepaged tries to collapse the range, finds it pinned and puts
     * the entry back): look again. */
    for (int tries = 0; priv && !sg && tries < 5; tries++) {
        if (tries)
            usleep(1000);
        sg = translate(p, n, &count);
    }
    if (!priv || !sg || place(dev, sg, count, n, priv, out) != 0) {
        free(sg);
        free(priv);
        syscall(__NR_io_uring_register, pn->ring, IORING_UNREGISTER_BUFFERS, NULL, 0);
        pn->busy = 0;
        return -EOPNOTSUPP;
    }
    free(sg);
    priv->pinner = pn;
    return 0;
}

void ava_unpin(struct ava_device *dev, struct ava_pin *pin)
{
    struct pin_priv *priv = pin->priv;
    if (!priv)
        return;
    if (priv->table)
        rt_dma_free(dev, priv->table, priv->table_size);
    if (priv->token)        /* the daemon removes the windows, then drops the pin */
        dev->ops->unlend(dev, priv->token);
    if (priv->pinner) {
        /* The host is done with the pages: they are the application's alone again. */
        syscall(__NR_io_uring_register, priv->pinner->ring, IORING_UNREGISTER_BUFFERS, NULL, 0);
        priv->pinner->busy = 0;
    }
    free(priv);
    memset(pin, 0, sizeof(*pin));
}
