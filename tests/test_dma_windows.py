"""Per-queue DMA windows (the software IOMMU a guest daemon sets): every address a
windowed queue's commands name must lie inside its windows, in the server's own
ring engine and in an executor process alike."""

import errno
import os
import struct

import pytest
import trio
from ringutil import RAM_IOVA, Allocator, PyRing, connect_guest

from protocols import device_abi as abi
from protocols.device_abi import CmdFlags, QReg, QueueCtrl, QueueState, Reg
from protocols.device_abi import SelftestOp as Op
from vdev._server import Server
from vdev.client import GuestMemory

SG = struct.Struct("<QII")
WINDOW = struct.Struct("<QQ")
HEADER = struct.Struct("<II")
MIB = 1 << 20


@pytest.fixture(params=["in-process", "executor"])
async def guest(request, nursery, sock_dir):
    srv = Server(os.path.join(sock_dir, "win.sock"), stall_timeout=0.5,
                 in_process=request.param == "in-process")
    srv.busy_wait = 0.2
    await nursery.start(srv.serve)
    mem = GuestMemory(32 << 20)
    cli = await connect_guest(srv.path, mem)
    yield cli, mem, Allocator(mem.size)
    await cli.aclose()
    mem.close()
    nursery.cancel_scope.cancel()


class Region:
    """A stretch of guest RAM given to one queue (its ring, staging and buffers)."""

    def __init__(self, mem: GuestMemory, alloc: Allocator, size: int):
        self.mem = mem
        self.offset = alloc.alloc(size)
        self.alloc = Allocator(self.offset + size, self.offset)
        self.gpa, self.size = RAM_IOVA + self.offset, size


async def load_windows(ring: PyRing, table_gpa: int) -> int:
    """Point the queue at a table, load it, and read a register back (the write is
    posted; the read returns once it took effect)."""
    await ring.qwrite(QReg.WINDOWS_LO, table_gpa & 0xFFFFFFFF)
    await ring.qwrite(QReg.WINDOWS_HI, table_gpa >> 32)
    await ring.qwrite(QReg.CTRL, QueueCtrl.LOAD_WINDOWS)
    return await ring.qread(QReg.ERROR)


def table(ring_or_alloc, windows: list[tuple[int, int]], *, count: int | None = None) -> int:
    data = HEADER.pack(len(windows) if count is None else count, 0) + b"".join(
        WINDOW.pack(a, n) for a, n in windows)
    return ring_or_alloc.put(data)


async def windowed_ring(cli, mem, alloc, size: int = MIB) -> tuple[PyRing, Region]:
    """A queue confined to a fresh region of its own (the ring sits at its start)."""
    region = Region(mem, alloc, size)
    ring = await PyRing.create(cli, mem, region.alloc, enable=False)
    # The table lives outside the region, as the daemon keeps it in memory of its own.
    assert await load_windows(ring, table(PyRing(cli, mem, alloc, 0, 0, 0),
                                          [(region.gpa, size)])) == 0
    assert await ring.qread(QReg.CTRL) & QueueState.WINDOWED
    await ring.qwrite(QReg.CTRL, QueueCtrl.ENABLE)
    assert await ring.qread(QReg.CTRL) & QueueState.ENABLED
    return ring, region


async def test_commands_inside_the_windows_run(guest):
    ring, _ = await windowed_ring(*guest)
    data = os.urandom(3000)
    src, dst = ring.put(data), ring.buffer(4096)
    assert await ring.call(Op.ECHO, payload_addr=src, payload_len=len(data), reply_addr=dst,
                           reply_len=4096) == (0, len(data))
    assert ring.read(dst, len(data)) == data


