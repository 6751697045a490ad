"""The ring engine through real guest memory: commands, scatter lists, blocking
commands, interrupts, idle/doorbell, and every class of bad ring input."""

import errno
import os
import struct

import pytest
import trio
from ringutil import RAM_IOVA, Allocator, PyRing, connect_guest

from protocols import device_abi as abi
from protocols.device_abi import CmdFlags, QReg, QueueCtrl, QueueState, Reg, RingStatus
from protocols.device_abi import SelftestOp as Op
from protocols.vfio_user import IrqIndex, IrqSetFlags
from vdev.client import GuestMemory

SG = struct.Struct("<QII")


@pytest.fixture
async def guest(server):
    mem = GuestMemory(64 << 20)
    cli = await connect_guest(server.path, mem)
    alloc = Allocator(mem.size)
    yield cli, mem, alloc
    await cli.aclose()
    mem.close()


@pytest.fixture
async def ring(guest):
    return await PyRing.create(*guest)


async def test_queue_alloc_claims_distinct_queues(guest):
    cli = guest[0]
    assert await cli.read32(Reg.NUM_QUEUES) == abi.NUM_QUEUES
    seen = {await cli.read32(Reg.QUEUE_ALLOC) for _ in range(abi.NUM_QUEUES)}
    assert seen == set(range(abi.NUM_QUEUES))
    assert await cli.read32(Reg.QUEUE_ALLOC) == abi.NO_QUEUE
    await cli.write32(abi.queue_reg(5, QReg.CTRL), QueueCtrl.RELEASE)
    assert await cli.read32(Reg.QUEUE_ALLOC) == 5


async def test_nop_echo_fill_fail(ring):
    assert await ring.qread(QReg.CTRL) == QueueState.CLAIMED | QueueState.ENABLED
    assert await ring.call(Op.NOP) == (0, 0)
    data = os.urandom(3000)
    src, dst = ring.put(data), ring.buffer(4096)
    assert await ring.call(Op.ECHO, payload_addr=src, payload_len=len(data), reply_addr=dst,
                           reply_len=4096) == (0, 3000)
    assert ring.read(dst, 3000) == data
    assert await ring.call(Op.FILL, reply_addr=dst, reply_len=100, args=(0xAB, 0, 0)) == (0, 100)
    assert ring.read(dst, 101) == b"\xab" * 100 + data[100:101]
    assert await ring.call(Op.FAIL, args=(errno.ENOENT, 0, 0)) == (-errno.ENOENT, 0)
    assert await ring.call(999) == (-errno.ENOSYS, 0)


async def test_echo_reply_too_small(ring):
    src, dst = ring.put(b"x" * 100), ring.buffer(64)
    assert await ring.call(Op.ECHO, payload_addr=src, payload_len=100, reply_addr=dst,
                           reply_len=50) == (-errno.EMSGSIZE, 0)


async def test_scatter_gather_echo(ring):
    data = os.urandom(5 * 4096 + 123)
    pieces = [data[i:i + 7000] for i in range(0, len(data), 7000)]
    sg_in = b"".join(SG.pack(ring.put(p), len(p), 0) for p in pieces)
    outs = [(ring.buffer(4096), 4096) for _ in range(6)]
    sg_out = b"".join(SG.pack(a, n, 0) for a, n in outs)
    status, n = await ring.call(Op.ECHO, flags=CmdFlags.PAYLOAD_SG | CmdFlags.REPLY_SG,
                                payload_addr=ring.put(sg_in), payload_len=len(pieces),
                                reply_addr=ring.put(sg_out), reply_len=len(outs))
    assert (status, n) == (0, len(data))
    assert b"".join(ring.read(a, n) for a, n in outs)[:len(data)] == data


async def test_many_commands_wrap_the_ring(ring):
    for i in range(100):
        payload = i.to_bytes(4, "little") * 8
        dst = ring.buffer(32)
        assert await ring.call(Op.ECHO, payload_addr=ring.put(payload), payload_len=32,
                               reply_addr=dst, reply_len=32) == (0, 32)
        assert ring.read(dst, 32) == payload
    assert ring.head == 100


