"""The OpenCL backend against the host's real OpenCL: spec-driven calls, handle
translation, exact status codes, isolation and cleanup."""

import itertools
import os
import struct
import time

import pytest
from clwire import FakeDma, decode, encode

from host_backend import OpenClBackend
from host_backend._args import SEGMENT_MIN_BYTES
from host_backend._handles import HOST_ID_BASE
from host_backend._handles import key as handle_key
from protocols import opencl_api as api

F = api.BY_NAME
CL_DEVICE_TYPE_ALL = 0xFFFFFFFF
CL_PLATFORM_NAME = 0x0902
CL_DEVICE_NAME = 0x102B
CL_DEVICE_PLATFORM = 0x1031
CL_CONTEXT_DEVICES = 0x1081
CL_CONTEXT_REFERENCE_COUNT = 0x1080
CL_MEM_SIZE = 0x1102
CL_MEM_CONTEXT = 0x1106
CL_MEM_READ_WRITE = 1
CL_MEM_COPY_HOST_PTR = 1 << 5
CL_PROGRAM_BUILD_LOG = 0x1183

ids = itertools.count(1)


class Guest:
    """One guest process (owner) talking to a backend."""

    def __init__(self, backend, owner=1000):
        self.backend = backend
        self.owner = owner

    def call(self, name, new_id=None, **values):
        fn = F[name]
        reply = self.backend.call(fn, encode(fn, new_id, **values), self.owner)
        return decode(fn, reply, **values)

    def platform(self):
        status, out = self.call("clGetPlatformIDs", num_entries=4, platforms=4, num_platforms=True)
        assert status == 0 and out["num_platforms"] >= 1
        return out["platforms"][0]

    def device(self):
        status, out = self.call("clGetDeviceIDs", platform=self.platform(),
                                device_type=CL_DEVICE_TYPE_ALL, num_entries=1, devices=1)
        assert status == 0
        return out["devices"][0]

    def context(self):
        dev = self.device()
        cid = next(ids)
        status, _ = self.call("clCreateContext", cid, properties=None, num_devices=1,
                              devices=[dev])
        assert status == 0
        return cid, dev


@pytest.fixture
def backend():
    b = OpenClBackend()
    yield b
    b.close()


def test_platform_and_device_queries(backend):
    g = Guest(backend)
    platform = g.platform()
    assert platform > HOST_ID_BASE, "enumerated objects get host ids, never pointers"
    status, out = g.call("clGetPlatformInfo", object=platform, param_name=CL_PLATFORM_NAME,
                         param_value_size=256, param_value=256, param_value_size_ret=True)
    assert status == 0 and out["param_value"].rstrip(b"\0")
    assert out["param_value_size_ret"] == len(out["param_value"])
    # Size query first, as real programs do.
    status, out = g.call("clGetPlatformInfo", object=platform, param_name=CL_PLATFORM_NAME,
                         param_value_size=0, param_value=None, param_value_size_ret=True)
    assert status == 0 and out["param_value_size_ret"] > 1
    device = g.device()
    status, out = g.call("clGetDeviceInfo", object=device, param_name=CL_DEVICE_PLATFORM,
                         param_value_size=8, param_value=8)
    assert status == 0 and int.from_bytes(out["param_value"], "little") == platform
    assert g.platform() == platform, "ids are stable"


def test_exact_status_codes_for_bad_arguments(backend):
    g = Guest(backend)
    platform = g.platform()
    # Too small a buffer: CL_INVALID_VALUE from the implementation itself.
    status, _ = g.call("clGetPlatformInfo", object=platform, param_name=CL_PLATFORM_NAME,
                       param_value_size=1, param_value=1)
    assert status == -30
    # Unknown param: CL_INVALID_VALUE.
    status, _ = g.call("clGetPlatformInfo", object=platform, param_name=0x7777,
                       param_value_size=8, param_value=8)
    assert status == -30
    # num_entries 0 with a non-NULL array: CL_INVALID_VALUE.
    status, _ = g.call("clGetPlatformIDs", num_entries=0, platforms=0)
    assert status == -30
    # Forged handles of each kind.
    assert g.call("clGetDeviceInfo", object=12345, param_name=CL_DEVICE_NAME,
                  param_value_size=8, param_value=8)[0] == -33
    assert g.call("clReleaseContext", context=999999)[0] == -34
    assert g.call("clGetDeviceInfo", object=platform, param_name=CL_DEVICE_NAME,
                  param_value_size=8, param_value=8)[0] == -33, "a platform id is not a device"


def test_context_buffer_lifecycle_and_info_translation(backend):
    g = Guest(backend)
    ctx, dev = g.context()
    status, out = g.call("clGetContextInfo", object=ctx, param_name=CL_CONTEXT_DEVICES,
                         param_value_size=8, param_value=8)
    assert status == 0 and int.from_bytes(out["param_value"], "little") == dev
    buf = next(ids)
    data = bytes(range(256)) * 4
    status, _ = g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                       size=len(data), host_ptr=data)
    assert status == 0
    status, out = g.call("clGetMemObjectInfo", object=buf, param_name=CL_MEM_CONTEXT,
                         param_value_size=8, param_value=8)
    assert int.from_bytes(out["param_value"], "little") == ctx, "host pointer became the guest id"
    status, out = g.call("clGetMemObjectInfo", object=buf, param_name=CL_MEM_SIZE,
                         param_value_size=8, param_value=8)
    assert int.from_bytes(out["param_value"], "little") == len(data)
    assert g.call("clRetainMemObject", memobj=buf)[0] == 0
    assert g.call("clReleaseMemObject", memobj=buf)[0] == 0
    assert g.call("clReleaseMemObject", memobj=buf)[0] == 0
    assert g.call("clReleaseMemObject", memobj=buf)[0] == -38, "the id died with its last reference"
    assert g.call("clReleaseContext", context=ctx)[0] == 0
    assert len(backend.handles) == 2       # the platform and the device remain known


