// SPDX-License-Identifier: GPL-2.0
/* ava_vdev_pin: lets an ordinary user lend the ava-vdev device its own pages.
 *
 * Zero-copy means the host reads or writes an application's pages in place, by their
 * guest-physical addresses.  For that to be safe for an unprivileged process, the
 * pages must stay the process's, at the same address, for as long as the host may
 * touch them, whatever the process does meanwhile (unmaps them, forks, dies), and
 * the addresses must reach the guest daemon (ava-vdevd, which opens the queue's DMA
 * windows over them) from the kernel, not from the process.  Userspace has no way to
 * prove either (protocols/guest_pin.py), so this module does both:
 *
 *   /dev/ava-vdev-pin, ioctl AVA_PIN_IOC_PIN {addr, length}
 *       takes the long-term pin on the caller's pages (pin_user_pages_fast with
 *       FOLL_WRITE | FOLL_LONGTERM: memory the caller may write, no read-only page
 *       nor a regular file's; charged to the calling user's RLIMIT_MEMLOCK, as io_uring
 *       charges its pins: to the user, not to the process, so the charge stays for
 *       as long as the pin does, whoever holds the fd) and returns a new fd that
 *       holds the pin;
 *   that fd, ioctl AVA_PIN_IOC_RUNS (CAP_SYS_ADMIN only: the daemon)
 *       writes the range's scatter list: its physically contiguous runs of guest
 *       memory, in order (the daemon does no per-page work);
 *   closing the fd's last reference
 *       unpins the pages (marked dirty: the device may have written them).
 *
 * The declarations come from protocols/guest_pin.py (ava_pin.h is generated). */
#include <linux/anon_inodes.h>
#include <linux/capability.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/sched/signal.h>
#include <linux/sched/user.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "ava_pin.h"

struct ava_pin {
	struct page **pages;
	unsigned long npages;
	u64 addr, length;
	struct user_struct *user;	/* charged for `charged` pages (a reference) */
	unsigned long charged;
};

/* Charge npages to the caller's user against RLIMIT_MEMLOCK (not with CAP_IPC_LOCK):
 * an atomic counter, so releasing needs no lock of anybody's (the daemon releases). */
static int ava_pin_charge(struct ava_pin *pin, unsigned long npages)
{
	unsigned long limit = rlimit(RLIMIT_MEMLOCK) >> PAGE_SHIFT;
	long cur;

	pin->user = get_uid(current_user());
	if (capable(CAP_IPC_LOCK))
		return 0;
	cur = atomic_long_read(&pin->user->locked_vm);
	do {
		if (cur + npages > limit)
			return -ENOMEM;
	} while (!atomic_long_try_cmpxchg(&pin->user->locked_vm, &cur, cur + npages));
	pin->charged = npages;
	return 0;
}

static void ava_pin_free(struct ava_pin *pin)
{
	if (pin->npages)
		unpin_user_pages_dirty_lock(pin->pages, pin->npages, true);
	if (pin->user) {
		atomic_long_sub(pin->charged, &pin->user->locked_vm);
		free_uid(pin->user);
	}
	kvfree(pin->pages);
	kfree(pin);
}

static int ava_pin_release(struct inode *inode, struct file *file)
{
	ava_pin_free(file->private_data);
	return 0;
}

/* The range's runs, written while they fit `capacity`; all of them counted. */
static long ava_pin_runs(struct ava_pin *pin, void __user *argp)
{
	struct ava_pin_runs req;
	struct ava_pin_run run = { 0 };
	struct ava_pin_run __user *out;
	u64 done = 0, skip = pin->addr & ~PAGE_MASK;
	u32 n = 0;
	unsigned long i;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (copy_from_user(&req, argp, sizeof(req)))
		return -EFAULT;
	out = u64_to_user_ptr(req.runs);
	for (i = 0; i < pin->npages; i++) {
		u64 gpa = ((u64)page_to_pfn(pin->pages[i]) << PAGE_SHIFT) + skip;
		u64 size = min_t(u64, PAGE_SIZE - skip, pin->length - done);

		if (n && run.addr + run.length == gpa) {
			run.length += size;
		} else {
			if (n && n <= req.capacity && copy_to_user(out + n - 1, &run, sizeof(run)))
				return -EFAULT;
			run.addr = gpa;
			run.length = size;
			n++;
		}
		done += size;
		skip = 0;
	}
	if (n && n <= req.capacity && copy_to_user(out + n - 1, &run, sizeof(run)))
		return -EFAULT;
	req.count = n;
	req.addr = pin->addr;
	req.length = pin->length;
	if (copy_to_user(argp, &req, sizeof(req)))
		return -EFAULT;
	return n > req.capacity ? -E2BIG : 0;
}

static long ava_pin_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	if (cmd == AVA_PIN_IOC_RUNS)
		return ava_pin_runs(file->private_data, (void __user *)arg);
	return -ENOTTY;
}

static const struct file_operations ava_pin_fops = {
	.owner = THIS_MODULE,
	.release = ava_pin_release,
	.unlocked_ioctl = ava_pin_ioctl,
};

/* Pin [addr, addr + length) of the caller; a new fd holding the pin, or -errno. */
static long ava_pin_make(void __user *argp)
{
	struct ava_pin_request req;
	struct ava_pin *pin;
	unsigned long first, npages, done = 0;
	int ret, fd;

	if (copy_from_user(&req, argp, sizeof(req)))
		return -EFAULT;
	if (!req.length || req.length > AVA_PIN_MAX_PIN_BYTES || req.addr + req.length < req.addr)
		return -EINVAL;
	first = req.addr >> PAGE_SHIFT;
	npages = ((req.addr + req.length - 1) >> PAGE_SHIFT) - first + 1;

	pin = kzalloc(sizeof(*pin), GFP_KERNEL_ACCOUNT);
	if (!pin)
		return -ENOMEM;
	pin->addr = req.addr;
	pin->length = req.length;
	pin->pages = kvcalloc(npages, sizeof(*pin->pages), GFP_KERNEL_ACCOUNT);
	if (!pin->pages) {
		ret = -ENOMEM;
		goto fail;
	}
	ret = ava_pin_charge(pin, npages);
	if (ret)
		goto fail;
	while (done < npages) {
		ret = pin_user_pages_fast((first + done) << PAGE_SHIFT, npages - done,
					  FOLL_WRITE | FOLL_LONGTERM, pin->pages + done);
		if (ret <= 0) {
			ret = ret ? ret : -EFAULT;
			break;
		}
		done += ret;
		pin->npages = done;
	}
	if (done < npages)
		goto fail;	/* ava_pin_free unpins what was pinned and uncharges it all */
	fd = anon_inode_getfd("[" AVA_PIN_DEVICE_NAME "]", &ava_pin_fops, pin, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		ret = fd;
		goto fail;
	}
	return fd;
fail:
	ava_pin_free(pin);
	return ret;
}

static long ava_pin_dev_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	if (cmd == AVA_PIN_IOC_PIN)
		return ava_pin_make((void __user *)arg);
	return -ENOTTY;
}

static const struct file_operations ava_pin_dev_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = ava_pin_dev_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice ava_pin_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = AVA_PIN_DEVICE_NAME,
	.fops = &ava_pin_dev_fops,
	.mode = 0600,	/* ava-vdevd gives it to its group (udev is not everywhere) */
};

module_misc_device(ava_pin_dev);

MODULE_DESCRIPTION("ava-vdev: ordinary users lend their own pages to the device");
MODULE_LICENSE("GPL");
