"""The C lane (host_backend/_lane.c): plain info queries run straight from the ring.

Every command goes through a real ring in a memfd "guest RAM", run by the ring
engine on this thread, once with the lane and once without it (the Python fast path
and the interpreter behind it): the completions and the reply bytes must be the same,
for good input and for every kind of bad input, and the lane must have answered the
good calls itself."""

from __future__ import annotations

import errno
import fcntl
import itertools
import mmap
import os
import struct
import time

import pytest
from clwire import encode
from test_fast_path import ODD_PARAMS, PARAMS, SIZES, info_objects
from test_opencl_backend import Guest

from host_backend import OpenClBackend
from host_backend._handles import key
from host_backend._lane import TYPES
from protocols import device_abi as abi
from protocols import opencl_api as api
from protocols.device_abi import CmdFlags
from vdev._dma import DmaMap
from vdev._rings import RingEngine

F = api.BY_NAME
IOVA = 1 << 32
RAM = 4 << 20
SLOTS = 16
PAYLOAD_AT, REPLY_AT = 1 << 20, 2 << 20
READ_ONLY_IOVA = 1 << 40              # a second range, mapped for reading only
OWNER = 77
CL_CONTEXT_REFERENCE_COUNT = 0x1080
CMD = struct.Struct("<HHIQQQIIQQQ")
CQE = struct.Struct("<QiI")
ids = itertools.count(70_000)


class Monitor:
    """A status page's command cell, as the executor keeps one."""

    def __init__(self):
        self.page = mmap.mmap(-1, 4096)
        self.command_cell = (self.page, 64)
        self.commands = 0

    def started(self, queue, opcode, inline):
        self.commands += 1

    def finished(self):
        pass

    def counted(self, commands):
        self.commands += commands


class World:
    """A backend, a ring in guest RAM, the objects the queries name."""

    def __init__(self):
        self.fd = os.memfd_create("ava-lane-test", os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, RAM)
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        self.ram = mmap.mmap(self.fd, RAM)
        self.dma = DmaMap()
        self.dma.add(IOVA, RAM, 3, 0, os.dup(self.fd))
        self.dma.add(READ_ONLY_IOVA, 1 << 20, 1, 0, os.dup(self.fd))
        self.backend = OpenClBackend()
        assert self.backend.lane is not None, "the lane loads (gcc and libc6-dev are installed)"
        self.backend.prepare()
        self.irqs: list[int] = []
        self.monitor = Monitor()
        self.engine = RingEngine(self.dma, self.backend, raise_irq=self.irqs.append,
                                 fail_queue=lambda q, e: None, monitor=self.monitor)
        assert self.engine.enable_queue(0, IOVA, SLOTS, OWNER) == 0
        self.index = 0
        self.guest = Guest(self.backend, owner=OWNER)

    def close(self):
        self.engine.disable_queue(0)
        self.backend.close()
        self.ram.close()
        os.close(self.fd)

    def run(self, opcode, payload, *, flags=0, payload_addr=IOVA + PAYLOAD_AT,
            reply_addr=IOVA + REPLY_AT, reply_len=8192, payload_len=None, seq=None):
        """Publish one command and run it: (completion status, result length, reply)."""
        self.ram[PAYLOAD_AT:PAYLOAD_AT + len(payload)] = payload
        self.ram[REPLY_AT:REPLY_AT + 8192] = b"\xa5" * 8192
        index = self.index
        at = abi.command_offset(SLOTS, index)
        self.ram[at:at + 64] = CMD.pack(
            opcode, flags, len(payload) if payload_len is None else payload_len,
            index if seq is None else seq, payload_addr, reply_addr, reply_len, 0, 0, 0, 0)
        struct.pack_into("<Q", self.ram, abi.RING_TAIL, index + 1)
        assert self.engine.poll_once() == 1
        self.index = index + 1
        assert struct.unpack_from("<Q", self.ram, abi.RING_HEAD)[0] == index + 1
        seq_done, status, length = CQE.unpack_from(self.ram, abi.completion_offset(SLOTS, index))
        assert seq_done == index
        return status, length, bytes(self.ram[REPLY_AT:REPLY_AT + max(length, 0)])

    def both(self, opcode, payload, **kw):
        """The outcome with the lane, then without it; and whether the lane answered."""
        before = self.backend.lane_calls
        lane = self.run(opcode, payload, **kw)
        took = self.backend.lane_calls > before
        self.backend.use_lane = False
        try:
            python = self.run(opcode, payload, **kw)
        finally:
            self.backend.use_lane = True
        return lane, python, took


