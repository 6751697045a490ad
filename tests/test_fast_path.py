"""The info queries' fast path (host_backend/_fastpath.py) answers byte for byte as
the interpreter does, for good and bad input alike, and takes the interpreter's
path for what it does not answer itself."""

import itertools
import struct

import pytest
from clwire import FakeDma, decode, encode
from test_opencl_backend import Guest

from host_backend import OpenClBackend
from host_backend._cl import lib
from host_backend._fastpath import InfoQuery
from host_backend._handles import key
from host_backend._opencl import SETTLED_TRANSFER_MAX
from host_backend._queue_tails import QueueTails
from protocols import opencl_api as api
from vdev._backend import CommandContext

F = api.BY_NAME
ids = itertools.count(50_000)
CL_CONTEXT_REFERENCE_COUNT = 0x1080
CL_PROGRAM_BUILD_OPTIONS = 0x1182
CL_MEM_READ_WRITE = 1
CL_EVENT_COMMAND_EXECUTION_STATUS = 0x11D3

#: Each fast-pathed query, its object argument's kind, and the params tried: its
#: cl.h range and a few around it, and values no query knows.
PARAMS = {
    "clGetPlatformInfo": range(0x08FE, 0x090A),
    "clGetDeviceInfo": range(0x0FFE, 0x1075),
    "clGetContextInfo": range(0x107E, 0x1087),
    "clGetCommandQueueInfo": range(0x108E, 0x109A),
    "clGetEventInfo": range(0x11CE, 0x11D6),
    "clGetKernelInfo": range(0x118E, 0x1197),
    "clGetKernelWorkGroupInfo": range(0x11AE, 0x11B7),
    "clGetProgramBuildInfo": range(0x117F, 0x1187),
    "clGetSamplerInfo": range(0x114E, 0x115A),
}
ODD_PARAMS = (0, 0xFFFF, 0xFFFFFFFF, 1 << 32)
#: (param_value_size, param_value capacity, size_ret wanted)
SIZES = ((0, None, True), (4, 4, True), (8, 8, False), (1, 1, True), (4096, 4096, True),
         (8, None, False))


def info_objects(g):
    """One object of each kind the info queries name, made by ``g``: {query: the
    arguments naming its object}.  A sampler only where the device supports images."""
    ctx, dev = g.context()
    platform = g.platform()
    queue, prog, kern, buf, event, sampler = (next(ids) for _ in range(6))
    assert g.call("clCreateCommandQueue", queue, context=ctx, device=dev, properties=0)[0] == 0
    src = b"__kernel void twice(__global int *a) { a[get_global_id(0)] *= 2; }"
    assert g.call("clCreateProgramWithSource", prog, context=ctx, count=1, strings=[src])[0] == 0
    assert g.call("clBuildProgram", program=prog, num_devices=1, device_list=[dev],
                  options=b"-cl-std=CL1.2\0")[0] == 0
    assert g.call("clCreateKernel", kern, program=prog, kernel_name=b"twice\0")[0] == 0
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE, size=4096,
                  host_ptr=None)[0] == 0
    assert g.call("clEnqueueMarkerWithWaitList", command_queue=queue,
                  num_events_in_wait_list=0, event_wait_list=None, event=event)[0] == 0
    assert g.call("clFinish", command_queue=queue)[0] == 0
    status, _ = g.call("clCreateSampler", sampler, context=ctx, normalized_coords=0,
                       addressing_mode=0x1132, filter_mode=0x1140)
    objects = {"clGetPlatformInfo": dict(object=platform), "clGetDeviceInfo": dict(object=dev),
               "clGetContextInfo": dict(object=ctx), "clGetCommandQueueInfo": dict(object=queue),
               "clGetEventInfo": dict(object=event), "clGetKernelInfo": dict(object=kern),
               "clGetKernelWorkGroupInfo": dict(object=kern, device=dev),
               "clGetProgramBuildInfo": dict(object=prog, device=dev)}
    if status == 0:         # PoCL may lack image support
        objects["clGetSamplerInfo"] = dict(object=sampler)
    return objects


@pytest.fixture(scope="module")
def world():
    backend = OpenClBackend()
    backend.prepare()
    g = Guest(backend, owner=7)
    objects = info_objects(g)
    yield backend, g, objects
    backend.close()


def _outcome(backend, fn, payload, owner):
    try:
        return backend.call(fn, payload, owner)
    except Exception as exc:        # the interpreter's WireError (a transport error)
        return type(exc).__name__


def both_paths(backend, fn, payload, owner):
    """The outcome (the reply, or the error that ends the call) by the fast path and by
    the interpreter, and whether the fast path answered."""
    before = backend.fast_calls
    fast = _outcome(backend, fn, payload, owner)
    answered = backend.fast_calls > before
    backend.fast_path = False
    try:
        slow = _outcome(backend, fn, payload, owner)
    finally:
        backend.fast_path = True
    return fast, slow, answered


def test_every_plain_info_query_has_a_fast_path(world):
    backend = world[0]
    for name in PARAMS:
        assert isinstance(backend._fast_path_of(F[name]), InfoQuery), name
    for name in ("clGetKernelArgInfo", "clGetProgramInfo", "clGetMemObjectInfo",
                 "clGetImageInfo", "clCreateBuffer", "clFinish"):
        assert backend._fast_path_of(F[name]) is None, f"{name} is not a plain info query"


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_replies_match_the_interpreter(world, name):
    backend, g, objects = world
    if name not in objects:
        pytest.fail(f"no object for {name}: the fixture could not make one")
    fn = F[name]
    answered = 0
    for param in [*PARAMS[name], *ODD_PARAMS]:
        for size, cap, size_ret in SIZES:
            payload = encode(fn, **objects[name], param_name=param, param_value_size=size,
                             param_value=cap, param_value_size_ret=size_ret)
            fast, slow, took = both_paths(backend, fn, payload, g.owner)
            assert fast == slow, (name, hex(param), size, cap, size_ret)
            answered += took
    assert answered > len(PARAMS[name]), f"{name}: the fast path answered {answered} calls"