def test_creating_with_a_taken_or_bad_id(backend):
    g = Guest(backend)
    ctx, dev = g.context()
    status, _ = g.call("clCreateContext", ctx, properties=None, num_devices=1, devices=[dev])
    assert status == -30
    status, _ = g.call("clCreateContext", HOST_ID_BASE + 5, properties=None, num_devices=1,
                       devices=[dev])
    assert status == -30


def test_property_lists(backend):
    g = Guest(backend)
    platform, dev = g.platform(), g.device()
    CL_CONTEXT_PLATFORM = 0x1084
    status, _ = g.call("clCreateContext", next(ids), properties=[(CL_CONTEXT_PLATFORM, platform)],
                       num_devices=1, devices=[dev])
    assert status == 0
    status, _ = g.call("clCreateContext", next(ids), properties=[(CL_CONTEXT_PLATFORM, 4242)],
                       num_devices=1, devices=[dev])
    assert status == -32, "a forged platform inside a property list"
    status, _ = g.call("clCreateContext", next(ids), properties=[(0x7777, 1)],
                       num_devices=1, devices=[dev])
    assert status == -64, "unknown property: CL_INVALID_PROPERTY from the implementation"


def test_program_build_and_kernel(backend):
    g = Guest(backend)
    ctx, dev = g.context()
    prog = next(ids)
    src = b"__kernel void twice(__global int *a) { a[get_global_id(0)] *= 2; }"
    assert g.call("clCreateProgramWithSource", prog, context=ctx, count=1, strings=[src])[0] == 0
    assert g.call("clBuildProgram", program=prog, num_devices=1, device_list=[dev],
                  options=b"-cl-std=CL1.2\0")[0] == 0
    kern = next(ids)
    assert g.call("clCreateKernel", kern, program=prog, kernel_name=b"twice\0")[0] == 0
    assert g.call("clCreateKernel", next(ids), program=prog, kernel_name=b"nope\0")[0] == -46
    assert g.call("clCreateKernel", next(ids), program=prog, kernel_name=b"twice")[0] == -30, \
        "a string without its terminator"
    bad = next(ids)
    assert g.call("clCreateProgramWithSource", bad, context=ctx, count=1,
                  strings=[b"__kernel void broken( {"])[0] == 0
    assert g.call("clBuildProgram", program=bad, num_devices=1, device_list=[dev])[0] == -11
    assert g.call("clCreateProgramWithSource", next(ids), context=ctx, count=1,
                  strings=None)[0] == -30, "a NULL array of strings (PoCL would crash)"
    status, out = g.call("clGetProgramBuildInfo", object=bad, device=dev,
                         param_name=CL_PROGRAM_BUILD_LOG, param_value_size=65536,
                         param_value=65536)
    assert status == 0 and b"error" in out["param_value"]


def test_handles_of_another_owner_are_invalid(backend):
    alice, mallory = Guest(backend, owner=1), Guest(backend, owner=2)
    ctx, dev = alice.context()
    assert mallory.call("clRetainContext", context=ctx)[0] == -34
    assert mallory.call("clGetContextInfo", object=ctx, param_name=CL_CONTEXT_REFERENCE_COUNT,
                        param_value_size=4, param_value=4)[0] == -34
    # Enumerated devices are shared.
    assert mallory.device() == dev


def test_an_id_another_owner_uses_answers_like_an_unused_one(backend):
    """Each guest process has an id space of its own: nothing one learns by trying ids
    tells it which ones another uses, and it cannot take another's next id."""
    alice, mallory = Guest(backend, owner=1), Guest(backend, owner=2)
    ctx, dev = alice.context()
    used, unused = next(ids), next(ids)
    assert alice.call("clCreateBuffer", used, context=ctx, flags=1, size=64,
                      host_ptr=None)[0] == 0

    def probe(who, handle):
        return [who.call("clGetMemObjectInfo", object=handle, param_name=0x1102,
                         param_value_size=8, param_value=8)[0],
                who.call("clRetainMemObject", memobj=handle)[0],
                who.call("clReleaseMemObject", memobj=handle)[0]]
    assert probe(mallory, used) == probe(mallory, unused) == [-38, -38, -38]
    # Creating with alice's live id, or the id alice takes next, works as with any other.
    mctx, _ = mallory.context()
    taken = next(ids)
    for handle in (used, taken):
        assert mallory.call("clCreateBuffer", handle, context=mctx, flags=1, size=32,
                            host_ptr=None)[0] == 0
        assert mallory.call("clGetMemObjectInfo", object=handle, param_name=0x1102,
                            param_value_size=8, param_value=8)[1]["param_value"] == \
            (32).to_bytes(8, "little")
    assert alice.call("clCreateBuffer", taken, context=ctx, flags=1, size=16,
                      host_ptr=None)[0] == 0
    for handle, size in ((used, 64), (taken, 16)):
        assert alice.call("clGetMemObjectInfo", object=handle, param_name=0x1102,
                          param_value_size=8, param_value=8)[1]["param_value"] == \
            size.to_bytes(8, "little")
    # Object-valued results come back as the ids their owner gave.
    assert alice.call("clGetMemObjectInfo", object=taken, param_name=0x1106,
                      param_value_size=8, param_value=8)[1]["param_value"] == \
        ctx.to_bytes(8, "little")
    # Releasing mallory's objects leaves alice's.
    backend.release_queue(9, owner=2, last=True)
    assert alice.call("clRetainMemObject", memobj=used)[0] == 0
    assert dev


def test_owner_gone_releases_everything_it_created(backend):
    g = Guest(backend, owner=77)
    ctx, _ = g.context()
    buf = next(ids)
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE, size=4096)[0] == 0
    before = len(backend.handles)
    backend.release_queue(3, owner=77, last=False)
    assert len(backend.handles) == before, "another queue of the process is still alive"
    backend.release_queue(3, owner=77, last=True)
    assert len(backend.handles) == before - 2
    assert backend.handles.bytes_used == 0


def test_limits(backend):
    small = OpenClBackend(max_objects=2, max_bytes=1 << 20)
    g = Guest(small)
    ctx, _ = g.context()      # 1 object: the enumerated platform and device do not count
    assert g.call("clCreateBuffer", next(ids), context=ctx, flags=CL_MEM_READ_WRITE,
                  size=4096)[0] == 0
    assert g.call("clCreateBuffer", next(ids), context=ctx, flags=CL_MEM_READ_WRITE,
                  size=4096)[0] == -5, "object limit: CL_OUT_OF_RESOURCES"
    small.close()


