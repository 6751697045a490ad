"""The guest daemon (ava-vdevd) over the loopback transport: applications get their own
memory and queues, and one cannot reach another's queue, registers or memory, whatever
it writes.  Then OpenCL programs of unprivileged users through it."""

import errno
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import pytest
from daemonutil import ROOT, Connection, DaemonClient, daemon_over_loopback, text
from ringutil import Allocator, PyRing

from protocols import device_abi as abi
from protocols import guest_daemon as gd
from protocols.device_abi import CmdFlags, DeviceStatus, QReg, QueueCtrl, QueueState, Reg
from protocols.device_abi import SelftestOp as Op

SG = struct.Struct("<QII")
NOBODY = 65534
USERS_GID = 100         # Debian's "users": the daemon's group in these tests
NOGROUP_GID = 65534


@pytest.fixture(scope="module")
def daemon():
    with daemon_over_loopback("test") as (_d, path, log):
        yield path, log


async def ring_of(client: DaemonClient) -> PyRing:
    return await PyRing.create(client, client, Allocator(client.size))


async def test_each_process_gets_memory_and_queues_of_its_own(daemon):
    a, b = DaemonClient(daemon[0]), DaemonClient(daemon[0])
    try:
        assert a.owner != b.owner and a.owner >= 0x40000000
        assert set(a.gpas).isdisjoint(b.gpas)
        ra, rb = await ring_of(a), await ring_of(b)
        assert ra.queue != rb.queue
        for ring, data in ((ra, b"alice" * 20), (rb, b"bob" * 20)):
            src, dst = ring.put(data), ring.buffer(256)
            assert await ring.call(Op.ECHO, payload_addr=src, payload_len=len(data),
                                   reply_addr=dst, reply_len=256) == (0, len(data))
            assert ring.read(dst, len(data)) == data
        # The owner tag is the daemon's, whatever the process wrote.
        assert await ra.qread(QReg.OWNER) == a.owner
        assert await ra.qread(QReg.CTRL) & QueueState.WINDOWED
    finally:
        a.close()
        b.close()


async def test_a_process_cannot_touch_another_queue_or_its_owner(daemon):
    a, b = DaemonClient(daemon[0]), DaemonClient(daemon[0])
    try:
        ra, rb = await ring_of(a), await ring_of(b)
        theirs = abi.queue_reg(ra.queue, QReg.CTRL)
        # B cannot change its own queue's owner (to A's tag, or anything).
        assert b.write(abi.queue_reg(rb.queue, QReg.OWNER), a.owner) == -errno.EPERM
        assert await rb.qread(QReg.OWNER) == b.owner
        # B sees none of A's registers, and cannot write them.
        for reg in (QReg.CTRL, QReg.OWNER, QReg.RING_LO, QReg.SIZE):
            assert await b.read32(abi.queue_reg(ra.queue, reg)) == 0
        for value in (QueueCtrl.RELEASE, QueueCtrl.DISABLE, QueueCtrl.LOAD_WINDOWS):
            assert b.write(theirs, value) == -errno.EPERM
        assert b.write(abi.queue_reg(ra.queue, QReg.RING_LO), 0) == -errno.EPERM
        assert b.write(Reg.DOORBELL, ra.queue) == -errno.EPERM
        # Nor its own windows, nor the device's status (a write of 0 resets the device).
        assert b.write(abi.queue_reg(rb.queue, QReg.WINDOWS_LO), 0) == -errno.EPERM
        assert b.write(abi.queue_reg(rb.queue, QReg.CTRL), QueueCtrl.LOAD_WINDOWS) == -errno.EPERM
        assert b.write(Reg.STATUS, 0) == -errno.EPERM
        assert b.write(Reg.SCRATCH, 1) == -errno.EPERM
        # A's queue still serves.
        assert await a.read32(theirs) & QueueState.ENABLED
        assert await ra.call(Op.NOP) == (0, 0)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("target", ["a-pages", "window-table", "between", "sg-entry"])