async def test_batch_without_waiting(ring):
    for i in range(ring.slots):
        ring.write_command(ring.tail + i, Op.NOP)
    await ring.publish(ring.slots)
    assert await ring.wait(ring.slots - 1) == (0, 0)
    assert all(ring.completion(i)[:2] == (i, 0) for i in range(ring.slots))


async def test_blocking_command_does_not_stall_other_queues(guest):
    slow = await PyRing.create(*guest)
    fast = await PyRing.create(*guest)
    index = await slow.submit(Op.SLEEP, args=(500_000, 0, 0))
    start = trio.current_time()
    for _ in range(20):
        assert await fast.call(Op.NOP) == (0, 0)
    assert trio.current_time() - start < 0.4
    assert slow.completion(index)[0] != index or slow.head == 0, "slow still sleeping"
    assert await slow.wait(index) == (0, 0)


async def test_a_long_blocking_command_lets_the_poller_sleep(guest, server):
    """While a worker runs a long blocking command (a kernel waited for), the poller
    sleeps until it ends or a doorbell comes, instead of waking every 50 us: on a CPU
    device those naps took 15 % of a core from the kernel itself.  Another queue's
    command still gets through (its publisher sees IDLE and rings), and the long one
    completes."""
    engine = server.session.engine
    slow = await PyRing.create(*guest)
    fast = await PyRing.create(*guest)
    sleeps = engine.sleeps
    index = await slow.submit(Op.SLEEP, args=(1_000_000, 0, 0))
    with trio.fail_after(0.5):      # a worker has it, and the poller went to sleep since
        while not (engine._handed_off and engine.idle and engine.sleeps > sleeps):
            await trio.sleep(0.005)
    assert slow.status & RingStatus.IDLE and fast.status & RingStatus.IDLE
    doorbells = server.device.doorbells
    assert await fast.call(Op.NOP) == (0, 0)
    assert server.device.doorbells > doorbells, "the publisher saw IDLE and rang"
    assert slow.head <= index, "the long command is still running"
    with trio.fail_after(5):
        assert await slow.wait(index) == (0, 0)


async def test_irq_only_when_armed_or_asked(guest, server):
    cli = guest[0]
    ring = await PyRing.create(*guest)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    await cli.set_irqs(IrqIndex.MSIX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
                       ring.queue, 1, [efd])
    await ring.call(Op.NOP)
    await trio.sleep(0.05)
    with pytest.raises(BlockingIOError):
        os.eventfd_read(efd)                         # nobody asked
    ring.set_field(abi.RING_IRQ_ARMED, 1, struct.Struct("<I"))
    await ring.call(Op.NOP)
    with trio.fail_after(2):
        await trio.lowlevel.wait_readable(efd)
    assert os.eventfd_read(efd) == 1
    assert ring.field(abi.RING_IRQ_ARMED, struct.Struct("<I")) == 0, "host disarms"
    await ring.call(Op.NOP, flags=CmdFlags.IRQ)      # per-command request
    with trio.fail_after(2):
        await trio.lowlevel.wait_readable(efd)
    os.eventfd_read(efd)
    os.close(efd)


async def test_idle_then_doorbell(ring, server):
    engine = server.session.engine
    with trio.fail_after(3):
        while not ring.status & RingStatus.IDLE:
            await trio.sleep(0.005)
    assert engine.idle
    sleeps = engine.sleeps
    assert await ring.call(Op.NOP) == (0, 0)       # publish sees IDLE, rings the doorbell
    assert engine.sleeps >= sleeps and server.device.doorbells >= 1


async def test_release_frees_backend_state(ring, server):
    await ring.qwrite(QReg.CTRL, QueueCtrl.RELEASE)
    assert server.session.backend.released == [ring.queue]
    assert await ring.qread(QReg.CTRL) == 0


# -- bad input ---------------------------------------------------------------------------