@pytest.mark.parametrize("payload", [
    b"",                                   # truncated
    b"\x01" * 7,
    (1).to_bytes(8, "little"),             # num_entries only
])
def test_malformed_encodings_are_refused(backend, payload):
    from host_backend._wire import WireError
    with pytest.raises(WireError):
        backend.call(F["clGetPlatformIDs"], payload, 1)


def test_malformed_arrays_and_sizes(backend):
    from host_backend._wire import WireError
    g = Guest(backend)
    fn = F["clCreateContext"]
    bad = encode(fn, next(ids), properties=None, num_devices=2, devices=[g.device()])
    with pytest.raises(WireError):
        backend.call(fn, bad, 1)                     # count disagrees with num_devices
    fn = F["clGetPlatformIDs"]
    with pytest.raises(WireError):
        backend.call(fn, encode(fn, num_entries=1 << 40, platforms=1), 1)   # does not fit cl_uint
    huge = (1 << 40).to_bytes(8, "little")
    ctx, _ = Guest(backend, owner=1).context()
    with pytest.raises(WireError):               # a string length past the payload
        backend.call(F["clCreateProgramWithSource"], (5).to_bytes(8, "little")
                     + ctx.to_bytes(8, "little") + (1).to_bytes(8, "little")
                     + (1).to_bytes(8, "little") + huge, 1)


def test_samplers_and_device_refcounts(backend):
    g = Guest(backend)
    ctx, dev = g.context()
    smp = next(ids)
    CL_ADDRESS_CLAMP, CL_FILTER_NEAREST, CL_SAMPLER_CONTEXT = 0x1132, 0x1140, 0x1151
    status, _ = g.call("clCreateSampler", smp, context=ctx, normalized_coords=0,
                       addressing_mode=CL_ADDRESS_CLAMP, filter_mode=CL_FILTER_NEAREST)
    assert status in (0, -59), "PoCL may lack image support (CL_INVALID_OPERATION)"
    if status == 0:
        status, out = g.call("clGetSamplerInfo", object=smp, param_name=CL_SAMPLER_CONTEXT,
                             param_value_size=8, param_value=8)
        assert int.from_bytes(out["param_value"], "little") == ctx
        assert g.call("clReleaseSampler", sampler=smp)[0] == 0
    assert g.call("clRetainDevice", device=dev)[0] == 0
    assert g.call("clReleaseDevice", device=dev)[0] == 0
    assert g.call("clReleaseDevice", device=dev)[0] == 0, "root devices ignore refcounts"
    assert g.device() == dev
    status, _ = g.call("clCreateContextFromType", next(ids), properties=None,
                       device_type=CL_DEVICE_TYPE_ALL)
    assert status == 0


def test_include_directories_travel_with_the_build(backend):
    g = Guest(backend)
    ctx, dev = g.context()
    prog = next(ids)
    src = b'#include "sub/val.h"\n__kernel void k(__global int *a) { a[0] = VAL; }'
    assert g.call("clCreateProgramWithSource", prog, context=ctx, count=1, strings=[src])[0] == 0
    files = [(0, b"sub/val.h", b"#define VAL 42\n")]
    assert g.call("clBuildProgram", program=prog, num_devices=1, device_list=[dev],
                  options=(b"-I @AVA_INC0@\0", files))[0] == 0
    # Kept under a name from their content, so a second build of the same files sees
    # the same options (the implementation's kernel cache hits), and other files
    # another directory (a cached program never outlives its headers).
    root = backend.includes._root
    assert len(os.listdir(root)) == 1
    again = next(ids)
    assert g.call("clCreateProgramWithSource", again, context=ctx, count=1, strings=[src])[0] == 0
    assert g.call("clBuildProgram", program=again, num_devices=1, device_list=[dev],
                  options=(b"-I @AVA_INC0@\0", files))[0] == 0
    assert len(os.listdir(root)) == 1
    assert g.call("clBuildProgram", program=again, num_devices=1, device_list=[dev],
                  options=(b"-I @AVA_INC0@\0", [(0, b"sub/val.h", b"#define VAL 43\n")]))[0] == 0
    assert len(os.listdir(root)) == 2
    bad = next(ids)
    assert g.call("clCreateProgramWithSource", bad, context=ctx, count=1, strings=[src])[0] == 0
    for path in (b"../escape.h", b"/etc/passwd", b"sub/../../x.h", b""):
        assert g.call("clBuildProgram", program=bad, num_devices=1, device_list=[dev],
                      options=(b"-I @AVA_INC0@\0", [(0, path, b"x")]))[0] == -30
    assert len(os.listdir(root)) == 2
    backend.includes.close()
    assert not os.path.exists(root), "removed with the session"


def test_include_store_evicts_only_directories_no_build_uses(tmp_path, monkeypatch):
    from host_backend import _includes
    monkeypatch.setattr(_includes, "MAX_DIRS", 2)
    store = _includes.IncludeStore()
    held, done_held = store.checkout([(0, ["a.h"], b"held")], {0})
    for i in range(4):
        _, done = store.checkout([(0, ["a.h"], b"%d" % i)], {0})
        done()
    assert os.path.isfile(os.path.join(held, "0", "a.h")), "in use: kept"
    assert len(os.listdir(os.path.dirname(held))) == 2
    same, done_same = store.checkout([(0, ["a.h"], b"held")], {0})
    assert same == held
    done_held()
    done_same()
    store.close()
    assert not os.path.exists(os.path.dirname(held))


def _linked_program(g, ctx, dev, src=b"__kernel void a(__global int *x) { x[0] = 1; }\n"
                    b"__kernel void b(__global int *x) { x[0] = 2; }"):
    prog = next(ids)
    assert g.call("clCreateProgramWithSource", prog, context=ctx, count=1, strings=[src])[0] == 0
    assert g.call("clBuildProgram", program=prog, num_devices=1, device_list=[dev])[0] == 0
    return prog


