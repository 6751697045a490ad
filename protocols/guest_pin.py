"""What an application, the guest daemon and the guest kernel module ``ava_vdev_pin``
say to each other: zero-copy for ordinary users.

A transfer that lends the device an application's own pages needs two things
userspace alone cannot give an unprivileged process: the pages must stay that
process's, at the same guest-physical address, for as long as the host may touch
them (even if the process unmaps them or dies meanwhile), and someone trusted must
learn their addresses, to open the queue's DMA windows over exactly those pages.

The module's character device (``/dev/ava-vdev-pin``, group ``ava``, mode 0660) does
both.  An application asks it to ``PIN`` a range of its own memory: the module takes
the kernel's long-term pin on the pages (``pin_user_pages(FOLL_WRITE |
FOLL_LONGTERM)``: memory the caller may write, never a read-only page or a regular file's;
charged to the calling user's ``RLIMIT_MEMLOCK``, as io_uring charges its pins: to the
user, for as long as the pin lives, whoever holds it) and answers with a new fd that
holds them.  The application passes that fd to the daemon (``DaemonOp.PIN``, with
``SCM_RIGHTS``) and closes its own copy.  The daemon, and only a caller with
``CAP_SYS_ADMIN``, asks the fd for its ``RUNS`` (the range's guest-physical scatter
list, coalesced by the kernel: no per-page work in the daemon), opens the windows, and
answers the scatter list.  Closing the last copy of the fd unpins the pages: the daemon closes its
copy once the windows are gone (``RETURN``) and the quarantine is over (a command of
the process's own may still use the pages), or, should the process die first, once
its quarantine is over.

One source for both ends: ``python -m guest_driver.gen_abi`` renders these
declarations as ``guest_driver/runtime/ava_pin.h``, which the module and the
runtime both include (``__u64``: a header the kernel and userspace share).
"""

from __future__ import annotations

from construct import Int32ul, Int64ul, Struct

#: The device node's name under /dev (the module's misc device).
DEVICE_NAME = "ava-vdev-pin"
#: The module's name (``ava_vdev_pin.ko``).
MODULE_NAME = "ava_vdev_pin"
#: What ``/proc/self/fd/N`` reads for a pin's fd: how the daemon recognises one.
PIN_FD_NAME = "anon_inode:[ava-vdev-pin]"
#: The most one pin may hold (the same bound as an io_uring buffer registration).
MAX_PIN_BYTES = 1 << 30
#: ioctl "type" byte of the device.
IOCTL_TYPE = 0xAD

PinRequest = Struct(
    "addr" / Int64ul,       # the first byte of the range, in the caller
    "length" / Int64ul,     # bytes (at most MAX_PIN_BYTES)
)
PIN_REQUEST_SIZE = 16

PinRuns = Struct(
    "runs" / Int64ul,       # where to write the PinRun records
    "capacity" / Int32ul,   # how many fit there
    "count" / Int32ul,      # out: runs of the range (all of them are written, or E2BIG)
    "addr" / Int64ul,       # out: the pinned range's first byte, in the pinning process
    "length" / Int64ul,     # out: its bytes
)
PIN_RUNS_SIZE = 32

#: One physically contiguous run of the pinned range: [addr, addr + length) of guest
#: memory, in the range's order.
PinRun = Struct(
    "addr" / Int64ul,
    "length" / Int64ul,
)
PIN_RUN_SIZE = 16

# ioctl numbers as <linux/ioctl.h> builds them: direction, size, type, number.
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (IOCTL_TYPE << 8) | nr


#: On the device: pin a PinRequest's range; returns a new fd (O_CLOEXEC) holding it.
IOC_PIN = _ioc(_IOC_WRITE, 1, PIN_REQUEST_SIZE)
#: On a pin's fd (CAP_SYS_ADMIN only): its scatter list, in PinRuns.
IOC_RUNS = _ioc(_IOC_READ | _IOC_WRITE, 2, PIN_RUNS_SIZE)

assert PinRequest.sizeof() == PIN_REQUEST_SIZE and PinRuns.sizeof() == PIN_RUNS_SIZE
assert PinRun.sizeof() == PIN_RUN_SIZE
