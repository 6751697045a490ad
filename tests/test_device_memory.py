"""Device memory oversubscribed (host_backend/_residency.py): memory objects past the
capacity wait in the host store and come back, exactly, before a call uses them.
Every test runs the backend with a capacity of a few buffers and checks contents,
statuses and the counts an application can read back."""

import os
import struct

import pytest
from clwire import FakeDma, decode, encode
from test_opencl_backend import Guest, ids

from host_backend import OpenClBackend
from host_backend._cl import ffi
from host_backend._handles import key
from protocols import opencl_api as api

F = api.BY_NAME
KIB = 1024
CAPACITY = 64 * KIB
SIZE = 16 * KIB                     # four buffers fill the capacity
CL_MEM_READ_WRITE = 1
CL_MEM_HOST_NO_ACCESS = 1 << 9
CL_MEM_COPY_HOST_PTR = 1 << 5
CL_MEM_FLAGS = 0x1101
CL_MEM_REFERENCE_COUNT = 0x1105
CL_CONTEXT_REFERENCE_COUNT = 0x1080
CL_MEM_OBJECT_ALLOCATION_FAILURE = -4
CL_BUFFER_CREATE_TYPE_REGION = 0x1220

SOURCE = b"""
__kernel void bump(__global uint *a, uint by) { a[get_global_id(0)] += by; }
"""


@pytest.fixture
def small():
    b = OpenClBackend(device_memory=CAPACITY, host_store=1 << 20)
    yield b
    b.close()


