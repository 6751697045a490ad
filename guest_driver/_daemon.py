"""``ava-vdevd``: the guest daemon that owns the device, so ordinary users may use it.

Without it every OpenCL program must run as root (it binds the device, maps BAR0,
reads guest-physical addresses, takes hugepages), and nothing stops one process
from writing another's queue registers or naming another's memory in a scatter
list.  The daemon runs as root, alone maps BAR0 and serves applications on a UNIX
socket whose group (``ava``) says who may use the accelerator.  Each connection is
one application process, checked with ``SO_PEERCRED``, and gets:

- DMA memory of its own (a memfd: hugepages in a VM) for its rings and staging,
  mapped by both; the application writes its rings and reads its completions
  directly, with no daemon hop;
- a *virtual BAR0* (``Policy``): identity registers as they are, the queue
  registers of its own queues only, and every other access refused.  Queue
  ownership is the daemon's: it writes the owner tag (unique per connection,
  never reused, not a pid) and the queue's DMA windows (the connection's memory,
  nothing else; for root, which may reach all guest memory anyway, all of it, so
  its transfers may lend the application's own pages) before the queue is enabled,
  through registers no application reaches;
- interrupts as an eventfd per queue.

When a connection closes (the process exited or was killed) its queues are
released, which removes their windows and frees what the process created on the
host, and its memory (with the pins of any zero-copy transfer it left under
way, ``LEND``) is kept in quarantine for ``quarantine_s``, and until the host
says the release of every queue the process had is settled (QueueState.SETTLING:
no command of it, nor a non-blocking transfer such a command left running, touches
guest memory any more), before it is freed: no page the host might still write to is
given to anyone else meanwhile.  An ordinary user's pins (``PIN``) wait for the same.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import logging
import os
import secrets
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from construct import ConstructError

from protocols import device_abi as abi
from protocols import guest_daemon as gd
from protocols.device_abi import DeviceStatus, QReg, QueueCtrl, QueueState, Reg

from . import _pin

log = logging.getLogger("ava-vdevd")

#: Owner tags the daemon gives out start here: above any pid (pid_max is at most
#: 2**22), so they never collide with a root process on the direct path.
OWNER_BASE = 0x40000000
#: Each queue's window table gets this much of the daemon's table memory.
TABLE_SLOT = 32 << 10
#: Pins (zero-copy transfers under way) one process may have lent the daemon at once.
MAX_LENT = 1024
#: The module's pins (an ordinary user's) one process may have with the daemon at once,
#: counting those returned and not yet let go: each is an fd of the daemon's, so no
#: process may run it out of fds by pinning and returning in a loop.
MAX_PINS = 64
#: How often the host is asked whether a returned pin's windows are settled, and how
#: long that may take before the pin is kept until its process ends.
SETTLE_POLL_S = 0.002
SETTLE_LIMIT_S = 30.0
#: How often memory whose quarantine is over is looked at again while the host is not
#: done with it.
QUARANTINE_POLL_S = 0.01
#: A root process's queues reach all guest memory, as root itself may (/dev/mem):
#: that is what lets its transfers lend the application's own pages (zero-copy).
ALL_MEMORY = [(0, (1 << 64) - 1)]

#: Compiled once: a request costs 2 µs to parse instead of 8.  Compiled parsers skip
#: checks, so a record's length is checked before it is parsed.
_REQUEST = gd.Request.compile()
_REPLY = gd.Reply.compile()
_PIN_RUN = gd.PinRun.compile()

#: Registers every application may read as they are.
IDENTITY_REGS = frozenset({Reg.MAGIC, Reg.ABI_VERSION, Reg.DEVICE_FEATURES_LO,
                           Reg.DEVICE_FEATURES_HI, Reg.DRIVER_FEATURES_LO,
                           Reg.DRIVER_FEATURES_HI, Reg.STATUS, Reg.NUM_QUEUES})
#: Queue registers an application may write on its own queues (the ring it made).
RING_REGS = frozenset({QReg.RING_LO, QReg.RING_HI, QReg.SIZE})


class Memory(Protocol):
    """DMA memory given to one application: a memfd and its chunks' guest addresses."""

    fd: int
    size: int
    chunk_gpas: list[int]

    def close(self) -> None: ...