def test_bad_input_takes_the_interpreters_path(world):
    """Every kind of bad input gets the interpreter's answer: an unknown id, NULL,
    another process's object, an object of another type, a capacity that is not the
    size, a bad presence flag, a truncated or padded payload, a value too wide."""
    backend, g, objects = world
    fn = F["clGetContextInfo"]
    ctx = objects["clGetContextInfo"]["object"]
    good = dict(object=ctx, param_name=CL_CONTEXT_REFERENCE_COUNT, param_value_size=4,
                param_value=4, param_value_size_ret=True)
    fast, slow, took = both_paths(backend, fn, encode(fn, **good), g.owner)
    assert fast == slow and took, "the good call takes the fast path"
    words = list(struct.unpack("<5Q", encode(fn, **good)))
    cases = {
        "unknown id": dict(good, object=ctx + 1000),
        "NULL": dict(good, object=0),
        "a queue's id": dict(good, object=objects["clGetCommandQueueInfo"]["object"]),
    }
    for why, values in cases.items():
        fast, slow, took = both_paths(backend, fn, encode(fn, **values), g.owner)
        assert fast == slow and not took, why
        assert struct.unpack_from("<q", fast)[0] == -34, f"{why}: CL_INVALID_CONTEXT"
    raw = {
        "capacity is not the size": encode(fn, **dict(good, param_value=8)),
        "bad presence flag": struct.pack("<5Q", *words[:4], 7),
        "param wider than cl_uint": struct.pack("<5Q", words[0], 1 << 32 | words[1], *words[2:]),
        "truncated": encode(fn, **good)[:-8],
        "stray bytes": encode(fn, **good) + b"\1" + bytes(7),
    }
    for why, payload in raw.items():
        fast, slow, took = both_paths(backend, fn, payload, g.owner)
        assert fast == slow and not took, why
    other = Guest(backend, owner=g.owner + 1)
    fast, slow, took = both_paths(backend, fn, encode(fn, **good), other.owner)
    assert fast == slow and not took and struct.unpack_from("<q", fast)[0] == -34, \
        "another process's context is an invalid context, also on the fast path"


def test_hooked_params_ask_first(world):
    """A context's reference count takes the fast path while nothing has left the
    device; the build options (which the host edits) never do."""
    backend, g, objects = world
    fn = F["clGetContextInfo"]
    payload = encode(fn, **objects["clGetContextInfo"], param_name=CL_CONTEXT_REFERENCE_COUNT,
                     param_value_size=4, param_value=4, param_value_size_ret=None)
    assert not backend.memory.adjusts_context_counts
    assert both_paths(backend, fn, payload, g.owner)[2]
    fn = F["clGetProgramBuildInfo"]
    payload = encode(fn, **objects["clGetProgramBuildInfo"], param_name=CL_PROGRAM_BUILD_OPTIONS,
                     param_value_size=256, param_value=256, param_value_size_ret=True)
    fast, slow, took = both_paths(backend, fn, payload, g.owner)
    assert fast == slow and not took
    assert b"kernel-arg-info" not in fast, "the host's own build option stays hidden"


def test_the_fast_path_is_built_from_the_spec():
    """Its layout is the spec's: one word per argument, the buffer after its size."""
    query = InfoQuery.for_function(F["clGetKernelWorkGroupInfo"], frozenset())
    assert query is not None and query._layout.size == 8 * len(F["clGetKernelWorkGroupInfo"].args)
    assert [obj for _, obj in query._handles] == ["cl_kernel", "cl_device_id"]
    assert InfoQuery.for_function(F["clGetMemObjectInfo"], frozenset()) is None, \
        "memory objects may wait in the host store: the interpreter restores them"