@pytest.fixture(scope="module")
def world():
    w = World()
    w.objects = info_objects(w.guest)
    yield w
    w.close()


def refcount(w, **changes):
    values = dict(w.objects["clGetContextInfo"], param_name=CL_CONTEXT_REFERENCE_COUNT,
                  param_value_size=4, param_value=4, param_value_size_ret=True)
    values.update(changes)
    return encode(F["clGetContextInfo"], **values)


@pytest.mark.parametrize("name", sorted(set(PARAMS) - {"clGetSamplerInfo"}))
def test_replies_match_the_python_path(world, name):
    """Every param of each query (and odd ones), each size: the same completion and the
    same reply bytes, and the lane answered most of them."""
    fn = F[name]
    answered = 0
    for param in [*PARAMS[name], *ODD_PARAMS]:
        for size, cap, size_ret in SIZES:
            payload = encode(fn, **world.objects[name], param_name=param, param_value_size=size,
                             param_value=cap, param_value_size_ret=size_ret)
            lane, python, took = world.both(fn.opcode, payload)
            assert lane == python, (name, hex(param), size, cap, size_ret)
            answered += took
    assert answered > len(PARAMS[name]), f"{name}: the lane answered {answered} calls"


def test_bad_input_gets_the_python_paths_answer(world):
    """Each kind of bad input: the lane leaves the command to Python, which answers it
    (an error status or completion), and the ring goes on."""
    fn = F["clGetContextInfo"]
    ctx = world.objects["clGetContextInfo"]["object"]
    lane, python, took = world.both(fn.opcode, refcount(world))
    assert lane == python and took and lane[0] == 0
    good = refcount(world)
    words = list(struct.unpack("<5Q", good))
    cases = {
        "unknown id": (refcount(world, object=ctx + 1000), {}),
        "NULL object": (refcount(world, object=0), {}),
        "an object of another type": (refcount(world, object=world.objects[
            "clGetCommandQueueInfo"]["object"]), {}),
        "capacity is not the size": (refcount(world, param_value=8), {}),
        "bad presence flag": (struct.pack("<5Q", *words[:4], 7), {}),
        "param wider than cl_uint": (struct.pack("<5Q", words[0], 1 << 32 | words[1],
                                                 *words[2:]), {}),
        "truncated payload": (good[:-8], {}),
        "payload longer than the shape": (good + bytes(8), {}),
        "payload length not the payload's": (good, dict(payload_len=16)),
        "payload outside guest RAM": (good, dict(payload_addr=IOVA + RAM - 8)),
        "payload at an unmapped address": (good, dict(payload_addr=8 << 40)),
        "reply outside guest RAM": (good, dict(reply_addr=IOVA + RAM - 8, reply_len=64)),
        "reply in memory mapped for reading only": (good, dict(reply_addr=READ_ONLY_IOVA)),
        "reply buffer too short": (good, dict(reply_len=8)),
        "a scatter-listed payload": (good, dict(flags=int(CmdFlags.PAYLOAD_SG))),
        "a wrong sequence number": (good, dict(seq=12345)),
        "an answer longer than the lane keeps": (refcount(world, param_value_size=6000,
                                                          param_value=6000), {}),
    }
    for why, (payload, kw) in cases.items():
        lane, python, took = world.both(fn.opcode, payload, **kw)
        assert lane == python, why
        assert not took, f"{why}: the lane took it"
    for why in ("unknown id", "NULL object", "an object of another type"):
        assert struct.unpack_from("<q", world.both(fn.opcode, cases[why][0])[0][2])[0] == -34, \
            f"{why}: CL_INVALID_CONTEXT"
    assert world.both(fn.opcode, good, reply_addr=8 << 40)[0][0] == -errno.EFAULT
    other = Guest(world.backend, owner=OWNER + 1)
    assert other.call("clGetContextInfo", **dict(world.objects["clGetContextInfo"],
                      param_name=CL_CONTEXT_REFERENCE_COUNT, param_value_size=4,
                      param_value=4, param_value_size_ret=None))[0] == -34


