/* Loopback transport: this process is the vfio-user client.  A memfd is "guest RAM"
 * (shared with the server by DMA_MAP), BAR0 is reached by REGION_READ/WRITE, and
 * interrupts arrive on eventfds attached to MSI-X vectors. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "rt_internal.h"
#include "vfio_user_wire.h"

#define IOVA_BASE 0x100000000ull

int rt_send_all(int fd, const void *buf, size_t len, int pass_fd)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    char ctrl[CMSG_SPACE(sizeof(int))];
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (pass_fd >= 0) {
        memset(ctrl, 0, sizeof(ctrl));
        msg.msg_control = ctrl;
        msg.msg_controllen = sizeof(ctrl);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
    }
    ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0)
        return -errno;
    while ((size_t)n < len) {           /* the rest, without the fd */
        ssize_t m = send(fd, (const char *)buf + n, len - (size_t)n, MSG_NOSIGNAL);
        if (m < 0)
            return -errno;
        n += m;
    }
    return 0;
}

static int recv_all(int fd, void *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(fd, (char *)buf + got, len - got, 0);
        if (n == 0)
            return -ECONNRESET;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return -ETIMEDOUT;      /* SO_RCVTIMEO: the server stopped answering */
            return -errno;
        }
        got += (size_t)n;
    }
    return 0;
}

/* One request; reply payload (after the header) into reply/cap. */
static int request(struct ava_device *dev, uint16_t cmd, const void *payload, size_t len,
                   int pass_fd, int no_reply, void *reply, size_t cap)
{
    uint8_t stackbuf[256];
    size_t total = sizeof(struct vfu_header) + len;
    uint8_t *buf = total <= sizeof(stackbuf) ? stackbuf : malloc(total);
    if (!buf)
        return -ENOMEM;
    pthread_mutex_lock(&dev->sock_lock);
    if (dev->sock_broken) {     /* a late reply would be taken for the next one's */
        pthread_mutex_unlock(&dev->sock_lock);
        if (buf != stackbuf)
            free(buf);
        return -ENODEV;
    }
    struct vfu_header h = {.msg_id = ++dev->msg_id, .command = cmd, .size = (uint32_t)total,
                           .flags = no_reply ? VFU_FLAG_NO_REPLY : 0};
    memcpy(buf, &h, sizeof(h));
    memcpy(buf + sizeof(h), payload, len);
    int rc = rt_send_all(dev->sock, buf, total, pass_fd);
    if (rc == 0 && !no_reply) {
        struct vfu_header r;
        rc = recv_all(dev->sock, &r, sizeof(r));
        if (rc == 0 && (r.msg_id != h.msg_id || r.size < sizeof(r) || r.size > (1u << 24)))
            rc = -EPROTO;
        if (rc == 0) {
            size_t body = r.size - sizeof(r), keep = body < cap ? body : cap;
            rc = recv_all(dev->sock, reply, keep);
            for (uint8_t scratch[64]; rc == 0 && keep < body;) {   /* drop the excess */
                size_t n = body - keep < sizeof(scratch) ? body - keep : sizeof(scratch);
                rc = recv_all(dev->sock, scratch, n);
                keep += n;
            }
            if (rc == 0 && (r.flags & VFU_FLAG_ERROR))
                rc = -(int)(r.error ? r.error : EIO);
        }
    }
    if (rc == -ETIMEDOUT || rc == -ECONNRESET || rc == -EPIPE || rc == -EPROTO)
        dev->sock_broken = 1;
    pthread_mutex_unlock(&dev->sock_lock);
    if (buf != stackbuf)
        free(buf);
    return rc;
}

static uint32_t lb_read32(struct ava_device *dev, uint32_t off)
{
    struct vfu_region_access req = {.offset = off, .region = 0, .count = 4};
    uint8_t reply[sizeof(req) + 4];
    if (request(dev, VFU_CMD_REGION_READ, &req, sizeof(req), -1, 0, reply, sizeof(reply)) != 0)
        return 0xffffffffu;            /* what a guest reads from a vanished device */
    uint32_t v;
    memcpy(&v, reply + sizeof(req), 4);
    return v;
}

static void lb_write32(struct ava_device *dev, uint32_t off, uint32_t v, int posted)
{
    uint8_t msg[sizeof(struct vfu_region_access) + 4];
    struct vfu_region_access req = {.offset = off, .region = 0, .count = 4};
    memcpy(msg, &req, sizeof(req));
    memcpy(msg + sizeof(req), &v, 4);
    uint8_t reply[sizeof(req)];
    request(dev, VFU_CMD_REGION_WRITE, msg, sizeof(msg), -1, posted, reply, sizeof(reply));
}