@pytest.mark.parametrize("where", ["payload", "reply", "sg-table", "sg-entry", "straddles"])
async def test_addresses_outside_the_windows_are_refused(guest, where):
    cli, mem, alloc = guest
    victim = PyRing(cli, mem, alloc, 0, 0, 0)
    secret = victim.put(b"A-SECRET" * 64)           # another process's memory
    ring, region = await windowed_ring(cli, mem, alloc)
    ok_in, ok_out = ring.put(b"x" * 64), ring.buffer(512)
    edge = region.gpa + region.size - 16            # 16 bytes inside, 16 past the end
    kw = {
        "payload": dict(payload_addr=secret, payload_len=64, reply_addr=ok_out, reply_len=512),
        "reply": dict(payload_addr=ok_in, payload_len=64, reply_addr=secret, reply_len=64),
        "sg-table": dict(flags=CmdFlags.PAYLOAD_SG, payload_addr=victim.put(SG.pack(ok_in, 64, 0)),
                         payload_len=1, reply_addr=ok_out, reply_len=512),
        "sg-entry": dict(flags=CmdFlags.PAYLOAD_SG,
                         payload_addr=ring.put(SG.pack(ok_in, 64, 0) + SG.pack(secret, 64, 0)),
                         payload_len=2, reply_addr=ok_out, reply_len=512),
        "straddles": dict(payload_addr=edge, payload_len=32, reply_addr=ok_out, reply_len=512),
    }[where]
    assert await ring.call(Op.ECHO, **kw) == (-errno.EFAULT, 0)
    assert b"A-SECRET" not in ring.read(ok_out, 512)
    assert victim.read(secret, 8) == b"A-SECRET"
    assert await ring.call(Op.NOP) == (0, 0)        # the queue keeps serving


async def test_a_window_over_all_memory_reaches_anything_mapped(guest):
    """What the guest daemon loads for a root process in a VM (zero-copy lends pages
    anywhere in guest RAM): one window over the whole 64-bit space.  Anything mapped is
    reached; what is not mapped is still refused."""
    from vdev._windows import describe, normalize
    cli, mem, alloc = guest
    other = PyRing(cli, mem, alloc, 0, 0, 0)
    elsewhere = other.put(b"ANYWHERE" * 8)
    ring = await PyRing.create(cli, mem, Region(mem, alloc, MIB).alloc, enable=False)
    assert await load_windows(ring, table(other, [(0, (1 << 64) - 1)])) == 0
    await ring.qwrite(QReg.CTRL, QueueCtrl.ENABLE)
    assert await ring.qread(QReg.CTRL) & QueueState.ENABLED
    out = ring.buffer(512)
    assert await ring.call(Op.ECHO, payload_addr=elsewhere, payload_len=64, reply_addr=out,
                           reply_len=512) == (0, 64)
    assert ring.read(out, 8) == b"ANYWHERE"
    assert await ring.call(Op.ECHO, payload_addr=RAM_IOVA + mem.size + (1 << 30),
                           payload_len=64, reply_addr=out, reply_len=512) == (-errno.EFAULT, 0)
    assert describe(normalize([(0, (1 << 64) - 1)])) == "1 windows, all guest memory"


async def test_a_ring_outside_the_windows_is_not_enabled(guest):
    cli, mem, alloc = guest
    region = Region(mem, alloc, MIB)
    ring = await PyRing.create(cli, mem, alloc, enable=False)    # not in the region
    assert await load_windows(ring, table(ring, [(region.gpa, region.size)])) == 0
    await ring.qwrite(QReg.CTRL, QueueCtrl.ENABLE)
    state = await ring.qread(QReg.CTRL)
    assert not state & QueueState.ENABLED and state & QueueState.FAILED
    assert await ring.qread(QReg.ERROR) == errno.EFAULT


