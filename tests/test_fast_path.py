"""The info queries' fast path (host_backend/_fastpath.py) answers byte for byte as
the interpreter does, for good and bad input alike, and takes the interpreter's
path for what it does not answer itself."""

import itertools
import struct

import pytest
from clwire import encode
from test_opencl_backend import Guest

from host_backend import OpenClBackend
from host_backend._fastpath import InfoQuery
from protocols import opencl_api as api

F = api.BY_NAME
ids = itertools.count(50_000)
CL_CONTEXT_REFERENCE_COUNT = 0x1080
CL_PROGRAM_BUILD_OPTIONS = 0x1182
CL_MEM_READ_WRITE = 1

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


@pytest.fixture(scope="module")
def world():
    backend = OpenClBackend()
    backend.prepare()
    g = Guest(backend, owner=7)
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
        assert backend._fast_path_of(F[name]) is not None, name
    for name in ("clGetKernelArgInfo", "clGetProgramInfo", "clGetMemObjectInfo",
                 "clGetImageInfo", "clSetKernelArg", "clCreateBuffer", "clFinish"):
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