async def test_scatter_lists_and_buffers_outside_the_process_are_refused(daemon, target):
    a, b = DaemonClient(daemon[0]), DaemonClient(daemon[0])
    try:
        ra, rb = await ring_of(a), await ring_of(b)
        secret = ra.put(b"A-SECRET" * 32)
        mine, out = rb.put(b"x" * 64), rb.buffer(512)
        addr = {"a-pages": secret, "window-table": 0x10000000,
                "between": b.gpas[-1] + gd.CHUNK_SIZE + 64, "sg-entry": None}[target]
        if addr is None:
            status = await rb.call(Op.ECHO, flags=CmdFlags.PAYLOAD_SG,
                                   payload_addr=rb.put(SG.pack(mine, 64, 0) + SG.pack(secret, 64, 0)),
                                   payload_len=2, reply_addr=out, reply_len=512)
        else:
            status = await rb.call(Op.ECHO, payload_addr=addr, payload_len=64, reply_addr=out,
                                   reply_len=512)
        assert status == (-errno.EFAULT, 0)
        # Writing into A's memory is refused the same way.
        assert await rb.call(Op.ECHO, payload_addr=mine, payload_len=64, reply_addr=secret,
                             reply_len=64) == (-errno.EFAULT, 0)
        assert ra.read(secret, 8) == b"A-SECRET"
        assert b"A-SECRET" not in rb.read(out, 512)
        assert await rb.call(Op.NOP) == (0, 0)
    finally:
        a.close()
        b.close()


async def test_a_departed_process_releases_its_queues(daemon):
    a = DaemonClient(daemon[0])
    ra = await ring_of(a)
    queue = ra.queue
    a.close()
    b = DaemonClient(daemon[0])
    try:
        deadline = time.monotonic() + 5
        while True:
            got = b.alloc_queue()
            if got == queue:
                break
            assert time.monotonic() < deadline, "the departed process's queue was not released"
            time.sleep(0.05)
        assert not await b.read32(abi.queue_reg(queue, QReg.CTRL)) & QueueState.WINDOWED
    finally:
        b.close()


def test_bad_requests_get_errors_and_the_daemon_serves_on(daemon):
    path, _log = daemon
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(path)
    for bad in (b"", b"\0" * 3, b"\xff" * gd.REQUEST_SIZE, b"\0" * (gd.REQUEST_SIZE + 8),
                gd.Request.build(dict(op=gd.DaemonOp.READ32, flags=0, arg0=0, reserved=0, arg1=0)),
                gd.Request.build(dict(op=gd.DaemonOp.HELLO, flags=0, arg0=99, reserved=0, arg1=0))):
        if not bad:
            continue
        s.send(bad)
        reply = gd.Reply.parse(s.recv(gd.MAX_REPLY)[:gd.REPLY_SIZE])
        assert reply.status in (-errno.EINVAL, -errno.EPROTO), bad
    s.close()
    c = DaemonClient(path)
    try:
        assert c.request(gd.DaemonOp.HELLO, gd.DAEMON_PROTOCOL, 1 << 20)[0].status == -errno.EALREADY
        assert c.request(gd.DaemonOp.IRQ_FD, 7)[0].status == -errno.EPERM   # not its queue
    finally:
        c.close()


def test_a_process_may_hold_only_so_many_queues(daemon):
    c = DaemonClient(daemon[0])
    try:
        got = [c.alloc_queue() for _ in range(17)]
        assert abi.NO_QUEUE not in got[:16] and got[16] == abi.NO_QUEUE
    finally:
        c.close()


# -- OpenCL programs of ordinary users ---------------------------------------------------------


