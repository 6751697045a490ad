"""A Python stand-in for the guest runtime: drives rings in a memfd "guest RAM"
through the vfio-user client, so tests can also write what no good guest would."""

from __future__ import annotations

import os
import struct
import threading

import trio

from protocols import device_abi as abi
from protocols.device_abi import QReg, QueueCtrl, Reg, RingStatus
from vdev.client import GuestMemory, VfioUserClient

#: A locked read-modify-write (a mutex round trip) as a full memory barrier.
_FENCE = threading.Lock()

CMD = struct.Struct("<HHIQQQIIQQQ")
CQE = struct.Struct("<QiI")
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")

RAM_IOVA = 0x100000000      # where tests map guest RAM


class Allocator:
    """Bump allocator over guest RAM (offsets), page-aligned."""

    def __init__(self, size: int, start: int = 0):
        self.size = size
        self.next = start

    def alloc(self, n: int, align: int = 4096) -> int:
        off = (self.next + align - 1) // align * align
        if off + n > self.size:
            raise MemoryError("test guest RAM exhausted")
        self.next = off + n
        return off


class PyRing:
    def __init__(self, cli: VfioUserClient, mem: GuestMemory, alloc: Allocator, queue: int,
                 offset: int, slots: int):
        self.cli, self.mem, self.alloc = cli, mem, alloc
        self.queue, self.offset, self.slots = queue, offset, slots
        self.tail = 0
        self.base = getattr(mem, "iova", RAM_IOVA)     # where ``mem`` starts, guest-physical

    @property
    def gpa(self) -> int:
        return self.base + self.offset

    @classmethod
    async def create(cls, cli, mem, alloc, slots: int = 16, *, enable: bool = True) -> PyRing:
        queue = await cli.read32(Reg.QUEUE_ALLOC)
        assert queue != abi.NO_QUEUE
        offset = alloc.alloc(abi.ring_bytes(slots))
        mem.mm[offset:offset + abi.ring_bytes(slots)] = bytes(abi.ring_bytes(slots))
        ring = cls(cli, mem, alloc, queue, offset, slots)
        await ring.setup(ring.gpa, slots, enable=enable)
        return ring

    async def setup(self, gpa: int, slots: int, *, enable: bool = True) -> None:
        await self.qwrite(QReg.RING_LO, gpa & 0xFFFFFFFF)
        await self.qwrite(QReg.RING_HI, gpa >> 32)
        await self.qwrite(QReg.SIZE, slots)
        await self.qwrite(QReg.OWNER, os.getpid())
        if enable:
            await self.qwrite(QReg.CTRL, QueueCtrl.ENABLE)

    async def qwrite(self, reg: int, value: int) -> None:
        await self.cli.write32(abi.queue_reg(self.queue, reg), value)

    async def qread(self, reg: int) -> int:
        return await self.cli.read32(abi.queue_reg(self.queue, reg))

    # -- memory helpers --------------------------------------------------------------

    def put(self, data: bytes) -> int:
        """Copy ``data`` into fresh guest memory; returns its guest-physical address."""
        off = self.alloc.alloc(max(len(data), 1))
        self.mem.mm[off:off + len(data)] = data
        return self.base + off

    def buffer(self, n: int) -> int:
        return self.base + self.alloc.alloc(max(n, 1))

    def read(self, gpa: int, n: int) -> bytes:
        off = gpa - self.base
        return bytes(self.mem.mm[off:off + n])

    def field(self, off: int, st=U64) -> int:
        return st.unpack_from(self.mem.mm, self.offset + off)[0]

    def set_field(self, off: int, value: int, st=U64) -> None:
        """One aligned store, as a guest's must be: ``struct.pack_into`` zeroes the bytes
        first and then writes them one by one, so an engine in another process (an
        executor) could read a tail of 0 in between and rightly fail the ring."""
        pos = self.offset + off
        fmt = {8: "Q", 4: "I"}[st.size]
        assert pos % st.size == 0
        with memoryview(self.mem.mm) as raw, raw.cast(fmt) as words:
            words[pos // st.size] = value

    @property
    def head(self) -> int:
        return self.field(abi.RING_HEAD)

    @property
    def status(self) -> int:
        return self.field(abi.RING_STATUS, U32)

    # -- submit / wait -------------------------------------------------------------------

    def write_command(self, index: int, opcode: int, *, flags: int = 0, payload_addr: int = 0,
                      payload_len: int = 0, reply_addr: int = 0, reply_len: int = 0,
                      args=(0, 0, 0), seq: int | None = None) -> None:
        off = self.offset + abi.command_offset(self.slots, index)
        CMD.pack_into(self.mem.mm, off, opcode, flags, payload_len, index if seq is None else seq,
                      payload_addr, reply_addr, reply_len, 0, *args)

    async def publish(self, count: int = 1) -> None:
        self.tail += count
        await self.write_tail(self.tail)

    async def write_tail(self, value: int) -> None:
        """Publish ``value`` as the tail the way a guest must: ring the doorbell when
        the engine sleeps (IDLE), or it never looks."""
        self.set_field(abi.RING_TAIL, value)
        # A full barrier between the store and the load, as the C runtime has: the engine
        # (another process, running in parallel) sets IDLE and then reads the tail, so
        # without it each side can miss the other's store and the doorbell is never rung.
        _FENCE.acquire()
        _FENCE.release()
        if self.status & RingStatus.IDLE:
            await self.cli.write32(Reg.DOORBELL, self.queue, posted=True)

    async def submit(self, opcode: int, **kw) -> int:
        index = self.tail
        self.write_command(index, opcode, **kw)
        await self.publish()
        return index

    def completion(self, index: int) -> tuple[int, int, int]:
        return CQE.unpack_from(self.mem.mm, self.offset + abi.completion_offset(self.slots, index))

    async def wait(self, index: int, timeout: float = 5.0) -> tuple[int, int]:
        with trio.fail_after(timeout):
            while True:
                # Head first, then the completion (the host writes them in the other
                # order): read the other way round, a fresh ring's zeroed slot 0 (seq 0)
                # could be taken for command 0's completion just as the host finishes it.
                if self.head > index:
                    seq, status, n = self.completion(index)
                    if seq == index:
                        return status, n
                await trio.sleep(0.0005)

    async def call(self, opcode: int, **kw) -> tuple[int, int]:
        return await self.wait(await self.submit(opcode, **kw))


async def connect_guest(path: str, mem: GuestMemory) -> VfioUserClient:
    cli = await VfioUserClient.connect(path)
    await cli.negotiate()
    await cli.dma_map(RAM_IOVA, mem.size, fd=mem.fd)
    return cli