def test_kernel_arguments_match_the_interpreter(world):
    """clSetKernelArg's fast path: the same status as the interpreter's for each kind
    of argument, good and bad, and the same record of which memory object each
    argument names (what brings evicted objects back before a launch)."""
    backend, g, objects = world
    fn = F["clSetKernelArg"]
    kern = objects["clGetKernelInfo"]["object"]
    kernel_key = (g.owner + 1) << 64 | kern
    ctx = objects["clGetContextInfo"]["object"]
    buf = next(ids)
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE, size=64,
                  host_ptr=None)[0] == 0
    stranger = Guest(backend, owner=g.owner + 5)
    sctx, _ = stranger.context()
    foreign = next(ids)
    assert stranger.call("clCreateBuffer", foreign, context=sctx, flags=CL_MEM_READ_WRITE,
                         size=64, host_ptr=None)[0] == 0
    cases = {
        "a buffer": dict(kernel=kern, arg_index=0, arg_value=(api.KARG_MEM, buf)),
        "bytes where a buffer goes": dict(kernel=kern, arg_index=0,
                                          arg_value=(api.KARG_BYTES, b"\1" * 8)),
        "NULL bytes where a buffer goes": dict(kernel=kern, arg_index=0,
                                               arg_value=(api.KARG_BYTES, bytes(8))),
        "short bytes": dict(kernel=kern, arg_index=0, arg_value=(api.KARG_BYTES, b"\1" * 4)),
        "an index past the last": dict(kernel=kern, arg_index=7,
                                       arg_value=(api.KARG_MEM, buf)),
        "another process's buffer": dict(kernel=kern, arg_index=0,
                                         arg_value=(api.KARG_MEM, foreign)),
        "an unknown buffer": dict(kernel=kern, arg_index=0,
                                  arg_value=(api.KARG_MEM, buf + 999)),
        "NULL buffer id": dict(kernel=kern, arg_index=0, arg_value=(api.KARG_MEM, 0)),
        "an unknown kernel": dict(kernel=kern + 999, arg_index=0,
                                  arg_value=(api.KARG_MEM, buf)),
        "local memory": dict(kernel=kern, arg_index=0, arg_value=(api.KARG_LOCAL, 64)),
        "the buffer again": dict(kernel=kern, arg_index=0, arg_value=(api.KARG_MEM, buf)),
    }
    reset = encode(fn, kernel=kern, arg_index=0, arg_value=(api.KARG_BYTES, bytes(8)))
    answered = 0
    for why, values in cases.items():
        payload = encode(fn, **values)
        fast, slow, took = both_paths(backend, fn, payload, g.owner)
        assert fast == slow, why
        answered += took
        records = []
        for fast_on in (False, True):
            backend.fast_path = False       # the same state before each: by the interpreter
            try:
                backend.call(fn, reset, g.owner)
                assert kernel_key not in backend.memory._kernel_args or \
                    0 not in backend.memory._kernel_args[kernel_key]
                backend.fast_path = fast_on
                backend.call(fn, payload, g.owner)
            finally:
                backend.fast_path = True
            records.append(dict(backend.memory._kernel_args.get(kernel_key, {})))
        assert records[0] == records[1], why
    assert answered >= 3, "a buffer, the buffer again, short bytes: the fast path's"
    raw = encode(fn, **cases["a buffer"])
    for why, payload in {"truncated": raw[:-8], "stray bytes": raw + b"\1" + bytes(7),
                         "a bad tag": raw[:24] + struct.pack("<Q", 9) + raw[32:]}.items():
        fast, slow, took = both_paths(backend, fn, payload, g.owner)
        assert fast == slow and not took, why


def _settled(backend, fn, payload, owner, dma=None):
    """``execute_settled`` on a command carrying ``payload`` (at 0 of ``dma``, which
    may hold the application data it names): (status, reply) or None (the call would
    go to a worker thread)."""
    dma = dma or FakeDma()
    dma.ram[0:len(payload)] = payload
    ctx = CommandContext(dma, queue=0, owner=owner)
    ctx.opcode, ctx.flags = fn.opcode, 0
    ctx.payload_addr, ctx.payload_len, ctx.reply_addr, ctx.reply_len = 0, len(payload), 4096, 256
    answer = backend.execute_settled(ctx)
    if answer is None:
        return None
    status, length = answer
    assert status == 0
    return struct.unpack_from("<q", dma.ram, 4096)[0], bytes(dma.ram[4096:4096 + length])


def test_blocking_calls_that_need_not_wait_are_answered_at_once(world):
    """A clFinish of an idle queue and a clWaitForEvents of ended events are answered on
    the ring poller, with the implementation's status (an event that failed too); a
    queue with a command still waiting, an event not ended, an unknown id go to a
    worker thread as before."""
    backend, g, objects = world
    # Long enough for an idle queue's marker to end on a loaded machine (the poller
    # waits for it at most this long; its own bound is tens of microseconds).
    backend.settle_poll_s = 2.0
    queue = objects["clGetCommandQueueInfo"]["object"]
    ctx = objects["clGetContextInfo"]["object"]
    finish, wait = F["clFinish"], F["clWaitForEvents"]
    assert _settled(backend, finish, encode(finish, command_queue=queue), g.owner)[0] == 0
    ended = objects["clGetEventInfo"]["object"]
    assert _settled(backend, wait, encode(wait, num_events=1, event_list=[ended]), g.owner)[0] == 0
    gate, behind, failed = next(ids), next(ids), next(ids)
    assert g.call("clCreateUserEvent", gate, context=ctx)[0] == 0
    assert _settled(backend, wait, encode(wait, num_events=1, event_list=[gate]), g.owner) is None
    assert g.call("clEnqueueMarkerWithWaitList", command_queue=queue, num_events_in_wait_list=1,
                  event_wait_list=[gate], event=behind)[0] == 0
    assert _settled(backend, finish, encode(finish, command_queue=queue), g.owner) is None, \
        "a command waits on the user event: the finish must wait too"
    assert _settled(backend, finish, encode(finish, command_queue=queue + 999), g.owner) is None
    assert g.call("clSetUserEventStatus", event=gate, execution_status=0)[0] == 0
    assert g.call("clFinish", command_queue=queue)[0] == 0
    assert g.call("clCreateUserEvent", failed, context=ctx)[0] == 0
    assert g.call("clSetUserEventStatus", event=failed, execution_status=-5)[0] == 0
    status, _ = _settled(backend, wait, encode(wait, num_events=2, event_list=[ended, failed]),
                         g.owner)
    backend.fast_path = False
    try:
        assert status == g.call("clWaitForEvents", num_events=2, event_list=[ended, failed])[0]
    finally:
        backend.fast_path = True
    assert status == -14, "CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST, as natively"
    assert _settled(backend, F["clGetContextInfo"], b"", g.owner) is None, "only blocking calls"


