/* Daemon transport: the guest daemon (ava-vdevd) owns the device; this process, which
 * may be any user in the daemon's group, asks it for DMA memory (a memfd both map, so
 * rings, staging and completions are reached directly) and reaches BAR0 through it,
 * where only its own queues' registers exist.  A doorbell is a posted write there;
 * interrupts arrive on eventfds the daemon hands over.  protocols/guest_daemon.py is
 * the wire format. */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "ava_daemon.h"
#include "ava_pin.h"
#include "rt_internal.h"

/* One request (carrying fd_in, unless -1), and its reply (with up to `extra` bytes
 * after it and one fd) unless posted.  Requests of all threads are serialised on the
 * socket. */
static int daemon_call_fd(struct ava_device *dev, uint32_t op, uint32_t flags, uint32_t arg0,
                          uint64_t arg1, int fd_in, struct ava_daemon_reply *reply,
                          void *extra, size_t extra_cap, int *fd_out)
{
    struct ava_daemon_request req = {.op = op, .flags = flags, .arg0 = arg0, .arg1 = arg1};
    pthread_mutex_lock(&dev->sock_lock);
    int rc = 0;
    if (dev->sock_broken) {
        rc = -EPIPE;
        goto out;
    }
    rc = rt_send_all(dev->sock, &req, sizeof(req), fd_in);
    if (rc != 0) {
        dev->sock_broken = 1;
        goto out;
    }
    if (flags & AVA_DAEMON_FLAG_POSTED)
        goto out;
    uint8_t buf[AVA_MAX_REPLY];
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
    char ctrl[CMSG_SPACE(sizeof(int))];
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl,
                         .msg_controllen = sizeof(ctrl)};
    /* With SO_RCVTIMEO a wait that task work interrupts (io_uring's, rt_pin.c) fails
     * with EINTR instead of restarting: the reply is still on its way. */
    ssize_t n;
    do
        n = recvmsg(dev->sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < (ssize_t)sizeof(*reply)) {
        rc = n < 0 ? -errno : -EPROTO;
        dev->sock_broken = 1;
        goto out;
    }
    int fd = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            memcpy(&fd, CMSG_DATA(c), sizeof(fd));
    memcpy(reply, buf, sizeof(*reply));
    size_t more = (size_t)n - sizeof(*reply);
    if (extra)
        memcpy(extra, buf + sizeof(*reply), more < extra_cap ? more : extra_cap);
    if (fd_out)
        *fd_out = fd;
    else if (fd >= 0)
        close(fd);
    rc = reply->status;
out:
    pthread_mutex_unlock(&dev->sock_lock);
    return rc;
}

static int daemon_call(struct ava_device *dev, uint32_t op, uint32_t flags, uint32_t arg0,
                       uint64_t arg1, struct ava_daemon_reply *reply, void *extra,
                       size_t extra_cap, int *fd_out)
{
    return daemon_call_fd(dev, op, flags, arg0, arg1, -1, reply, extra, extra_cap, fd_out);
}

static uint32_t dm_read32(struct ava_device *dev, uint32_t off)
{
    struct ava_daemon_reply reply;
    if (daemon_call(dev, AVA_DAEMON_OP_READ32, 0, off, 0, &reply, NULL, 0, NULL) != 0)
        return 0xffffffffu;         /* as a vanished device reads */
    return reply.value;
}

static void dm_write32(struct ava_device *dev, uint32_t off, uint32_t v, int posted)
{
    struct ava_daemon_reply reply;
    /* Every write is posted: the daemon refuses what this process may not write (the
     * runtime's own feature and status writes among them) and a later read waits for
     * it, since the daemon answers in order. */
    (void)posted;
    daemon_call(dev, AVA_DAEMON_OP_WRITE32, AVA_DAEMON_FLAG_POSTED, off, v, &reply, NULL, 0, NULL);
}

static int dm_irq_fd(struct ava_device *dev, unsigned q)
{
    struct ava_daemon_reply reply;
    int fd = -1;
    int rc = daemon_call(dev, AVA_DAEMON_OP_IRQ_FD, 0, q, 0, &reply, NULL, 0, &fd);
    if (rc != 0) {
        if (fd >= 0)
            close(fd);
        return rc;
    }
    return fd >= 0 ? fd : -EPROTO;
}

/* The daemon keeps a pin of ours (a dup of its fd) until we return it, or, if we
 * die first, until our queues are released: the host may still be writing into the
 * pages.  Answered, so the fd is still ours while the daemon takes its dup. */
static int dm_lend(struct ava_device *dev, int fd, uint64_t token)
{
    struct ava_daemon_reply reply;
    return daemon_call(dev, AVA_DAEMON_OP_LEND, 0, (uint32_t)fd, token, &reply, NULL, 0, NULL);
}

static void dm_unlend(struct ava_device *dev, uint64_t token)
{
    struct ava_daemon_reply reply;
    daemon_call(dev, AVA_DAEMON_OP_RETURN, AVA_DAEMON_FLAG_POSTED, 0, token, &reply, NULL, 0,
                NULL);
}

/* The daemon reads the pin's frames from the kernel, opens our queues' windows over
 * them and answers the scatter list; RETURN (dm_unlend) closes them again. */
