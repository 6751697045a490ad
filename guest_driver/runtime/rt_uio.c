/* VM transport: the PCI device through uio_pci_generic.  BAR0 is mmapped from sysfs,
 * INTx arrives on /dev/uioN, and DMA memory is 2 MiB hugepages whose guest-physical
 * addresses come from /proc/self/pagemap (no IOMMU in the guest). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <linux/pci_regs.h>

#include "rt_internal.h"

#define SYSFS "/sys/bus/pci/devices"

static int read_hex(const char *path, unsigned *out)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int ok = fscanf(f, "%x", out) == 1;
    fclose(f);
    return ok ? 0 : -1;
}

static int write_str(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, s, strlen(s));
    int err = n < 0 ? -errno : 0;
    close(fd);
    return err;
}

static uint32_t uio_read32(struct ava_device *dev, uint32_t off)
{
    return dev->bar0[off / 4];
}

static void uio_write32(struct ava_device *dev, uint32_t off, uint32_t v, int posted)
{
    (void)posted;
    dev->bar0[off / 4] = v;
}

static int uio_irq_fd(struct ava_device *dev, unsigned q)
{
    (void)q;
    return dev->uio_fd;
}

/* uio_pci_generic's handler masks INTx with the command register's INTx-disable bit
 * and has no irqcontrol (a write to /dev/uioN is ENOSYS): the line is re-armed through
 * the config space, as its documentation says.  Without it no interrupt came past the
 * first, and every wait past the yield ended on its 10 ms poll. */
static int enable_intx(struct ava_device *dev)
{
    uint16_t command;
    if (dev->config_fd < 0 ||
        pread(dev->config_fd, &command, sizeof(command), PCI_COMMAND) != sizeof(command))
        return -1;
    if (!(command & PCI_COMMAND_INTX_DISABLE))
        return 0;
    command &= (uint16_t)~PCI_COMMAND_INTX_DISABLE;
    return pwrite(dev->config_fd, &command, sizeof(command), PCI_COMMAND) ==
           sizeof(command) ? 0 : -1;
}

static void uio_irq_ack(struct ava_device *dev, int fd)
{
    uint32_t count;
    while (read(fd, &count, sizeof(count)) == (ssize_t)sizeof(count))
        ;
    /* W1C: drop the line, while INTx is still disabled (this trapped access is also
     * QEMU's end of interrupt without KVM), then re-arm it.  A failure leaves waits to
     * their 10 ms poll. */
    dev->bar0[AVA_REG_IRQ_STATUS / 4] = 0xffffffffu;
    enable_intx(dev);
}

static void uio_close(struct ava_device *dev)
{
    if (dev->base)
        munmap(dev->base, dev->arena_size);
    if (dev->bar0)
        munmap((void *)dev->bar0, AVA_BAR0_SIZE);
    if (dev->uio_fd >= 0)
        close(dev->uio_fd);
    if (dev->config_fd >= 0)
        close(dev->config_fd);
}

static const struct transport_ops uio_ops = {
    .name = "uio", .read32 = uio_read32, .write32 = uio_write32,
    .irq_fd = uio_irq_fd, .irq_ack = uio_irq_ack, .close = uio_close,
};

static int find_device(char *bdf, size_t len)
{
    DIR *d = opendir(SYSFS);
    if (!d)
        return rt_error(ENODEV, "cannot list %s: %s", SYSFS, strerror(errno));
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[512];
        unsigned vendor, device;
        snprintf(path, sizeof(path), SYSFS "/%s/vendor", e->d_name);
        if (read_hex(path, &vendor))
            continue;
        snprintf(path, sizeof(path), SYSFS "/%s/device", e->d_name);
        if (read_hex(path, &device))
            continue;
        if (vendor == AVA_VENDOR_ID && device == AVA_DEVICE_ID) {
            snprintf(bdf, len, "%.31s", e->d_name);
            found = 1;
        }
    }
    closedir(d);
    return found ? 0 : rt_error(ENODEV, "no ava-vdev PCI device (%04x:%04x) in %s; hint: start "
                                "QEMU with -device vfio-user-pci, or set AVA_VDEV_SOCKET for the "
                                "loopback transport", AVA_VENDOR_ID, AVA_DEVICE_ID, SYSFS);
}

static int bind_uio(const char *bdf)
{
    char path[512], link[512];
    snprintf(path, sizeof(path), SYSFS "/%s/driver", bdf);
    ssize_t n = readlink(path, link, sizeof(link) - 1);
    if (n > 0) {
        link[n] = 0;
        if (strstr(link, "uio_pci_generic"))
            return 0;
        return rt_error(EBUSY, "device %s is bound to %s, not uio_pci_generic", bdf, link);
    }
    if (access("/sys/bus/pci/drivers/uio_pci_generic", F_OK) != 0 &&
        system("modprobe uio_pci_generic >/dev/null 2>&1") != 0)
        return rt_error(ENOENT, "cannot load uio_pci_generic (modprobe failed); hint: run as root "
                        "in a guest whose kernel has the module");
    char ids[32];
    snprintf(ids, sizeof(ids), "%04x %04x", AVA_VENDOR_ID, AVA_DEVICE_ID);
    int rc = write_str("/sys/bus/pci/drivers/uio_pci_generic/new_id", ids);
    if (rc != 0 && rc != -EEXIST)
        return rt_error(-rc, "cannot give uio_pci_generic our ids: %s (root needed)", strerror(-rc));
    if (readlink(path, link, sizeof(link) - 1) <= 0) {
        rc = write_str("/sys/bus/pci/drivers/uio_pci_generic/bind", bdf);
        if (rc != 0 && rc != -EBUSY)
            return rt_error(-rc, "cannot bind %s to uio_pci_generic: %s", bdf, strerror(-rc));
    }
    return 0;
}