def _transfer_settled(backend, fn, owner, dma, **values):
    """``_settled`` on a buffer transfer whose data lies at 0x10000 of ``dma``."""
    return _settled(backend, fn, encode(fn, **values), owner, dma)


def test_small_blocking_transfers_on_an_idle_queue_run_at_once(world):
    """A blocking clEnqueueWriteBuffer / clEnqueueReadBuffer of at most 1 MiB of one
    guest range, with no wait list, on an idle queue runs on the ring poller (a worker's
    hand-off cost more than the copy), with the implementation's status and bytes, an
    error included; a non-blocking one, one with a wait list, a larger one and one on a
    queue with a command still waiting go to a worker thread as before."""
    backend, g, objects = world
    backend.settle_poll_s = 2.0         # (a loaded machine: see the test above)
    queue = objects["clGetCommandQueueInfo"]["object"]
    ctx = objects["clGetContextInfo"]["object"]
    buf = next(ids)
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE, size=8192,
                  host_ptr=None)[0] == 0
    write, read = F["clEnqueueWriteBuffer"], F["clEnqueueReadBuffer"]
    dma = FakeDma()
    data = bytes((i * 13) & 0xFF for i in range(4096))
    dma.ram[0x10000:0x10000 + 4096] = data
    common = dict(command_queue=queue, buffer=buf, offset=4096, size=4096,
                  ptr=(api.HOSTDATA_RANGE, 0x10000, 4096), num_events_in_wait_list=0,
                  event_wait_list=None, event=0)
    before = backend.settled_calls
    assert _transfer_settled(backend, write, g.owner, dma, blocking_write=1, **common)[0] == 0
    dma.ram[0x10000:0x10000 + 4096] = bytes(4096)
    assert _transfer_settled(backend, read, g.owner, dma, blocking_read=1, **common)[0] == 0
    assert bytes(dma.ram[0x10000:0x10000 + 4096]) == data
    assert backend.settled_calls == before + 2
    # Past the buffer's end: the implementation's status, as a worker would have had it.
    past = dict(common, offset=8192 - 100)
    status = _transfer_settled(backend, read, g.owner, dma, blocking_read=1, **past)[0]
    native = decode(read, backend.call(read, encode(read, blocking_read=1, **past), g.owner,
                                       dma))[0]
    assert status == native == -30, "CL_INVALID_VALUE"
    # What must wait, or may: a worker's.
    assert _transfer_settled(backend, write, g.owner, dma, blocking_write=0, **common) is None
    too_big = SETTLED_TRANSFER_MAX + 4096
    big = dict(common, offset=0, size=too_big, ptr=(api.HOSTDATA_RANGE, 0x10000, too_big))
    assert _transfer_settled(backend, write, g.owner, dma, blocking_write=1, **big) is None
    ended = objects["clGetEventInfo"]["object"]
    waits = dict(common, num_events_in_wait_list=1, event_wait_list=[ended])
    assert _transfer_settled(backend, write, g.owner, dma, blocking_write=1, **waits) is None
    gate, behind = next(ids), next(ids)
    assert g.call("clCreateUserEvent", gate, context=ctx)[0] == 0
    assert g.call("clEnqueueMarkerWithWaitList", command_queue=queue, num_events_in_wait_list=1,
                  event_wait_list=[gate], event=behind)[0] == 0
    assert _transfer_settled(backend, write, g.owner, dma, blocking_write=1, **common) is None, \
        "a command waits on the user event: the write must wait too"
    assert g.call("clSetUserEventStatus", event=gate, execution_status=0)[0] == 0
    assert g.call("clFinish", command_queue=queue)[0] == 0
    other = dict(common, buffer=buf + 999)
    assert _transfer_settled(backend, write, g.owner, dma, blocking_write=1, **other) is None, \
        "an unknown id: a worker's (the interpreter answers CL_INVALID_MEM_OBJECT there)"
    assert g.call("clReleaseMemObject", memobj=buf)[0] == 0


def _queue_tail(backend, queue_ptr):
    """The queue's recorded last command (``QueueTails``): None, or whether it ended."""
    with backend._lock:
        event = backend.tails.take(queue_ptr)
    if event is None:
        return None
    try:
        return backend._ended(event)
    finally:
        lib().clReleaseEvent(event)


def _ram_after(dma, at, n, run, *args, **kwargs):
    """``run(*args, **kwargs)``'s answer, and the ``n`` guest bytes at ``at`` after it
    (they start as a pattern each time, so a read that wrote nothing shows)."""
    dma.ram[at:at + n] = bytes((i * 7 + 1) & 0xFF for i in range(n))
    return run(*args, **kwargs), bytes(dma.ram[at:at + n])