async def test_new_windows_are_in_force_when_the_load_is_answered(guest):
    cli, mem, alloc = guest
    ring, _region = await windowed_ring(cli, mem, alloc)
    buf = ring.put(b"y" * 64)
    out = ring.buffer(64)
    assert await ring.call(Op.ECHO, payload_addr=buf, payload_len=64, reply_addr=out,
                           reply_len=64) == (0, 64)
    # Shrink the windows to the ring alone (the daemon taking staging back).
    daemon = PyRing(cli, mem, alloc, 0, 0, 0)
    assert await load_windows(ring, table(daemon, [(ring.gpa, abi.ring_bytes(ring.slots))])) == 0
    assert await ring.call(Op.ECHO, payload_addr=buf, payload_len=64, reply_addr=out,
                           reply_len=64) == (-errno.EFAULT, 0)
    # Windows that leave out the ring itself fail the queue at once.
    assert await load_windows(ring, table(daemon, [(buf, 64)])) == errno.EFAULT
    state = await ring.qread(QReg.CTRL)
    assert state & QueueState.FAILED and not state & QueueState.ENABLED


@pytest.mark.parametrize("change", ["windows", "disable", "release"])
async def test_new_windows_settle_once_the_commands_before_them_end(guest, change):
    """New windows bind the next commands at once; one already running keeps what it was
    given.  So CTRL says SETTLING from the load until every command issued before it is
    over: a guest daemon lets the memory the windows left out go (an ordinary user's
    returned pin) only then.  The same after a disable or a release, which a hostile
    process may do first: the load on a queue no longer enabled is fenced all the same.
    A load with nothing running settles at once."""
    cli, mem, alloc = guest
    ring, _region = await windowed_ring(cli, mem, alloc)
    daemon = PyRing(cli, mem, alloc, 0, 0, 0)
    narrow = table(daemon, [(ring.gpa, abi.ring_bytes(ring.slots))])

    async def settled_within(seconds: float) -> bool:
        # A deadline, not a cancel scope: a register read cut off would leave its reply
        # to the next one.
        deadline = trio.current_time() + seconds
        while await ring.qread(QReg.CTRL) & QueueState.SETTLING:
            if trio.current_time() > deadline:
                return False
            await trio.sleep(0.005)
        return True

    assert await ring.call(Op.NOP) == (0, 0)               # served (an executor is up)
    index = await ring.submit(Op.SLEEP, args=(600_000, 0, 0))   # 0.6 s, on a worker
    await trio.sleep(0.1)
    if change == "windows":
        assert await load_windows(ring, narrow) == 0
        assert await ring.qread(QReg.CTRL) & QueueState.ENABLED
    else:
        await ring.qwrite(QReg.CTRL, QueueCtrl.DISABLE if change == "disable"
                          else QueueCtrl.RELEASE)
        if change == "disable":
            assert await load_windows(ring, narrow) == 0   # the daemon's, on a queue off
    assert await ring.qread(QReg.CTRL) & QueueState.SETTLING
    assert not await settled_within(0.2)                   # the sleep still runs
    if change == "windows":
        assert await ring.wait(index) == (0, 0)
    else:
        await trio.sleep(0.5)                              # not served: no completion
    assert await settled_within(2.0)
    if change != "release":
        assert await load_windows(ring, narrow) == 0       # nothing running now
        assert await settled_within(2.0)
    if change == "windows":
        assert await ring.call(Op.NOP) == (0, 0)


@pytest.mark.parametrize("bad", ["count", "unmapped", "wraps"])
async def test_a_bad_window_table_leaves_no_window(guest, bad):
    cli, mem, alloc = guest
    ring, region = await windowed_ring(cli, mem, alloc)
    daemon = PyRing(cli, mem, alloc, 0, 0, 0)
    addr, err = {
        "count": (table(daemon, [(region.gpa, region.size)], count=abi.MAX_WINDOWS + 1),
                  errno.EINVAL),
        "unmapped": (0x1000, errno.EFAULT),
        "wraps": (table(daemon, [(region.gpa, region.size), (1 << 63, 1 << 63 | 16)]),
                  errno.EINVAL),
    }[bad]
    assert await load_windows(ring, addr) == err
    assert await ring.qread(QReg.CTRL) & QueueState.WINDOWED
    # Fail closed: not even the ring is reachable any more.
    with trio.fail_after(2):
        while not await ring.qread(QReg.CTRL) & QueueState.FAILED:
            await trio.sleep(0.01)


