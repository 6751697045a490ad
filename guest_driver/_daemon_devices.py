"""How ``ava-vdevd`` reaches the device: in a VM, or over the loopback transport.

``UioDevice`` is the real thing: the PCI device bound to ``uio_pci_generic``, BAR0
mapped through sysfs, interrupts read from ``/dev/uioN`` (one INTx line, so each
interrupt wakes every queue's eventfd and the runtime looks at its own ring), and
DMA memory from 2 MiB hugepages whose guest-physical addresses come from
``/proc/self/pagemap``.  Only root can do any of that; that is why the daemon exists.

``LoopbackDevice`` serves the same daemon on the host, for tests and benchmarks:
the daemon is a vfio-user client of a device server, each application's memory is
a memfd of its own that the daemon DMA-maps at an address of its own, and each
queue's interrupt is an MSI-X eventfd.  Applications there share nothing but what
the daemon gives them, as in a VM.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import logging
import mmap
import os
import stat
import threading
from typing import Any

from protocols import device_abi as abi
from protocols import guest_daemon as gd
from protocols.pci import Cmd, ConfigReg

log = logging.getLogger("ava-vdevd")

CHUNK = gd.CHUNK_SIZE
SYSFS = "/sys/bus/pci/devices"
PAGE = 4096
_PFN_MASK = (1 << 55) - 1


def _address(mm: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(mm))


class HugepageMemory:
    """2 MiB hugepages in a memfd, faulted in, with each chunk's guest-physical address."""

    def __init__(self, size: int, name: str = "ava-vdev-dma"):
        self.size = size
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_HUGETLB)
        try:
            os.ftruncate(self.fd, size)
            self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(self.fd)
            raise OSError(exc.errno, f"{exc.strerror}: no {size >> 20} MiB of free 2 MiB "
                          "hugepages; hint: echo 128 > /proc/sys/vm/nr_hugepages") from None
        try:
            base = _address(self.mm)
            with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
                self.chunk_gpas = []
                for i in range(size // CHUNK):
                    self.mm[i * CHUNK] = 0          # fault the page in (hugetlb: pinned)
                    entry = int.from_bytes(os.pread(pagemap.fileno(), 8,
                                                    (base + i * CHUNK) // PAGE * 8), "little")
                    if not entry >> 63 or not entry & _PFN_MASK:
                        raise OSError(errno.EPERM, "no frame number in /proc/self/pagemap")
                    self.chunk_gpas.append((entry & _PFN_MASK) * PAGE)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.fd >= 0:
            self.mm.close()
            os.close(self.fd)
            self.fd = -1


class UioDevice:
    """The device in this VM, bound to uio_pci_generic."""

    name = "the ava-vdev PCI device"
    guest_ram = True

    def __init__(self) -> None:
        self.bdf = self._find()
        self._bind()
        try:
            with open(f"{SYSFS}/{self.bdf}/enable", "w") as f:
                f.write("1")
        except OSError:
            pass        # already enabled (EBUSY), as binding uio_pci_generic does
        fd = os.open(f"{SYSFS}/{self.bdf}/resource0", os.O_RDWR | os.O_SYNC | os.O_CLOEXEC)
        try:
            self._bar = mmap.mmap(fd, abi.BAR0_SIZE, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._regs = memoryview(self._bar).cast("I")    # one 32-bit access each
        self.uio = os.open(self._uio_node(), os.O_RDWR | os.O_CLOEXEC)
        self._fanout: dict[int, list[int]] = {}
        self._fanout_lock = threading.Lock()
        self._tables: HugepageMemory | None = None
        threading.Thread(target=self._interrupts, name="uio-irq", daemon=True).start()
        log.info("device %s bound to uio_pci_generic", self.bdf)

    @staticmethod
    def _find() -> str:
        for path in sorted(glob.glob(f"{SYSFS}/*")):
            try:
                with open(f"{path}/vendor") as v, open(f"{path}/device") as d:
                    if (int(v.read(), 16), int(d.read(), 16)) == (abi.VENDOR_ID, abi.DEVICE_ID):
                        return os.path.basename(path)
            except OSError:
                continue
        raise RuntimeError(f"no ava-vdev device (PCI {abi.VENDOR_ID:04x}:{abi.DEVICE_ID:04x}) in "
                           "this machine; hint: start QEMU with -device vfio-user-pci")

    def _bind(self) -> None:
        if os.path.exists(f"{SYSFS}/{self.bdf}/driver/module/drivers/pci:uio_pci_generic") or \
                os.path.basename(os.path.realpath(f"{SYSFS}/{self.bdf}/driver")) == \
                "uio_pci_generic":
            return
        os.system("modprobe uio_pci_generic 2>/dev/null")
        try:
            with open("/sys/bus/pci/drivers/uio_pci_generic/new_id", "w") as f:
                f.write(f"{abi.VENDOR_ID:04x} {abi.DEVICE_ID:04x}")
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            try:
                with open("/sys/bus/pci/drivers/uio_pci_generic/bind", "w") as f:
                    f.write(self.bdf)
            except OSError as exc2:
                if exc2.errno != errno.EBUSY:
                    raise

    def _uio_node(self) -> str:
        import time
        for _ in range(100):            # udev-less guests: the node may lag
            for entry in glob.glob(f"{SYSFS}/{self.bdf}/uio/uio*"):
                node = f"/dev/{os.path.basename(entry)}"
                if not os.path.exists(node):
                    with open(f"{entry}/dev") as f:
                        major, minor = map(int, f.read().split(":"))
                    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(major, minor))
                return node
            time.sleep(0.01)
        raise RuntimeError(f"device {self.bdf} has no uio node")

    def _interrupts(self) -> None:
        """Each INTx: wake every queue's eventfd (one shared line; each waiter re-checks
        its ring).  uio_pci_generic's handler masks the line with the command register's
        INTx-disable bit and has no irqcontrol (a write to /dev/uioN is ENOSYS), so the
        line is re-armed as its documentation says, through the config space, after the
        device's IRQ_STATUS (write-one-to-clear: the device holds INTx high until then)
        is cleared.  The clear is a trapped BAR access, which is also QEMU's end of
        interrupt for INTx without KVM; it comes while the line is still disabled, so the
        device does not fire again for a cause already cleared.  Before this, interrupts
        never came past the first: every wait past the runtime's yield ended on its
        10 ms poll (a 4 KiB write in the lab guest took 11 ms)."""
        try:
            config = os.open(f"{SYSFS}/{self.bdf}/config", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            log.info("no interrupts (the config space: %s): waits poll", exc)
            return
        try:
            self._enable_intx(config)
        except OSError as exc:
            log.info("no interrupts (%s): waits poll", exc)
            os.close(config)
            return
        while True:
            try:
                os.read(self.uio, 4)
                self._regs[abi.Reg.IRQ_STATUS // 4] = 0xFFFFFFFF
                self._enable_intx(config)
            except OSError as exc:
                log.error("interrupts stopped: %s", exc)
                os.close(config)
                return
            with self._fanout_lock:
                fds = [fd for fds in self._fanout.values() for fd in fds]
            for fd in fds:
                try:
                    os.eventfd_write(fd, 1)
                except OSError:
                    pass

    @staticmethod
    def _enable_intx(config: int) -> None:
        """Clear the command register's INTx-disable bit (uio_pci_generic's handler set
        it)."""
        command = int.from_bytes(os.pread(config, 2, ConfigReg.COMMAND), "little")
        if command & Cmd.INTX_DISABLE:
            os.pwrite(config, (command & ~Cmd.INTX_DISABLE).to_bytes(2, "little"),
                      ConfigReg.COMMAND)

    def read32(self, off: int) -> int:
        return int(self._regs[off // 4])

    def write32(self, off: int, value: int, *, posted: bool = False) -> None:
        self._regs[off // 4] = value & 0xFFFFFFFF

    def alloc(self, size: int) -> HugepageMemory:
        return HugepageMemory(size)

    def table_memory(self) -> tuple[memoryview, int]:
        if self._tables is None:
            self._tables = HugepageMemory(CHUNK, "ava-vdev-windows")
        return memoryview(self._tables.mm), self._tables.chunk_gpas[0]

    def irq_fd(self, queue: int) -> int:
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        with self._fanout_lock:
            self._fanout.setdefault(queue, []).append(os.dup(efd))
        return efd

    def queue_released(self, queue: int) -> None:
        with self._fanout_lock:
            for fd in self._fanout.pop(queue, []):
                os.close(fd)

    def close(self) -> None:
        self._regs.release()
        self._bar.close()


# -- the loopback transport (host) ---------------------------------------------------------

#: Where the daemon maps its own window tables, and where applications' memory starts.
TABLE_IOVA = 0x10000000
CLIENT_IOVA = 0x100000000


class LoopbackMemory:
    """An application's memory over the loopback transport: a sealed memfd of its own,
    DMA-mapped by the daemon at an address range of its own."""

    def __init__(self, device: LoopbackDevice, size: int, iova: int):
        self.device, self.size, self.iova = device, size, iova
        self.fd = _sealed_memfd("ava-vdev-dma", size)
        try:
            device.call("dma_map", iova, size, fd=self.fd)
        except BaseException:
            os.close(self.fd)
            raise
        self.chunk_gpas = [iova + i * CHUNK for i in range(size // CHUNK)]

    def close(self) -> None:
        if self.fd >= 0:
            try:
                self.device.call("dma_unmap", self.iova, self.size)
            except Exception as exc:        # the server is gone: nothing maps it any more
                log.debug("unmap %#x: %s", self.iova, exc)
            os.close(self.fd)
            self.fd = -1


def _sealed_memfd(name: str, size: int) -> int:
    import fcntl
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    return fd


class LoopbackDevice:
    """A device server's device, reached as a vfio-user client (the host, no VM)."""

    #: An application's memory here is not what the server maps: no zero-copy.
    guest_ram = False

    def __init__(self, socket_path: str):
        import trio
        self.name = f"the device server at {socket_path}"
        self._trio = trio
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._cli: Any = None
        self._token: Any = None
        self._closed: Any = None
        self._thread = threading.Thread(target=trio.run, args=(self._main, socket_path),
                                        name="vfio-user", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError(f"cannot reach {self.name}: {self._error}")
        # Posted writes (doorbells) go straight onto the socket from the daemon's thread,
        # not through trio (a thread hop of hundreds of µs on a loaded machine).  Safe:
        # every device call comes from that one thread, so nothing else sends meanwhile.
        import socket
        cli: Any = self._cli        # set by _main, on the trio thread
        self._posted = socket.socket(fileno=os.dup(cli.sock.fileno()))
        self._posted.setblocking(True)
        self._next_iova = CLIENT_IOVA
        self._iova_lock = threading.Lock()
        self._table_fd = _sealed_memfd("ava-vdev-windows", CHUNK)
        self.call("dma_map", TABLE_IOVA, CHUNK, fd=self._table_fd)
        self._table = mmap.mmap(self._table_fd, CHUNK, mmap.MAP_SHARED,
                                mmap.PROT_READ | mmap.PROT_WRITE)

    async def _main(self, socket_path: str) -> None:
        from vdev.client import VfioUserClient  # host only: never shipped to a guest
        try:
            self._cli = await VfioUserClient.connect(socket_path)
            await self._cli.negotiate()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._token = self._trio.lowlevel.current_trio_token()
        self._closed = self._trio.Event()
        self._ready.set()
        try:
            await self._closed.wait()
        finally:
            await self._cli.aclose()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self._cli, method)

        async def invoke() -> Any:
            return await fn(*args, **kwargs)
        return self._trio.from_thread.run(invoke, trio_token=self._token)

    def read32(self, off: int) -> int:
        return int(self.call("read32", off))

    def write32(self, off: int, value: int, *, posted: bool = False) -> None:
        if not posted:
            self.call("write32", off, value & 0xFFFFFFFF)
            return
        from protocols import vfio_user as vu
        payload = vu.RegionAccess.build(dict(offset=off, region=vu.RegionIndex.BAR0, count=4,
                                             data=(value & 0xFFFFFFFF).to_bytes(4, "little")))
        self._posted.sendall(vu.build_message(self._cli.next_id(), vu.Command.REGION_WRITE,
                                              payload, flags=vu.HeaderFlags.NO_REPLY))

    def alloc(self, size: int) -> LoopbackMemory:
        with self._iova_lock:
            iova = self._next_iova
            self._next_iova += size + CHUNK     # a gap: no two applications' memory touch
        return LoopbackMemory(self, size, iova)

    def table_memory(self) -> tuple[memoryview, int]:
        return memoryview(self._table), TABLE_IOVA

    def irq_fd(self, queue: int) -> int:
        from protocols.vfio_user import IrqIndex, IrqSetFlags
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            self.call("set_irqs", IrqIndex.MSIX,
                      IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
                      start=queue, count=1, fds=[efd])
        except BaseException:
            os.close(efd)
            raise
        return efd

    def queue_released(self, queue: int) -> None:
        pass        # the server drops a vector's eventfd when it is set again

    def close(self) -> None:
        if self._token is not None:
            self._posted.close()
            self._table.close()
            os.close(self._table_fd)
            self._trio.from_thread.run_sync(self._closed.set, trio_token=self._token)
            self._thread.join(5)
            self._token = None
