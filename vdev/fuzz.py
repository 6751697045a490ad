"""``python -m vdev.fuzz``: a fuzzing campaign against one long-lived device server.

A hostile client speaks to ``python -m vdev serve`` (a child process, on a private
socket) the way QEMU would, then mutates what it sends:

- **vfio-user messages**: each batch replays a QEMU-like connect sequence (VERSION,
  DMA_MAP of sealed guest RAM, GET_INFO, region and IRQ queries, SET_IRQS, config
  space and BAR0 accesses), with one message in several mutated: flipped bits,
  truncated or extended payloads, forged header sizes, ids and flags, stray fds;
- **ring commands**: a queue is set up in guest RAM and random commands are
  published on it: random opcodes (diagnostic and OpenCL), lengths, guest
  addresses (inside, across and outside the map) and scatter lists.

After every batch the harness checks that the server is alive, that a good client
is served (VERSION and a BAR0 read) within 1 s, that the server's open fds,
threads and resident memory stay within bounds of what they were after warm-up,
and that no executor (the child that runs a session's commands) died: the server
survives that, but an input that kills an executor is still a bug.
The first violation ends the campaign with the seed that reproduces it.

The structured OpenCL-call fuzzer (``tests/backend_fuzz.py``) covers the decoding
of every spec function; this one covers the transport and ring paths around it.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import IO, Any

import trio

from protocols import device_abi as abi
from protocols import vfio_user as vu
from protocols.device_abi import QReg, QueueCtrl, QueueState, Reg
from protocols.vfio_user import Command, IrqIndex, IrqSetFlags, RegionIndex

from .bench import loopback_server
from .client import QEMU_CAPS, GuestMemory, VfioUserClient

RAM_IOVA = 0x100000000
RAM_SIZE = 8 << 20
RING_SLOTS = 16
_CMD = struct.Struct("<HHIQQQIIQQQ")
_U64 = struct.Struct("<Q")
#: Bounds past the warm-up figures; a leak of one fd or thread per batch crosses
#: them within a few hundred batches.
MAX_EXTRA_FDS = 16
MAX_EXTRA_THREADS = abi.NUM_QUEUES + 8
MAX_EXTRA_RSS = 256 << 20


@dataclass
class Campaign:
    messages: int = 0
    commands: int = 0
    batches: int = 0
    error_replies: int = 0
    disconnects: int = 0
    worst_probe_s: float = 0.0
    log_seen: int = 0           # how much of the server's log was checked
    figures: dict[str, int] = field(default_factory=dict)


#: How long a reply may take before the connection counts as out of step (a mutated
#: header that claimed more bytes than were sent leaves the server waiting for them).
REPLY_WAIT_S = 0.25


class FuzzFailure(Exception):
    """The server crashed, hung or leaked."""


# -- the server child and what it holds -------------------------------------------------

def proc_figures(pid: int) -> dict[str, int]:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.split()
    return {"fds": fds, "threads": int(status["Threads"][0]),
            "rss": int(status["VmRSS"][0]) * 1024}


# -- message mutations ------------------------------------------------------------------

def connect_sequence(mem_fd: int, rng: random.Random) -> list[tuple[int, bytes, list[int]]]:
    """(command, payload, fds) as QEMU sends them at connect (fds are dup'ed per send)."""
    caps = vu.encode_caps(QEMU_CAPS)
    region = rng.choice([RegionIndex.BAR0, RegionIndex.CONFIG, rng.randrange(16)])
    return [
        (Command.VERSION, vu.Version.build(dict(major=0, minor=0, json=caps)), []),
        (Command.DMA_MAP, vu.DmaMap.build(dict(argsz=vu.DMA_MAP_SIZE,
                                               flags=vu.DmaMapFlags.READ | vu.DmaMapFlags.WRITE,
                                               offset=0, address=RAM_IOVA, size=RAM_SIZE)),
         [mem_fd]),
        (Command.DEVICE_GET_INFO, vu.DeviceInfo.build(dict(
            argsz=vu.DEVICE_INFO_SIZE, flags=0, num_regions=0, num_irqs=0)), []),
        (Command.DEVICE_GET_REGION_INFO, vu.RegionInfo.build(dict(
            argsz=vu.REGION_INFO_SIZE, flags=0, index=region, cap_offset=0, size=0,
            offset=0)), []),
        (Command.DEVICE_GET_IRQ_INFO, vu.IrqInfo.build(dict(
            argsz=vu.IRQ_INFO_SIZE, flags=0, index=rng.randrange(6), count=0)), []),
        (Command.DEVICE_SET_IRQS, vu.IrqSet.build(dict(
            argsz=vu.IRQ_SET_SIZE, flags=IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
            index=IrqIndex.MSIX, start=0, count=1, data=b"")), [-1]),     # -1: an eventfd
        (Command.REGION_READ, vu.RegionAccess.build(dict(
            offset=rng.choice([0, 4, 0x10, 0x34, 0xFC, 0x100]), region=RegionIndex.CONFIG,
            count=4, data=b"")), []),
        (Command.REGION_WRITE, vu.RegionAccess.build(dict(
            offset=rng.choice([4, 0x10, 0x3C]), region=RegionIndex.CONFIG, count=2,
            data=b"\x06\x00")), []),
        (Command.REGION_READ, vu.RegionAccess.build(dict(
            offset=rng.randrange(0, abi.BAR0_SIZE, 4), region=RegionIndex.BAR0, count=4,
            data=b"")), []),
        (Command.REGION_WRITE, vu.RegionAccess.build(dict(
            offset=rng.randrange(0, abi.BAR0_SIZE, 4), region=RegionIndex.BAR0, count=4,
            data=rng.randbytes(4))), []),
        (Command.DMA_UNMAP, vu.DmaUnmap.build(dict(argsz=vu.DMA_UNMAP_SIZE, flags=0,
                                                   address=RAM_IOVA, size=RAM_SIZE)), []),
    ]


def mutate(rng: random.Random, msg_id: int, command: int, payload: bytes) -> bytes:
    """One vfio-user message, damaged in one of the ways a hostile client can."""
    body = bytearray(payload)
    how = rng.randrange(8)
    if how == 0 and body:                       # flip bits
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
    elif how == 1:                              # truncate
        body = body[:rng.randrange(len(body) + 1)]
    elif how == 2:                              # extend
        body += rng.randbytes(rng.choice([1, 7, 64, 4096]))
    elif how == 3 and len(body) >= 8:           # a field to an edge value
        off = rng.randrange(0, len(body) - 7)
        body[off:off + 8] = _U64.pack(rng.choice([0, 1, 0xFFFFFFFF, 1 << 63, (1 << 64) - 1,
                                                  RAM_IOVA + RAM_SIZE - 1]))
    elif how == 4:                              # another command's number
        command = rng.choice([rng.randrange(0x20), rng.randrange(0x10000)])
    flags = rng.choice([0, 0, 0, vu.HeaderFlags.NO_REPLY, vu.MsgType.REPLY, rng.randrange(16)])
    size = 16 + len(body)
    if how == 5:                                # a header size that lies (bounded: the
        size = rng.choice([0, 15, 16, size - 1, size + 1])      # server cuts a stall)
    header = vu.Header.build(dict(msg_id=msg_id, command=command & 0xFFFF,
                                  size=size & 0xFFFFFFFF, flags=flags, error=0))
    return bytes(header) + bytes(body)


async def message_batch(path: str, mem: GuestMemory, rng: random.Random, n: int,
                        camp: Campaign) -> None:
    """``n`` messages: connections replaying the connect sequence with mutated
    messages mixed in, a new one whenever the server (rightly) drops the last."""
    goal = camp.messages + n
    while camp.messages < goal:
        before = camp.messages
        await message_connection(path, mem, rng, goal - camp.messages, camp)
        if camp.messages == before:
            return          # could not connect (or nothing went out): the probe will say


async def message_connection(path: str, mem: GuestMemory, rng: random.Random, n: int,
                             camp: Campaign) -> None:
    """One connection: the connect sequence, with up to ``n`` mutated messages mixed in."""
    try:
        cli = await VfioUserClient.connect(path, timeout=2.0)
    except OSError:
        camp.disconnects += 1
        return
    try:
        seq = connect_sequence(mem.fd, rng)
        for i in range(n):
            command, payload, fds = seq[i % len(seq)]
            sent = [os.eventfd(0) if fd == -1 else os.dup(fd) for fd in fds]
            if rng.random() < 0.05:
                sent.append(os.open("/dev/null", os.O_RDONLY))      # a stray fd
            try:
                data = mutate(rng, cli.next_id(), command, payload) if rng.random() < 0.7 \
                    else bytes(vu.build_message(cli.next_id(), command, payload))
                await cli.send_raw(data, sent)
                camp.messages += 1
                flags = vu.Header.parse(data[:16]).flags
                if flags & vu.HeaderFlags.NO_REPLY or flags & vu.HeaderFlags.TYPE_MASK:
                    continue            # no reply is owed (a posted write, a stray reply)
                reply = None
                with trio.move_on_after(REPLY_WAIT_S):
                    reply = await cli.stream.receive()
                    if reply is None:
                        camp.disconnects += 1
                        return
                    if reply.flags & vu.HeaderFlags.ERROR:
                        camp.error_replies += 1
                    reply.close_fds()
                if reply is None:
                    # A header that lied about its size: the server waits for the rest
                    # (and cuts the stall); this connection is out of step, so start anew.
                    camp.disconnects += 1
                    return
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
                camp.disconnects += 1
                return
            finally:
                for fd in sent:
                    os.close(fd)
    finally:
        await cli.aclose()


# -- ring commands ----------------------------------------------------------------------

async def ring_batch(path: str, mem: GuestMemory, rng: random.Random, n: int,
                     camp: Campaign) -> None:
    """One session: a queue in guest RAM and ``n`` random commands published on it,
    with a new queue whenever the server (rightly) fails the last one."""
    async with await VfioUserClient.connect(path, timeout=2.0) as cli:
        await cli.negotiate()
        await cli.dma_map(RAM_IOVA, RAM_SIZE, fd=mem.fd)
        goal = camp.commands + n
        while camp.commands < goal:
            await ring_queue(cli, mem, rng, goal - camp.commands, camp)


async def ring_queue(cli: VfioUserClient, mem: GuestMemory, rng: random.Random, n: int,
                     camp: Campaign) -> None:
    """A queue, then up to ``n`` random commands on it until it fails; released after."""
    queue = await cli.read32(Reg.QUEUE_ALLOC)
    if queue == abi.NO_QUEUE:
        raise FuzzFailure("no free queue for a client that released its last: queues leak")
    ring_off = 0
    mem.mm[0:abi.ring_bytes(RING_SLOTS)] = bytes(abi.ring_bytes(RING_SLOTS))
    for reg, value in ((QReg.RING_LO, RAM_IOVA & 0xFFFFFFFF), (QReg.RING_HI, RAM_IOVA >> 32),
                       (QReg.SIZE, RING_SLOTS), (QReg.OWNER, os.getpid()),
                       (QReg.CTRL, QueueCtrl.ENABLE)):
        await cli.write32(abi.queue_reg(queue, reg), value)
    data_base = 1 << 20
    mem.mm[data_base:data_base + 4096] = rng.randbytes(4096)
    addresses = [0, RAM_IOVA, RAM_IOVA + data_base, RAM_IOVA + RAM_SIZE - 8,
                 RAM_IOVA + RAM_SIZE, RAM_IOVA - 4096, (1 << 64) - 4096, 1 << 40]
    lengths = [0, 1, 8, 64, 4096, 1 << 20, abi.MAX_SG_ENTRIES + 1, 0xFFFFFFFF]
    opcodes = [o.value for o in abi.SelftestOp] + [0x100 + rng.randrange(140), 0xFFFF,
                                                   rng.randrange(0x10000)]
    sg_table = data_base + 8192
    for i in range(16):                     # a scatter list, some entries hostile
        mem.mm[sg_table + 16 * i:sg_table + 16 * i + 16] = struct.pack(
            "<QII", rng.choice(addresses), rng.choice(lengths), 0)
    tail = 0
    try:
        for i in range(n):
            flags = rng.choice([0, 0, abi.CmdFlags.PAYLOAD_SG, abi.CmdFlags.REPLY_SG,
                                abi.CmdFlags.IRQ, rng.randrange(1 << 16)])
            payload_addr = RAM_IOVA + sg_table if flags & abi.CmdFlags.PAYLOAD_SG \
                and rng.random() < 0.7 else rng.choice(addresses)
            op = rng.choice(opcodes)
            args = (rng.choice([0, 1, 1000, 1 << 63]), rng.randrange(1 << 64), 0)
            if op == abi.SelftestOp.SLEEP:
                args = (rng.choice([0, 10, 100]), 0, 0)     # a long sleep is no bug
            off = ring_off + abi.command_offset(RING_SLOTS, tail)
            _CMD.pack_into(mem.mm, off, op, flags, rng.choice(lengths[:6] + [16]),
                           tail if rng.random() < 0.95 else rng.randrange(1 << 64),
                           payload_addr, rng.choice(addresses), rng.choice(lengths[:6]), 0, *args)
            tail += 1
            camp.commands += 1
            if tail % (RING_SLOTS // 2) and i != n - 1:
                continue                        # published in groups of half a ring
            _U64.pack_into(mem.mm, abi.RING_TAIL, tail)
            await cli.write32(Reg.DOORBELL, queue, posted=True)
            with trio.move_on_after(2.0):       # completions, or the queue failed
                while _U64.unpack_from(mem.mm, abi.RING_HEAD)[0] < tail:
                    if await cli.read32(abi.queue_reg(queue, QReg.CTRL)) & QueueState.FAILED:
                        return
                    await trio.sleep(0.0002)
    finally:
        await cli.write32(abi.queue_reg(queue, QReg.CTRL), QueueCtrl.RELEASE)


# -- checks -----------------------------------------------------------------------------

async def probe(path: str, server: subprocess.Popen[bytes], camp: Campaign) -> None:
    """The server is alive and serves a good client within 1 s."""
    if server.poll() is not None:
        raise FuzzFailure(f"the server exited with status {server.returncode}")
    t0 = time.monotonic()
    deadline = t0 + 5.0        # the previous client's teardown may still run (busy_wait)
    while True:
        try:
            with trio.fail_after(1.0):
                async with await VfioUserClient.connect(path, timeout=1.0) as cli:
                    await cli.negotiate()
                    if await cli.read32(Reg.MAGIC) != abi.MAGIC:
                        raise FuzzFailure("BAR0 magic changed")
            break
        except (OSError, ConnectionError, trio.TooSlowError) as exc:
            if server.poll() is not None:
                raise FuzzFailure(f"the server exited with status {server.returncode}") from exc
            if time.monotonic() > deadline:
                raise FuzzFailure(f"a good client was not served: {exc!r}") from exc
            await trio.sleep(0.05)
    camp.worst_probe_s = max(camp.worst_probe_s, time.monotonic() - t0)


def check_executors(log: IO[bytes] | None, camp: Campaign) -> None:
    """No executor ended other than with its session (the server logs each one that
    dies or is reset as "executor pid N ended (why)")."""
    if log is None:
        return
    log.seek(camp.log_seen)
    data = log.read()
    data = data[:data.rfind(b"\n") + 1]            # whole lines only
    camp.log_seen += len(data)
    for line in data.decode(errors="replace").splitlines():
        if "vdev.executor ERROR" in line and " ended (" in line:
            raise FuzzFailure(f"an executor died: {line}")


def check_bounds(pid: int, base: dict[str, int], camp: Campaign) -> None:
    now = proc_figures(pid)
    camp.figures = now
    if now["fds"] > base["fds"] + MAX_EXTRA_FDS:
        raise FuzzFailure(f"fds grew from {base['fds']} to {now['fds']}")
    if now["threads"] > base["threads"] + MAX_EXTRA_THREADS:
        raise FuzzFailure(f"threads grew from {base['threads']} to {now['threads']}")
    if now["rss"] > base["rss"] + MAX_EXTRA_RSS:
        raise FuzzFailure(f"RSS grew from {base['rss'] >> 20} MiB to {now['rss'] >> 20} MiB")


async def campaign(path: str, server: subprocess.Popen[bytes], *, messages: int, commands: int,
                   seed: int, batch: int, progress: bool,
                   log: IO[bytes] | None = None) -> Campaign:
    rng = random.Random(seed)
    camp = Campaign()
    with GuestMemory(RAM_SIZE, name="ava-fuzz-ram") as mem:     # sealed, as QEMU's RAM is
        await probe(path, server, camp)
        await ring_batch(path, mem, rng, 4, camp)       # warm-up: imports, first session
        await probe(path, server, camp)
        base = proc_figures(server.pid)
        last = time.monotonic()
        while camp.messages < messages or camp.commands < commands:
            if camp.messages < messages:
                await message_batch(path, mem, rng, min(batch, messages - camp.messages), camp)
            if camp.commands < commands:
                await ring_batch(path, mem, rng, min(batch, commands - camp.commands), camp)
            camp.batches += 1
            await probe(path, server, camp)
            check_bounds(server.pid, base, camp)
            check_executors(log, camp)
            if progress and time.monotonic() - last > 5:
                last = time.monotonic()
                print(f"  {camp.messages} messages, {camp.commands} commands, "
                      f"{camp.batches} batches; server: {camp.figures}", flush=True)
    return camp


async def until_sigterm(job: Coroutine[Any, Any, Campaign]) -> Campaign | None:
    """``job``'s result, or None if SIGTERM came first (the job is cancelled, so every
    connection closes and the server is stopped on the way out)."""
    result: list[Campaign] = []
    failed: list[FuzzFailure] = []
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def run_job() -> None:
                try:
                    result.append(await job)
                except FuzzFailure as exc:      # raised as itself, not in a group
                    failed.append(exc)
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(run_job)
            nursery.start_soon(watch)
    if failed:
        raise failed[0]
    return result[0] if result else None


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryFile() as log:
        try:
            with loopback_server(args.backend, log) as (path, server):
                t0 = time.monotonic()
                camp = trio.run(lambda: until_sigterm(campaign(
                    path, server, messages=args.messages, commands=args.commands,
                    seed=args.seed, batch=args.batch, progress=not args.quiet, log=log)))
                if camp is None:
                    print("fuzz: stopped by SIGTERM", file=sys.stderr)
                    return 128 + signal.SIGTERM
        except FuzzFailure as exc:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            print(f"fuzz: FAILED (seed {args.seed}): {exc}\nserver log tail:\n{tail}",
                  file=sys.stderr)
            return 1
    print(f"fuzz: {camp.messages} vfio-user messages and {camp.commands} ring commands "
          f"in {camp.batches} batches ({time.monotonic() - t0:.0f} s, seed {args.seed}, "
          f"backend {args.backend}): 0 crashes, 0 hangs, 0 leaks; "
          f"{camp.error_replies} error replies, {camp.disconnects} disconnects, "
          "no executor died; "
          f"slowest good client {camp.worst_probe_s * 1000:.0f} ms; server at the end: "
          f"{camp.figures['fds']} fds, {camp.figures['threads']} threads, "
          f"{camp.figures['rss'] >> 20} MiB RSS")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vdev.fuzz",
        description="Fuzz one long-lived device server with mutated vfio-user messages and "
                    "random ring commands; after every batch check that it is alive, serves "
                    "a good client within 1 s and holds no more fds, threads or memory.")
    parser.add_argument("--messages", type=int, default=10000, metavar="N",
                        help="vfio-user messages to send (default 10000)")
    parser.add_argument("--commands", type=int, default=None, metavar="N",
                        help="ring commands to publish (default: as many as --messages)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--batch", type=int, default=200, metavar="N",
                        help="messages or commands between two checks (default 200)")
    parser.add_argument("--backend", choices=("opencl", "test"), default="opencl",
                        help="the server's backend (default opencl)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.commands is None:
        args.commands = args.messages
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