def test_small_transfers_match_the_interpreter(world):
    """``SmallTransferCall`` (a small blocking transfer the poller runs without blocking,
    polling its event): the reply and the guest's bytes are the interpreter's blocking
    call's, for transfers that succeed and transfers the implementation refuses; ids it
    does not take itself (unknown, another owner's, NULL) go to a worker, whose
    interpreter answers them, as before."""
    backend, g, objects = world
    backend.settle_poll_s = 2.0
    queue = objects["clGetCommandQueueInfo"]["object"]
    ctx = objects["clGetContextInfo"]["object"]
    buf, stranger_buf = next(ids), next(ids)
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE, size=8192,
                  host_ptr=None)[0] == 0
    stranger = Guest(backend, owner=g.owner + 1)
    stranger_ctx = next(ids)
    assert stranger.call("clCreateContext", stranger_ctx, properties=None, num_devices=1,
                         devices=[objects["clGetKernelWorkGroupInfo"]["device"]])[0] == 0
    assert stranger.call("clCreateBuffer", stranger_buf, context=stranger_ctx,
                         flags=CL_MEM_READ_WRITE, size=8192, host_ptr=None)[0] == 0
    dma = FakeDma()
    at = 0x20000
    cases = {
        "the whole buffer": dict(offset=0, size=8192),
        "a part": dict(offset=4096, size=100),
        "past the end": dict(offset=8192 - 100, size=4096),
        "nothing": dict(offset=0, size=0),
        "an unknown buffer": dict(offset=0, size=64, buffer=buf + 999),
        "another owner's buffer": dict(offset=0, size=64, buffer=stranger_buf),
        "a NULL buffer": dict(offset=0, size=64, buffer=0),
        "an unknown queue": dict(offset=0, size=64, command_queue=queue + 999),
    }
    taken = 0
    for name, flag in (("clEnqueueWriteBuffer", "blocking_write"),
                       ("clEnqueueReadBuffer", "blocking_read")):
        fn = F[name]
        for why, case in cases.items():
            values = dict(command_queue=queue, buffer=buf, num_events_in_wait_list=0,
                          event_wait_list=None, event=0, **{flag: 1})
            values.update(case)
            values["ptr"] = (api.HOSTDATA_RANGE, at, values["size"])
            before = backend.fast_calls
            fast = _ram_after(dma, at, 8192, _transfer_settled, backend, fn, g.owner, dma,
                              **values)
            took = backend.fast_calls > before
            payload = encode(fn, **values)
            backend.fast_path = False
            try:
                slow = _ram_after(dma, at, 8192, backend.call, fn, payload, g.owner, dma)
            finally:
                backend.fast_path = True
            if why in ("a NULL buffer", "an unknown queue", "an unknown buffer",
                       "another owner's buffer"):
                assert fast[0] is None, f"{name}, {why}: a worker's, as before"
                continue
            assert fast[0] is not None, f"{name}, {why}: settled"
            assert fast[0][1] == slow[0], f"{name}, {why}: the reply"
            assert fast[1] == slow[1], f"{name}, {why}: the guest's bytes"
            taken += took
    assert taken == 8, "the fast path ran every transfer of the caller's own objects"
    for mem in backend.memory.mems.values():
        assert mem.in_call == 0, "no hold outlives its call"
    assert g.call("clReleaseMemObject", memobj=buf)[0] == 0
    assert stranger.call("clReleaseMemObject", memobj=stranger_buf)[0] == 0
    assert stranger.call("clReleaseContext", context=stranger_ctx)[0] == 0


def test_a_small_transfer_leaves_its_queue_idle_for_the_next(world):
    """A small transfer the poller ran ended before its reply: it is the queue's tail,
    so a finish, or the next small transfer, asks its event instead of a marker.  One
    with a guest event is a worker's, as before, and any other command on the queue
    hides the tail.  A bad guest range is the command's error, with no hold left."""
    backend, g, objects = world
    backend.settle_poll_s = 2.0
    queue = objects["clGetCommandQueueInfo"]["object"]
    ctx = objects["clGetContextInfo"]["object"]
    queue_ptr = backend.handles.entry(key(queue, g.owner)).ptr
    buf, event = next(ids), next(ids)
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE, size=4096,
                  host_ptr=None)[0] == 0
    write, finish = F["clEnqueueWriteBuffer"], F["clFinish"]
    dma = FakeDma()
    common = dict(command_queue=queue, buffer=buf, blocking_write=1, offset=0, size=4096,
                  ptr=(api.HOSTDATA_RANGE, 0x10000, 4096), num_events_in_wait_list=0,
                  event_wait_list=None)

    assert g.call("clFinish", command_queue=queue)[0] == 0
    assert _transfer_settled(backend, write, g.owner, dma, event=0, **common)[0] == 0
    assert _queue_tail(backend, queue_ptr) is True, "the transfer is the queue's tail, and it ended"
    # So a finish asks its event, which ended: settled even with no time to wait for
    # a marker.
    backend.settle_poll_s = 0.0
    try:
        assert _settled(backend, finish, encode(finish, command_queue=queue), g.owner)[0] == 0
    finally:
        backend.settle_poll_s = 2.0
    assert _transfer_settled(backend, write, g.owner, dma, event=event, **common) is None, \
        "a guest event: a worker's, as before"
    assert decode(write, backend.call(write, encode(write, event=event, **common), g.owner,
                                      dma))[0] == 0
    status, out = g.call("clGetEventInfo", object=event,
                         param_name=CL_EVENT_COMMAND_EXECUTION_STATUS, param_value_size=4,
                         param_value=4, param_value_size_ret=None)
    assert status == 0 and int.from_bytes(out["param_value"], "little") == 0, "CL_COMPLETE"
    assert _transfer_settled(backend, write, g.owner, dma, event=0, **common)[0] == 0
    assert _queue_tail(backend, queue_ptr) is True
    # Another command on the queue: no longer its tail.
    marker = next(ids)
    assert g.call("clEnqueueMarkerWithWaitList", command_queue=queue, num_events_in_wait_list=0,
                  event_wait_list=None, event=marker)[0] == 0
    assert _queue_tail(backend, queue_ptr) is None
    assert g.call("clReleaseEvent", event=marker)[0] == 0
    with pytest.raises(ValueError, match="outside guest memory"):
        _transfer_settled(backend, write, g.owner, dma, event=0,
                          **dict(common, ptr=(api.HOSTDATA_RANGE, len(dma.ram) - 100, 4096)))
    assert backend.memory.mems[key(buf, g.owner)].in_call == 0
    assert _transfer_settled(backend, write, g.owner, dma, event=0, **common)[0] == 0
    for handle, release in ((event, "clReleaseEvent"), (buf, "clReleaseMemObject")):
        arg = "event" if release == "clReleaseEvent" else "memobj"
        assert g.call(release, **{arg: handle})[0] == 0