static int open_uio_dev(struct ava_device *dev)
{
    char path[512];
    snprintf(path, sizeof(path), SYSFS "/%s/uio", dev->bdf);
    for (int tries = 0; tries < 100; tries++) {   /* udev-less guests: the node may lag */
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (strncmp(e->d_name, "uio", 3) == 0) {
                    char node[300];
                    snprintf(node, sizeof(node), "/dev/%.64s", e->d_name);
                    if (access(node, F_OK) != 0) {
                        char devfile[1024];
                        unsigned maj, min;
                        snprintf(devfile, sizeof(devfile), "%s/%.64s/dev", path, e->d_name);
                        FILE *f = fopen(devfile, "r");
                        if (f && fscanf(f, "%u:%u", &maj, &min) == 2)
                            mknod(node, S_IFCHR | 0600, makedev(maj, min));
                        if (f)
                            fclose(f);
                    }
                    closedir(d);
                    dev->uio_fd = open(node, O_RDWR | O_CLOEXEC | O_NONBLOCK);
                    if (dev->uio_fd < 0)
                        return rt_error(errno, "cannot open %s: %s", node, strerror(errno));
                    return 0;
                }
            }
            closedir(d);
        }
        usleep(10000);
    }
    return rt_error(ENODEV, "device %s has no uio node", dev->bdf);
}

static int map_hugepages(struct ava_device *dev)
{
    size_t size = rt_env_size("AVA_VDEV_MEM", 32u << 20);
    size = (size + CHUNK - 1) / CHUNK * CHUNK;
    if (size < 4 * (size_t)CHUNK)
        size = 4 * (size_t)CHUNK;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE | MAP_LOCKED, -1, 0);
    if (p == MAP_FAILED)
        return rt_error(errno, "cannot get %zu MiB of 2 MiB hugepages: %s; hint: reserve some "
                        "(echo 64 > /proc/sys/vm/nr_hugepages, or the lab's --hugepages) or lower "
                        "AVA_VDEV_MEM", size >> 20, strerror(errno));
    dev->base = p;
    dev->arena_size = size;
    dev->nchunks = size / CHUNK;
    dev->chunk_gpa = calloc(dev->nchunks, sizeof(uint64_t));
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || !dev->chunk_gpa)
        return rt_error(errno ? errno : ENOMEM, "cannot read /proc/self/pagemap: %s (root needed)",
                        strerror(errno));
    for (size_t i = 0; i < dev->nchunks; i++) {
        uintptr_t va = (uintptr_t)dev->base + i * CHUNK;
        uint64_t entry = 0;
        if (pread(fd, &entry, 8, (off_t)(va / 4096 * 8)) != 8 || !(entry >> 63) ||
            !(entry & ((1ull << 55) - 1))) {
            close(fd);
            return rt_error(EPERM, "no physical address for DMA memory in /proc/self/pagemap "
                            "(root needed to see frame numbers)");
        }
        dev->chunk_gpa[i] = (entry & ((1ull << 55) - 1)) * 4096;
    }
    close(fd);
    return 0;
}

int rt_uio_open(struct ava_device *dev)
{
    dev->ops = &uio_ops;
    dev->uio_fd = -1;
    dev->config_fd = -1;
    int rc = find_device(dev->bdf, sizeof(dev->bdf));
    if (rc == 0)
        rc = bind_uio(dev->bdf);
    if (rc != 0)
        return rc;
    char path[512];
    snprintf(path, sizeof(path), SYSFS "/%s/enable", dev->bdf);
    write_str(path, "1");
    snprintf(path, sizeof(path), SYSFS "/%s/resource0", dev->bdf);
    int fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
    if (fd < 0)
        return rt_error(errno, "cannot open %s: %s (root needed)", path, strerror(errno));
    void *bar = mmap(NULL, AVA_BAR0_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (bar == MAP_FAILED)
        return rt_error(errno, "cannot map BAR0 of %s: %s", dev->bdf, strerror(errno));
    dev->bar0 = bar;
    rc = open_uio_dev(dev);
    if (rc == 0)
        rc = map_hugepages(dev);
    if (rc == 0) {
        snprintf(path, sizeof(path), SYSFS "/%s/config", dev->bdf);
        dev->config_fd = open(path, O_RDWR | O_CLOEXEC);
        enable_intx(dev);       /* without it, waits fall back to their poll timeout */
    }
    return rc;
}