def test_compile_with_bad_header_arrays_answers_instead_of_crashing(backend):
    g = Guest(backend)
    ctx, dev = g.context()
    prog = next(ids)
    assert g.call("clCreateProgramWithSource", prog, context=ctx, count=1,
                  strings=[b'#include "h.h"\n__kernel void k(void) {}'])[0] == 0
    # PoCL reads through a NULL header array: the host answers for it.
    assert g.call("clCompileProgram", program=prog, num_devices=1, device_list=[dev],
                  num_input_headers=1, input_headers=None, header_include_names=[b"h.h\0"])[0] == -30
    assert g.call("clCompileProgram", program=prog, num_devices=1, device_list=[dev],
                  num_input_headers=1, input_headers=[prog], header_include_names=None)[0] == -30
    assert g.call("clCompileProgram", program=prog, num_devices=1, device_list=[dev],
                  num_input_headers=1, input_headers=[prog],
                  header_include_names=[b"h.h"])[0] == -30, "a name without its terminator"
    assert g.call("clCompileProgram", program=prog, num_devices=1, device_list=[dev],
                  pfn_notify=1)[0] == -30, "user_data without a callback"
    assert g.call("clWaitForEvents", num_events=2, event_list=None)[0] == -30


def test_objects_created_into_arrays_are_checked_and_owned(backend):
    from host_backend._wire import WireError
    g, other = Guest(backend, owner=5), Guest(backend, owner=6)
    ctx, dev = g.context()
    prog = _linked_program(g, ctx, dev)
    k1, k2 = next(ids), next(ids)
    status, out = g.call("clCreateKernelsInProgram", program=prog, num_kernels=2,
                         kernels=[k1, k1], num_kernels_ret=True)
    assert status == -30, "the same id twice"
    assert g.call("clCreateKernelsInProgram", program=prog, num_kernels=2,
                  kernels=[k1, HOST_ID_BASE + 5])[0] == -30, "an id from the host's range"
    assert g.call("clCreateKernelsInProgram", program=prog, num_kernels=2,
                  kernels=[k1, ctx])[0] == -30, "an id already taken"
    fn = F["clCreateKernelsInProgram"]
    with pytest.raises(WireError):
        backend.call(fn, encode(fn, program=prog, num_kernels=3, kernels=[k1, k2]), 5)
    status, out = g.call("clCreateKernelsInProgram", program=prog, num_kernels=2,
                         kernels=[k1, k2], num_kernels_ret=True)
    assert status == 0 and out["kernels"] == 2 and out["num_kernels_ret"] == 2
    assert other.call("clRetainKernel", kernel=k1)[0] == -48, "another session's kernel"
    assert g.call("clReleaseKernel", kernel=k2)[0] == 0
    # sub-devices: created ids, owned, gone with the owner
    subs = [next(ids) for _ in range(64)]
    CL_DEVICE_PARTITION_EQUALLY = 0x1086
    status, out = g.call("clCreateSubDevices", in_device=dev,
                         properties=[(CL_DEVICE_PARTITION_EQUALLY, 1)], num_devices=64,
                         out_devices=subs, num_devices_ret=True)
    assert status == 0 and out["out_devices"] == out["num_devices_ret"] >= 1
    assert g.call("clRetainDevice", device=subs[0])[0] == 0
    assert other.call("clRetainDevice", device=subs[0])[0] == -33
    assert g.call("clCreateSubDevices", in_device=dev, properties=[(0x7777, 1)],
                  num_devices=1, out_devices=[next(ids)])[0] == -30
    before = len(backend.handles)
    backend.release_queue(0, owner=5, last=True)
    assert len(backend.handles) < before - out["out_devices"]


def test_binaries_and_their_queries(backend):
    from host_backend._wire import WireError
    g = Guest(backend)
    ctx, dev = g.context()
    prog = _linked_program(g, ctx, dev)
    status, out = g.call("clGetProgramInfo", object=prog, param_name=api.CL_PROGRAM_BINARY_SIZES,
                         param_value_size=8, param_value=8)
    size = int.from_bytes(out["param_value"], "little")
    assert status == 0 and size > 0
    status, out = g.call("clGetProgramInfo", object=prog, param_name=api.AVA_PROGRAM_BINARY,
                         param_value_size=size, param_value=size, param_value_size_ret=True)
    assert status == 0 and len(out["param_value"]) == size == out["param_value_size_ret"]
    binary = out["param_value"]
    assert g.call("clGetProgramInfo", object=prog, param_name=api.AVA_PROGRAM_BINARY + 1,
                  param_value_size=size, param_value=size)[0] == -30, "no second device"
    assert g.call("clGetProgramInfo", object=prog, param_name=api.AVA_PROGRAM_BINARY,
                  param_value_size=4, param_value=4)[0] == -30, "too small"
    again = next(ids)
    status, out = g.call("clCreateProgramWithBinary", again, context=ctx, num_devices=1,
                         device_list=[dev], binaries=[binary], binary_status=1)
    assert status == 0 and out["binary_status"] == bytes(4)
    status, out = g.call("clCreateProgramWithBinary", next(ids), context=ctx, num_devices=1,
                         device_list=[dev], binaries=[b"junk"], binary_status=1)
    assert status == -42 and int.from_bytes(out["binary_status"], "little", signed=True) == -42
    fn = F["clCreateProgramWithBinary"]
    with pytest.raises(WireError):          # two binaries for one device
        backend.call(fn, encode(fn, next(ids), context=ctx, num_devices=1, device_list=[dev],
                                binaries=[binary, binary]), g.owner)