class Device(Protocol):
    """How the daemon reaches the device: in a VM (``UioDevice``) or, for tests and
    benchmarks on the host, as a vfio-user client (``LoopbackDevice``)."""

    name: str
    #: Whether applications' own memory is memory the device reaches (guest RAM, in a
    #: VM), so that root's transfers may lend their pages (zero-copy).
    guest_ram: bool

    def read32(self, off: int) -> int: ...

    def write32(self, off: int, value: int, *, posted: bool = False) -> None: ...

    def alloc(self, size: int) -> Memory:
        """Zeroed DMA memory of ``size`` bytes (a multiple of 2 MiB)."""

    def table_memory(self) -> tuple[memoryview, int]:
        """Memory of the daemon's own for window tables, and its guest address."""

    def irq_fd(self, queue: int) -> int:
        """A new eventfd signalled when ``queue`` (or, with one shared line, any
        queue) interrupts; the caller owns it."""

    def queue_released(self, queue: int) -> None:
        """``queue`` is gone: stop signalling what ``irq_fd`` gave for it."""

    def close(self) -> None: ...


@dataclass
class Client:
    conn: socket.socket
    pid: int
    uid: int
    owner: int
    memory: Memory | None = None
    queues: set[int] = field(default_factory=set)
    #: Pins of application pages it lent the device (zero-copy), by its token.
    lent: dict[int, int] = field(default_factory=dict)
    #: Of those, the module's pins (an ordinary user's): their scatter lists, which its
    #: queues' windows include until RETURN.
    pin_runs: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    #: Pins returned whose windows could not be removed (their queue failed): kept
    #: until the process is gone, when the queues' release removes every window.
    stuck: list[int] = field(default_factory=list)
    #: Pins it returned that are not yet let go (the host may still touch them).
    returning: int = 0
    #: Every queue it ever had: a pin's pages were in their windows.
    ever_queues: set[int] = field(default_factory=set)
    #: The process, to take dups of its pins' fds (only where it may lend).
    pidfd: int = -1

    def describe(self) -> str:
        return f"pid {self.pid} (uid {self.uid}, owner {self.owner:#x})"

    def windows(self) -> list[tuple[int, int]]:
        """What its queues may touch: its memory, and the pages it pinned."""
        if self.pidfd >= 0:         # root, in a VM: it may lend its pages
            return ALL_MEMORY
        own = [(gpa, gd.CHUNK_SIZE) for gpa in (self.memory.chunk_gpas if self.memory else [])]
        return own + [run for runs in self.pin_runs.values() for run in runs]


class LentPins:
    """A dead process's pins (io_uring fds that keep its pages pinned), kept in
    quarantine like its memory: the host may still be writing into those pages."""

    def __init__(self, fds: list[int]):
        self.fds = fds

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


_libc = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_GETFD = 438       # the same number on every architecture


def pidfd_getfd(pidfd: int, target: int) -> int:
    """A dup of fd ``target`` of the process behind ``pidfd`` (Linux 5.6)."""
    fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, target, 0)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(fd)


def _split(off: int) -> tuple[int, int] | None:
    """(queue, register) for an offset inside a queue window, else None."""
    rel = off - abi.QUEUE_WINDOW_BASE
    if rel < 0 or rel >= abi.NUM_QUEUES * abi.QUEUE_WINDOW_SIZE:
        return None
    return rel // abi.QUEUE_WINDOW_SIZE, rel % abi.QUEUE_WINDOW_SIZE


