/* ava-vdev guest runtime: find the device, own DMA memory, run commands on rings.
 *
 * The same code serves three transports, chosen at ava_open():
 *   - loopback: with AVA_VDEV_SOCKET=PATH set, a vfio-user client of the server at
 *     PATH; a memfd (AVA_VDEV_MEM, default 1 GiB, sparse) is shared as "guest RAM"
 *     and BAR0 is reached by REGION_READ/REGION_WRITE messages;
 *   - daemon: when the guest daemon's socket exists (AVA_VDEV_DAEMON, default
 *     /run/ava-vdev/daemon.sock), any user in its group: DMA memory (AVA_VDEV_MEM,
 *     default 32 MiB) and this process's queues come from the daemon, and BAR0 is
 *     reached through it (rt_daemon.c);
 *   - VM, direct (root, no daemon): the PCI device through uio_pci_generic (BAR0
 *     mmapped from sysfs, INTx via /dev/uioN), DMA memory from 2 MiB hugepages
 *     translated through /proc/self/pagemap.
 * AVA_VDEV_MEM is bytes, or K, M or G (16M).
 *
 * Conventions: functions returning int give 0 or a negative errno; the reason,
 * with context and a hint, is in ava_last_error() (per thread).  One queue per
 * thread (ava_thread_queue), released when the thread exits. */
#ifndef AVA_RT_H
#define AVA_RT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ava_device;
struct ava_queue;

/* DMA memory: ptr is ours to fill; the device reaches it through gpa (one range)
 * when contiguous, else through the scatter table at sg_gpa (nsg entries). */
struct ava_buffer {
    void *ptr;
    size_t size;
    uint64_t gpa;        /* 0 when not contiguous */
    uint64_t sg_gpa;     /* always valid: table of struct ava_sg_entry */
    uint32_t nsg;
    void *priv;
};

struct ava_cmd {
    uint16_t opcode;
    uint16_t flags;          /* AVA_CMD_FLAG_* */
    uint32_t payload_len;    /* bytes, or SG entries with PAYLOAD_SG */
    uint64_t payload_addr;
    uint64_t reply_addr;
    uint32_t reply_len;
    uint64_t arg[3];
};

struct ava_result {
    int32_t status;          /* the device's: 0 or a negative errno */
    uint32_t result_len;
};

const char *ava_last_error(void);

int ava_open(struct ava_device **out);
void ava_close(struct ava_device *dev);
/* The process-wide device, opened on first use (NULL on failure, see ava_last_error). */
struct ava_device *ava_default_device(void);
const char *ava_transport_name(const struct ava_device *dev);
uint32_t ava_read_reg(struct ava_device *dev, uint32_t off);
void ava_write_reg(struct ava_device *dev, uint32_t off, uint32_t value);

int ava_buffer_alloc(struct ava_device *dev, size_t size, struct ava_buffer *out);
void ava_buffer_free(struct ava_device *dev, struct ava_buffer *buf);

/* Application memory the device reaches in place (zero-copy, rt_pin.c): one range at
 * addr when nsg is 1, else the scatter table at addr (nsg entries). */
struct ava_pin {
    uint64_t addr;
    uint32_t nsg;
    size_t len;
    void *priv;
};
/* Pin [p, p + n) for the device.  -ERANGE: too short (AVA_VDEV_ZERO_COPY_MIN, default
 * 256 KiB) or too long (1 GiB); -EOPNOTSUPP: this process or this memory cannot lend
 * its pages (loopback, not root, file-backed..., ava_last_error says why).  Either
 * way stage a copy instead.  AVA_VDEV_ZERO_COPY=0 turns it off. */
int ava_pin(struct ava_device *dev, const void *p, size_t n, struct ava_pin *out);
/* Only once the host is done with the memory (the command is over). */
void ava_unpin(struct ava_device *dev, struct ava_pin *pin);
/* Whether transfers of application memory may go in place (0 or 1). */
int ava_zero_copy(const struct ava_device *dev);
/* From how many bytes on a transfer may lend its pages (AVA_VDEV_ZERO_COPY_MIN). */
size_t ava_zero_copy_min(const struct ava_device *dev);
/* Whether a transfer of n bytes would lend its pages (not whether this memory can:
 * ava_pin tells that). */
int ava_pin_eligible(const struct ava_device *dev, size_t n);
/* Bytes of DMA memory this process has (the arena). */
size_t ava_arena_size(const struct ava_device *dev);

/* The calling thread's queue (created on first use; NULL on failure). */
struct ava_queue *ava_thread_queue(struct ava_device *dev);
int ava_queue_create(struct ava_device *dev, unsigned slots, struct ava_queue **out);
void ava_queue_destroy(struct ava_queue *q);
unsigned ava_queue_index(const struct ava_queue *q);
unsigned ava_queue_slots(const struct ava_queue *q);

/* Publish a command without waiting for it (blocks only while the ring is full). */
int ava_submit(struct ava_queue *q, const struct ava_cmd *cmd, uint64_t *seq);
/* Wait for command seq: spin, back off, then sleep on the interrupt. */
int ava_wait(struct ava_queue *q, uint64_t seq, struct ava_result *res);
/* Synchronous call with payload and reply copied through the slot's staging area
 * (or a temporary DMA buffer when larger).  *reply_len gets result_len. */
int ava_call(struct ava_queue *q, uint16_t opcode, const void *payload, size_t len,
             void *reply, size_t cap, const uint64_t args[3], struct ava_result *res);
/* Post a small command (payload within one staging slot) and return without waiting:
 * its completion is reaped by the next call's wait.  -E2BIG when it does not fit. */
int ava_post(struct ava_queue *q, uint16_t opcode, const void *payload, size_t len);
/* Staging area of the slot the next ava_call will use (for zero-copy callers). */
#define AVA_STAGING_SIZE 4096

#ifdef __cplusplus
}
#endif
#endif