def test_another_owners_ring_does_not_reach_these_objects(world):
    """The same ids published on a ring of another owner: CL_INVALID_CONTEXT, as the
    Python path answers, and not by the lane."""
    world.engine.disable_queue(0)
    assert world.engine.enable_queue(0, IOVA, SLOTS, OWNER + 5) == 0
    struct.pack_into("<Q", world.ram, abi.RING_HEAD, world.index)
    ring = world.engine._rings[0]
    ring.head = world.index
    try:
        lane, python, took = world.both(F["clGetContextInfo"].opcode, refcount(world))
        assert lane == python and not took
        assert struct.unpack_from("<q", lane[2])[0] == -34
    finally:
        world.engine.disable_queue(0)
        assert world.engine.enable_queue(0, IOVA, SLOTS, OWNER) == 0
        ring = world.engine._rings[0]
        ring.head = world.index
        struct.pack_into("<Q", world.ram, abi.RING_HEAD, world.index)


def test_a_released_object_is_gone_from_the_lane_too(world):
    """The lane's copy of the handle table follows it: a released context answers
    CL_INVALID_CONTEXT on both paths; the copy holds what the table holds."""
    g = world.guest
    ctx = next(ids)
    dev = world.objects["clGetDeviceInfo"]["object"]
    assert g.call("clCreateContext", ctx, properties=None, num_devices=1, devices=[dev])[0] == 0
    payload = refcount(world, object=ctx)
    lane, python, took = world.both(F["clGetContextInfo"].opcode, payload)
    assert lane == python and took and struct.unpack_from("<q", lane[2])[0] == 0
    assert g.call("clReleaseContext", context=ctx)[0] == 0
    lane, python, took = world.both(F["clGetContextInfo"].opcode, payload)
    assert lane == python and not took and struct.unpack_from("<q", lane[2])[0] == -34
    table = world.backend.handles
    assert world.backend.lane.entries == sum(
        1 for e in table._entries.values() if e.obj_type in TYPES)
    assert world.backend.lane.inflight == 0


def test_the_guest_gets_its_interrupt_and_the_status_page_its_command(world):
    """An armed ring is interrupted after the lane's completion (and disarmed), as after
    Python's; the status page counts the lane's commands and shows none running."""
    before = world.monitor.commands
    calls = world.backend.lane_calls
    struct.pack_into("<I", world.ram, abi.RING_IRQ_ARMED, 1)
    assert world.run(F["clGetContextInfo"].opcode, refcount(world))[0] == 0
    assert world.backend.lane_calls == calls + 1
    assert world.irqs[-1:] == [0]
    assert struct.unpack_from("<I", world.ram, abi.RING_IRQ_ARMED)[0] == 0
    assert world.monitor.commands == before + 1
    since, queue, opcode = struct.unpack_from("<QII", world.monitor.page, 64)
    assert since == 0, "no command is running"
    assert (queue, opcode) == (0, F["clGetContextInfo"].opcode), "the last one is recorded"