async def test_tail_beyond_ring_size_fails_the_queue(ring, server):
    await ring.write_tail(ring.slots + 1)
    with trio.fail_after(3):
        while not await ring.qread(QReg.CTRL) & QueueState.FAILED:
            await trio.sleep(0.005)
    assert await ring.qread(QReg.ERROR) == errno.EINVAL
    assert ring.status & RingStatus.FAILED
    # The device keeps serving: a fresh queue works.
    other = await PyRing.create(ring.cli, ring.mem, ring.alloc)
    assert await other.call(Op.NOP) == (0, 0)


async def test_tail_behind_head_fails_the_queue(ring):
    await ring.call(Op.NOP)
    await ring.write_tail(0xFFFFFFFFFFFFFFFF)
    with trio.fail_after(3):
        while not await ring.qread(QReg.CTRL) & QueueState.FAILED:
            await trio.sleep(0.005)


@pytest.mark.parametrize("where", ["payload", "reply"])
@pytest.mark.parametrize("addr,length", [
    (0x1000, 16),                               # unmapped
    (RAM_IOVA + (64 << 20) - 8, 16),            # crosses the end of RAM
    (0xFFFFFFFFFFFFFFF8, 16),                   # wraps
    (RAM_IOVA, 0xFFFFFFFF),                     # huge
])
async def test_buffers_outside_guest_memory(ring, where, addr, length):
    ok = ring.buffer(64)
    kw = dict(payload_addr=addr, payload_len=length, reply_addr=ok, reply_len=64) \
        if where == "payload" else dict(payload_addr=ok, payload_len=16, reply_addr=addr,
                                        reply_len=length)
    assert await ring.call(Op.ECHO, **kw) == (-errno.EFAULT, 0)
    assert await ring.call(Op.NOP) == (0, 0)


@pytest.mark.parametrize("entries,count", [
    ([(0x1000, 16)], 1),                                    # entry unmapped
    ([(RAM_IOVA, 16), (0xFFFFFFFFFFFFFFF0, 0x20)], 2),      # entry wraps
    ([(RAM_IOVA, 0xFFFFFFFF)] * 3, 3),                      # entries overflow 4 GiB
    ([], abi.MAX_SG_ENTRIES + 1),                           # too many entries
    ([(RAM_IOVA, 16)], 1 << 31),                            # table outside memory
])
async def test_bad_scatter_lists(ring, entries, count):
    table = ring.put(b"".join(SG.pack(a, n, 0) for a, n in entries) or b"\0" * 16)
    status, _ = await ring.call(Op.ECHO, flags=CmdFlags.PAYLOAD_SG, payload_addr=table,
                                payload_len=count, reply_addr=ring.buffer(64), reply_len=64)
    assert status in (-errno.EFAULT, -errno.E2BIG)
    assert await ring.call(Op.NOP) == (0, 0)


async def test_sg_table_address_outside_memory(ring):
    status, _ = await ring.call(Op.ECHO, flags=CmdFlags.REPLY_SG, payload_addr=ring.put(b"a"),
                                payload_len=1, reply_addr=0xDEAD0000, reply_len=4)
    assert status == -errno.EFAULT


async def test_wrong_sequence_number(ring):
    index = ring.tail
    ring.write_command(index, Op.NOP, seq=12345)
    await ring.publish()
    assert await ring.wait(index) == (-errno.EINVAL, 0)


@pytest.mark.parametrize("slots,addr_delta,err", [
    (3, 0, errno.EINVAL), (1, 0, errno.EINVAL), (8192, 0, errno.EINVAL), (16, 8, errno.EINVAL),
])
async def test_bad_queue_setup(guest, slots, addr_delta, err):
    cli, mem, alloc = guest
    ring = await PyRing.create(cli, mem, alloc, enable=False)
    await ring.setup(ring.gpa + addr_delta, slots)
    assert await ring.qread(QReg.CTRL) & QueueState.FAILED
    assert await ring.qread(QReg.ERROR) == err