def test_rectangles_must_cover_exactly_their_span(backend):
    from host_backend._wire import WireError
    g = Guest(backend)
    ctx, dev = g.context()
    queue, buf = next(ids), next(ids)
    assert g.call("clCreateCommandQueue", queue, context=ctx, device=dev)[0] == 0
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE, size=4096)[0] == 0
    dma = FakeDma()
    dma.ram[:4096] = bytes(range(256)) * 16
    fn = F["clEnqueueWriteBufferRect"]
    args = dict(command_queue=queue, buffer=buf, blocking_write=1, buffer_origin=[0, 0, 0],
                host_origin=[1, 1, 0], region=[16, 4, 1], buffer_row_pitch=64,
                buffer_slice_pitch=0, host_row_pitch=32, host_slice_pitch=0)
    span = api.rect_span([1, 1, 0], [16, 4, 1], 32, 0)
    assert span == 32 + 1 + 3 * 32 + 16
    ok = backend.call(fn, encode(fn, ptr=(api.HOSTDATA_RANGE, 0, span), **args), g.owner, dma)
    assert decode(fn, ok)[0] == 0
    with pytest.raises(WireError):
        backend.call(fn, encode(fn, ptr=(api.HOSTDATA_RANGE, 0, span - 1), **args), g.owner, dma)
    with pytest.raises(WireError):
        backend.call(fn, encode(fn, ptr=(api.HOSTDATA_RANGE, 0, span), **dict(
            args, region=[16, 4])), g.owner, dma)          # a region of two values
    with pytest.raises(ValueError):
        backend.call(fn, encode(fn, ptr=(api.HOSTDATA_RANGE, (1 << 20) - 8, span), **args), g.owner, dma)
    # read back through a rectangle: bytes between its rows stay as the guest had them
    rfn = F["clEnqueueReadBufferRect"]
    dma.ram[8192:8192 + span] = b"\xee" * span
    reply = backend.call(rfn, encode(rfn, ptr=(api.HOSTDATA_RANGE, 8192, span), **dict(
        args, blocking_read=1)), g.owner, dma)
    assert decode(rfn, reply)[0] == 0
    got = dma.ram[8192:8192 + span]
    assert got[0] == 0xee and got[33:49] == dma.ram[33:49] and got[49] == 0xee


def test_use_host_ptr_becomes_a_copy_and_hides_host_pointers(backend):
    g = Guest(backend)
    ctx, _ = g.context()
    buf = next(ids)
    CL_MEM_USE_HOST_PTR = 1 << 3
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_USE_HOST_PTR, size=64,
                  host_ptr=b"x" * 64)[0] == 0
    status, out = g.call("clGetMemObjectInfo", object=buf, param_name=api.CL_MEM_HOST_PTR,
                         param_value_size=8, param_value=8)
    assert status == 0 and out["param_value"] == bytes(8), "no host address reaches the guest"
    assert g.call("clCreateBuffer", next(ids), context=ctx,
                  flags=CL_MEM_USE_HOST_PTR | CL_MEM_COPY_HOST_PTR, size=64,
                  host_ptr=b"x" * 64)[0] == -30, "invalid flags stay invalid"


def test_releasing_a_dead_owners_objects_never_blocks_the_caller(backend, monkeypatch):
    """A queue release arrives on the vfio-user loop (QEMU waits 5 s at most for its
    reply); releasing OpenCL objects can block (a queue finishes its commands first),
    so the releases run on the reaper thread."""
    import threading

    from host_backend import _opencl
    real = _opencl.lib()
    may_finish, released = threading.Event(), threading.Event()

    class SlowRelease:
        def __getattr__(self, name):
            return getattr(real, name)

        def clReleaseContext(self, ptr):
            may_finish.wait(10)             # held until the caller has returned
            status = real.clReleaseContext(ptr)
            released.set()
            return status

    g = Guest(backend, owner=88)
    ctx, _ = g.context()
    monkeypatch.setattr(_opencl, "lib", lambda: SlowRelease())
    try:
        backend.release_queue(0, owner=88, last=True)
        # No clock involved: the release cannot have finished, since it waits for us.
        assert not released.is_set(), "the caller waited for the release"
        assert g.call("clRetainContext", context=ctx)[0] == -34, "the id is gone at once"
    finally:
        may_finish.set()
    assert released.wait(10), "released on the reaper thread"


def test_random_payloads_get_an_answer_or_a_wire_error(backend):
    """Every spec function fed random words (counts, lengths and ids drawn from the
    values that matter: 0, small, huge, NULL_LEN): the host answers with a status or
    refuses the encoding; no other exception escapes (it would end as EIO for the
    guest).  Found: unsigned property lists decoded as signed."""
    import random
    import struct

    from host_backend._wire import WireError
    rng = random.Random(20261125)
    interesting = [0, 1, 2, 3, 4, 8, 16, 255, 4096, 1 << 20, 1 << 32, 1 << 62,
                   api.NULL_LEN, 0x7FFFFFFFFFFFFFFF]
    failures = []
    for _ in range(60000):
        fn = rng.choice(api.FUNCTIONS)
        words = [rng.choice(interesting) if rng.random() < 0.7 else rng.getrandbits(64)
                 for _ in range(rng.randint(0, 24))]
        payload = b"".join(struct.pack("<Q", w) for w in words)
        try:
            backend.call(fn, payload, 1)
        except WireError:
            pass
        except Exception as exc:
            failures.append(f"{fn.name}: {exc!r} on {payload.hex()[:96]}")
    assert not failures, "\n".join(sorted(set(failures))[:10])