def test_a_burst_of_queries_is_answered_in_one_pass(world):
    """Several published at once: the lane answers them in order, each its own reply,
    and stops at the first it does not take, which Python runs."""
    fn = F["clGetContextInfo"]
    good = refcount(world)
    start = world.index
    replies = []
    for i in range(4):
        payload = good if i != 2 else refcount(world, object=0)
        at = PAYLOAD_AT + i * 64
        world.ram[at:at + len(payload)] = payload
        slot = abi.command_offset(SLOTS, start + i)
        world.ram[slot:slot + 64] = CMD.pack(fn.opcode, 0, len(payload), start + i, IOVA + at,
                                             IOVA + REPLY_AT + i * 64, 64, 0, 0, 0, 0)
        replies.append(REPLY_AT + i * 64)
    calls = world.backend.lane_calls
    struct.pack_into("<Q", world.ram, abi.RING_TAIL, start + 4)
    assert world.engine.poll_once() == 4
    world.index = start + 4
    assert world.backend.lane_calls == calls + 3
    statuses = [struct.unpack_from("<q", world.ram, at)[0] for at in replies]
    assert statuses == [0, 0, -34, 0]


def test_a_range_unmapped_is_not_read_by_the_lane(world):
    """Guest memory the DMA map no longer has: the lane's view of the ring is made
    again, and the command fails as Python fails it (EFAULT)."""
    extra = 1 << 36
    world.dma.add(extra, 1 << 20, 3, 0, os.dup(world.fd))
    payload = refcount(world)
    world.ram[0x10000:0x10000 + len(payload)] = payload
    # (the range maps the file's first MiB: guest address extra + 0x10000 is RAM 0x10000)
    lane = world.run(F["clGetContextInfo"].opcode, b"", payload_addr=extra + 0x10000,
                     payload_len=len(payload))
    assert lane[0] == 0 and struct.unpack_from("<q", lane[2])[0] == 0
    world.dma.remove(extra, 1 << 20)
    calls = world.backend.lane_calls
    status = world.run(F["clGetContextInfo"].opcode, b"", payload_addr=extra + 0x10000,
                       payload_len=len(payload))[0]
    assert status == -errno.EFAULT and world.backend.lane_calls == calls


def test_windows_bound_the_lane_as_they_bind_python(world):
    """A queue limited to DMA windows: a payload outside them fails (EFAULT) without
    the lane reading it; inside them the lane answers."""
    ring_end = abi.ring_bytes(SLOTS)
    world.engine.set_windows(0, ((IOVA, IOVA + ring_end), (IOVA + REPLY_AT, IOVA + REPLY_AT + 8192)))
    try:
        calls = world.backend.lane_calls
        assert world.run(F["clGetContextInfo"].opcode, refcount(world))[0] == -errno.EFAULT
        assert world.backend.lane_calls == calls
        world.engine.set_windows(0, ((IOVA, IOVA + ring_end), (IOVA + PAYLOAD_AT, IOVA + REPLY_AT + 8192)))
        assert world.run(F["clGetContextInfo"].opcode, refcount(world))[0] == 0
        assert world.backend.lane_calls == calls + 1
    finally:
        world.engine._rings[0].ctx.dma = world.dma


def test_off_when_asked_and_under_a_metered_session(world, monkeypatch):
    """``use_lane`` off, the fast path off, or a scheduler metering the VM: the lane
    takes nothing."""
    backend = world.backend
    assert backend.lane_opcodes()
    for attr, value in (("use_lane", False), ("fast_path", False), ("meter", object())):
        monkeypatch.setattr(backend, attr, value)
        assert backend.lane_opcodes() is None, attr
        monkeypatch.undo()
    monkeypatch.setenv("AVA_HOST_LANE", "0")
    off = OpenClBackend()
    try:
        assert off.lane is None and off.lane_opcodes() is None
    finally:
        off.close()


def _publish(world, index, payload, slot_payload_at):
    fn = F["clGetContextInfo"]
    world.ram[slot_payload_at:slot_payload_at + len(payload)] = payload
    slot = abi.command_offset(SLOTS, index)
    world.ram[slot:slot + 64] = CMD.pack(fn.opcode, 0, len(payload), index,
                                         IOVA + slot_payload_at, IOVA + REPLY_AT + 256 * (index % 4),
                                         256, 0, 0, 0, 0)
    struct.pack_into("<Q", world.ram, abi.RING_TAIL, index + 1)