class Policy:
    """What each application's register accesses do (its virtual BAR0).

    Register accesses of all connections are serialised (one lock): a queue's
    setup (claim, owner, windows, enable) is never interleaved with another's."""

    def __init__(self, device: Device, *, max_queues: int = 16, user_queues: int = 32):
        self.device = device
        self.max_queues = max_queues
        #: Queues one user (uid) may hold over all its processes, so that no user can
        #: take every queue from the others; root is not bounded.
        self.user_queues = user_queues
        self.queues_of_user: dict[int, int] = {}
        self.lock = threading.Lock()
        self.tables, self.tables_gpa = device.table_memory()
        self.fenced = False
        self.num_queues = min(device.read32(Reg.NUM_QUEUES), abi.NUM_QUEUES)

    def start(self) -> None:
        """Bring the device up once, for everyone: applications never reset it."""
        with self.lock:
            offered = self.device.read32(Reg.DEVICE_FEATURES_LO)
            self.device.write32(Reg.DRIVER_FEATURES_LO,
                                offered & (abi.Feature.INTX | abi.Feature.MSIX))
            if not offered & abi.Feature.DMA_WINDOWS:
                raise RuntimeError("the device does not offer DMA windows (ABI "
                                   f"{self.device.read32(Reg.ABI_VERSION):#x}): its server "
                                   "is older than this daemon; update the host")
            #: Whether the host says when removed windows are settled: ordinary users'
            #: pins (which are let go once they are) need it.
            self.fenced = bool(offered & abi.Feature.WINDOW_FENCE)
            status = self.device.read32(Reg.STATUS)
            if not status & DeviceStatus.DRIVER_OK:
                self.device.write32(Reg.STATUS, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER_OK)
            self._reclaim()

    def _reclaim(self) -> None:
        """Release the queues an earlier daemon set up (one that died, or was killed):
        their processes lost their connection with it, and the host frees what those
        owners made.  Queues of root processes on the direct path (owner tags below
        OWNER_BASE: pids) are theirs to release."""
        for queue in range(self.num_queues):
            state = self.device.read32(abi.queue_reg(queue, QReg.CTRL))
            owner = self.device.read32(abi.queue_reg(queue, QReg.OWNER))
            if state & QueueState.CLAIMED and owner >= OWNER_BASE:
                self.device.write32(abi.queue_reg(queue, QReg.CTRL), QueueCtrl.RELEASE)
                log.info("queue %d of an earlier daemon's process (owner %#x) released",
                         queue, owner)

    def read(self, client: Client, off: int) -> int:
        with self.lock:
            if off in IDENTITY_REGS:
                return self.device.read32(off)
            if off == Reg.QUEUE_ALLOC:
                return self._claim(client)
            where = _split(off)
            if where is not None and where[0] in client.queues:
                return self.device.read32(off)
            return 0    # another queue's registers read as an unclaimed queue's

    def write(self, client: Client, off: int, value: int) -> int:
        """0, or -EPERM for an access the application may not make (nothing done)."""
        with self.lock:
            if off == Reg.DOORBELL:
                if value not in client.queues:
                    return -errno.EPERM
                self.device.write32(Reg.DOORBELL, value, posted=True)
                return 0
            where = _split(off)
            if where is None or where[0] not in client.queues:
                return -errno.EPERM
            queue, reg = where
            if reg in RING_REGS:
                self.device.write32(off, value)
            elif reg == QReg.CTRL and value == QueueCtrl.ENABLE:
                self._enable(client, queue)
            elif reg == QReg.CTRL and value == QueueCtrl.DISABLE:
                self.device.write32(off, value)
            elif reg == QReg.CTRL and value == QueueCtrl.RELEASE:
                self._release(client, queue)
            else:
                return -errno.EPERM     # the owner, the windows, anything else
            return 0

    def release_all(self, client: Client) -> None:
        with self.lock:
            for queue in sorted(client.queues):
                self._release(client, queue)

    # -- under the lock ------------------------------------------------------------------

    def _claim(self, client: Client) -> int:
        if len(client.queues) >= self.max_queues:
            log.warning("%s: refused a queue: it has %d (at most %d a process)",
                        client.describe(), len(client.queues), self.max_queues)
            return abi.NO_QUEUE
        held = self.queues_of_user.get(client.uid, 0)
        if client.uid != 0 and held >= self.user_queues:
            log.warning("%s: refused a queue: uid %d holds %d (at most %d a user)",
                        client.describe(), client.uid, held, self.user_queues)
            return abi.NO_QUEUE
        queue = self.device.read32(Reg.QUEUE_ALLOC)
        if queue == abi.NO_QUEUE or queue >= self.num_queues:
            log.warning("%s: no free device queue", client.describe())
            return abi.NO_QUEUE
        self.device.write32(abi.queue_reg(queue, QReg.OWNER), client.owner)
        client.queues.add(queue)
        client.ever_queues.add(queue)
        self.queues_of_user[client.uid] = held + 1
        log.debug("%s: queue %d claimed", client.describe(), queue)
        return queue

    def _enable(self, client: Client, queue: int) -> None:
        """Owner and windows first, then ENABLE: the queue never runs a command that
        could reach memory outside the process's own."""
        dev = self.device
        dev.write32(abi.queue_reg(queue, QReg.OWNER), client.owner)
        self._load_windows(queue, client.windows())
        dev.write32(abi.queue_reg(queue, QReg.CTRL), QueueCtrl.ENABLE)
        state = dev.read32(abi.queue_reg(queue, QReg.CTRL))
        if not state & QueueState.ENABLED:
            log.warning("%s: queue %d not enabled (error %d)", client.describe(), queue,
                        dev.read32(abi.queue_reg(queue, QReg.ERROR)))

    def settling_queues(self, queues: set[int]) -> set[int]:
        """Those of ``queues`` whose owners may still touch memory they no longer
        reach through them (a command from before new windows, a disable or a release
        is not over: QueueState.SETTLING).  One register read each."""
        with self.lock:
            return {q for q in queues
                    if self.device.read32(abi.queue_reg(q, QReg.CTRL)) & QueueState.SETTLING}

    def set_pins(self, client: Client) -> None:
        """Its pins changed: every queue of its gets the windows they now make, in force
        when this returns (RuntimeError: a queue refused them)."""
        with self.lock:
            for queue in sorted(client.queues):
                self._load_windows(queue, client.windows())

    def _load_windows(self, queue: int, entries: list[tuple[int, int]]) -> None:
        if (len(entries) + 1) * abi.WINDOW_ENTRY_SIZE > TABLE_SLOT:
            raise RuntimeError(f"{len(entries)} windows do not fit a table slot")
        base = queue * TABLE_SLOT
        data = struct.pack("<II", len(entries), 0) + b"".join(
            struct.pack("<QQ", a, n) for a, n in entries)
        self.tables[base:base + len(data)] = data
        gpa = self.tables_gpa + base
        self.device.write32(abi.queue_reg(queue, QReg.WINDOWS_LO), gpa & 0xFFFFFFFF)
        self.device.write32(abi.queue_reg(queue, QReg.WINDOWS_HI), gpa >> 32)
        self.device.write32(abi.queue_reg(queue, QReg.CTRL), QueueCtrl.LOAD_WINDOWS)
        err = self.device.read32(abi.queue_reg(queue, QReg.ERROR))    # also waits for it
        if err:
            raise RuntimeError(f"the device refused queue {queue}'s windows: "
                               f"{errno.errorcode.get(err, err)}")

    def _release(self, client: Client, queue: int) -> None:
        """Release (the host frees what the queue's owner made once it was its last,
        and forgets the windows), then wait for it by reading a register back."""
        self.device.write32(abi.queue_reg(queue, QReg.CTRL), QueueCtrl.RELEASE)
        self.device.read32(abi.queue_reg(queue, QReg.CTRL))
        self.device.queue_released(queue)
        if queue in client.queues:
            client.queues.discard(queue)
            left = self.queues_of_user.get(client.uid, 1) - 1
            if left > 0:
                self.queues_of_user[client.uid] = left
            else:
                self.queues_of_user.pop(client.uid, None)
        log.debug("%s: queue %d released", client.describe(), queue)