@pytest.mark.parametrize("seed,device_memory", [(101, None), (102, None), (103, 6144)])
def test_structured_hostile_calls_never_crash_the_host(seed, device_memory):
    """Thousands of well-formed calls with hostile values (tests/backend_fuzz.py) in a
    child process: it must finish, and no call may raise anything but a refused
    encoding.  Found: PoCL dereferences a NULL kernel (clEnqueueTask) and NULL
    devices in lists, aborts the process on clEnqueueWaitForEvents and on mipmapped
    image descriptors, and reads forged bytes as a buffer pointer.  Seed 103 runs
    with 6 KiB of device memory, so its objects are evicted and made again meanwhile."""
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    extra = [str(device_memory)] if device_memory else []
    res = subprocess.run([sys.executable, os.path.join(here, "backend_fuzz.py"), str(seed),
                          "4000", *extra], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"the host process died ({res.returncode}): {res.stderr[-2000:]}"
    assert f"done {seed} 0" in res.stdout, res.stdout[-3000:]
    if device_memory:
        import re
        moved = re.search(r"evictions=(\d+) restores=(\d+)", res.stdout)
        assert moved and int(moved.group(1)) > 0 and int(moved.group(2)) > 0, res.stdout[-500:]


@pytest.mark.parametrize("raw,ctype,value", [
    (0xFFFFFFFFFFFFFFE2, "cl_int", -30),          # sign-extended by the guest
    (0xFFFFFFE2, "cl_int", -30),                  # zero-extended
    (0xFFFFFFFF80000000, "cl_int", -(1 << 31)),
    (0x7FFFFFFF, "cl_int", (1 << 31) - 1),
    (0xFFFFFFFF, "cl_uint", 0xFFFFFFFF),
])
def test_signed_scalars_arrive_with_their_sign(raw, ctype, value):
    from host_backend._args import scalar_value
    assert scalar_value(raw, ctype, "x") == value


@pytest.mark.parametrize("raw,ctype", [(0x1_0000_0000, "cl_int"), (0xFFFFFFFF7FFFFFFF, "cl_int"),
                                       (0x1_0000_0000, "cl_uint"), (0xFFFFFFFFFFFFFFFF, "cl_uint")])
def test_scalars_that_do_not_fit_are_malformed(raw, ctype):
    from host_backend._args import scalar_value
    from host_backend._wire import WireError
    with pytest.raises(WireError, match="does not fit"):
        scalar_value(raw, ctype, "x")


def test_non_blocking_transfers_wait_behind_a_user_event_without_blocking(backend):
    """A non-blocking read of guest memory, gated by a user event the guest sets
    later, answers at once (blocking would never end); the host holds the guest
    memory it writes until the command is over, and a fence taken meanwhile is done
    only then.  Without an event to follow it by,
    the same read blocks (nothing could tell the guest it ended)."""
    g = Guest(backend)
    ctx, dev = g.context()
    queue, buf, gate, done = next(ids), next(ids), next(ids), next(ids)
    assert g.call("clCreateCommandQueue", queue, context=ctx, device=dev, properties=0)[0] == 0
    data = bytes(range(256)) * 16
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                  size=len(data), host_ptr=data)[0] == 0
    assert g.call("clCreateUserEvent", gate, context=ctx)[0] == 0
    dma = FakeDma()
    fn = F["clEnqueueReadBuffer"]
    args = dict(command_queue=queue, buffer=buf, blocking_read=0, offset=0, size=len(data),
                ptr=(api.HOSTDATA_RANGE, 0, len(data)), num_events_in_wait_list=1,
                event_wait_list=[gate])
    reply = backend.call(fn, encode(fn, event=done, **args), g.owner, dma)
    assert decode(fn, reply)[0] == 0
    assert dma.ram[:len(data)] == bytes(len(data)), "nothing read before the gate opens"
    assert len(backend._transfers) == 1
    # A fence taken now (new windows that leave the memory out) waits for the transfer:
    # the guest daemon must not let that memory go.  Another owner's fence does not,
    # nor does one taken before the transfer was issued.
    before = backend.fence_point(g.owner) - 1
    fence = backend.fence_point(g.owner)
    assert not backend.fence_done(g.owner, fence)
    assert backend.fence_done(g.owner + 1, fence) and backend.fence_done(g.owner, before)
    assert g.call("clSetUserEventStatus", event=gate, execution_status=0)[0] == 0
    assert g.call("clWaitForEvents", num_events=1, event_list=[done])[0] == 0
    assert dma.ram[:len(data)] == data
    g.call("clFinish", command_queue=queue)
    assert not backend._transfers, "the finished transfer let go of guest memory"
    assert backend.fence_done(g.owner, fence)
    # No event: blocking, whatever the guest asked.
    other = FakeDma()
    args.update(num_events_in_wait_list=0, event_wait_list=None,
                ptr=(api.HOSTDATA_RANGE, 0, len(data)))
    assert decode(fn, backend.call(fn, encode(fn, **args), g.owner, other))[0] == 0
    assert other.ram[:len(data)] == data and not backend._transfers


def test_non_blocking_transfers_through_a_scatter_list_run_piece_by_piece(backend):
    """Staging in pieces (a VM's hugepages need not be contiguous): a non-blocking
    buffer transfer behind a user event still answers at once, as one command per
    piece, each after the one before, in guest memory itself; the bytes land in the
    right pieces, and bounds are the whole transfer's."""
    g = Guest(backend)
    ctx, dev = g.context()
    queue, buf, gate, wrote, read = (next(ids) for _ in range(5))
    assert g.call("clCreateCommandQueue", queue, context=ctx, device=dev, properties=0)[0] == 0
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE, size=12288)[0] == 0
    assert g.call("clCreateUserEvent", gate, context=ctx)[0] == 0
    dma = FakeDma()
    pieces = [(0x10000, 4096), (0x30000, 1000), (0x20000, 7192)]       # out of order
    table = b"".join(struct.pack("<QII", a, n, 0) for a, n in pieces)
    dma.ram[0:len(table)] = table
    data = bytes((i * 7) & 0xFF for i in range(12288))
    pos = 0
    for a, n in pieces:
        dma.ram[a:a + n] = data[pos:pos + n]
        pos += n
    fn = F["clEnqueueWriteBuffer"]
    sg = (api.HOSTDATA_SG, 0, len(pieces))
    common = dict(command_queue=queue, buffer=buf, offset=0, size=len(data), ptr=sg)
    reply = backend.call(fn, encode(fn, blocking_write=0, num_events_in_wait_list=1,
                                    event_wait_list=[gate], event=wrote, **common), g.owner, dma)
    assert decode(fn, reply)[0] == 0
    # The read lands in other pieces (the write's staging stays the guest's until
    # the write is over).
    into = [(0x50000, 3000), (0x40000, 9288)]
    dma.ram[0x100:0x100 + 32] = b"".join(struct.pack("<QII", a, n, 0) for a, n in into)
    fn = F["clEnqueueReadBuffer"]
    reply = backend.call(fn, encode(fn, blocking_read=0, num_events_in_wait_list=1,
                                    event_wait_list=[wrote], event=read,
                                    **{**common, "ptr": (api.HOSTDATA_SG, 0x100, 2)}),
                         g.owner, dma)
    assert decode(fn, reply)[0] == 0
    assert bytes(dma.ram[0x40000:0x40010]) == bytes(16), "nothing before the gate opens"
    assert g.call("clSetUserEventStatus", event=gate, execution_status=0)[0] == 0
    assert g.call("clWaitForEvents", num_events=1, event_list=[read])[0] == 0
    got = b"".join(bytes(dma.ram[a:a + n]) for a, n in into)
    assert got == data
    CL_EVENT_COMMAND_TYPE, CL_COMMAND_READ_BUFFER = 0x11D1, 0x11F3
    status, out = g.call("clGetEventInfo", object=read, param_name=CL_EVENT_COMMAND_TYPE,
                         param_value_size=4, param_value=4)
    assert status == 0
    assert int.from_bytes(out["param_value"], "little") == CL_COMMAND_READ_BUFFER
    # Past the buffer's end: refused as a whole, before any piece runs.
    reply = backend.call(fn, encode(fn, blocking_read=0, num_events_in_wait_list=0,
                                    event=next(ids), **{**common, "offset": 4}), g.owner, dma)
    assert decode(fn, reply)[0] == -30
    assert g.call("clFinish", command_queue=queue)[0] == 0


