"""Two ordinary processes on one ava-vdev device, through ava-vdevd: one keeps a secret,
the other tries every way to reach it.  Runs in a guest and on the host (loopback) alike;
needs only Python, construct and this checkout's protocols/.

    python3 isolation_probe.py victim STATE_FILE     # prints "victim ready", then waits
    python3 isolation_probe.py attacker STATE_FILE   # one line per attempt: "refused: ..."

The victim writes its queue index, owner tag and the guest-physical address of its
secret into STATE_FILE and serves until killed.  The attacker prints "refused: WHAT"
for each attempt the daemon or the host stopped, and "BROKE: WHAT" for any that got
through; it ends with "attacker done".  Where the daemon takes pins of the
ava_vdev_pin module (zero-copy for ordinary users: HELLO says so), it also tries that
path ("works: WHAT" for what must work there), else it says "no pin module"."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from protocols import device_abi as abi
from protocols import guest_daemon as gd
from protocols import guest_pin as gp
from protocols.device_abi import CmdFlags, QReg, QueueCtrl, QueueState, Reg

CMD = struct.Struct("<HHIQQQIIQQQ")
CQE = struct.Struct("<QiI")
SG = struct.Struct("<QII")
ECHO, NOP = abi.SelftestOp.ECHO, abi.SelftestOp.NOP
SLOTS = 16
SECRET = b"A-SECRET" * 8


class Connection:
    """One application's connection to the daemon: its memory, and registers through it
    (the tests' ``daemonutil.DaemonClient`` builds on this too)."""

    def __init__(self, path: str, memory: int = 8 << 20, timeout: float = 20):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        reply, extra, fds = self.request(gd.DaemonOp.HELLO, gd.DAEMON_PROTOCOL, memory)
        assert reply.status == 0, reply
        self.owner, self.size = reply.owner, reply.size
        self.features = gd.HelloFeatures(reply.value)
        self.gpas = struct.unpack(f"<{reply.count}Q", extra[:8 * reply.count])
        self.mm = mmap.mmap(fds[0], self.size, mmap.MAP_SHARED)
        os.close(fds[0])

    def request(self, op: int, arg0: int = 0, arg1: int = 0, flags: int = 0,
                fds_in: list[int] | None = None):
        """(reply, bytes after it, fds); (None, b"", []) for a posted request."""
        socket.send_fds(self.sock, [gd.Request.build(dict(op=op, flags=flags, arg0=arg0,
                                                          reserved=0, arg1=arg1))], fds_in or [])
        if flags & gd.DaemonFlags.POSTED:
            return None, b"", []
        msg, fds, _, _ = socket.recv_fds(self.sock, gd.MAX_REPLY, 1)
        return gd.Reply.parse(msg[:gd.REPLY_SIZE]), msg[gd.REPLY_SIZE:], fds

    def read(self, off: int) -> int:
        return self.request(gd.DaemonOp.READ32, off)[0].value

    def write(self, off: int, value: int, *, posted: bool = False) -> int | None:
        """The daemon's status for the write (None when posted)."""
        reply = self.request(gd.DaemonOp.WRITE32, off, value,
                             gd.DaemonFlags.POSTED if posted else 0)[0]
        return None if reply is None else reply.status

    def close(self) -> None:
        self.mm.close()
        self.sock.close()


class Process(Connection):
    """One application with one queue, its ring at the start of its memory."""

    def __init__(self, path: str):
        super().__init__(path)
        self.next = abi.ring_bytes(SLOTS)          # a bump allocator after the ring
        self.tail = 0
        self.queue = self.read(Reg.QUEUE_ALLOC)
        assert self.queue != abi.NO_QUEUE
        ring = self.gpa(0)
        self.write(abi.queue_reg(self.queue, QReg.RING_LO), ring & 0xFFFFFFFF)
        self.write(abi.queue_reg(self.queue, QReg.RING_HI), ring >> 32)
        self.write(abi.queue_reg(self.queue, QReg.SIZE), SLOTS)
        self.write(abi.queue_reg(self.queue, QReg.CTRL), QueueCtrl.ENABLE)
        assert self.read(abi.queue_reg(self.queue, QReg.CTRL)) & QueueState.ENABLED

    def gpa(self, offset: int) -> int:
        return self.gpas[offset // gd.CHUNK_SIZE] + offset % gd.CHUNK_SIZE

    def put(self, data: bytes) -> int:
        off = (self.next + 63) // 64 * 64
        self.next = off + max(len(data), 1)
        self.mm[off:off + len(data)] = data
        return self.gpa(off)

    def peek(self, gpa: int, n: int) -> bytes:
        for i, base in enumerate(self.gpas):
            if base <= gpa < base + gd.CHUNK_SIZE:
                off = i * gd.CHUNK_SIZE + gpa - base
                return bytes(self.mm[off:off + n])
        raise ValueError("not ours")

    def call(self, opcode: int, flags: int = 0, payload_addr: int = 0, payload_len: int = 0,
             reply_addr: int = 0, reply_len: int = 0) -> int:
        index = self.tail
        CMD.pack_into(self.mm, abi.command_offset(SLOTS, index), opcode, flags, payload_len,
                      index, payload_addr, reply_addr, reply_len, 0, 0, 0, 0)
        self.tail += 1
        with memoryview(self.mm) as raw, raw.cast("Q") as words:
            words[abi.RING_TAIL // 8] = self.tail
        self.write(Reg.DOORBELL, self.queue, posted=True)
        deadline = time.monotonic() + 20
        while True:
            # Head first, then the completion (written in the other order by the host).
            head = struct.unpack_from("<Q", self.mm, abi.RING_HEAD)[0]
            if head > index:
                seq, status, _ = CQE.unpack_from(self.mm, abi.completion_offset(SLOTS, index))
                if seq == index:
                    return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"command {index} did not complete")
            time.sleep(0.001)


def pins(me: Process, check, out: int) -> None:
    """Zero-copy for ordinary users: what the module and the daemon must refuse, and
    that a lent page is reachable exactly while it is lent."""
    memfd = os.memfd_create("not-a-pin")
    try:
        reply = me.request(gd.DaemonOp.PIN, 0, 1, fds_in=[memfd])[0]
    finally:
        os.close(memfd)
    check("a PIN carrying an fd that is no pin", reply.status == -errno.EPERM)
    page = mmap.mmap(-1, 64 << 10)
    page[:64] = b"L" * 64
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    dev = os.open(f"/dev/{gp.DEVICE_NAME}", os.O_RDWR | os.O_CLOEXEC)
    try:
        pin = fcntl.ioctl(dev, gp.IOC_PIN,
                          bytearray(gp.PinRequest.build(dict(addr=addr, length=64 << 10))))
    finally:
        os.close(dev)
    try:
        runs = bytearray(gp.PinRuns.build(dict(runs=0, capacity=0, count=0, addr=0,
                                               length=0)))
        fcntl.ioctl(pin, gp.IOC_RUNS, runs)
        leaked = True
    except PermissionError:
        leaked = False
    except OSError:             # E2BIG: the kernel counted the runs for this caller
        leaked = True
    check("read my own pin's guest addresses from the module", not leaked)
    try:
        reply, extra, _ = me.request(gd.DaemonOp.PIN, 0, 2, fds_in=[pin])
    finally:
        os.close(pin)
    assert reply.status == 0 and reply.count >= 1, reply
    first = gd.PinRun.parse(extra[:gd.PIN_RUN_SIZE])
    works = me.call(ECHO, payload_addr=first.addr, payload_len=64, reply_addr=out,
                    reply_len=512) == 0 and me.peek(out, 64) == b"L" * 64
    print(f"{'works' if works else 'BROKE'}: my own page, while lent", flush=True)
    me.request(gd.DaemonOp.RETURN, 0, 2, gd.DaemonFlags.POSTED)
    me.read(Reg.MAGIC)          # answered in order: the RETURN is done
    check("my own page, once returned",
          me.call(ECHO, payload_addr=first.addr, payload_len=64, reply_addr=out,
                  reply_len=512) == -errno.EFAULT)
    bad_pins(addr, check)
    page.close()


def bad_pins(addr: int, check) -> None:
    """What the module refuses, each with its errno and nothing pinned: no bytes, more
    than a pin may hold, a range that wraps, memory that is not mapped, memory that is
    not writable, an unknown request, a pin's request on the device itself, and a pin
    past the caller's RLIMIT_MEMLOCK (last: it lowers the limit)."""
    import resource

    def pin(where: int, length: int, request: int = gp.IOC_PIN) -> int:
        dev = os.open(f"/dev/{gp.DEVICE_NAME}", os.O_RDWR | os.O_CLOEXEC)
        try:
            fd = fcntl.ioctl(dev, request, bytearray(gp.PinRequest.build(
                dict(addr=where, length=length))))
            os.close(fd)
            return 0
        except OSError as exc:
            return exc.errno or -1
        finally:
            os.close(dev)

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    readonly = libc.mmap(None, 1 << 16, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                         -1, 0)
    for what, got, want in (
            ("pin no bytes", pin(addr, 0), errno.EINVAL),
            ("pin more than 1 GiB", pin(addr, gp.MAX_PIN_BYTES + 1), errno.EINVAL),
            ("pin a range that wraps", pin((1 << 64) - 4096, 8192), errno.EINVAL),
            ("pin memory that is not mapped", pin(4096, 4096), errno.EFAULT),
            ("pin memory I may not write", pin(readonly, 4096), errno.EFAULT),
            ("an unknown request to the module", pin(addr, 4096, gp.IOC_PIN + 7), errno.ENOTTY),
            ("a pin's own request on the device", pin(addr, 4096, gp.IOC_RUNS), errno.ENOTTY)):
        check(f"{what} ({errno.errorcode.get(got, got)})", got == want)
    libc.munmap(ctypes.c_void_p(readonly), ctypes.c_size_t(1 << 16))
    _soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (4096, hard))
    got = pin(addr, 64 << 10)
    check(f"pin past my RLIMIT_MEMLOCK ({errno.errorcode.get(got, got)})", got == errno.ENOMEM)


def victim(path: str, state: str) -> None:
    me = Process(path)
    secret = me.put(SECRET)
    with open(state + ".tmp", "w") as f:
        json.dump(dict(queue=me.queue, owner=me.owner, secret=secret), f)
    os.rename(state + ".tmp", state)
    print("victim ready", flush=True)
    while True:
        assert me.peek(secret, len(SECRET)) == SECRET, "the secret was overwritten"
        assert me.call(NOP) == 0
        time.sleep(0.2)


def attacker(path: str, state: str) -> int:
    with open(state) as f:
        a = json.load(f)
    me = Process(path)
    out, mine = me.put(bytes(512)), me.put(b"x" * 64)
    broke = 0

    def check(what: str, refused: bool) -> None:
        nonlocal broke
        print(f"{'refused' if refused else 'BROKE'}: {what}", flush=True)
        broke += not refused

    mine_q = abi.queue_reg(me.queue, QReg.OWNER)
    check("set my queue's owner to the victim's",
          me.write(mine_q, a["owner"]) == -errno.EPERM and me.read(mine_q) == me.owner)
    theirs = abi.queue_reg(a["queue"], QReg.CTRL)
    check("read the victim's queue registers",
          all(me.read(abi.queue_reg(a["queue"], r)) == 0 for r in (QReg.CTRL, QReg.OWNER)))
    check("release the victim's queue", me.write(theirs, QueueCtrl.RELEASE) == -errno.EPERM)
    check("ring the victim's doorbell", me.write(Reg.DOORBELL, a["queue"]) == -errno.EPERM)
    check("load my own DMA windows",
          me.write(abi.queue_reg(me.queue, QReg.CTRL), QueueCtrl.LOAD_WINDOWS) == -errno.EPERM)
    check("reset the device", me.write(Reg.STATUS, 0) == -errno.EPERM)
    check("read the victim's secret as a payload",
          me.call(ECHO, payload_addr=a["secret"], payload_len=len(SECRET), reply_addr=out,
                  reply_len=512) == -errno.EFAULT and SECRET not in me.peek(out, 512))
    check("overwrite the victim's secret as a reply",
          me.call(ECHO, payload_addr=mine, payload_len=64, reply_addr=a["secret"],
                  reply_len=64) == -errno.EFAULT)
    table = me.put(SG.pack(mine, 64, 0) + SG.pack(a["secret"], len(SECRET), 0))
    check("a scatter list with the victim's page",
          me.call(ECHO, flags=CmdFlags.PAYLOAD_SG, payload_addr=table, payload_len=2,
                  reply_addr=out, reply_len=512) == -errno.EFAULT)
    check("a scatter list at guest address 0",
          me.call(ECHO, flags=CmdFlags.PAYLOAD_SG, payload_addr=me.put(SG.pack(0, 4096, 0)),
                  payload_len=1, reply_addr=out, reply_len=512) == -errno.EFAULT)
    check("my own queue still works", me.call(NOP) == 0)
    if me.features & gd.HelloFeatures.PIN:
        pins(me, check, out)
    else:
        print("no pin module: ordinary users' transfers are copied", flush=True)
    print("attacker done", flush=True)
    return 1 if broke else 0


if __name__ == "__main__":
    role, state_file = sys.argv[1], sys.argv[2]
    socket_path = os.environ.get("AVA_VDEV_DAEMON", gd.DEFAULT_SOCKET)
    if role == "victim":
        victim(socket_path, state_file)
    sys.exit(attacker(socket_path, state_file))