static int dm_pin(struct ava_device *dev, int fd, uint64_t token, struct ava_sg_entry *sg,
                  uint32_t cap, uint32_t *count)
{
    struct ava_daemon_reply reply;
    struct ava_pin_run runs[AVA_MAX_PIN_RUNS];
    memset(runs, 0, sizeof(runs));      /* a short reply leaves zero runs: refused below */
    int rc = daemon_call_fd(dev, AVA_DAEMON_OP_PIN, 0, 0, token, fd, &reply, runs,
                            sizeof(runs), NULL);
    if (rc != 0)
        return rc;
    if (reply.count > AVA_MAX_PIN_RUNS || reply.count > cap) {
        dm_unlend(dev, token);
        return -EPROTO;
    }
    *count = 0;
    for (uint32_t i = 0; i < reply.count; i++) {
        if (runs[i].length == 0 || runs[i].length > AVA_PIN_MAX_PIN_BYTES ||
            runs[i].addr + runs[i].length < runs[i].addr) {
            dm_unlend(dev, token);
            return -EPROTO;
        }
        rt_sg_add(sg, count, runs[i].addr, (size_t)runs[i].length);
    }
    return 0;
}

static const struct transport_ops daemon_ops = {
    .name = "daemon", .read32 = dm_read32, .write32 = dm_write32,
    /* Memory, socket and eventfds as the loopback transport has them. */
    .irq_fd = dm_irq_fd, .irq_ack = rt_eventfd_drain, .close = rt_socket_memfd_close,
    .lend = dm_lend, .unlend = dm_unlend, .pin = dm_pin,
};

const char *rt_daemon_path(void)
{
    const char *env = getenv("AVA_VDEV_DAEMON");
    return env && *env ? env : AVA_DEFAULT_SOCKET;
}

int rt_daemon_open(struct ava_device *dev, const char *path)
{
    dev->ops = &daemon_ops;
    dev->sock = dev->memfd = -1;
    pthread_mutex_init(&dev->sock_lock, NULL);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path))
        return rt_error(ENAMETOOLONG, "AVA_VDEV_DAEMON path is too long: %s", path);
    strcpy(sa.sun_path, path);
    dev->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (dev->sock < 0)
        return rt_error(errno, "cannot make a socket: %s", strerror(errno));
    if (connect(dev->sock, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int err = errno;
        if (err == EACCES || err == EPERM) {
            /* Name the socket's real group (the daemon's --group), not a guess. */
            char group[64] = AVA_DEFAULT_GROUP, buf[1024];
            struct stat st;
            struct group gr, *found = NULL;
            if (stat(path, &st) == 0 &&
                getgrgid_r(st.st_gid, &gr, buf, sizeof(buf), &found) == 0 && found)
                snprintf(group, sizeof(group), "%s", found->gr_name);
            return rt_error(EACCES, "permission denied: the ava-vdev daemon's socket %s is for "
                            "the group '%s'; ask the administrator to add you (adduser $USER "
                            "%s), then log in again", path, group, group);
        }
        return rt_error(err, "cannot reach the ava-vdev daemon at %s: %s; hint: start it "
                        "(systemctl start ava-vdevd, or python3 -m guest_driver daemon)",
                        path, strerror(err));
    }
    unsigned timeout_ms = rt_reply_timeout_ms();
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(dev->sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    uint64_t want = rt_env_size("AVA_VDEV_MEM", 32u << 20);
    struct ava_daemon_reply reply;
    uint64_t gpas[AVA_MAX_CLIENT_MEMORY / AVA_CHUNK_SIZE];
    int fd = -1;
    int rc = daemon_call(dev, AVA_DAEMON_OP_HELLO, 0, AVA_DAEMON_PROTOCOL, want, &reply, gpas,
                         sizeof(gpas), &fd);
    if (rc != 0) {
        if (fd >= 0)
            close(fd);
        return rt_error(-rc, "the ava-vdev daemon at %s refused this process: %s%s", path,
                        strerror(-rc), rc == -ENOMEM ? " (out of DMA memory: lower "
                        "AVA_VDEV_MEM, or reserve more hugepages)" : "");
    }
    if (fd < 0 || reply.count == 0 || reply.count > AVA_MAX_CLIENT_MEMORY / AVA_CHUNK_SIZE ||
        reply.size != (uint64_t)reply.count * AVA_CHUNK_SIZE) {
        if (fd >= 0)
            close(fd);
        return rt_error(EPROTO, "the ava-vdev daemon's answer is malformed");
    }
    dev->memfd = fd;
    dev->can_lend = (reply.value & AVA_DAEMON_HELLO_LEND) != 0;
    dev->can_pin = (reply.value & AVA_DAEMON_HELLO_PIN) != 0;
    dev->base = mmap(NULL, reply.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (dev->base == MAP_FAILED) {
        dev->base = NULL;
        return rt_error(errno, "cannot map the daemon's DMA memory: %s", strerror(errno));
    }
    dev->arena_size = reply.size;
    dev->nchunks = reply.count;
    dev->chunk_gpa = calloc(dev->nchunks, sizeof(uint64_t));
    if (!dev->chunk_gpa)
        return rt_error(ENOMEM, "out of memory");
    memcpy(dev->chunk_gpa, gpas, dev->nchunks * sizeof(uint64_t));
    dev->owner = reply.owner;
    return 0;
}
