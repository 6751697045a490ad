"""The daemon's side of zero-copy for ordinary users: the ``ava_vdev_pin`` module.

``protocols/guest_pin.py`` says why a kernel module: an unprivileged process may lend
its pages to the device only if the kernel holds them for as long as the host may
touch them and tells the daemon, not the process, where they are.  Here: loading the
module and giving its device node to the daemon's group, and reading a pin's frames.
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
PAGE = 4096
#: Pages the largest pin holds (one more where it does not start on a page).
MAX_PAGES = gp.MAX_PIN_BYTES // PAGE + 1
_FRAMES = gp.PinFrames.compile()


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


def is_pin(fd: int) -> bool:
    """Whether ``fd`` is a pin the module made (nothing else reads as one)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == gp.PIN_FD_NAME
    except OSError:
        return False


def _frames_call(fd: int, buf: ctypes.Array | None, capacity: int) -> tuple[int, object]:
    req = bytearray(_FRAMES.build(dict(frames=ctypes.addressof(buf) if buf is not None else 0,
                                       capacity=capacity, count=0, addr=0, length=0)))
    try:
        rc = fcntl.ioctl(fd, gp.IOC_FRAMES, req)
    except OSError as exc:
        if exc.errno != errno.E2BIG:
            raise
        rc = -errno.E2BIG
    return rc, _FRAMES.parse(bytes(req))


def frames(fd: int) -> tuple[int, int, list[int]]:
    """(addr, length, one guest-physical address a page) of pin ``fd``: its size asked
    first, so the buffer is the pin's, not the largest one's."""
    _, head = _frames_call(fd, None, 0)
    count = head.count          # type: ignore[attr-defined]
    if not 0 < count <= MAX_PAGES:
        raise OSError(errno.EINVAL, f"a pin of {count} pages")
    buf = (ctypes.c_uint64 * count)()
    rc, out = _frames_call(fd, buf, count)
    if rc != 0 or out.count != count:   # type: ignore[attr-defined]
        raise OSError(errno.EIO, "the pin's frames changed")
    return out.addr, out.length, list(buf)      # type: ignore[attr-defined]


def runs(addr: int, length: int, pages: list[int], limit: int) -> list[tuple[int, int]] | None:
    """The scatter list of [addr, addr + length), given each of its pages' guest
    address: one ``(gpa, bytes)`` per physically contiguous run; None past ``limit``
    runs (it stops there: a hostile pin of 1 GiB in 4 KiB pieces costs no more)."""
    out: list[tuple[int, int]] = []
    done, skip = 0, addr % PAGE
    for gpa in pages:
        size = min(PAGE - skip, length - done)
        if out and out[-1][0] + out[-1][1] == gpa + skip:
            out[-1] = (out[-1][0], out[-1][1] + size)
        elif len(out) == limit:
            return None
        else:
            out.append((gpa + skip, size))
        done += size
        skip = 0
    return out