class Daemon:
    """Serves applications on a UNIX socket until ``stop``."""

    def __init__(self, device: Device, path: str, *, group: str | None = gd.DEFAULT_GROUP,
                 max_memory: int = 256 << 20, max_queues: int = 16,
                 user_memory: int = 1 << 30, user_queues: int = 32,
                 quarantine_s: float = 2.0, pin_module: Path | None = None):
        self.device = device
        #: The ava_vdev_pin module to load (zero-copy for ordinary users; None: only
        #: one already loaded is used), and whether its device is ready for them.
        self.pin_module = pin_module
        self.pin_ready = False
        self.path = path
        self.group = group
        self.max_memory = max_memory
        #: DMA memory one user (uid) may hold over all its processes (root: unbounded).
        self.user_memory = user_memory
        self.quarantine_s = quarantine_s
        self.policy = Policy(device, max_queues=max_queues, user_queues=user_queues)
        self.clients: dict[int, Client] = {}
        #: What departed processes held, until its time is up and the host says the
        #: release of the queues it was reachable from is settled: (not before, what,
        #: those queues).
        self.quarantine: list[tuple[float, Memory | LentPins, frozenset[int]]] = []
        #: Returned pins (an ordinary user's) whose windows are gone, kept until the
        #: host says no command issued before that touches them: (client, fd, queues,
        #: give up at).
        self.settling: list[tuple[Client, int, list[int], float]] = []
        #: HELLOs answered once the quarantine frees memory: (client, version, size).
        self._hellos_waiting: list[tuple[Client, int, int]] = []
        # Tags start at a random point: a daemon started again never reuses the tag of a
        # process an earlier one served.
        self._next_owner = OWNER_BASE + secrets.randbelow(1 << 29)
        self._sel = selectors.DefaultSelector()
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.sock: socket.socket | None = None

    # -- life ----------------------------------------------------------------------------

    def listen(self) -> None:
        self.policy.start()
        gid = group_id(self.group)
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o755, exist_ok=True)
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        # root and the group may connect; others get EACCES from connect().
        if gid is not None:
            os.chown(self.path, -1, gid)
            os.chmod(self.path, 0o660)
        if self.device.guest_ram:
            why = _pin.set_up(self.pin_module, gid) if self.policy.fenced else (
                "the device's server does not say when removed DMA windows are settled "
                "(Feature.WINDOW_FENCE): update the host")
            self.pin_ready = why is None
            log.info("zero-copy for ordinary users: %s", f"no: {why}" if why else
                     f"yes ({_pin.DEVICE_PATH}, group {self.group or 'root'})")
        sock.listen(64)
        sock.setblocking(False)
        self.sock = sock
        self._sel.register(sock, selectors.EVENT_READ, self._accept)
        self._sel.register(self._stop_r, selectors.EVENT_READ, None)
        log.info("serving %s on %s (group %s; up to %d MiB and %d queues a process, %d MiB "
                 "and %d queues a user)", self.device.name, self.path,
                 self.group or "root only", self.max_memory >> 20, self.policy.max_queues,
                 self.user_memory >> 20, self.policy.user_queues)

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"{self.path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)        # stale: nobody listens
            return
        finally:
            probe.close()
        raise RuntimeError(f"another daemon is serving {self.path}")

    def serve_forever(self) -> None:
        while True:
            timeout = None
            if self.quarantine:
                timeout = max(QUARANTINE_POLL_S,
                              min(e[0] for e in self.quarantine) - time.monotonic())
            if self.settling:
                timeout = min(timeout if timeout is not None else SETTLE_POLL_S,
                              SETTLE_POLL_S)
            for key, _ in self._sel.select(timeout):
                if key.data is None:
                    return
                key.data(key.fileobj)
            if self.settling:
                self._let_go_settled()
            if self._free_quarantined():
                waiting, self._hellos_waiting = self._hellos_waiting, []
                for client, version, size in waiting:
                    if self.clients.get(client.conn.fileno()) is not client:
                        continue            # gone meanwhile
                    try:
                        self._hello(client, version, size)
                    except OSError as exc:
                        self._drop(client, f"reply failed: {exc}")

    def stop(self) -> None:
        """From any thread or a signal handler."""
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client, "the daemon stops")
        for _, memory, _ in self.quarantine:
            memory.close()
        self.quarantine.clear()
        for _, fd, _, _ in self.settling:      # the daemon's end: the pins go with it
            os.close(fd)
        self.settling.clear()
        if self.sock is not None:
            self._sel.unregister(self.sock)
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._sel.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    # -- connections ---------------------------------------------------------------------

    def _accept(self, sock: object) -> None:
        assert self.sock is not None
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:      # EMFILE, ENOMEM: this one waits, the others go on
            log.warning("cannot accept a connection: %s", exc)
            time.sleep(0.05)
            return
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)
        client = Client(conn, pid, uid, self._next_owner)
        self._next_owner += 1
        # Never blocks: a reply that does not fit the client's socket (a client that
        # stopped reading its replies) drops that client, never stalls the others.
        conn.setblocking(False)
        self.clients[conn.fileno()] = client
        self._sel.register(conn, selectors.EVENT_READ, self._readable)
        log.info("%s connected", client.describe())

    def _readable(self, conn: object) -> None:
        assert isinstance(conn, socket.socket)
        client = self.clients[conn.fileno()]
        try:
            data, fds, _flags, _addr = socket.recv_fds(conn, gd.REQUEST_SIZE + 1, 1,
                                                       socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(client, f"read failed: {exc}")
            return
        if not data:
            for fd in fds:
                os.close(fd)
            self._drop(client, "disconnected")
            return
        try:
            self._handle(client, data, fds)
        except BlockingIOError:
            self._drop(client, "stopped reading its replies")
        except OSError as exc:
            self._drop(client, f"reply failed: {exc}")
        finally:
            for fd in fds:              # what a request carried and nobody took
                os.close(fd)

    def _handle(self, client: Client, data: bytes, fds: list[int]) -> None:
        """One request; an fd it carried is taken out of ``fds`` by what keeps it."""
        if len(data) != gd.REQUEST_SIZE:
            self._reply(client, -errno.EINVAL)
            return
        try:
            req = _REQUEST.parse(data)
            op = gd.DaemonOp(req.op)
        except (ConstructError, ValueError):
            self._reply(client, -errno.EINVAL)
            return
        if op != gd.DaemonOp.HELLO and client.memory is None:
            self._reply(client, -errno.EPROTO)
            return
        if op == gd.DaemonOp.HELLO:
            self._hello(client, req.arg0, req.arg1)
        elif op == gd.DaemonOp.READ32:
            self._reply(client, 0, value=self.policy.read(client, req.arg0))
        elif op == gd.DaemonOp.WRITE32:
            status = self.policy.write(client, req.arg0, req.arg1 & 0xFFFFFFFF)
            if status:
                log.warning("%s: write of %#x to BAR0+%#x refused", client.describe(),
                            req.arg1 & 0xFFFFFFFF, req.arg0)
            if not req.flags & gd.DaemonFlags.POSTED:
                self._reply(client, status)
        elif op == gd.DaemonOp.LEND:
            self._lend(client, req.arg0, req.arg1)
        elif op == gd.DaemonOp.PIN:
            self._pin(client, fds.pop() if fds else -1, req.arg1)
        elif op == gd.DaemonOp.RETURN:
            self._return(client, req.arg1)
        elif op == gd.DaemonOp.IRQ_FD:
            if req.arg0 not in client.queues:
                self._reply(client, -errno.EPERM)
                return
            efd = self.device.irq_fd(req.arg0)
            try:
                self._reply(client, 0, fds=[efd])
            finally:
                os.close(efd)

    def _lend(self, client: Client, target: int, token: int) -> None:
        """Keep a dup of a root process's pin until it is returned or the process is
        gone; refused, the process stages a copy instead."""
        why = ("it may not lend its pages (HELLO said so)" if client.pidfd < 0 else
               f"already {MAX_LENT} pins held" if len(client.lent) >= MAX_LENT else
               "token in use" if token in client.lent else "")
        fd = -1
        if not why:
            try:
                fd = pidfd_getfd(client.pidfd, target)
            except OSError as exc:
                why = f"cannot take its fd {target}: {exc}"
        if not why and not _pin.reads_as(fd, "anon_inode:[io_uring]"):
            why = f"its fd {target} is not an io_uring"
        if why:
            self._refuse_pin(client, fd, token, why)
            return
        client.lent[token] = fd
        self._reply(client, 0)

    def _pin(self, client: Client, fd: int, token: int) -> None:
        """Open the windows over an ordinary user's pinned pages, answer their scatter
        list and keep the pin (``fd``, now the daemon's) until RETURN; refused, the
        process stages a copy."""
        why = ""
        runs: list[tuple[int, int]] | None = []
        if not self.pin_ready or client.pidfd >= 0:
            why = "it may not pin its pages (HELLO said so)"
        elif len(client.pin_runs) + len(client.stuck) + client.returning >= MAX_PINS:
            why = f"already {MAX_PINS} pins held"
        elif token in client.lent:
            why = "token in use"
        elif fd < 0 or not _pin.is_pin(fd):
            why = "the request carries no pin of the ava_vdev_pin module"
        else:
            try:
                runs = _pin.runs_of(fd, gd.MAX_PIN_RUNS)
            except OSError as exc:
                why = f"cannot read the pin's runs: {exc}"
        if not why and runs is None:
            why = f"more than {gd.MAX_PIN_RUNS} physically contiguous runs"
        table = (len(client.windows()) + len(runs or []) + 1) * abi.WINDOW_ENTRY_SIZE
        if not why and table > TABLE_SLOT:
            why = "its queues' window tables are full"
        if why:     # an ordinary outcome (too scattered a range, a full table): info
            self._refuse_pin(client, fd, token, why, logging.INFO)
            return
        assert runs is not None
        client.lent[token] = fd
        client.pin_runs[token] = runs
        try:
            self.policy.set_pins(client)
        except RuntimeError as exc:
            log.warning("%s: pin %d refused: %s", client.describe(), token, exc)
            self._return(client, token)
            self._reply(client, -errno.EIO)
            return
        self._reply(client, 0, count=len(runs), extra=b"".join(
            _PIN_RUN.build(dict(addr=a, length=n)) for a, n in runs))

    def _refuse_pin(self, client: Client, fd: int, token: int, why: str,
                    level: int = logging.WARNING) -> None:
        """A LEND or PIN refused: the fd it brought goes, the process stages a copy."""
        if fd >= 0:
            os.close(fd)
        log.log(level, "%s: pin %d refused: %s", client.describe(), token, why)
        self._reply(client, -errno.EPERM)

    def _return(self, client: Client, token: int) -> None:
        """A pin comes back: its windows go first, then the pages may be unpinned.

        A module's pin (an ordinary user's) is let go only once the host says the
        windows' removal is settled (_let_go_settled): the new windows bind the queues'
        next commands, but a process that returns a pin while a command of its own
        still uses the pages (one behind a user event, say) must not have them go to
        someone else meanwhile."""
        fd = client.lent.pop(token, None)
        if client.pin_runs.pop(token, None) is None:
            if fd is not None:
                os.close(fd)
            return
        try:
            self.policy.set_pins(client)
        except RuntimeError as exc:
            # Windows that may still include the pages: keep them pinned for as long
            # as the queues live (their release removes every window).
            log.warning("%s: windows of pin %d not removed: %s; its pages stay pinned "
                        "until the process ends", client.describe(), token, exc)
            if fd is not None:
                client.stuck.append(fd)
            return
        if fd is not None:
            client.returning += 1
            self.settling.append((client, fd, sorted(client.ever_queues),
                                  time.monotonic() + SETTLE_LIMIT_S))

    def _let_go_settled(self) -> None:
        """Unpin each returned pin once the host says none of the queues it was ever in
        the windows of is settling.  A live process's pin that stays unsettled past
        SETTLE_LIMIT_S stays pinned until the process ends (a command of its own still
        uses the pages, behind a user event...); a departed process's is kept for as
        long as it takes."""
        now, keep = time.monotonic(), []
        unsettled = self.policy.settling_queues({q for entry in self.settling for q in entry[2]})
        for entry in self.settling:
            client, fd, queues, give_up = entry
            if unsettled & set(queues):
                if now < give_up or client.conn.fileno() < 0:
                    keep.append(entry)
                    continue
                log.warning("%s: a returned pin's pages are still in use by the host after "
                            "%.0f s; they stay pinned until the process ends",
                            client.describe(), SETTLE_LIMIT_S)
                client.stuck.append(fd)
            else:
                os.close(fd)
            client.returning -= 1
        self.settling = keep

    def _hello(self, client: Client, version: int, size: int) -> None:
        if version != gd.DAEMON_PROTOCOL:
            log.warning("%s speaks protocol %d, this daemon %d", client.describe(), version,
                        gd.DAEMON_PROTOCOL)
            self._reply(client, -errno.EPROTO)
            return
        if client.memory is not None or any(c is client for c, _, _ in self._hellos_waiting):
            self._reply(client, -errno.EALREADY)
            return
        size = (max(size, 4 * gd.CHUNK_SIZE) + gd.CHUNK_SIZE - 1) // gd.CHUNK_SIZE * gd.CHUNK_SIZE
        if size > self.max_memory:
            log.warning("%s asked for %d MiB of DMA memory; it gets %d MiB (--max-memory)",
                        client.describe(), size >> 20, self.max_memory >> 20)
            size = self.max_memory
        held = sum(c.memory.size for c in self.clients.values()
                   if c.uid == client.uid and c.memory is not None)
        if client.uid != 0 and held + size > self.user_memory:
            log.warning("%s: refused %d MiB of DMA memory: uid %d holds %d MiB (at most %d MiB "
                        "a user)", client.describe(), size >> 20, client.uid, held >> 20,
                        self.user_memory >> 20)
            self._reply(client, -errno.ENOMEM)
            return
        try:
            client.memory = self.device.alloc(size)
        except OSError as exc:
            if exc.errno == errno.ENOMEM and self.quarantine:
                # Processes that just ended hold it for a moment more: the answer waits
                # until their quarantine is over (the runtime waits 10 s for a reply).
                log.info("%s: %d MiB of DMA memory once the quarantine frees some",
                         client.describe(), size >> 20)
                self._hellos_waiting.append((client, version, size))
                return
            log.warning("%s: no DMA memory of %d MiB: %s", client.describe(), size >> 20, exc)
            self._reply(client, -(exc.errno or errno.ENOMEM))
            return
        mem = client.memory
        extra = struct.pack(f"<{len(mem.chunk_gpas)}Q", *mem.chunk_gpas)
        features = gd.HelloFeatures(0)
        if client.uid == 0 and self.device.guest_ram and client.pidfd < 0:
            try:
                client.pidfd = os.pidfd_open(client.pid)
                features |= gd.HelloFeatures.LEND
            except OSError as exc:
                log.info("%s: no zero-copy (pidfd_open: %s)", client.describe(), exc)
        elif self.pin_ready:
            features |= gd.HelloFeatures.PIN
        self._reply(client, 0, value=int(features), owner=client.owner,
                    count=len(mem.chunk_gpas), size=mem.size, extra=extra, fds=[mem.fd])

    def _reply(self, client: Client, status: int, *, value: int = 0, owner: int = 0,
               count: int = 0, size: int = 0, extra: bytes = b"",
               fds: list[int] | None = None) -> None:
        record = _REPLY.build(dict(status=status, value=value, owner=owner, count=count,
                                   size=size)) + extra
        if fds:
            socket.send_fds(client.conn, [record], fds)
        else:
            client.conn.send(record)

    def _drop(self, client: Client, why: str) -> None:
        self._sel.unregister(client.conn)
        self.clients.pop(client.conn.fileno(), None)
        queues = sorted(client.queues)
        self.policy.release_all(client)
        client.conn.close()
        if client.memory is not None:
            self.quarantine.append((time.monotonic() + self.quarantine_s, client.memory,
                                    frozenset(client.ever_queues)))
            client.memory = None
        # The module's pins (an ordinary user's: lent, returned or stuck) go once the
        # host says the queues' release is settled, for as long as that takes: a
        # transfer the process left running may still write into the pages.
        pins = [client.lent.pop(token) for token in list(client.pin_runs)] + client.stuck
        client.pin_runs.clear()
        client.stuck.clear()
        queues_ever = sorted(client.ever_queues)
        for fd in pins:
            client.returning += 1
            self.settling.append((client, fd, queues_ever, time.monotonic() + SETTLE_LIMIT_S))
        if client.lent:         # root's io_uring pins: the quarantine, as its memory
            self.quarantine.append((time.monotonic() + self.quarantine_s,
                                    LentPins(list(client.lent.values())),
                                    frozenset(client.ever_queues)))
            client.lent.clear()
        if client.pidfd >= 0:
            os.close(client.pidfd)
            client.pidfd = -1
        log.info("%s %s; released queues %s", client.describe(), why, queues or "none")

    def _free_quarantined(self) -> bool:
        """Free what has waited long enough and the host is done with (the release of
        every queue its process had is settled); whether anything was."""
        now, freed = time.monotonic(), False
        due = [entry for entry in self.quarantine if entry[0] <= now]
        if not due:
            return False
        unsettled = self.policy.settling_queues(set().union(*(queues for _, _, queues in due)))
        for entry in due:
            if entry[2] & unsettled:
                continue        # a transfer it left running may still write there
            self.quarantine.remove(entry)
            _, memory, _ = entry
            memory.close()
            freed = True
        return freed


def group_id(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise RuntimeError(f"group {group!r} does not exist; hint: `groupadd --system {group}` "
                           "(python3 -m guest_driver install does it), or --group GROUP") from None


def run(device_factory: Callable[[], Device], path: str, **kwargs: object) -> int:
    """Open the device, serve until SIGTERM or SIGINT, clean up."""
    import resource
    import signal

    group_id(kwargs.get("group", gd.DEFAULT_GROUP))  # type: ignore[arg-type]
    # Pins are fds (MAX_PINS a process, through a quarantine): as many as may be had.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    device = device_factory()
    daemon = Daemon(device, path, **kwargs)  # type: ignore[arg-type]
    try:
        daemon.listen()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: daemon.stop())
        daemon.serve_forever()
    finally:
        daemon.close()
        device.close()
    log.info("stopped")
    return 0