def test_a_small_transfer_behind_another_threads_command_is_left_to_a_worker(world, monkeypatch):
    """Another thread's command may go onto the queue between the poller's idle check
    and the transfer's enqueue, and wait for a user event that only a later command
    sets.  The poller then stops polling the transfer after ``SPUN_POLL_S`` and returns
    the rest of it (the wait, then the reply) for a worker, holding the buffer and the
    guest memory meanwhile; once the user event is set, the rest answers CL_SUCCESS with
    the data written, and the transfer is the queue's tail."""
    from host_backend import _fastpath
    backend, g, objects = world
    monkeypatch.setattr(_fastpath, "SPUN_POLL_S", 0.01)
    queue = objects["clGetCommandQueueInfo"]["object"]
    ctx = objects["clGetContextInfo"]["object"]
    queue_ptr = backend.handles.entry(key(queue, g.owner)).ptr
    buf, gate, behind = next(ids), next(ids), next(ids)
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE, size=4096,
                  host_ptr=None)[0] == 0
    assert g.call("clFinish", command_queue=queue)[0] == 0
    assert g.call("clCreateUserEvent", gate, context=ctx)[0] == 0
    assert g.call("clEnqueueMarkerWithWaitList", command_queue=queue, num_events_in_wait_list=1,
                  event_wait_list=[gate], event=behind)[0] == 0
    write = F["clEnqueueWriteBuffer"]
    dma = FakeDma()
    data = bytes((i * 11) & 0xFF for i in range(4096))
    dma.ram[0x10000:0x10000 + 4096] = data
    payload = encode(write, command_queue=queue, buffer=buf, blocking_write=1, offset=0,
                     size=4096, ptr=(api.HOSTDATA_RANGE, 0x10000, 4096),
                     num_events_in_wait_list=0, event_wait_list=None, event=0)
    small = backend._small_transfers["clEnqueueWriteBuffer"]
    rest = small(backend, payload, g.owner, dma)
    assert callable(rest), "the transfer waits behind the gated marker: a worker's wait"
    mem = backend.memory.mems[key(buf, g.owner)]
    assert mem.in_call == 1, "the buffer stays held while the transfer may run"
    assert g.call("clSetUserEventStatus", event=gate, execution_status=0)[0] == 0
    assert struct.unpack("<q", rest())[0] == 0
    assert mem.in_call == 0
    assert _queue_tail(backend, queue_ptr) is True, "the transfer is the queue's tail"
    read = F["clEnqueueReadBuffer"]
    dma.ram[0x10000:0x10000 + 4096] = bytes(4096)
    assert decode(read, backend.call(read, encode(
        read, command_queue=queue, buffer=buf, blocking_read=1, offset=0, size=4096,
        ptr=(api.HOSTDATA_RANGE, 0x10000, 4096), num_events_in_wait_list=0,
        event_wait_list=None, event=0), g.owner, dma))[0] == 0
    assert bytes(dma.ram[0x10000:0x10000 + 4096]) == data
    for event in (gate, behind):
        assert g.call("clReleaseEvent", event=event)[0] == 0
    assert g.call("clReleaseMemObject", memobj=buf)[0] == 0


def test_a_marker_nothing_can_see_is_not_enqueued(world):
    """``NullMarkerCall``: a marker with no wait list and no event, on a queue of the
    caller's, is CL_SUCCESS without a command (the queue's tail stays what it was);
    one with an event or a wait list, an unknown queue, another owner's queue get the
    interpreter's answer, the same as with the fast path off."""
    backend, g, objects = world
    backend.settle_poll_s = 2.0
    fn = F["clEnqueueMarkerWithWaitList"]
    queue = objects["clGetCommandQueueInfo"]["object"]
    ctx = objects["clGetContextInfo"]["object"]
    queue_ptr = backend.handles.entry(key(queue, g.owner)).ptr
    ended = objects["clGetEventInfo"]["object"]
    stranger = Guest(backend, owner=g.owner + 1)
    stranger_ctx, stranger_queue, buf = next(ids), next(ids), next(ids)
    dev = objects["clGetKernelWorkGroupInfo"]["device"]
    assert stranger.call("clCreateContext", stranger_ctx, properties=None, num_devices=1,
                         devices=[dev])[0] == 0
    assert stranger.call("clCreateCommandQueue", stranger_queue, context=stranger_ctx,
                         device=dev, properties=0)[0] == 0
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE, size=4096,
                  host_ptr=None)[0] == 0
    write = F["clEnqueueWriteBuffer"]
    assert _transfer_settled(backend, write, g.owner, FakeDma(), command_queue=queue,
                             buffer=buf, blocking_write=1, offset=0, size=4096,
                             ptr=(api.HOSTDATA_RANGE, 0x10000, 4096),
                             num_events_in_wait_list=0, event_wait_list=None, event=0)[0] == 0

    def has_tail():
        return _queue_tail(backend, queue_ptr) is not None

    null = dict(command_queue=queue, num_events_in_wait_list=0, event_wait_list=None, event=0)
    assert has_tail()
    before = backend.fast_calls
    assert decode(fn, backend.call(fn, encode(fn, **null), g.owner))[0] == 0
    assert backend.fast_calls == before + 1 and has_tail(), "nothing was enqueued"
    cases = {
        "an unknown queue": dict(null, command_queue=queue + 999),
        "another owner's queue": dict(null, command_queue=stranger_queue),
        "a NULL queue": dict(null, command_queue=0),
        "a wait list": dict(null, num_events_in_wait_list=1, event_wait_list=[ended]),
        "an event": dict(null, event=next(ids)),
    }
    for why, values in cases.items():
        payload = encode(fn, **values)
        before = backend.fast_calls
        fast = backend.call(fn, payload, g.owner)
        assert backend.fast_calls == before, f"{why}: the interpreter's"
        if why == "an event":       # (a second call would claim the same id)
            assert decode(fn, fast)[0] == 0 and not has_tail(), "a command was enqueued"
            assert g.call("clReleaseEvent", event=values["event"])[0] == 0
            continue
        backend.fast_path = False
        try:
            slow = backend.call(fn, payload, g.owner)
        finally:
            backend.fast_path = True
        assert fast == slow, why
        if "queue" in why:
            assert decode(fn, fast)[0] == -36, f"{why}: CL_INVALID_COMMAND_QUEUE"
    assert g.call("clFinish", command_queue=queue)[0] == 0
    assert g.call("clReleaseMemObject", memobj=buf)[0] == 0
    assert stranger.call("clReleaseCommandQueue", command_queue=stranger_queue)[0] == 0
    assert stranger.call("clReleaseContext", context=stranger_ctx)[0] == 0