static int lb_irq_fd(struct ava_device *dev, unsigned q)
{
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0)
        return -errno;
    struct vfu_irq_set req = {.argsz = sizeof(req),
                              .flags = VFU_IRQ_SET_DATA_EVENTFD | VFU_IRQ_SET_ACTION_TRIGGER,
                              .index = VFU_IRQ_INDEX_MSIX, .start = q, .count = 1};
    int rc = request(dev, VFU_CMD_DEVICE_SET_IRQS, &req, sizeof(req), efd, 0, NULL, 0);
    if (rc != 0) {
        close(efd);
        return rc;
    }
    return efd;
}

void rt_eventfd_drain(struct ava_device *dev, int fd)
{
    (void)dev;
    uint64_t v;
    while (read(fd, &v, sizeof(v)) > 0)
        ;
}

void rt_socket_memfd_close(struct ava_device *dev)
{
    if (dev->base)
        munmap(dev->base, dev->arena_size);
    if (dev->memfd >= 0)
        close(dev->memfd);
    if (dev->sock >= 0)
        close(dev->sock);
}

static const struct transport_ops loopback_ops = {
    .name = "loopback", .read32 = lb_read32, .write32 = lb_write32,
    .irq_fd = lb_irq_fd, .irq_ack = rt_eventfd_drain, .close = rt_socket_memfd_close,
};

int rt_loopback_open(struct ava_device *dev, const char *path)
{
    dev->ops = &loopback_ops;
    dev->sock = dev->memfd = -1;
    pthread_mutex_init(&dev->sock_lock, NULL);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return rt_error(ENAMETOOLONG, "AVA_VDEV_SOCKET path is too long: %s", path);
    strcpy(sa.sun_path, path);
    dev->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (dev->sock < 0 || connect(dev->sock, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        return rt_error(errno, "cannot connect to the device server at %s (AVA_VDEV_SOCKET): %s; "
                        "hint: start it with `python -m vdev serve --socket %s`", path,
                        strerror(errno), path);
    /* Every reply is bounded: a stopped or hung server fails the call (ETIMEDOUT)
     * instead of hanging the application. */
    unsigned timeout_ms = rt_reply_timeout_ms();
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(dev->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    static const char caps[] = "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}";
    uint8_t ver[4 + sizeof(caps)] = {0};
    memcpy(ver + 4, caps, sizeof(caps));
    uint8_t reply[512];
    int rc = request(dev, VFU_CMD_VERSION, ver, sizeof(ver), -1, 0, reply, sizeof(reply));
    if (rc == -ETIMEDOUT)
        return rt_error(ETIMEDOUT, "the device server at %s did not answer VERSION within %u ms "
                        "(AVA_VDEV_TIMEOUT_MS): is it stopped or hung?", path, timeout_ms);
    if (rc != 0)
        return rt_error(-rc, "vfio-user VERSION with %s failed: %s (is another client being "
                        "served? the server takes one at a time)", path, strerror(-rc));
    size_t size = rt_env_size("AVA_VDEV_MEM", 1ull << 30);
    size = (size + CHUNK - 1) / CHUNK * CHUNK;
    if (size < 4 * (size_t)CHUNK)
        size = 4 * (size_t)CHUNK;
    dev->memfd = memfd_create("ava-dma", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (dev->memfd < 0 || ftruncate(dev->memfd, (off_t)size) != 0)
        return rt_error(errno, "cannot create %zu bytes of shared memory: %s", size, strerror(errno));
    /* Sealed as QEMU seals guest RAM: the server refuses memory that could shrink. */
    if (fcntl(dev->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
        return rt_error(errno, "cannot seal shared memory: %s", strerror(errno));
    dev->base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, dev->memfd, 0);
    if (dev->base == MAP_FAILED) {
        dev->base = NULL;
        return rt_error(errno, "cannot map shared memory: %s", strerror(errno));
    }
    dev->arena_size = size;
    dev->nchunks = size / CHUNK;
    dev->chunk_gpa = calloc(dev->nchunks, sizeof(uint64_t));
    if (!dev->chunk_gpa)
        return rt_error(ENOMEM, "out of memory");
    for (size_t i = 0; i < dev->nchunks; i++)
        dev->chunk_gpa[i] = IOVA_BASE + i * CHUNK;
    struct vfu_dma_map map = {.argsz = sizeof(map), .flags = VFU_DMA_READ | VFU_DMA_WRITE,
                              .offset = 0, .address = IOVA_BASE, .size = size};
    rc = request(dev, VFU_CMD_DMA_MAP, &map, sizeof(map), dev->memfd, 0, reply, sizeof(reply));
    if (rc != 0)
        return rt_error(-rc, "DMA_MAP of %zu bytes refused by the server: %s", size, strerror(-rc));
    return 0;
}