async def test_two_queues_each_inside_their_own_windows(guest):
    cli, mem, alloc = guest
    a, _region_a = await windowed_ring(cli, mem, alloc)
    b, _region_b = await windowed_ring(cli, mem, alloc)
    mine_a, mine_b = a.put(b"alice" * 10), b.put(b"bob" * 10)
    out_a, out_b = a.buffer(64), b.buffer(64)
    assert await a.call(Op.ECHO, payload_addr=mine_a, payload_len=50, reply_addr=out_a,
                        reply_len=64) == (0, 50)
    assert await b.call(Op.ECHO, payload_addr=mine_a, payload_len=50, reply_addr=out_b,
                        reply_len=64) == (-errno.EFAULT, 0)
    assert await b.call(Op.ECHO, payload_addr=mine_b, payload_len=30, reply_addr=out_a,
                        reply_len=64) == (-errno.EFAULT, 0)
    assert a.read(out_a, 50) == b"alice" * 10


async def test_release_drops_the_windows(guest):
    cli, mem, alloc = guest
    ring, _ = await windowed_ring(cli, mem, alloc)
    await ring.qwrite(QReg.CTRL, QueueCtrl.RELEASE)
    # Unclaimed; SETTLING for a moment in an executor (until it says the release is).
    assert await ring.qread(QReg.CTRL) & ~QueueState.SETTLING == 0
    again = await cli.read32(Reg.QUEUE_ALLOC)
    assert again == ring.queue
    assert not await cli.read32(abi.queue_reg(again, QReg.CTRL)) & QueueState.WINDOWED


async def test_load_windows_on_an_unclaimed_queue_is_ignored(guest):
    cli, _mem, _alloc = guest
    q = abi.NUM_QUEUES - 1
    await cli.write32(abi.queue_reg(q, QReg.CTRL), QueueCtrl.LOAD_WINDOWS)
    assert await cli.read32(abi.queue_reg(q, QReg.CTRL)) == 0
    assert await cli.read32(abi.queue_reg(q, QReg.ERROR)) == errno.EPERM


async def test_the_device_offers_dma_windows(guest):
    cli, _, _ = guest
    assert await cli.read32(Reg.DEVICE_FEATURES_LO) & abi.Feature.DMA_WINDOWS
    assert await cli.read32(Reg.ABI_VERSION) == abi.ABI_VERSION


def test_a_windowed_view_reads_and_writes_inside_its_windows_only(tmp_path):
    """``WindowedDma``: a command's payload (``read``) and reply (``write``) are
    checked against the queue's windows as views (``translate``) are, before the map's
    own checks; inside a window they reach guest memory."""
    import fcntl

    from vdev._dma import DmaError, DmaMap
    from vdev._windows import queue_view
    fd = os.memfd_create("windows", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 2 * MIB)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    dma = DmaMap()
    try:
        dma.add(RAM_IOVA, 2 * MIB, 3, 0, os.dup(fd))
        view = queue_view(dma, 0, [(RAM_IOVA + MIB, RAM_IOVA + MIB + 4096)])
        inside = RAM_IOVA + MIB
        view.write(inside, 4096, b"inside")
        assert view.read(inside, 6) == b"inside" == dma.read(inside, 6)
        for iova, length in ((RAM_IOVA, 8), (inside + 4090, 8), (inside - 1, 2), (-1, 1)):
            with pytest.raises(DmaError) as exc:
                view.read(iova, length)
            assert exc.value.errno == errno.EFAULT
            with pytest.raises(DmaError):
                view.write(iova, length, b"x")
        assert dma.read(RAM_IOVA, 8) == bytes(8), "nothing written outside the window"
    finally:
        dma.clear()
        os.close(fd)