@pytest.mark.parametrize("piece", [4096, 1000, SEGMENT_MIN_BYTES],
                         ids=["pages", "odd", "large"])
def test_blocking_transfers_through_a_scatter_list(backend, monkeypatch, piece):
    """A blocking buffer transfer whose data lies in many pieces (a zero-copy transfer
    of an application's pages in a VM: one piece per page, out of order): the bytes
    land in the right places both ways, the event is the transfer's, and bounds are
    the whole transfer's.  Small pieces go through one bounce buffer, large ones as a
    command each; either way a single call."""
    segmented = []
    real = OpenClBackend._segmented
    monkeypatch.setattr(OpenClBackend, "_segmented", staticmethod(
        lambda fn, cargs, call: segmented.append(fn.name) or real(fn, cargs, call)))
    g = Guest(backend)
    ctx, dev = g.context()
    queue, buf, wrote = (next(ids) for _ in range(3))
    count = 3
    size = piece * count
    dma = FakeDma(1 << 22)
    assert g.call("clCreateCommandQueue", queue, context=ctx, device=dev, properties=0)[0] == 0
    assert g.call("clCreateBuffer", buf, context=ctx, flags=CL_MEM_READ_WRITE, size=size)[0] == 0
    slots = [0x100000 + i * (SEGMENT_MIN_BYTES + 4096) for i in (2, 0, 1)]   # out of order
    data = bytes((i * 13 + 5) & 0xFF for i in range(size))

    def table(at: int) -> tuple:
        dma.ram[at:at + 16 * count] = b"".join(struct.pack("<QII", a, piece, 0) for a in slots)
        return (api.HOSTDATA_SG, at, count)

    for i, a in enumerate(slots):
        dma.ram[a:a + piece] = data[i * piece:(i + 1) * piece]
    common = dict(command_queue=queue, buffer=buf, offset=0, size=size,
                  num_events_in_wait_list=0)
    fn = F["clEnqueueWriteBuffer"]
    reply = backend.call(fn, encode(fn, blocking_write=1, ptr=table(0), event=wrote, **common),
                         g.owner, dma)
    assert decode(fn, reply)[0] == 0
    CL_EVENT_COMMAND_TYPE, CL_COMMAND_WRITE_BUFFER = 0x11D1, 0x11F4
    status, out = g.call("clGetEventInfo", object=wrote, param_name=CL_EVENT_COMMAND_TYPE,
                         param_value_size=4, param_value=4)
    assert status == 0 and int.from_bytes(out["param_value"], "little") == CL_COMMAND_WRITE_BUFFER
    for a in slots:
        dma.ram[a:a + piece] = bytes(piece)
    fn = F["clEnqueueReadBuffer"]
    reply = backend.call(fn, encode(fn, blocking_read=1, ptr=table(0x1000), event=0, **common),
                         g.owner, dma)
    assert decode(fn, reply)[0] == 0
    assert b"".join(bytes(dma.ram[a:a + piece]) for a in slots) == data
    large = piece >= SEGMENT_MIN_BYTES
    assert segmented == (["clEnqueueWriteBuffer", "clEnqueueReadBuffer"] if large else [])
    # One byte past the buffer's end: refused as a whole, and nothing is written.
    for a in slots:
        dma.ram[a:a + piece] = b"\xee" * piece
    reply = backend.call(fn, encode(fn, blocking_read=1, ptr=table(0x1000), event=0,
                                    **{**common, "offset": 1}), g.owner, dma)
    assert decode(fn, reply)[0] == -30
    assert all(bytes(dma.ram[a:a + piece]) == b"\xee" * piece for a in slots)
    # Behind a wait list (the first piece carries it, blocking): the same status as the
    # call on one contiguous range, and the bytes.  (A failed event in a blocking call's
    # wait list hangs PoCL itself, natively too: not tried.)
    gate = next(ids)
    assert g.call("clCreateUserEvent", gate, context=ctx)[0] == 0
    assert g.call("clSetUserEventStatus", event=gate, execution_status=0)[0] == 0
    gated = dict(common, num_events_in_wait_list=1, event_wait_list=[gate])
    for a in slots:
        dma.ram[a:a + piece] = bytes(piece)
    got = decode(fn, backend.call(fn, encode(fn, blocking_read=1, ptr=table(0x1000), event=0,
                                             **gated), g.owner, dma))[0]
    whole = decode(fn, backend.call(fn, encode(fn, blocking_read=1, event=0,
                                               ptr=(api.HOSTDATA_RANGE, 0x200000, size),
                                               **gated), g.owner, dma))[0]
    assert got == whole == 0
    assert b"".join(bytes(dma.ram[a:a + piece]) for a in slots) == data