async def test_queue_base_unmapped(guest):
    cli, mem, alloc = guest
    ring = await PyRing.create(cli, mem, alloc, enable=False)
    await ring.setup(0x40000000, 16)
    assert await ring.qread(QReg.ERROR) == errno.EFAULT
    await ring.setup(RAM_IOVA + mem.size - 4096, 64)          # runs off the end
    assert await ring.qread(QReg.ERROR) == errno.EFAULT


async def test_enable_without_claim(guest):
    cli = guest[0]
    await cli.write32(abi.queue_reg(40, QReg.CTRL), QueueCtrl.ENABLE)
    assert await cli.read32(abi.queue_reg(40, QReg.ERROR)) == errno.EPERM


async def test_ring_unmapped_while_enabled(ring, guest):
    cli, mem, _ = guest
    await cli.dma_unmap(RAM_IOVA, mem.size)
    assert await ring.qread(QReg.CTRL) & QueueState.FAILED
    assert await ring.qread(QReg.ERROR) == errno.EFAULT


async def test_reset_with_commands_in_flight(ring, guest, server):
    cli = guest[0]
    await ring.call(Op.NOP)
    index = await ring.submit(Op.SLEEP, args=(300_000, 0, 0))
    await trio.sleep(0.05)
    await cli.reset()
    # Released; SETTLING while the sleep it was running goes on, then nothing.
    assert await ring.qread(QReg.CTRL) == QueueState.SETTLING, "reset releases every queue"
    assert ring.queue in server.session.backend.released
    await trio.sleep(0.4)
    assert await ring.qread(QReg.CTRL) == 0
    assert ring.completion(index)[0] != index and ring.head == 1, \
        "a command of a reset queue completes nowhere"
    fresh = await PyRing.create(*guest)
    assert await fresh.call(Op.NOP) == (0, 0)


async def test_guest_rewriting_a_command_mid_execution(ring, server):
    """The host copies the header before validating: a guest that rewrites the slot
    while the command runs cannot change what the host does with it."""
    backend = server.session.backend
    original = backend._table[Op.FILL]
    seen = []

    def racing_fill(ctx):
        ring.write_command(ctx_index[0], Op.ECHO, reply_addr=0xBAD, reply_len=1 << 30, seq=999)
        seen.append((ctx.opcode, ctx.reply_addr, ctx.reply_len))
        return original(ctx)

    backend._table[Op.FILL] = racing_fill
    dst = ring.buffer(16)
    ctx_index = [ring.tail]
    assert await ring.call(Op.FILL, reply_addr=dst, reply_len=16, args=(7, 0, 0)) == (0, 16)
    assert seen == [(Op.FILL, dst, 16)]
    assert ring.read(dst, 16) == b"\7" * 16


async def test_disconnect_releases_queues(server, guest):
    cli, mem, alloc = guest
    ring = await PyRing.create(cli, mem, alloc)
    backend = server.session.backend
    await cli.aclose()
    from conftest import wait_for_idle
    await wait_for_idle(server)
    assert ring.queue in backend.released
    assert server.device.queues.enabled() == []


async def test_a_nop_never_waits_behind_another_queues_long_scatter_list(guest):
    """A 1M-entry scatter list takes seconds to walk; it is walked off the poller, so
    a NOP on another queue completes while the long command is still running."""
    cli, mem, alloc = guest
    a, b = await PyRing.create(cli, mem, alloc), await PyRing.create(cli, mem, alloc)
    n = abi.MAX_SG_ENTRIES
    byte = a.buffer(4096)
    table = alloc.alloc(n * abi.SG_ENTRY_SIZE)
    mem.mm[table:table + n * abi.SG_ENTRY_SIZE] = SG.pack(byte, 1, 0) * n
    reply = a.buffer(n)
    long_one = await a.submit(Op.ECHO, flags=CmdFlags.PAYLOAD_SG, payload_addr=RAM_IOVA + table,
                              payload_len=n, reply_addr=reply, reply_len=n)
    assert await b.call(Op.NOP) == (0, 0)
    assert a.head <= long_one, "the NOP completed first, with the long command still running"
    assert await a.wait(long_one, timeout=120) == (0, n)