class Session(Guest):
    """A guest with a context, a queue and guest RAM for transfers."""

    def __init__(self, backend):
        super().__init__(backend)
        self.ctx, self.dev = self.context()
        self.queue = next(ids)
        assert self.call("clCreateCommandQueue", self.queue, context=self.ctx, device=self.dev,
                         properties=0)[0] == 0
        self.dma = FakeDma(4 << 20)

    def buffer(self, data=None, flags=CL_MEM_READ_WRITE, size=SIZE):
        buf = next(ids)
        if data is not None:
            flags |= CL_MEM_COPY_HOST_PTR
        status, _ = self.call("clCreateBuffer", buf, context=self.ctx, flags=flags, size=size,
                              host_ptr=data)
        return buf if status == 0 else status

    def mem(self, handle):
        """The device memory's record of one of this guest's buffers (keyed by owner and id)."""
        return self.backend.memory.mems[key(handle, self.owner)]

    def has_mem(self, handle):
        return key(handle, self.owner) in self.backend.memory.mems

    def with_dma(self, name, **values):
        fn = F[name]
        return decode(fn, self.backend.call(fn, encode(fn, **values), self.owner, self.dma))[0]

    def write(self, buf, data, offset=0, event=0, wait=None, blocking=1, queue=None):
        self.dma.ram[0:len(data)] = data
        return self.with_dma("clEnqueueWriteBuffer", command_queue=queue or self.queue, buffer=buf,
                             blocking_write=blocking, offset=offset, size=len(data),
                             ptr=(api.HOSTDATA_RANGE, 0, len(data)),
                             num_events_in_wait_list=len(wait or []), event_wait_list=wait,
                             event=event)

    def read(self, buf, size=SIZE, offset=0):
        at = 2 << 20
        status = self.with_dma("clEnqueueReadBuffer", command_queue=self.queue, buffer=buf,
                               blocking_read=1, offset=offset, size=size,
                               ptr=(api.HOSTDATA_RANGE, at, size), num_events_in_wait_list=0)
        assert status == 0
        return bytes(self.dma.ram[at:at + size])

    def info(self, name, obj, param, size=8):
        status, out = self.call(name, **{F[name].args[0].name: obj}, param_name=param,
                                param_value_size=size, param_value=size)
        assert status == 0
        return int.from_bytes(out["param_value"], "little")

    def kernel(self, source=SOURCE, name=b"bump"):
        prog, kern = next(ids), next(ids)
        assert self.call("clCreateProgramWithSource", prog, context=self.ctx, count=1,
                         strings=[source])[0] == 0
        assert self.call("clBuildProgram", program=prog, num_devices=0, device_list=None,
                         options=b"\0")[0] == 0
        assert self.call("clCreateKernel", kern, program=prog, kernel_name=name + b"\0")[0] == 0
        return kern

    def launch(self, kern, buf, by, n=SIZE // 4):
        assert self.call("clSetKernelArg", kernel=kern, arg_index=0,
                         arg_value=(api.KARG_MEM, buf))[0] == 0
        assert self.call("clSetKernelArg", kernel=kern, arg_index=1,
                         arg_value=(api.KARG_BYTES, struct.pack("<I", by)))[0] == 0
        return self.call("clEnqueueNDRangeKernel", command_queue=self.queue, kernel=kern,
                         work_dim=1, global_work_offset=None, global_work_size=[n],
                         local_work_size=None, num_events_in_wait_list=0)[0]


def push_out(g, handle, limit=40):
    """Make and use other buffers until ``handle`` has left the device (which ones
    go first is the policy's choice; that it goes at all is the point)."""
    others = []
    while g.mem(handle).root.resident:
        assert len(others) < limit, "never evicted"
        others.append(g.buffer(pattern(len(others))))
        g.read(others[-1])
    return others


def pattern(i, size=SIZE):
    return bytes((i * 31 + j) & 0xFF for j in range(size))


def test_buffers_four_times_the_capacity_keep_their_contents(small):
    g = Session(small)
    bufs = [g.buffer(pattern(i)) for i in range(16)]
    assert all(b > 0 for b in bufs)
    assert small.memory.resident_bytes <= CAPACITY
    for rounds in range(2):
        for i, buf in enumerate(bufs):
            assert g.read(buf) == pattern(i), f"buffer {i}, round {rounds}"
    stats = small.memory.stats
    assert stats.evictions >= 12 and stats.restores >= 12
    assert stats.bytes_out == stats.evictions * SIZE
    # Written by transfers and fills, in place, while others come and go.
    for i, buf in enumerate(bufs):
        assert g.write(buf, b"w%02d" % i, offset=100) == 0
        assert g.call("clEnqueueFillBuffer", command_queue=g.queue, buffer=buf,
                      pattern=struct.pack("<I", i), pattern_size=4, offset=SIZE - 64, size=64,
                      num_events_in_wait_list=0)[0] == 0
    for i, buf in enumerate(bufs):
        got = g.read(buf)
        want = bytearray(pattern(i))
        want[100:103] = b"w%02d" % i
        want[SIZE - 64:] = struct.pack("<I", i) * 16
        assert got == bytes(want), f"buffer {i}"


def test_kernels_and_copies_use_restored_buffers(small):
    g = Session(small)
    kern = g.kernel()
    bufs = [g.buffer(bytes(SIZE)) for _ in range(12)]
    for _ in range(3):
        for i, buf in enumerate(bufs):
            assert g.launch(kern, buf, i + 1) == 0
    assert g.call("clFinish", command_queue=g.queue)[0] == 0
    for i, buf in enumerate(bufs):
        assert g.read(buf) == struct.pack("<I", 3 * (i + 1)) * (SIZE // 4), f"buffer {i}"
    # The argument set once names the buffer however often it moved meanwhile.
    assert g.launch(kern, bufs[0], 100) == 0
    for buf in bufs[1:]:
        g.read(buf)
    assert g.call("clEnqueueNDRangeKernel", command_queue=g.queue, kernel=kern, work_dim=1,
                  global_work_offset=None, global_work_size=[SIZE // 4], local_work_size=None,
                  num_events_in_wait_list=0)[0] == 0
    assert g.read(bufs[0]) == struct.pack("<I", 3 + 200) * (SIZE // 4)
    # Copies between two objects that cannot both have stayed.
    assert g.call("clEnqueueCopyBuffer", command_queue=g.queue, src_buffer=bufs[1],
                  dst_buffer=bufs[11], src_offset=0, dst_offset=0, size=SIZE,
                  num_events_in_wait_list=0)[0] == 0
    assert g.read(bufs[11]) == struct.pack("<I", 6) * (SIZE // 4)
    assert small.memory.stats.evictions > 0 and small.memory.stats.restores > 0


TWO_ARGS = b"""
__kernel void both(__global uint *a, __global uint *b, uint by) {
    size_t i = get_global_id(0);
    if (a) a[i] += by;
    if (b) b[i] += by;
}
"""


def test_a_launch_sets_again_an_argument_evicted_by_another_of_its_own(monkeypatch):
    """Making argument 0 resident for a launch evicts argument 1 (its slot is set to
    NULL), and the allocator may give argument 1, made again, its old address.  The
    launch must compare with what the slot holds now, not what it held before: here
    every object reads as one address, as if the allocator always reused it."""
    from host_backend import _residency
    real = _residency._addr
    monkeypatch.setattr(_residency, "_addr", lambda p: 0 if real(p) == 0 else 1)
    backend = OpenClBackend(device_memory=SIZE, host_store=1 << 20)
    try:
        g = Session(backend)
        kern = g.kernel(TWO_ARGS, b"both")
        a, b = g.buffer(bytes(SIZE)), g.buffer(bytes(SIZE))     # one fits: b evicts a
        for index, buf in ((0, a), (1, b)):     # a comes back for its argument, b for its
            assert g.call("clSetKernelArg", kernel=kern, arg_index=index,
                          arg_value=(api.KARG_MEM, buf))[0] == 0
        assert g.call("clSetKernelArg", kernel=kern, arg_index=2,
                      arg_value=(api.KARG_BYTES, struct.pack("<I", 5)))[0] == 0
        assert not g.mem(a).resident and g.mem(b).resident
        assert g.call("clEnqueueNDRangeKernel", command_queue=g.queue, kernel=kern, work_dim=1,
                      global_work_offset=None, global_work_size=[SIZE // 4],
                      local_work_size=None, num_events_in_wait_list=0)[0] == 0
        assert g.call("clFinish", command_queue=g.queue)[0] == 0
        assert g.read(a) == struct.pack("<I", 5) * (SIZE // 4)
        assert g.read(b) == struct.pack("<I", 5) * (SIZE // 4)
    finally:
        backend.close()


def test_sub_buffers_move_with_their_parent(small):
    g = Session(small)
    parent = g.buffer(pattern(1))
    sub = next(ids)
    region = struct.pack("<QQ", 4 * KIB, 4 * KIB)
    assert g.call("clCreateSubBuffer", sub, buffer=parent, flags=CL_MEM_READ_WRITE,
                  buffer_create_type=CL_BUFFER_CREATE_TYPE_REGION, buffer_create_info_size=16,
                  buffer_create_info=region)[0] == 0
    refs_before = g.info("clGetMemObjectInfo", parent, CL_MEM_REFERENCE_COUNT, 4)
    assert g.call("clReleaseMemObject", memobj=parent)[0] == 0    # the sub-buffer holds it
    others = push_out(g, sub)
    assert g.read(sub, size=4 * KIB) == pattern(1)[4 * KIB:8 * KIB]
    assert g.write(sub, b"through the sub-buffer") == 0
    for buf in others:
        g.read(buf)
    got = g.read(sub, size=4 * KIB)
    assert got[:22] == b"through the sub-buffer" and got[22:] == pattern(1)[4 * KIB + 22:8 * KIB]
    assert refs_before == 2
    assert g.call("clReleaseMemObject", memobj=sub)[0] == 0
    assert not g.has_mem(sub) and not g.has_mem(parent)


def test_flags_and_reference_counts_read_back_as_native(small):
    g = Session(small)
    buf = g.buffer(None, flags=CL_MEM_READ_WRITE)
    assert g.call("clRetainMemObject", memobj=buf)[0] == 0
    ctx_refs = g.info("clGetContextInfo", g.ctx, CL_CONTEXT_REFERENCE_COUNT, 4)
    others = push_out(g, buf)
    ctx_refs += len(others)             # each buffer holds its context
    # The guest's count moves while the object waits in the host store.
    assert g.call("clRetainMemObject", memobj=buf)[0] == 0
    assert g.call("clReleaseMemObject", memobj=buf)[0] == 0
    assert not g.mem(buf).resident
    assert g.info("clGetContextInfo", g.ctx, CL_CONTEXT_REFERENCE_COUNT, 4) == ctx_refs
    assert g.info("clGetMemObjectInfo", buf, CL_MEM_FLAGS) == CL_MEM_READ_WRITE
    assert g.mem(buf).restored
    assert g.info("clGetMemObjectInfo", buf, CL_MEM_REFERENCE_COUNT, 4) == 2
    assert g.info("clGetContextInfo", g.ctx, CL_CONTEXT_REFERENCE_COUNT, 4) == ctx_refs
    del others


def test_contents_the_host_may_not_read_still_move(small):
    g = Session(small)
    kern = g.kernel()
    hidden = g.buffer(None, flags=CL_MEM_READ_WRITE | CL_MEM_HOST_NO_ACCESS)
    assert g.call("clEnqueueFillBuffer", command_queue=g.queue, buffer=hidden,
                  pattern=struct.pack("<I", 7), pattern_size=4, offset=0, size=SIZE,
                  num_events_in_wait_list=0)[0] == 0
    assert g.launch(kern, hidden, 1) == 0
    assert g.call("clFinish", command_queue=g.queue)[0] == 0
    others = push_out(g, hidden)
    probe = g.buffer(bytes(SIZE))
    assert g.call("clEnqueueCopyBuffer", command_queue=g.queue, src_buffer=hidden,
                  dst_buffer=probe, src_offset=0, dst_offset=0, size=SIZE,
                  num_events_in_wait_list=0)[0] == 0
    assert g.read(probe) == struct.pack("<I", 8) * (SIZE // 4)
    del others


def test_a_buffer_in_use_by_a_command_in_flight_stays(small):
    """A write gated by a user event: its buffer must stay however much else is made
    meanwhile (released, it would lose the write)."""
    g = Session(small)
    target = g.buffer(bytes(SIZE))
    gate, done = next(ids), next(ids)
    assert g.call("clCreateUserEvent", gate, context=g.ctx)[0] == 0
    gated = next(ids)           # its own queue: the reads below must not wait behind it
    assert g.call("clCreateCommandQueue", gated, context=g.ctx, device=g.dev, properties=0)[0] == 0
    data = pattern(9)
    assert g.write(target, data, event=done, wait=[gate], blocking=0, queue=gated) == 0
    others = [g.buffer(pattern(i)) for i in range(8)]
    for buf in others:
        g.read(buf)
    assert g.mem(target).resident
    assert small.memory.stats.evictions > 0
    assert g.call("clSetUserEventStatus", event=gate, execution_status=0)[0] == 0
    assert g.call("clWaitForEvents", num_events=1, event_list=[done])[0] == 0
    for buf in others:
        g.read(buf)
    assert not g.mem(target).resident, "idle again: it may go"
    assert g.read(target) == data


def test_an_in_order_queue_keeps_one_event_per_buffer(small):
    """Commands on an in-order queue end in order: a buffer that several of them use
    keeps only the newest one's event, and stays until that one ends.  On an
    out-of-order queue each command's event is kept."""
    g = Session(small)
    kern = g.kernel()
    ones = struct.pack("<I", 1) * (SIZE // 4)
    for properties, kept in ((0, 1), (1, 6)):       # 1: CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE
        target = g.buffer(bytes(SIZE))
        gate, queue = next(ids), next(ids)
        assert g.call("clCreateUserEvent", gate, context=g.ctx)[0] == 0
        assert g.call("clCreateCommandQueue", queue, context=g.ctx, device=g.dev,
                      properties=properties)[0] == 0
        assert g.write(target, ones, event=next(ids), wait=[gate], blocking=0, queue=queue) == 0
        assert g.call("clSetKernelArg", kernel=kern, arg_index=0,
                      arg_value=(api.KARG_MEM, target))[0] == 0
        assert g.call("clSetKernelArg", kernel=kern, arg_index=1,
                      arg_value=(api.KARG_BYTES, struct.pack("<I", 2)))[0] == 0
        try:
            for _ in range(5):
                assert g.call("clEnqueueNDRangeKernel", command_queue=queue, kernel=kern,
                              work_dim=1, global_work_offset=None,
                              global_work_size=[SIZE // 4], local_work_size=None,
                              num_events_in_wait_list=1, event_wait_list=[gate])[0] == 0
            busy = len(g.mem(target).busy)
            others = [g.buffer(pattern(i)) for i in range(8)]
            for buf in others:
                g.read(buf)
            stayed = g.mem(target).resident
        finally:        # (commands left waiting on a user event make PoCL abort at exit)
            assert g.call("clSetUserEventStatus", event=gate, execution_status=0)[0] == 0
            assert g.call("clFinish", command_queue=queue)[0] == 0
        assert busy == kept, properties
        assert stayed, "its commands waited on the gate: it stays"
        want = struct.pack("<I", 11) if properties == 0 else None
        got = g.read(target)
        if want is not None:
            assert got == want * (SIZE // 4)
        else:       # out of order: the write and the launches in any order
            assert set(struct.unpack(f"<{SIZE // 4}I", got)) <= {1, 3, 5, 7, 9, 11}
        del others


def test_past_the_host_store_allocations_fail_as_on_a_full_device(small):
    g = Session(small)
    made = []
    while True:
        buf = g.buffer(pattern(len(made), 64 * KIB), size=64 * KIB)
        if buf < 0:
            break
        made.append(buf)
        assert len(made) < 64
    assert buf == CL_MEM_OBJECT_ALLOCATION_FAILURE
    assert len(made) == (CAPACITY + (1 << 20)) // (64 * KIB)
    assert small.memory.stats.refused == 1
    # Still serving: a release makes room again.
    assert g.call("clReleaseMemObject", memobj=made.pop())[0] == 0
    assert g.buffer(None, size=64 * KIB) > 0
    assert g.read(made[0], size=64 * KIB) == pattern(0, 64 * KIB)


def test_images_are_evicted_and_restored(small):
    g = Session(small)
    fmt = {"image_channel_order": 0x10B5, "image_channel_data_type": 0x10D2}   # RGBA, UNORM_INT8
    desc = {"image_type": api.CL_MEM_OBJECT_IMAGE2D, "image_width": 64, "image_height": 64}
    data = pattern(3, 64 * 64 * 4)
    img = next(ids)
    assert g.call("clCreateImage", img, context=g.ctx, flags=CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                  image_format=fmt, image_desc=desc, host_ptr=data)[0] == 0
    others = push_out(g, img)
    at = 2 << 20
    status = g.with_dma("clEnqueueReadImage", command_queue=g.queue, image=img, blocking_read=1,
                        origin=[0, 0, 0], region=[64, 64, 1], row_pitch=0, slice_pitch=0,
                        ptr=(api.HOSTDATA_RANGE, at, len(data)), num_events_in_wait_list=0)
    assert status == 0
    assert bytes(g.dma.ram[at:at + len(data)]) == data
    assert g.info("clGetMemObjectInfo", img, CL_MEM_FLAGS) == CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR
    del others


def test_a_dead_owner_leaves_nothing_in_the_host_store(small):
    g = Session(small)
    for i in range(10):
        g.buffer(pattern(i))
    assert small.memory.stored_bytes > 0
    small.release_queue(0, g.owner, last=True)
    assert small.memory.stored_bytes == 0 and small.memory.resident_bytes == 0
    assert not small.memory.mems


def test_large_contents_wait_in_unlinked_swap_files(tmp_path):
    b = OpenClBackend(device_memory=CAPACITY, swap_dir=str(tmp_path))
    b.memory.spill = SIZE           # every buffer here is "large"
    try:
        g = Session(b)
        bufs = [g.buffer(pattern(i)) for i in range(8)]
        away = [m for m in b.memory.mems.values() if not m.resident]
        assert away and all(not isinstance(m.saved, bytearray) for m in away)
        assert os.listdir(tmp_path) == [], "unlinked: nothing left behind, whatever happens"
        for i, buf in enumerate(bufs):
            assert g.read(buf) == pattern(i)
    finally:
        b.close()


def test_the_guest_sees_the_memory_it_is_promised():
    b = OpenClBackend(device_memory=CAPACITY, guest_memory=3 << 30)
    try:
        g = Guest(b)
        dev = g.device()
        for param, want in ((0x101F, 3 << 30), (0x1010, None)):     # GLOBAL_MEM, MAX_ALLOC
            status, out = g.call("clGetDeviceInfo", object=dev, param_name=param,
                                 param_value_size=8, param_value=8)
            assert status == 0
            value = int.from_bytes(out["param_value"], "little")
            assert value == want if want else 0 < value <= 3 << 30
        status, out = g.call("clGetDeviceInfo", object=dev, param_name=0x101F,
                             param_value_size=4, param_value=4)
        assert status == -30, "a short buffer is refused as natively"
    finally:
        b.close()


def test_a_queue_is_asked_its_order_once_and_a_new_one_at_the_same_address_again(small):
    """Launches ask whether their queue runs in order (``DeviceMemory._in_order``) once
    per queue.  A queue made later at the address of one released is another pointer
    object: it is asked again, not answered for the one before (an out-of-order queue
    taken for in order would drop events of commands still running)."""
    g = Session(small)
    queue = next(ids)
    assert g.call("clCreateCommandQueue", queue, context=g.ctx, device=g.dev,
                  properties=1)[0] == 0        # CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE
    ptr = small.handles.entry(key(queue, g.owner)).ptr
    address = int(ffi.cast("uintptr_t", ptr))
    assert small.memory.in_order(ptr) == 0
    own = small.handles.entry(key(g.queue, g.owner)).ptr
    assert small.memory.in_order(own) == int(ffi.cast("uintptr_t", own)), "in order"
    # What an in-order queue released at this address left, as the cache holds it.
    small.memory._queue_order[address] = (ffi.cast("cl_command_queue", address), address)
    assert small.memory.in_order(ptr) == 0
    assert small.memory._queue_order[address] == (ptr, 0)
    assert g.call("clReleaseCommandQueue", command_queue=queue)[0] == 0


def test_a_small_blocking_transfer_of_a_buffer_in_the_host_store_goes_to_a_worker(small):
    """A small blocking transfer on an idle queue runs on the ring poller
    (``execute_settled``) only for a buffer on the device: one waiting in the host
    store is made again first, which may move others and take long, so it goes to a
    worker as any blocking call; through that path it reads and writes exactly."""
    from test_fast_path import _settled
    g = Session(small)
    data = pattern(7)
    buf = g.buffer(data)
    others = push_out(g, buf)
    assert not g.mem(buf).resident
    read, write = F["clEnqueueReadBuffer"], F["clEnqueueWriteBuffer"]
    at = 1 << 20
    common = dict(command_queue=g.queue, buffer=buf, offset=0, size=4096,
                  ptr=(api.HOSTDATA_RANGE, at, 4096), num_events_in_wait_list=0,
                  event_wait_list=None, event=0)
    before = small.settled_calls
    assert _settled(small, read, encode(read, blocking_read=1, **common), g.owner, g.dma) is None
    assert _settled(small, write, encode(write, blocking_write=1, **common), g.owner,
                    g.dma) is None
    assert small.settled_calls == before and not g.mem(buf).resident, "nothing ran"
    assert g.read(buf) == data, "the worker's path brings it back, exactly"
    # Back on the device and the queue idle: the poller's again.
    assert g.mem(buf).resident
    assert _settled(small, read, encode(read, blocking_read=1, **common), g.owner,
                    g.dma)[0] == 0
    assert bytes(g.dma.ram[at:at + 4096]) == data[:4096] and small.settled_calls == before + 1
    del others