def test_the_next_query_published_meanwhile_is_answered_in_the_same_run(world, monkeypatch):
    """A program's next query, published while the lane waits after its last, is
    answered by the same run; with nothing more the run ends after ``spin_ns``; a
    queue disabled meanwhile ends it at once."""
    import threading
    import time
    lane = world.backend.lane
    monkeypatch.setattr(lane, "spin_ns", 200_000_000)      # 0.2 s
    start = world.index
    calls = world.backend.lane_calls

    def second():
        deadline = time.monotonic() + 5
        while struct.unpack_from("<Q", world.ram, abi.RING_HEAD)[0] != start + 1:
            assert time.monotonic() < deadline
        _publish(world, start + 1, refcount(world), PAYLOAD_AT + 512)

    helper = threading.Thread(target=second)
    helper.start()
    _publish(world, start, refcount(world), PAYLOAD_AT)
    began = time.monotonic()
    assert world.engine.poll_once() == 2
    helper.join()
    assert time.monotonic() - began >= 0.15, "it waited spin_ns for a third"
    world.index = start + 2
    assert world.backend.lane_calls == calls + 2
    for index in (start, start + 1):
        assert CQE.unpack_from(world.ram, abi.completion_offset(SLOTS, index))[:2] == (index, 0)
        assert struct.unpack_from("<q", world.ram, REPLY_AT + 256 * (index % 4))[0] == 0

    monkeypatch.setattr(lane, "spin_ns", 30_000_000_000)   # 30 s: only the disable ends it
    threading.Timer(0.2, world.engine.disable_queue, (0,)).start()
    _publish(world, start + 2, refcount(world), PAYLOAD_AT)
    began = time.monotonic()
    assert world.engine.poll_once() == 1
    assert time.monotonic() - began < 10, "the disable ended the lane's wait"
    world.index = start + 3
    assert world.engine.enable_queue(0, IOVA, SLOTS, OWNER) == 0
    world.engine._rings[0].head = world.index
    struct.pack_into("<Q", world.ram, abi.RING_HEAD, world.index)


def test_random_commands_get_the_same_answers_with_and_without_the_lane(world):
    """A seeded stream of hostile commands for the lane's opcodes: words drawn from
    valid ids, ids of other types, NULL, absent markers, sizes and junk; payload and
    reply addresses and lengths valid or not.  Every outcome is the Python path's."""
    import random
    rnd = random.Random(20261208)
    lane_fns = [F[name] for name in sorted(set(PARAMS) - {"clGetSamplerInfo"})]
    ids_seen = [v for values in world.objects.values() for v in values.values()]
    words = [0, 1, 4, 8, 16, 4096, 6000, (1 << 64) - 1, 1 << 32, 1 << 63, 0x1080, 0x1000,
             0x1016, 0x11D3, 0x1181, *ids_seen]
    took = 0
    for _ in range(1500):
        fn = rnd.choice(lane_fns)
        n = len(fn.args)
        if rnd.random() < 0.6:          # a well-formed call, perhaps with one bad field
            size, cap, size_ret = rnd.choice(SIZES)
            param = rnd.choice([*PARAMS[fn.name], *ODD_PARAMS])
            payload = bytearray(encode(fn, **world.objects[fn.name], param_name=param,
                                       param_value_size=size, param_value=cap,
                                       param_value_size_ret=size_ret))
            if rnd.random() < 0.3:
                at = rnd.randrange(n)
                payload[at * 8:at * 8 + 8] = rnd.choice(words).to_bytes(8, "little")
        else:
            payload = bytearray(b"".join(rnd.choice(words).to_bytes(8, "little")
                                         for _ in range(rnd.choice((n - 1, n, n, n + 1)))))
        kw = {}
        roll = rnd.random()
        if roll < 0.05:
            kw["payload_addr"] = rnd.choice((IOVA + RAM - 16, 8 << 40, READ_ONLY_IOVA, 0))
        elif roll < 0.10:
            kw["reply_addr"] = rnd.choice((IOVA + RAM - 16, 8 << 40, READ_ONLY_IOVA, 0))
        elif roll < 0.15:
            kw["reply_len"] = rnd.choice((0, 8, 16, 24, 40))
        elif roll < 0.18:
            kw["payload_len"] = rnd.choice((0, 8, len(payload) + 8, 1 << 31))
        elif roll < 0.20:
            kw["flags"] = rnd.choice((1, 8))
        lane, python, answered = world.both(fn.opcode, bytes(payload), **kw)
        assert lane == python, (fn.name, payload.hex(), kw)
        took += answered
    assert took > 300, f"the lane answered {took} of 1,500"