class _PostedCommand:
    """What the ring engine hands the backend for one command, posted by the guest."""

    def __init__(self, fn, payload: bytes, owner: int):
        from protocols.device_abi import CmdFlags
        self.opcode, self.flags, self.queue, self.owner = fn.opcode, int(CmdFlags.POSTED), 3, owner
        self.dma = None
        self.payload, self.reply = payload, b""

    def read_payload(self) -> bytes:
        return self.payload

    def write_reply(self, data) -> int:
        self.reply = bytes(data)
        return len(self.reply)


def test_a_posted_call_the_host_answers_differently_is_logged_and_counted(backend, caplog):
    """The guest posts a call only when it knows its status is CL_SUCCESS; a posted
    call that fails on the host is a misprediction (a guest bug): logged with the
    call, counted, and counted in the VM's stats under a manager."""
    g = Guest(backend)
    ctx, dev = g.context()
    prog, kern = next(ids), next(ids)
    assert g.call("clCreateProgramWithSource", prog, context=ctx, count=1,
                  strings=[b"__kernel void k(__global int *a) { a[0] = 1; }"])[0] == 0
    assert g.call("clBuildProgram", program=prog, num_devices=1, device_list=[dev])[0] == 0
    assert g.call("clCreateKernel", kern, program=prog, kernel_name=b"k\0")[0] == 0
    charged = []
    backend.meter = type("Meter", (), {"mispredicted": lambda self: charged.append(1)})()
    fn = F["clSetKernelArg"]
    good = _PostedCommand(fn, encode(fn, kernel=kern, arg_index=0,
                                     arg_value=(api.KARG_LOCAL, 8)), g.owner)
    assert backend.execute(good) == (0, 8) and good.reply == bytes(8)
    assert backend.posted == 1 and backend.mispredicted == 0
    bad = _PostedCommand(fn, encode(fn, kernel=kern, arg_index=7,
                                    arg_value=(api.KARG_BYTES, b"\0" * 4)), g.owner)
    with caplog.at_level("WARNING", logger="host_backend.opencl"):
        backend.execute(bad)
    assert int.from_bytes(bad.reply[:8], "little", signed=True) == -49   # CL_INVALID_ARG_INDEX
    assert backend.posted == 2 and backend.mispredicted == 1 and charged == [1]
    assert "posted clSetKernelArg got status -49" in caplog.text and "misprediction" in caplog.text
    malformed = _PostedCommand(fn, b"\1\2\3", g.owner)
    backend.execute(malformed)
    assert backend.mispredicted == 2 and "posted clSetKernelArg got malformed" in caplog.text
    backend.meter = None


def test_a_release_running_while_its_owner_is_torn_down_is_not_released_twice(backend,
                                                                              monkeypatch):
    """The guest daemon releases a departed process's queue at once, while a release the
    process posted may still be running: that release counts against the object the
    teardown holds, which then releases only what is left (a second clRelease of a freed
    object crashes the implementation)."""
    g = Guest(backend, owner=41)
    ctx, _ = g.context()
    buf = next(ids)
    assert g.call("clCreateBuffer", buf, context=ctx, flags=1, size=64, host_ptr=None)[0] == 0
    doomed_lists = []
    real_release = backend._release_dead_owners

    def keep(doomed, owners):
        doomed_lists.append(doomed)
        real_release(doomed, owners)
    monkeypatch.setattr(backend, "_release_dead_owners", keep)

    class TearDownMeanwhile(dict):
        """Looked up after the call is decoded and the lock let go, just before the
        implementation runs it: where another thread's teardown can come in."""

        def get(self, name, default=None):
            if name == "clReleaseMemObject":
                backend.release_queue(0, owner=41, last=True)    # the process is gone
            return super().get(name, default)
    monkeypatch.setattr(backend, "_info_filters", TearDownMeanwhile(backend._info_filters))
    assert g.call("clReleaseMemObject", memobj=buf)[0] == 0
    deadline = time.monotonic() + 10
    while not doomed_lists:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    entries = {handle_key(buf, 41): e for h, e in doomed_lists[0] if h == handle_key(buf, 41)}
    (entry,) = entries.values()
    assert entry.refs == 0, "the teardown would release the buffer a second time"
    # The implementation is alive and serves another owner.
    other = Guest(backend, owner=42)
    assert other.context()


PREPARED_PROBE = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from host_backend import _cl
devices = sum(len(d) for _, d in _cl.platforms_and_devices())
cell = _cl.ffi.new("cl_uint *", 7)
print(_cl.PREPARED, devices, cell[0], _cl.ffi.sizeof("cl_event"))
"""


def test_prepared_declarations_are_used_only_when_they_match(tmp_path):
    """A server prepares the OpenCL declarations once for its executors (cffi's
    out-of-line mode): an executor given them uses them, and the same OpenCL answers;
    a module made from other declarations, or one it cannot load, is not used: the
    executor parses them itself and says why."""
    import subprocess
    import sys

    from host_backend._cl_prepared import prepared_source
    from protocols.executor import PREPARED_ENV
    path = str(tmp_path / "prepared.py")
    with open(path, "w") as f:
        f.write(prepared_source())

    def probe(prepared: str) -> tuple[list[str], str]:
        res = subprocess.run([sys.executable, "-c", PREPARED_PROBE], capture_output=True,
                             text=True, timeout=60, env=dict(os.environ, **{PREPARED_ENV: prepared}))
        assert res.returncode == 0, res.stderr
        return res.stdout.split(), res.stderr

    fast, err = probe(path)
    parsed, _ = probe("")
    assert fast[0] == "True" and parsed[0] == "False", (fast, parsed)
    assert fast[1:] == parsed[1:] and int(fast[1]) >= 1 and fast[2] == "7", (fast, parsed)
    assert not err
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("DIGEST = '", "DIGEST = 'x"))
    stale, err = probe(path)
    assert stale[0] == "False" and stale[1:] == parsed[1:]
    assert "made from other declarations" in err, err
    gone, err = probe(str(tmp_path / "missing.py"))
    assert gone[0] == "False" and "cannot load the prepared declarations" in err, err