def test_launches_match_the_interpreter(world):
    """clEnqueueNDRangeKernel by the fast path: the status, the guest's event in the
    handle table, the memory objects kept busy until the launch ends and the kernel
    watch's events as by the interpreter, for launches that succeed and launches the
    implementation refuses; what it does not answer itself goes to the interpreter."""
    backend, g, objects = world
    fn = F["clEnqueueNDRangeKernel"]
    queue = objects["clGetCommandQueueInfo"]["object"]
    kern = objects["clGetKernelInfo"]["object"]
    ended = objects["clGetEventInfo"]["object"]
    ctx = objects["clGetContextInfo"]["object"]
    buf, unset = next(ids), next(ids)
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE, size=4096,
                  host_ptr=None)[0] == 0
    assert g.call("clSetKernelArg", kernel=kern, arg_index=0,
                  arg_value=(api.KARG_MEM, buf))[0] == 0
    src = b"__kernel void two(__global int *a, int b) { a[0] = b; }"
    prog = next(ids)
    assert g.call("clCreateProgramWithSource", prog, context=ctx, count=1, strings=[src])[0] == 0
    assert g.call("clBuildProgram", program=prog, num_devices=0, device_list=None,
                  options=b"\0")[0] == 0
    assert g.call("clCreateKernel", unset, program=prog, kernel_name=b"two\0")[0] == 0
    mem = backend.memory.mems[key(buf, g.owner)]

    def launch(event=0, **values):
        base = dict(command_queue=queue, kernel=kern, work_dim=1, global_work_offset=None,
                    global_work_size=[64], local_work_size=None, num_events_in_wait_list=0,
                    event_wait_list=None)
        base.update(values)
        return encode(fn, **base, event=event)

    def effects(payload, event):
        """The reply, whether the event entered the table, and the busy events added."""
        with backend._lock:
            assert backend.memory._settle(mem)      # ended: none left to count from
        busy = len(mem.busy)
        watched = len(backend.kernels._events) if backend.kernels is not None else 0
        reply = _outcome(backend, fn, payload, g.owner)
        assert g.call("clFinish", command_queue=queue)[0] == 0
        entered = bool(event) and key(event, g.owner) in backend.handles._entries
        now = len(backend.kernels._events) if backend.kernels is not None else 0
        return reply, entered, len(mem.busy) - busy, now - watched

    cases = {
        "plain": lambda e: launch(e),
        "offset and local size": lambda e: launch(e, work_dim=2, global_work_offset=[1, 2],
                                                  global_work_size=[8, 8], local_work_size=[4, 2]),
        "three dimensions": lambda e: launch(e, work_dim=3, global_work_size=[4, 4, 4]),
        "a wait list": lambda e: launch(e, num_events_in_wait_list=1, event_wait_list=[ended]),
        "a local size that does not divide": lambda e: launch(e, global_work_size=[10],
                                                             local_work_size=[3]),
        "a zero global size": lambda e: launch(e, global_work_size=[0]),
        "arguments left unset": lambda e: launch(e, kernel=unset),
    }
    answered = 0
    for watching in (False, True):
        if watching:
            backend.enable_kernel_watch()
        try:
            for why, make in cases.items():
                for with_event in (False, True):
                    outcomes = []
                    for fast_on in (True, False):
                        event = next(ids) if with_event else 0
                        before = backend.fast_calls
                        backend.fast_path = fast_on
                        try:
                            outcomes.append(effects(make(event), event))
                        finally:
                            backend.fast_path = True
                        answered += backend.fast_calls > before
                    assert outcomes[0] == outcomes[1], (why, with_event, watching)
        finally:
            backend.kernels = None
    assert answered == 2 * 2 * len(cases), "every case above is the fast path's"
    # Not the fast path's: the interpreter answers, as it did before.
    used = next(ids)
    assert g.call("clEnqueueMarkerWithWaitList", command_queue=queue,
                  num_events_in_wait_list=0, event_wait_list=None, event=used)[0] == 0
    raw = launch()
    odd = {
        "an unknown queue": launch(command_queue=queue + 999),
        "an unknown kernel": launch(kernel=kern + 999),
        "a NULL kernel": launch(kernel=0),
        "an event id in use": launch(used),
        "an unknown event to wait for": launch(num_events_in_wait_list=1,
                                               event_wait_list=[ended + 999]),
        "a count without a list": launch(num_events_in_wait_list=1),
        "an empty list with no count": launch(event_wait_list=[]),
        "work_dim 0": launch(work_dim=0, global_work_size=None),
        "work_dim 4": launch(work_dim=4, global_work_size=[1, 1, 1]),
        "more events to wait for than it takes": launch(num_events_in_wait_list=17,
                                                        event_wait_list=[ended] * 17),
        "truncated": raw[:-8],
        "stray bytes": raw + bytes(8),
    }
    for why, payload in odd.items():
        fast, slow, took = both_paths(backend, fn, payload, g.owner)
        assert fast == slow and not took, why
    # A shape seen before (its decoding is kept by its bytes) sent by another process:
    # the ids are not that process's, as for any launch.
    assert raw[:-8] in backend._fast[fn.opcode]._shapes
    fast, slow, took = both_paths(backend, fn, raw, g.owner + 1)
    assert fast == slow and not took and fast[:8] != bytes(8), "another owner's ids"