def _publish_command(w, opcode, payload):
    """Publish one command on ``w``'s ring at its next index (not run yet); the index."""
    w.ram[PAYLOAD_AT:PAYLOAD_AT + len(payload)] = payload
    index = w.index
    at = abi.command_offset(SLOTS, index)
    w.ram[at:at + 64] = CMD.pack(opcode, 0, len(payload), index, IOVA + PAYLOAD_AT,
                                 IOVA + REPLY_AT, 8192, 0, 0, 0, 0)
    struct.pack_into("<Q", w.ram, abi.RING_TAIL, index + 1)
    return index


def _completion(w, index):
    """Command ``index``'s completion once it is over, on the poller or a worker thread
    (status, result length, reply)."""
    deadline = time.monotonic() + 30
    while struct.unpack_from("<Q", w.ram, abi.RING_HEAD)[0] != index + 1:
        w.engine.poll_once()
        assert time.monotonic() < deadline, "the command never completed"
        time.sleep(0.001)
    w.index = index + 1
    seq_done, status, length = CQE.unpack_from(w.ram, abi.completion_offset(SLOTS, index))
    assert seq_done == index
    return status, length, bytes(w.ram[REPLY_AT:REPLY_AT + max(length, 0)])


def _run_to_completion(w, opcode, payload):
    """``World.run`` for a command that may go to a worker thread."""
    return _completion(w, _publish_command(w, opcode, payload))


def test_small_transfers_on_the_poller_refuse_bad_guest_ranges(world):
    """A small blocking transfer the ring poller runs (``SmallTransferCall``) with a
    guest range it may not use: a read into memory mapped for reading only, a range past
    guest RAM, an unmapped one.  Each is the command's error completion, as when a
    worker runs it (the fast path off), no hold is left on the buffer, and the ring goes
    on: the next transfer moves the bytes."""
    backend, g = world.backend, world.guest
    ctx = world.objects["clGetContextInfo"]["object"]
    queue = world.objects["clGetCommandQueueInfo"]["object"]
    buf = next(ids)
    assert g.call("clCreateBuffer", buf, context=ctx, flags=1, size=4096, host_ptr=None)[0] == 0
    backend.settle_poll_s = 2.0
    write, read = F["clEnqueueWriteBuffer"], F["clEnqueueReadBuffer"]

    def transfer(fn, flag, addr, size=4096):
        return encode(fn, command_queue=queue, buffer=buf, offset=0, size=size,
                      ptr=(api.HOSTDATA_RANGE, addr, size), num_events_in_wait_list=0,
                      event_wait_list=None, event=0, **{flag: 1})

    cases = {
        "a read into memory mapped for reading only": transfer(read, "blocking_read",
                                                               READ_ONLY_IOVA),
        "a read past guest RAM": transfer(read, "blocking_read", IOVA + RAM - 100),
        "a write from past guest RAM": transfer(write, "blocking_write", IOVA + RAM - 100),
        "a write from an unmapped address": transfer(write, "blocking_write", 8 << 40),
    }
    for why, payload in cases.items():
        fn = write if "write" in why else read
        poller = world.run(fn.opcode, payload)      # (it asserts the poller completed it)
        backend.fast_path = False
        try:
            worker = _run_to_completion(world, fn.opcode, payload)
        finally:
            backend.fast_path = True
        assert poller[0] < 0 and poller == worker, why
        assert backend.memory.mems[key(buf, OWNER)].in_call == 0, f"{why}: a hold left"
    data = bytes((i * 5) & 0xFF for i in range(4096))
    world.ram[3 << 20:(3 << 20) + 4096] = data
    assert world.run(write.opcode, transfer(write, "blocking_write", IOVA + (3 << 20)))[0] == 0
    world.ram[3 << 20:(3 << 20) + 4096] = bytes(4096)
    status, _, reply = world.run(read.opcode, transfer(read, "blocking_read", IOVA + (3 << 20)))
    assert status == 0 and struct.unpack_from("<q", reply)[0] == 0
    assert bytes(world.ram[3 << 20:(3 << 20) + 4096]) == data
    assert g.call("clReleaseMemObject", memobj=buf)[0] == 0