@pytest.fixture(scope="module")
def world_readable_shim(shim):
    """The ICD where an unprivileged user can load it, and a vadd built against it."""
    lib, _ = shim
    d = tempfile.mkdtemp(prefix="ava-shim-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        target = os.path.join(d, "libava_icd.so")
        shutil.copy(lib, target)
        with open(os.path.join(d, "ava.icd"), "w") as f:
            f.write(target + "\n")
        exe = os.path.join(d, "vadd")
        subprocess.run(["gcc", "-o", exe, os.path.join(ROOT, "tests", "samples", "vadd.c"),
                        "-lOpenCL"], check=True)
        for name in os.listdir(d):
            os.chmod(os.path.join(d, name), 0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cl_daemon():
    with daemon_over_loopback("opencl") as (_d, path, log):
        yield path, log


def as_user(shim_dir: str, daemon_path: str, argv: list[str], *, gid: int, timeout: float = 120,
            env: dict | None = None):
    environ = {"PATH": "/usr/bin:/bin", "OCL_ICD_VENDORS": shim_dir,
               "AVA_VDEV_DAEMON": daemon_path, "HOME": "/tmp", **(env or {})}
    return subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=timeout,
                          user=NOBODY, group=gid, extra_groups=[], cwd="/tmp")


def test_an_ordinary_user_in_the_group_runs_opencl(world_readable_shim, cl_daemon):
    exe = os.path.join(world_readable_shim, "vadd")
    res = as_user(world_readable_shim, cl_daemon[0], [exe], gid=USERS_GID)
    assert res.returncode == 0, res.stderr + text(cl_daemon[1])
    assert "1048576 elements correct" in res.stdout
    clinfo = as_user(world_readable_shim, cl_daemon[0], ["clinfo", "--raw"], gid=USERS_GID)
    assert clinfo.returncode == 0 and "CL_DEVICE_NAME" in clinfo.stdout, \
        clinfo.stderr + text(cl_daemon[1]) + text(os.path.join(os.path.dirname(cl_daemon[1]),
                                                               "server.log"))


def test_a_user_outside_the_group_is_told_permission_denied(world_readable_shim, cl_daemon):
    exe = os.path.join(world_readable_shim, "vadd")
    res = as_user(world_readable_shim, cl_daemon[0], [exe], gid=NOGROUP_GID,
                  env={"AVA_VDEV_DEBUG": "1"})
    assert res.returncode != 0 and res.returncode > 0, "no crash, a failure"
    assert "permission denied" in res.stderr and "group 'users'" in res.stderr, res.stderr


def test_with_no_daemon_an_ordinary_user_is_told_so(world_readable_shim):
    """No daemon socket (AVA_VDEV_DAEMON unset, none at the default path on this host):
    only root may take the direct path, and anyone else is told what to start."""
    assert not os.path.exists(gd.DEFAULT_SOCKET), "a daemon runs on this host"
    exe = os.path.join(world_readable_shim, "vadd")
    res = subprocess.run([exe], env={"PATH": "/usr/bin:/bin", "HOME": "/tmp",
                                     "OCL_ICD_VENDORS": world_readable_shim},
                         capture_output=True, text=True, timeout=60, user=NOBODY,
                         group=USERS_GID, extra_groups=[], cwd="/tmp")
    assert res.returncode > 0
    assert "no ava-vdev daemon" in res.stderr and "only root" in res.stderr, res.stderr
    assert "python3 -m guest_driver install" in res.stderr


def test_killing_one_process_leaves_the_other_running(world_readable_shim, cl_daemon):
    path, log = cl_daemon
    exe = os.path.join(world_readable_shim, "vadd")
    environ = {"PATH": "/usr/bin:/bin", "OCL_ICD_VENDORS": world_readable_shim,
               "AVA_VDEV_DAEMON": path, "HOME": "/tmp"}
    victim = subprocess.Popen(["clinfo"], env=environ, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, user=NOBODY, group=USERS_GID,
                              extra_groups=[])
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    res = as_user(world_readable_shim, path, [exe], gid=USERS_GID)
    assert res.returncode == 0 and "elements correct" in res.stdout, res.stderr
    deadline = time.monotonic() + 10
    while f"pid {victim.pid} " not in text(log) or "disconnected" not in text(log):
        assert time.monotonic() < deadline, text(log)
        time.sleep(0.05)


# -- the unit install writes where the guest has systemd -----------------------------------


def test_the_daemon_unit_runs_the_daemon_for_the_group(tmp_path):
    import configparser
    import re

    from guest_driver import _install

    plain = _install.unit_text("render", "/usr/bin/python3", [])
    assert "--pin-module" not in plain
    text = _install.unit_text("render", "/usr/bin/python3",
                              ["--pin-module", str(_install.PIN_MODULE)])
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read_string(text)
    exec_start = unit["Service"]["ExecStart"]
    assert exec_start.startswith("/usr/bin/python3 -m guest_driver daemon ")
    assert f"--socket {gd.DEFAULT_SOCKET}" in exec_start and "--group render" in exec_start
    assert exec_start.endswith(f" --pin-module {_install.PIN_MODULE}")
    assert str(_install.PYDIR) in unit["Service"]["Environment"]
    assert os.path.dirname(gd.DEFAULT_SOCKET) == "/run/" + unit["Service"]["RuntimeDirectory"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("systemd-analyze is not installed: the unit was checked structurally only")
        return
    copy = tmp_path / _install.UNIT_NAME
    copy.write_text(re.sub(r"^ExecStart=\S+", "ExecStart=/bin/true", text, flags=re.MULTILINE))
    proc = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=120, check=False)
    about_ours = [line for line in (proc.stdout + proc.stderr).splitlines()
                  if _install.UNIT_NAME in line]
    assert proc.returncode == 0 and not about_ours, proc.stdout + proc.stderr


def test_daemon_help_tells_the_truth():
    res = subprocess.run([sys.executable, "-m", "guest_driver", "daemon", "--help"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    for flag in ("--socket", "--group", "--max-memory", "--max-queues", "--quarantine",
                 "--loopback"):
        assert flag in res.stdout
    assert gd.DEFAULT_SOCKET in res.stdout


def test_the_daemon_refuses_a_group_that_does_not_exist(tmp_path):
    res = subprocess.run([sys.executable, "-m", "guest_driver", "daemon", "--loopback",
                          str(tmp_path / "no-server.sock"), "--socket", str(tmp_path / "d.sock"),
                          "--group", "no-such-group-ava"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 1
    assert "group 'no-such-group-ava' does not exist" in res.stderr and "groupadd" in res.stderr
    assert not (tmp_path / "d.sock").exists()


@pytest.fixture(scope="module")
def probe_dir():
    """The isolation probe where an unprivileged user can run it: the system's Python
    (this one may live in root's home) with this checkout's protocols/ and construct
    beside it.  Yields (python, environment)."""
    import construct
    d = tempfile.mkdtemp(prefix="ava-probe-", dir="/tmp")
    try:
        os.makedirs(os.path.join(d, "tests", "samples"))
        shutil.copy(os.path.join(ROOT, "tests", "samples", "isolation_probe.py"),
                    os.path.join(d, "tests", "samples"))
        for src, name in ((os.path.join(ROOT, "protocols"), "protocols"),
                          (os.path.dirname(construct.__file__), "construct")):
            shutil.copytree(src, os.path.join(d, name),
                            ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run(["chmod", "-R", "a+rX,a+w", d], check=True)
        yield "/usr/bin/python3", {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONPATH": d,
                                   "PYTHONDONTWRITEBYTECODE": "1"}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_two_ordinary_processes_cannot_reach_each_other(daemon, probe_dir):
    """The probe a hostile user would run (tests/samples/isolation_probe.py), as two
    unprivileged processes: every attempt is refused and the victim keeps its secret."""
    path, log = daemon
    python, env = probe_dir
    env = dict(env, AVA_VDEV_DAEMON=path)
    probe = os.path.join(env["PYTHONPATH"], "tests", "samples", "isolation_probe.py")
    state = os.path.join(env["PYTHONPATH"], f"victim-{os.getpid()}.json")
    victim = subprocess.Popen([python, probe, "victim", state], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              user=NOBODY, group=USERS_GID, extra_groups=[])
    try:
        assert victim.stdout.readline().strip() == "victim ready", victim.stderr.read()
        res = subprocess.run([python, probe, "attacker", state], env=env, capture_output=True,
                             text=True, timeout=120, user=NOBODY, group=USERS_GID,
                             extra_groups=[])
        assert res.returncode == 0 and "attacker done" in res.stdout, \
            res.stdout + res.stderr + text(log)
        assert "BROKE" not in res.stdout and res.stdout.count("refused:") == 11
        assert "no pin module" in res.stdout        # over loopback: copies, no PIN
        time.sleep(0.5)
        assert victim.poll() is None, "the victim died: " + victim.stderr.read()
    finally:
        victim.kill()
        victim.wait()
        victim.stdout.close()
        victim.stderr.close()


def test_a_process_that_stops_reading_cannot_stall_the_others(daemon):
    """Requests sent and replies never read: the daemon drops that connection when a
    reply no longer fits, and answers everyone else meanwhile."""
    path, log = daemon
    greedy = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    greedy.connect(path)
    greedy.setblocking(False)
    hello = gd.Request.build(dict(op=gd.DaemonOp.HELLO, flags=0, arg0=gd.DAEMON_PROTOCOL,
                                  reserved=0, arg1=0))
    read = gd.Request.build(dict(op=gd.DaemonOp.READ32, flags=0, arg0=Reg.MAGIC, reserved=0,
                                 arg1=0))
    greedy.send(hello)
    sent = 0
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            try:
                greedy.send(read)
                sent += 1
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break               # dropped: the daemon closed it
            if sent % 200 == 0:
                other = DaemonClient(path)
                try:
                    assert other.request(gd.DaemonOp.READ32, Reg.MAGIC)[0].value == abi.MAGIC
                finally:
                    other.close()
        deadline = time.monotonic() + 10
        while "stopped reading its replies" not in text(log):
            assert time.monotonic() < deadline, text(log)[-2000:]
            time.sleep(0.05)
    finally:
        greedy.close()
    other = DaemonClient(path)
    other.close()


def test_one_user_cannot_take_every_queue_or_all_the_memory(probe_dir):
    """Per-user bounds over all of a user's processes: the others keep their share of
    the device's 64 queues and of the hugepages (root is not bounded)."""
    python, env = probe_dir
    script = (
        "import sys; sys.path.insert(0, 'tests/samples')\n"
        "from isolation_probe import Process, Reg, abi\n"
        "a, b = Process(sys.argv[1]), Process(sys.argv[1])    # a queue and 8 MiB each\n"
        "more = [a.read(Reg.QUEUE_ALLOC), b.read(Reg.QUEUE_ALLOC)]\n"
        "print('queues', 2 + sum(q != abi.NO_QUEUE for q in more))\n"
        "try:\n"
        "    Process(sys.argv[1])\n"
        "except AssertionError:\n"
        "    print('memory refused')\n")
    with daemon_over_loopback("test", "users", "--user-queues", "3", "--user-memory", "20"
                              ) as (_, path, log):
        res = subprocess.run([python, "-c", script, path], env=env, capture_output=True,
                             text=True, timeout=60, cwd=env["PYTHONPATH"], user=NOBODY,
                             group=USERS_GID, extra_groups=[])
        assert res.returncode == 0, res.stderr + text(log)
        assert "queues 3" in res.stdout and "memory refused" in res.stdout, res.stdout
        assert "at most 3 a user" in text(log) and "at most 20 MiB a user" in text(log)
        # Root is not bounded.
        a, b = DaemonClient(path), DaemonClient(path)
        try:
            assert abi.NO_QUEUE not in [a.alloc_queue() for _ in range(4)]
        finally:
            a.close()
            b.close()


class FakeDevice:
    """Registers only: enough for the daemon's start-up rules."""

    name = "a fake device"

    def __init__(self, claimed: dict[int, int]):
        self.regs = {Reg.NUM_QUEUES: abi.NUM_QUEUES, Reg.STATUS: 0,
                     Reg.DEVICE_FEATURES_LO: int(abi.DEVICE_FEATURES)}
        for queue, owner in claimed.items():
            self.regs[abi.queue_reg(queue, QReg.CTRL)] = QueueState.CLAIMED | QueueState.ENABLED
            self.regs[abi.queue_reg(queue, QReg.OWNER)] = owner
        self.writes: list[tuple[int, int]] = []

    def read32(self, off):
        return self.regs.get(off, 0)

    def write32(self, off, value, *, posted=False):
        self.writes.append((off, value))
        self.regs[off] = value

    def table_memory(self):
        return memoryview(bytearray(2 << 20)), 0x10000000


def test_a_daemon_started_again_releases_the_queues_of_its_predecessor():
    """In a VM the device outlives a daemon that died: its processes' queues (tags from
    OWNER_BASE up) are released, a root process's (a pid) is not."""
    from guest_driver._daemon import OWNER_BASE, Policy
    dev = FakeDevice({3: OWNER_BASE + 7, 5: 1234, 9: OWNER_BASE})
    Policy(dev).start()
    ctrl = {abi.queue_reg(q, QReg.CTRL) for q in range(abi.NUM_QUEUES)}
    released = {off for off, value in dev.writes if off in ctrl and value == QueueCtrl.RELEASE}
    assert released == {abi.queue_reg(3, QReg.CTRL), abi.queue_reg(9, QReg.CTRL)}
    assert (Reg.STATUS, DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER_OK) in dev.writes


class FakeMemory:
    """DMA memory as the daemon sees it: a memfd and made-up chunk addresses."""

    def __init__(self, size: int):
        self.size = size
        self.fd = os.memfd_create("lend-test", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.chunk_gpas = [0x40000000 + i * gd.CHUNK_SIZE for i in range(size // gd.CHUNK_SIZE)]

    def close(self):
        os.close(self.fd)


class LendingDevice(FakeDevice):
    """A fake device in a VM (``guest_ram``): root's processes may lend their pages.
    It has ``capacity`` bytes of DMA memory."""

    name = "a fake device in a VM"

    def __init__(self, guest_ram: bool, capacity: int = 1 << 30):
        super().__init__({})
        self.guest_ram = guest_ram
        self.capacity = capacity

    def alloc(self, size):
        if size > self.capacity:
            raise OSError(errno.ENOMEM, "no free hugepages")
        self.capacity -= size
        mem = FakeMemory(size)
        close = mem.close

        def give_back():
            close()
            self.capacity += size
        mem.close = give_back
        return mem

    def irq_fd(self, queue):
        return os.eventfd(0)

    def queue_released(self, queue):
        pass


def io_uring() -> int:
    """A fresh io_uring of this process (what the runtime pins pages with)."""
    import ctypes
    fd = ctypes.CDLL(None, use_errno=True).syscall(425, 1, ctypes.create_string_buffer(120))
    assert fd >= 0, os.strerror(ctypes.get_errno())
    return fd


def io_urings() -> int:
    """How many io_uring fds this process holds (the daemon runs in it here)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[io_uring]"
        except OSError:
            pass
    return n


class RawClient(Connection):
    """A connection whose HELLO reply is kept (``hello``)."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.hello, _, fds = self.request(gd.DaemonOp.HELLO, gd.DAEMON_PROTOCOL, 8 << 20)
        for fd in fds:
            os.close(fd)


@pytest.fixture
def lending_daemon(tmp_path, request):
    """A daemon (in this process, on a thread) over a fake device, and its socket."""
    import threading

    from guest_driver._daemon import Daemon
    guest_ram, capacity = request.param if isinstance(request.param, tuple) else \
        (request.param, 1 << 30)
    d = Daemon(LendingDevice(guest_ram, capacity), str(tmp_path / "d.sock"), group=None,
               quarantine_s=0.3)
    d.listen()
    t = threading.Thread(target=d.serve_forever, daemon=True)
    t.start()
    yield d
    d.stop()
    t.join(10)
    d.close()


@pytest.mark.parametrize("lending_daemon", [True], indirect=True)
def test_the_daemon_keeps_a_lent_pin_until_it_is_returned_or_the_process_is_gone(
        lending_daemon):
    """Zero-copy in a VM: a root process's transfer lends its own pages, pinned by an
    io_uring.  The daemon takes a dup of it, so the pages stay pinned should the
    process die while the host still writes to them, and lets go when the pin comes
    back, or a quarantine after the process is gone.  It takes nothing but an io_uring
    of the process itself."""
    before = io_urings()
    c = RawClient(lending_daemon.path)
    ring, pipe_r, pipe_w = io_uring(), *os.pipe()
    try:
        assert c.hello.status == 0 and c.hello.value & gd.HelloFeatures.LEND
        assert c.request(gd.DaemonOp.LEND, ring, 7)[0].status == 0
        assert io_urings() == before + 2               # ours, and the daemon's dup
        assert c.request(gd.DaemonOp.LEND, ring, 7)[0].status == -errno.EPERM   # token in use
        for bad in (pipe_r, 9999):                     # not an io_uring; no such fd
            assert c.request(gd.DaemonOp.LEND, bad, 8)[0].status == -errno.EPERM
        c.request(gd.DaemonOp.RETURN, 0, 7, flags=gd.DaemonFlags.POSTED)
        c.read(Reg.MAGIC)                              # in order: the RETURN is done
        assert io_urings() == before + 1
        assert c.request(gd.DaemonOp.LEND, ring, 9)[0].status == 0
        c.sock.close()                                 # gone, with a pin still lent
        time.sleep(0.1)
        assert io_urings() == before + 2, "let go of before the quarantine ended"
        assert eventually(lambda: io_urings() == before + 1), "kept after the quarantine"
    finally:
        for fd in (ring, pipe_r, pipe_w):
            os.close(fd)
        c.sock.close()


@pytest.mark.parametrize("lending_daemon", [False], indirect=True)
def test_no_lending_where_the_process_memory_is_not_guest_ram(lending_daemon):
    """Over loopback an application's memory is not what the server maps: HELLO does not
    offer lending, and a LEND is refused."""
    c = RawClient(lending_daemon.path)
    ring = io_uring()
    try:
        assert c.hello.status == 0 and not c.hello.value & gd.HelloFeatures.LEND
        assert c.request(gd.DaemonOp.LEND, ring, 1)[0].status == -errno.EPERM
    finally:
        os.close(ring)
        c.sock.close()


@pytest.mark.parametrize("lending_daemon", [(True, 8 << 20)], indirect=True)
def test_a_process_started_right_after_another_gets_the_memory_its_quarantine_frees(
        lending_daemon):
    """Short programs one after another: the memory of one that just ended stays in
    quarantine for a moment, and the next one's HELLO waits for it instead of failing
    with "out of DMA memory".  Memory that a live process holds is refused at once."""
    first = RawClient(lending_daemon.path)
    assert first.hello.status == 0
    first.sock.close()                              # its 8 MiB: quarantined for 0.3 s
    started = time.monotonic()
    second = RawClient(lending_daemon.path)
    try:
        assert second.hello.status == 0, second.hello
        assert time.monotonic() - started >= 0.2, "answered before the quarantine ended"
        third = RawClient(lending_daemon.path)      # the second one is alive: no wait
        try:
            assert third.hello.status == -errno.ENOMEM
        finally:
            third.sock.close()
    finally:
        second.sock.close()


def fds_named(prefix: str) -> int:
    """How many fds of this process (the daemon runs in it here) read as ``prefix``."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(prefix)
        except OSError:
            pass
    return n


def eventually(holds, timeout: float = 10.0) -> bool:
    """Whether ``holds()`` comes true within ``timeout`` (the daemon's loop acts on its
    own time: quarantines, settled fences)."""
    deadline = time.monotonic() + timeout
    while not holds():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def pinning_daemon(lending_daemon, monkeypatch):
    """A daemon that takes pins of the ava_vdev_pin module, with the module faked (the
    host has no guest kernel module): a memfd named ``fake-pin`` is a pin of 3 pages,
    two of them contiguous (2 runs); one named ``scattered-pin`` has more runs than a
    PIN may."""
    from guest_driver import _pin

    def runs_of(fd, capacity):
        if "scattered" in os.readlink(f"/proc/self/fd/{fd}"):
            return None                 # the kernel counted more runs than fit
        return [(0x200010, 8176), (0x500000, 4096)]

    monkeypatch.setattr(_pin, "is_pin", lambda fd: os.readlink(
        f"/proc/self/fd/{fd}").startswith(("/memfd:fake-pin", "/memfd:scattered-pin")))
    monkeypatch.setattr(_pin, "runs_of", runs_of)
    lending_daemon.pin_ready = True
    return lending_daemon


@pytest.mark.parametrize("lending_daemon", [False], indirect=True)
def test_an_ordinary_users_pin_opens_windows_until_it_is_returned(pinning_daemon):
    """Zero-copy for ordinary users: a PIN carries the module's fd; the daemon answers its
    scatter list, adds exactly those runs to the process's windows and keeps the fd (the
    pages stay pinned) until RETURN, which removes the windows first; a process that dies
    with a pin lent leaves it too.  A pin is let go only once the host says no command
    from before its windows went (RETURN, or the release of a departed process's
    queues) still touches the pages (SETTLING), however long that takes.  What is
    no pin, carries no fd, reuses a token or is too scattered is refused, and the daemon
    keeps no fd of it."""
    d = pinning_daemon
    c = RawClient(d.path)
    run = gd.PinRun.parse
    pin, other = os.memfd_create("fake-pin"), os.memfd_create("not-a-pin")
    scattered = os.memfd_create("scattered-pin")
    try:
        assert c.hello.status == 0 and c.hello.value & gd.HelloFeatures.PIN
        client = next(iter(d.clients.values()))
        queue = c.read(Reg.QUEUE_ALLOC)
        assert queue in client.queues
        reply, extra, _ = c.request(gd.DaemonOp.PIN, 0, 5, fds_in=[pin])
        assert reply.status == 0 and reply.count == 2
        runs = [(r.addr, r.length) for r in (run(extra[i * 16:(i + 1) * 16]) for i in range(2))]
        assert runs == [(0x200010, 8176), (0x500000, 4096)]
        assert set(runs) <= set(client.windows())
        assert fds_named("/memfd:fake-pin") == 2        # ours, and the daemon's
        assert c.request(gd.DaemonOp.PIN, 0, 5, fds_in=[pin])[0].status == -errno.EPERM
        for fds in ([other], [], [scattered]):
            assert c.request(gd.DaemonOp.PIN, 0, 6, fds_in=fds)[0].status == -errno.EPERM
        assert fds_named("/memfd:not-a-pin") == 1 and fds_named("/memfd:scattered-pin") == 1
        assert fds_named("/memfd:fake-pin") == 2
        # The host still runs a command issued before the RETURN (SETTLING): the windows
        # go at once, the pin stays until the host says they are settled.
        settling = {"now": True}
        read32 = d.device.read32
        ctrl = abi.queue_reg(queue, QReg.CTRL)
        d.device.read32 = lambda off: read32(off) | (
            QueueState.SETTLING if off == ctrl and settling["now"] else 0)
        c.request(gd.DaemonOp.RETURN, 0, 5, flags=gd.DaemonFlags.POSTED)
        c.read(Reg.MAGIC)                               # in order: the RETURN is done
        assert not set(runs) & set(client.windows())
        time.sleep(0.2)
        assert fds_named("/memfd:fake-pin") == 2 and client.returning == 1
        settling["now"] = False
        assert eventually(lambda: fds_named("/memfd:fake-pin") == 1 and client.returning == 0)
        assert c.request(gd.DaemonOp.PIN, 0, 7, fds_in=[pin])[0].status == 0
        # Gone, with a pin still lent: it goes once the host says the release of its
        # queues is settled, however long that takes (past the quarantine here).
        settling["now"] = True
        c.sock.close()
        time.sleep(d.quarantine_s + 0.3)
        assert fds_named("/memfd:fake-pin") == 2, "let go of before the host was done"
        settling["now"] = False
        assert eventually(lambda: fds_named("/memfd:fake-pin") == 1), "kept after the host was done"
    finally:
        for fd in (pin, other, scattered):
            os.close(fd)
        c.sock.close()


@pytest.mark.parametrize("lending_daemon", [False], indirect=True)
def test_no_pins_where_the_daemon_has_no_module(lending_daemon):
    """Without the module (or over loopback) HELLO does not offer PIN, and a PIN is
    refused without keeping what it carried."""
    c = RawClient(lending_daemon.path)
    memfd = os.memfd_create("fake-pin")
    try:
        assert c.hello.status == 0 and not c.hello.value & gd.HelloFeatures.PIN
        assert c.request(gd.DaemonOp.PIN, 0, 1, fds_in=[memfd])[0].status == -errno.EPERM
        assert fds_named("/memfd:fake-pin") == 1
    finally:
        os.close(memfd)
        c.sock.close()


@pytest.mark.parametrize("lending_daemon", [(False, 64 << 20)], indirect=True)
def test_a_departed_processs_memory_waits_for_the_host(lending_daemon):
    """A departed process's DMA memory is freed once its quarantine is over and the host
    says the release of its queues is settled (a transfer it left running, behind a
    user event, may still write there), not before."""
    d = lending_daemon
    c = RawClient(d.path)
    queue = c.read(Reg.QUEUE_ALLOC)
    full = d.device.capacity
    ctrl = abi.queue_reg(queue, QReg.CTRL)
    settling = {"now": True}
    read32 = d.device.read32
    d.device.read32 = lambda off: read32(off) | (
        QueueState.SETTLING if off == ctrl and settling["now"] else 0)
    c.sock.close()
    time.sleep(d.quarantine_s + 0.3)
    assert d.device.capacity == full, "freed before the host was done"
    settling["now"] = False
    assert eventually(lambda: d.device.capacity == full + c.hello.size)


def test_the_daemon_rearms_intx_through_the_config_space(tmp_path):
    """uio_pci_generic's handler sets the command register's INTx-disable bit and has no
    irqcontrol (writing /dev/uioN is ENOSYS): ava-vdevd clears the bit through the
    config space after each interrupt, touching no other bit (the lab guest's test
    counts the interrupts: test_vm_opencl)."""
    from guest_driver._daemon_devices import UioDevice
    from protocols.pci import ConfigReg
    at = ConfigReg.COMMAND
    config = tmp_path / "config"
    config.write_bytes(bytes(at) + (0x0407).to_bytes(2, "little") + b"\x10\x00"
                       + bytes(58))
    fd = os.open(config, os.O_RDWR)
    try:
        UioDevice._enable_intx(fd)
        assert config.read_bytes()[at:at + 4] == b"\x07\x00\x10\x00"
        before = os.stat(config).st_mtime_ns
        UioDevice._enable_intx(fd)          # already enabled: nothing written
        assert os.stat(config).st_mtime_ns == before
        assert config.read_bytes()[at:at + 2] == b"\x07\x00"
    finally:
        os.close(fd)