def test_a_finish_after_a_launch_asks_the_launchs_event(world):
    """A finish after a launch on an in-order queue asks the launch's event (the
    queue's tail), not a marker; any other command put on the queue since (here one
    held back by a user event) makes it ask again, so a finish never ends before a
    command that is still waiting.  Out-of-order queues and queues released keep no
    tail."""
    backend, g, objects = world
    backend.settle_poll_s = 2.0
    queue = objects["clGetCommandQueueInfo"]["object"]
    ctx, dev = objects["clGetContextInfo"]["object"], objects["clGetKernelWorkGroupInfo"]["device"]
    kern = objects["clGetKernelInfo"]["object"]
    buf = next(ids)
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE, size=4096,
                  host_ptr=None)[0] == 0
    assert g.call("clSetKernelArg", kernel=kern, arg_index=0,
                  arg_value=(api.KARG_MEM, buf))[0] == 0
    launch, finish = F["clEnqueueNDRangeKernel"], F["clFinish"]

    def launched(on):
        before = backend.fast_calls
        payload = encode(launch, command_queue=on, kernel=kern, work_dim=1,
                         global_work_offset=None, global_work_size=[64], local_work_size=None,
                         num_events_in_wait_list=0, event_wait_list=None, event=0)
        assert decode(launch, backend.call(launch, payload, g.owner))[0] == 0
        assert backend.fast_calls == before + 1, "the fast path's launch"
        return backend.handles.entry(key(on, g.owner)).ptr

    def tail(ptr):
        return _queue_tail(backend, ptr)

    assert g.call("clFinish", command_queue=queue)[0] == 0
    backend.enable_kernel_watch()       # as in an executor: every launch has an event
    try:
        ptr = launched(queue)
        assert tail(ptr) is not None
        assert _settled(backend, finish, encode(finish, command_queue=queue), g.owner)[0] == 0
        # Another command goes on the queue, held back by a user event: the launch is
        # no longer the queue's tail, and the finish must not end.
        gate = next(ids)
        assert g.call("clCreateUserEvent", gate, context=ctx)[0] == 0
        assert g.call("clEnqueueMarkerWithWaitList", command_queue=queue,
                      num_events_in_wait_list=1, event_wait_list=[gate], event=next(ids))[0] == 0
        assert tail(ptr) is None
        backend.settle_poll_s = 0.05
        assert _settled(backend, finish, encode(finish, command_queue=queue), g.owner) is None
        assert g.call("clSetUserEventStatus", event=gate, execution_status=0)[0] == 0
        assert g.call("clFinish", command_queue=queue)[0] == 0
        # Out of order: never a tail.  Released: its tail goes.
        ooo, other = next(ids), next(ids)
        assert g.call("clCreateCommandQueue", ooo, context=ctx, device=dev, properties=1)[0] == 0
        assert tail(launched(ooo)) is None
        assert g.call("clCreateCommandQueue", other, context=ctx, device=dev,
                      properties=0)[0] == 0
        other_ptr = launched(other)
        assert tail(other_ptr) is not None
        tails = len(backend.tails)
        for q in (ooo, other):
            assert g.call("clFinish", command_queue=q)[0] == 0
            assert g.call("clReleaseCommandQueue", command_queue=q)[0] == 0
        assert len(backend.tails) == tails - 1
    finally:
        backend.kernels = None
        backend.settle_poll_s = 2.0


def test_a_launch_enqueued_beside_another_command_is_no_tail(world):
    """``QueueTails.record``: a launch that another enqueue started beside (the
    epoch moved while it was enqueued) may not be the newest command: not recorded;
    one that nothing started beside is."""
    backend, g, objects = world
    queue = backend.handles.entry(key(objects["clGetCommandQueueInfo"]["object"], g.owner)).ptr
    event = backend.handles.entry(key(objects["clGetEventInfo"]["object"], g.owner)).ptr
    tails = QueueTails()
    try:
        epoch = tails.epoch
        tails.forget(queue)                 # another thread's command, meanwhile
        tails.record(queue, event, epoch, True)
        assert len(tails) == 0 and tails.take(queue) is None
        tails.record(queue, event, tails.epoch, True)
        assert len(tails) == 1
        taken = tails.take(queue)
        assert taken == event
        lib().clReleaseEvent(taken)
        tails.record(queue, event, tails.epoch, False)    # out of order: forgotten
        assert len(tails) == 0
    finally:
        tails.close()