def test_the_poller_hands_a_transfer_stuck_behind_a_user_event_to_a_worker(world, monkeypatch):
    """The race ``SmallTransferCall`` guards against, through a real ring: the queue
    looked idle, but a command that waits for a user event went onto it first (here
    the idle check is made to say so).  The poller does not wait for the transfer
    (only a later command, here run directly, sets the event): it hands the rest to a
    worker and goes on; once the event is set the transfer completes with CL_SUCCESS
    and the data in the buffer."""
    from host_backend import _fastpath
    backend, g = world.backend, world.guest
    ctx = world.objects["clGetContextInfo"]["object"]
    queue = world.objects["clGetCommandQueueInfo"]["object"]
    buf, gate, behind = next(ids), next(ids), next(ids)
    assert g.call("clCreateBuffer", buf, context=ctx, flags=1, size=4096, host_ptr=None)[0] == 0
    assert g.call("clCreateUserEvent", gate, context=ctx)[0] == 0
    assert g.call("clEnqueueMarkerWithWaitList", command_queue=queue, num_events_in_wait_list=1,
                  event_wait_list=[gate], event=behind)[0] == 0
    monkeypatch.setattr(_fastpath, "SPUN_POLL_S", 0.01)
    monkeypatch.setattr(backend, "_idle", lambda queue_id, owner: True)
    data = bytes((i * 3) & 0xFF for i in range(4096))
    world.ram[3 << 20:(3 << 20) + 4096] = data
    write = F["clEnqueueWriteBuffer"]
    payload = encode(write, command_queue=queue, buffer=buf, blocking_write=1, offset=0,
                     size=4096, ptr=(api.HOSTDATA_RANGE, IOVA + (3 << 20), 4096),
                     num_events_in_wait_list=0, event_wait_list=None, event=0)
    index = _publish_command(world, write.opcode, payload)
    start = time.monotonic()
    assert world.engine.poll_once() == 0, "handed to a worker"
    assert time.monotonic() - start < 1.0, "the poller did not wait for the user event"
    assert struct.unpack_from("<Q", world.ram, abi.RING_HEAD)[0] == index, "not over yet"
    assert g.call("clSetUserEventStatus", event=gate, execution_status=0)[0] == 0
    assert _completion(world, index)[0] == 0
    assert struct.unpack_from("<q", world.ram, REPLY_AT)[0] == 0, "CL_SUCCESS"
    assert backend.memory.mems[key(buf, OWNER)].in_call == 0
    monkeypatch.undo()
    world.ram[3 << 20:(3 << 20) + 4096] = bytes(4096)
    read = F["clEnqueueReadBuffer"]
    assert world.run(read.opcode, encode(
        read, command_queue=queue, buffer=buf, blocking_read=1, offset=0, size=4096,
        ptr=(api.HOSTDATA_RANGE, IOVA + (3 << 20), 4096), num_events_in_wait_list=0,
        event_wait_list=None, event=0))[0] == 0
    assert bytes(world.ram[3 << 20:(3 << 20) + 4096]) == data
    for event in (gate, behind):
        assert g.call("clReleaseEvent", event=event)[0] == 0
    assert g.call("clReleaseMemObject", memobj=buf)[0] == 0
