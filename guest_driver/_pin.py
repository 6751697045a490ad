"""The daemon's side of zero-copy for ordinary users: the ``ava_vdev_pin`` module.

``protocols/guest_pin.py`` says why a kernel module: an unprivileged process may lend
its pages to the device only if the kernel holds them for as long as the host may
touch them and tells the daemon, not the process, where they are.  Here: loading the
module and giving its device node to the daemon's group, and reading a pin's runs.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import subprocess
from pathlib import Path

from protocols import guest_pin as gp

log = logging.getLogger("ava-vdevd")

DEVICE_PATH = Path("/dev") / gp.DEVICE_NAME
_RUNS = gp.PinRuns.compile()


def module_loaded() -> bool:
    return Path("/sys/module", gp.MODULE_NAME).is_dir()


def set_up(module: Path | None, gid: int | None) -> str | None:
    """Load the module (``module``: the built ``.ko``; None: only use one already
    loaded) and give its node to group ``gid``, mode 0660.  None when ordinary users
    may pin, else why not (said in the log: they keep the staging copy)."""
    if gid is None:
        return "the daemon serves root only (no --group)"
    if not module_loaded():
        if module is None:
            return (f"the {gp.MODULE_NAME} module is not loaded (`python3 -m guest_driver "
                    "install` builds it where the guest kernel's headers are installed)")
        if not module.is_file():
            return f"{module} does not exist"
        try:
            proc = subprocess.run(["insmod", str(module)], capture_output=True, text=True)
        except OSError as exc:
            return f"cannot run insmod: {exc}"
        if proc.returncode != 0 and not module_loaded():
            return f"insmod {module} failed: {proc.stderr.strip() or proc.returncode}"
    try:
        os.chown(DEVICE_PATH, 0, gid)
        os.chmod(DEVICE_PATH, 0o660)
    except OSError as exc:
        return f"cannot give {DEVICE_PATH} to its group: {exc}"
    return None


def reads_as(fd: int, name: str) -> bool:
    """Whether fd ``fd`` of this process reads as ``name`` in /proc (an anonymous
    inode's kind: nothing else reads as one)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == name
    except OSError:
        return False


def is_pin(fd: int) -> bool:
    """Whether ``fd`` is a pin the module made."""
    return reads_as(fd, gp.PIN_FD_NAME)


def runs_of(fd: int, capacity: int) -> list[tuple[int, int]] | None:
    """The scatter list of pin ``fd`` (its physically contiguous runs of guest memory,
    as the kernel coalesced them), or None when it has more than ``capacity``."""
    buf = (ctypes.c_uint64 * (2 * max(capacity, 1)))()
    req = bytearray(_RUNS.build(dict(runs=ctypes.addressof(buf), capacity=capacity, count=0,
                                     addr=0, length=0)))
    try:
        fcntl.ioctl(fd, gp.IOC_RUNS, req)
    except OSError as exc:
        if exc.errno == errno.E2BIG:
            return None
        raise
    count = _RUNS.parse(bytes(req)).count
    if count > capacity:
        return None
    return [(buf[2 * i], buf[2 * i + 1]) for i in range(count)]
